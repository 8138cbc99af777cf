/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: tracepoints (/sys/kernel/tracing/events/hmm_gpu/).
 *
 * The printed formats are an interface: the harness parses them and lines
 * them up with the device's DMA trace (docs/device-abi.md, "The driver's
 * tracepoints"). Every event starts with dev=pci_name(), whose devfn is the
 * one in the DMA trace file's header. The driver stamps nothing itself: the
 * ring buffer's clock is the one to read, set to "mono", the clock
 * hmm_gpu_clock_sync() tells the device.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM hmm_gpu

#if !defined(HMM_GPU_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define HMM_GPU_TRACE_H

#include <linux/mmu_notifier.h>
#include <linux/pci.h>
#include <linux/tracepoint.h>

#include "hmm_gpu_regs.h"

/* Read once, like a normal header (define_trace.h reads the rest again). */
#ifndef HMM_GPU_TRACE_DEFS
#define HMM_GPU_TRACE_DEFS
/* Room for pci_name(): "0000:00:04.0", or a domain of up to 8 digits. */
#define HMM_GPU_TRACE_DEV_LEN	20

/* What the fault worker did with a fault record. */
enum hmm_gpu_fault_action {
	HMM_GPU_FAULT_REPLAY,	/* serviced: the REPLAY that follows retries the job */
	HMM_GPU_FAULT_CANCEL,	/* CANCEL of its token: the job fails with ret */
	HMM_GPU_FAULT_DROP,	/* nothing to answer: the job is gone or faulted again */
};
#endif

TRACE_DEFINE_ENUM(MMU_NOTIFY_UNMAP);
TRACE_DEFINE_ENUM(MMU_NOTIFY_CLEAR);
TRACE_DEFINE_ENUM(MMU_NOTIFY_PROTECTION_VMA);
TRACE_DEFINE_ENUM(MMU_NOTIFY_PROTECTION_PAGE);
TRACE_DEFINE_ENUM(MMU_NOTIFY_SOFT_DIRTY);
TRACE_DEFINE_ENUM(MMU_NOTIFY_RELEASE);
TRACE_DEFINE_ENUM(MMU_NOTIFY_MIGRATE);
TRACE_DEFINE_ENUM(MMU_NOTIFY_EXCLUSIVE);
TRACE_DEFINE_ENUM(HMM_GPU_FAULT_REPLAY);
TRACE_DEFINE_ENUM(HMM_GPU_FAULT_CANCEL);
TRACE_DEFINE_ENUM(HMM_GPU_FAULT_DROP);

#define hmm_gpu_show_mmu_event(event)					\
	__print_symbolic(event,						\
			 { MMU_NOTIFY_UNMAP,		"unmap" },		\
			 { MMU_NOTIFY_CLEAR,		"clear" },		\
			 { MMU_NOTIFY_PROTECTION_VMA,	"protection_vma" },	\
			 { MMU_NOTIFY_PROTECTION_PAGE,	"protection_page" },	\
			 { MMU_NOTIFY_SOFT_DIRTY,	"soft_dirty" },		\
			 { MMU_NOTIFY_RELEASE,		"release" },		\
			 { MMU_NOTIFY_MIGRATE,		"migrate" },		\
			 { MMU_NOTIFY_EXCLUSIVE,	"exclusive" })

#define hmm_gpu_show_access(access)					\
	__print_symbolic(access,					\
			 { HMM_GPU_ACCESS_READ,		"read" },		\
			 { HMM_GPU_ACCESS_WRITE,	"write" },		\
			 { HMM_GPU_ACCESS_ATOMIC,	"atomic" })

#define hmm_gpu_show_action(action)					\
	__print_symbolic(action,					\
			 { HMM_GPU_FAULT_REPLAY,	"replay" },		\
			 { HMM_GPU_FAULT_CANCEL,	"cancel" },		\
			 { HMM_GPU_FAULT_DROP,		"drop" })

TRACE_EVENT(hmm_gpu_clock_sync,
	TP_PROTO(struct pci_dev *pdev, u64 guest_ns, u64 rtt_ns, u32 seq),
	TP_ARGS(pdev, guest_ns, rtt_ns, seq),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(u64, guest_ns)
		__field(u64, rtt_ns)
		__field(u32, seq)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->guest_ns = guest_ns;
		__entry->rtt_ns = rtt_ns;
		__entry->seq = seq;
	),
	TP_printk("dev=%s guest_ns=%llu rtt_ns=%llu seq=%u",
		  __entry->dev, __entry->guest_ns, __entry->rtt_ns, __entry->seq)
);

TRACE_EVENT(hmm_gpu_fault_begin,
	TP_PROTO(struct pci_dev *pdev, u16 token, u32 ctx, u64 va, u8 access),
	TP_ARGS(pdev, token, ctx, va, access),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(u64, va)
		__field(u32, ctx)
		__field(u16, token)
		__field(u8, access)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->va = va;
		__entry->ctx = ctx;
		__entry->token = token;
		__entry->access = access;
	),
	TP_printk("dev=%s token=%u ctx=%u va=0x%llx access=%s",
		  __entry->dev, __entry->token, __entry->ctx, __entry->va,
		  hmm_gpu_show_access(__entry->access))
);

TRACE_EVENT(hmm_gpu_fault_end,
	TP_PROTO(struct pci_dev *pdev, u16 token, u32 ctx, u64 va, int ret,
		 enum hmm_gpu_fault_action action),
	TP_ARGS(pdev, token, ctx, va, ret, action),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(u64, va)
		__field(u32, ctx)
		__field(int, ret)
		__field(u16, token)
		__field(u8, action)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->va = va;
		__entry->ctx = ctx;
		__entry->ret = ret;
		__entry->token = token;
		__entry->action = action;
	),
	TP_printk("dev=%s token=%u ctx=%u va=0x%llx ret=%d action=%s",
		  __entry->dev, __entry->token, __entry->ctx, __entry->va,
		  __entry->ret, hmm_gpu_show_action(__entry->action))
);

TRACE_EVENT(hmm_gpu_invalidate,
	TP_PROTO(struct pci_dev *pdev, const struct mmu_notifier_range *range,
		 unsigned long seq),
	TP_ARGS(pdev, range, seq),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(unsigned long, start)
		__field(unsigned long, end)
		__field(unsigned long, seq)
		__field(unsigned int, event)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->start = range->start;
		__entry->end = range->end;
		__entry->seq = seq;
		__entry->event = range->event;
	),
	TP_printk("dev=%s event=%s start=0x%lx end=0x%lx seq=%lu",
		  __entry->dev, hmm_gpu_show_mmu_event(__entry->event),
		  __entry->start, __entry->end, __entry->seq)
);

TRACE_EVENT(hmm_gpu_migrate_begin,
	TP_PROTO(struct pci_dev *pdev, bool to_vram, unsigned long start, unsigned long end,
		 unsigned long npages),
	TP_ARGS(pdev, to_vram, start, end, npages),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(unsigned long, start)
		__field(unsigned long, end)
		__field(unsigned long, npages)
		__field(bool, to_vram)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->start = start;
		__entry->end = end;
		__entry->npages = npages;
		__entry->to_vram = to_vram;
	),
	TP_printk("dev=%s dir=%s start=0x%lx end=0x%lx npages=%lu",
		  __entry->dev, __entry->to_vram ? "to_vram" : "to_ram",
		  __entry->start, __entry->end, __entry->npages)
);

TRACE_EVENT(hmm_gpu_migrate_end,
	TP_PROTO(struct pci_dev *pdev, bool to_vram, unsigned long start, unsigned long end,
		 unsigned long npages, unsigned long cpages, int ret),
	TP_ARGS(pdev, to_vram, start, end, npages, cpages, ret),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(unsigned long, start)
		__field(unsigned long, end)
		__field(unsigned long, npages)
		__field(unsigned long, cpages)
		__field(int, ret)
		__field(bool, to_vram)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->start = start;
		__entry->end = end;
		__entry->npages = npages;
		__entry->cpages = cpages;
		__entry->ret = ret;
		__entry->to_vram = to_vram;
	),
	TP_printk("dev=%s dir=%s start=0x%lx end=0x%lx npages=%lu cpages=%lu ret=%d",
		  __entry->dev, __entry->to_vram ? "to_vram" : "to_ram",
		  __entry->start, __entry->end, __entry->npages, __entry->cpages,
		  __entry->ret)
);

TRACE_EVENT(hmm_gpu_evict,
	TP_PROTO(struct pci_dev *pdev, u64 vram_off, unsigned long npages),
	TP_ARGS(pdev, vram_off, npages),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(u64, vram_off)
		__field(unsigned long, npages)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->vram_off = vram_off;
		__entry->npages = npages;
	),
	TP_printk("dev=%s vram_off=0x%llx npages=%lu",
		  __entry->dev, __entry->vram_off, __entry->npages)
);

TRACE_EVENT(hmm_gpu_exclusive,
	TP_PROTO(struct pci_dev *pdev, unsigned long start, unsigned long end, int ret),
	TP_ARGS(pdev, start, end, ret),
	TP_STRUCT__entry(
		__array(char, dev, HMM_GPU_TRACE_DEV_LEN)
		__field(unsigned long, start)
		__field(unsigned long, end)
		__field(int, ret)
	),
	TP_fast_assign(
		strscpy(__entry->dev, pci_name(pdev), sizeof(__entry->dev));
		__entry->start = start;
		__entry->end = end;
		__entry->ret = ret;
	),
	TP_printk("dev=%s start=0x%lx end=0x%lx ret=%d",
		  __entry->dev, __entry->start, __entry->end, __entry->ret)
);

#endif /* HMM_GPU_TRACE_H */

/* Out of tree: define_trace.h finds this file through -I$(src) (Kbuild). */
#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE hmm_gpu_trace
#include <trace/define_trace.h>

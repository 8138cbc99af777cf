/* SPDX-License-Identifier: GPL-2.0-or-later OR MIT */
/*
 * hmm-gpu: register, command and record layout.
 *
 * This header is the single source of truth for the device ABI. It is
 * compiled into the QEMU device model (qemu-devices/hw/misc/hmm-gpu*.c; its
 * shared part also into hw/misc/hmm-common/), the guest driver
 * (guest-images/driver/) and checked against the Python trace decoder
 * (harness/dmatrace.py, tests/unit/test_abi.py). docs/device-abi.md
 * explains it in prose.
 *
 * All multi-byte fields are little-endian. BAR0 registers are 32 bits wide;
 * 64-bit quantities are split into _LO/_HI pairs (write LO first, HI last).
 *
 * Two parts with their own include guards: the hmm-gpu ABI proper, then the
 * layouts every hmmlab device shares (device MMU: context descriptor, page
 * table entries, fault records; the DMA trace stream). QEMU's hmm-common
 * library defines HMM_ABI_SHARED_ONLY to get only the second part. Both stay
 * in this one file: the driver build, the decoder check and the device tests
 * read it on its own (the guards are named HMMLAB_* so that the tests'
 * parser of HMM_GPU_* defines does not take them for constants).
 */
#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif

#if !defined(HMMLAB_GPU_REGS_H) && !defined(HMM_ABI_SHARED_ONLY)
#define HMMLAB_GPU_REGS_H

/* PCI identity (0x1234 is the vendor ID QEMU's own example devices use) */
#define HMM_GPU_PCI_VENDOR_ID		0x1234
#define HMM_GPU_PCI_DEVICE_ID		0x4d47
#define HMM_GPU_PCI_REVISION		0x01

#define HMM_GPU_BAR_MMIO		0	/* registers */
#define HMM_GPU_BAR_MSIX		1	/* MSI-X table and PBA */
#define HMM_GPU_MMIO_SIZE		0x1000

#define HMM_GPU_ID_MAGIC		0x484d4d47	/* "HMMG" */
#define HMM_GPU_VERSION_MAJOR		1
/* 1.1: MMU, faults, TLB; 1.2: VRAM; 1.3: F_IRQ_LATE; 1.4: CLOCK_SYNC */
#define HMM_GPU_VERSION_MINOR		4

/* ---- BAR0 registers ---------------------------------------------------- */
#define HMM_GPU_REG_ID			0x000	/* RO: HMM_GPU_ID_MAGIC */
#define HMM_GPU_REG_VERSION		0x004	/* RO: major << 16 | minor */
#define HMM_GPU_REG_CAPS		0x008	/* RO: HMM_GPU_CAP_* */
#define HMM_GPU_REG_RESET		0x00c	/* WO: write HMM_GPU_RESET_MAGIC */
#define HMM_GPU_REG_STATUS		0x010	/* RO: HMM_GPU_STATUS_* */
#define HMM_GPU_REG_ERROR		0x014	/* RO: last HMM_GPU_ERR_* */
#define HMM_GPU_REG_ERROR_ADDR_LO	0x018	/* RO: address tied to ERROR */
#define HMM_GPU_REG_ERROR_ADDR_HI	0x01c
#define HMM_GPU_REG_INTR_STATUS		0x020	/* RW1C: HMM_GPU_INTR_* */
#define HMM_GPU_REG_INTR_MASK		0x024	/* RW: 1 = cause enabled */
#define HMM_GPU_REG_VEC_CPL		0x028	/* RW: MSI-X vector, completions */
#define HMM_GPU_REG_VEC_ERR		0x02c	/* RW: MSI-X vector, errors */
#define HMM_GPU_REG_MAX_XFER		0x030	/* RO: max bytes per command */
#define HMM_GPU_REG_NUM_VECTORS		0x034	/* RO: MSI-X vectors */
#define HMM_GPU_REG_SCRATCH		0x038	/* RW: no side effects */

/* Command queue: ring of struct hmm_gpu_cmd in guest memory */
#define HMM_GPU_REG_CMDQ_BASE_LO	0x040	/* RW while disabled, 64B aligned */
#define HMM_GPU_REG_CMDQ_BASE_HI	0x044
#define HMM_GPU_REG_CMDQ_SIZE		0x048	/* RW while disabled: entries, pow2 */
#define HMM_GPU_REG_CMDQ_HEAD		0x04c	/* RO: next entry the device reads */
#define HMM_GPU_REG_CMDQ_TAIL		0x050	/* doorbell: next entry driver fills */
#define HMM_GPU_REG_CMDQ_CTRL		0x054	/* RW: HMM_GPU_QCTRL_ENABLE */

/* Completion queue: ring of struct hmm_gpu_cpl in guest memory */
#define HMM_GPU_REG_CPLQ_BASE_LO	0x060
#define HMM_GPU_REG_CPLQ_BASE_HI	0x064
#define HMM_GPU_REG_CPLQ_SIZE		0x068	/* entries, pow2 */
#define HMM_GPU_REG_CPLQ_HEAD		0x06c	/* RW: driver consumed up to here */
#define HMM_GPU_REG_CPLQ_TAIL		0x070	/* RO: device produced up to here */
#define HMM_GPU_REG_CPLQ_CTRL		0x074	/* RW: HMM_GPU_QCTRL_ENABLE */

/* Device MMU (1.1): a table of contexts, each with its own page table */
#define HMM_GPU_REG_CTX_BASE_LO		0x080	/* RW while MMU disabled, 64B aligned */
#define HMM_GPU_REG_CTX_BASE_HI		0x084
#define HMM_GPU_REG_CTX_COUNT		0x088	/* RW while MMU disabled: 1..MAX_CTX */
#define HMM_GPU_REG_MMU_CTRL		0x08c	/* RW: HMM_GPU_MMU_ENABLE */
#define HMM_GPU_REG_TLB_ENTRIES		0x090	/* RO: device TLB capacity */

/* Fault queue: ring of struct hmm_gpu_fault_rec the device writes */
#define HMM_GPU_REG_FAULTQ_BASE_LO	0x0a0	/* RW while disabled, 64B aligned */
#define HMM_GPU_REG_FAULTQ_BASE_HI	0x0a4
#define HMM_GPU_REG_FAULTQ_SIZE		0x0a8	/* RW while disabled: entries, pow2 */
#define HMM_GPU_REG_FAULTQ_HEAD		0x0ac	/* RW: driver consumed up to here */
#define HMM_GPU_REG_FAULTQ_TAIL		0x0b0	/* RO: device produced up to here */
#define HMM_GPU_REG_FAULTQ_CTRL		0x0b4	/* RW: HMM_GPU_QCTRL_ENABLE */
#define HMM_GPU_REG_FAULT_REPLAY	0x0b8	/* WO: any value: stalled jobs retry */
#define HMM_GPU_REG_FAULT_CANCEL	0x0bc	/* WO: a fault token: fail that job */
#define HMM_GPU_REG_VEC_FAULT		0x0c0	/* RW: MSI-X vector, faults */
#define HMM_GPU_REG_STALLED		0x0c4	/* RO: jobs waiting for REPLAY/CANCEL */

/* Device memory (1.2): VRAM the CPU cannot reach; only the device moves it */
#define HMM_GPU_REG_VRAM_SIZE_LO	0x0d0	/* RO: bytes (property vram-size) */
#define HMM_GPU_REG_VRAM_SIZE_HI	0x0d4

/*
 * Clock sync (1.4): the driver writes its trace clock (ns) here, LO then
 * HI. LO only latches; the HI write completes the value, emits one
 * EV_CLOCK_SYNC trace record and clears the latch (HI alone: low bits 0).
 */
#define HMM_GPU_REG_CLOCK_SYNC_LO	0x0d8	/* WO: low 32 bits, latched */
#define HMM_GPU_REG_CLOCK_SYNC_HI	0x0dc	/* WO: high 32 bits, emits */

#define HMM_GPU_CAP_DMA_ENGINE		(1u << 0)	/* COPY/FILL on bus addrs */
#define HMM_GPU_CAP_MMU			(1u << 1)	/* VA jobs, faults, TLB */
#define HMM_GPU_CAP_VRAM		(1u << 2)	/* VRAM, MIGRATE, PTE_VRAM */
#define HMM_GPU_CAP_CLOCK_SYNC		(1u << 3)	/* CLOCK_SYNC_LO/HI */

#define HMM_GPU_RESET_MAGIC		0x52535421	/* "RST!" */

#define HMM_GPU_STATUS_READY		(1u << 0)
#define HMM_GPU_STATUS_BUSY		(1u << 1)	/* commands pending */
#define HMM_GPU_STATUS_FATAL		(1u << 2)	/* halted until reset */

#define HMM_GPU_INTR_CPL		(1u << 0)	/* completion posted */
#define HMM_GPU_INTR_ERROR		(1u << 1)	/* ERROR register set */
#define HMM_GPU_INTR_FAULT		(1u << 2)	/* fault record posted */

#define HMM_GPU_QCTRL_ENABLE		(1u << 0)
#define HMM_GPU_MMU_ENABLE		(1u << 0)

#define HMM_GPU_QUEUE_MIN_ENTRIES	2
#define HMM_GPU_QUEUE_MAX_ENTRIES	4096
#define HMM_GPU_MAX_XFER		(64u << 20)
#define HMM_GPU_NUM_VECTORS		3
#define HMM_GPU_VEC_CPL_DEFAULT		0
#define HMM_GPU_VEC_ERR_DEFAULT		1
#define HMM_GPU_VEC_FAULT_DEFAULT	2
#define HMM_GPU_MAX_CTX			4096
#define HMM_GPU_TLB_SIZE		256

/*
 * Error codes: in REG_ERROR and in hmm_gpu_cpl.status. Per-command errors
 * complete that command with the code and raise INTR_ERROR; the queue keeps
 * running. Queue-level errors (the device cannot trust its rings) also set
 * STATUS_FATAL and stop the engine until RESET.
 */
enum hmm_gpu_err {
	HMM_GPU_ERR_NONE		= 0,
	HMM_GPU_ERR_BAD_OPCODE		= 1,	/* per command */
	HMM_GPU_ERR_BAD_LENGTH		= 2,	/* per command: 0 or > MAX_XFER */
	HMM_GPU_ERR_BAD_FLAGS		= 3,	/* per command: reserved bits set */
	HMM_GPU_ERR_DMA_READ		= 4,	/* per command: data read failed */
	HMM_GPU_ERR_DMA_WRITE		= 5,	/* per command: data write failed */
	HMM_GPU_ERR_OVERLAP		= 6,	/* per command: COPY src/dst overlap */
	HMM_GPU_ERR_FAULT		= 7,	/* per command: fault cancelled */
	HMM_GPU_ERR_BAD_CTX		= 8,	/* per command: ctx invalid/MMU off */
	HMM_GPU_ERR_BAD_PTE		= 9,	/* per command: malformed entry */
	HMM_GPU_ERR_PTW			= 10,	/* per command: walk DMA failed */
	HMM_GPU_ERR_ALIGN		= 11,	/* per command: atomic not 8B aligned */
	HMM_GPU_ERR_BAD_VRAM		= 12,	/* per command: VRAM offset bad */
	HMM_GPU_ERR_CMDQ_FETCH		= 16,	/* fatal: command fetch failed */
	HMM_GPU_ERR_CPLQ_WRITE		= 17,	/* fatal: completion write failed */
	HMM_GPU_ERR_QUEUE_CONFIG	= 18,	/* fatal: bad base/size/enable */
	HMM_GPU_ERR_DOORBELL		= 19,	/* fatal: TAIL/HEAD >= SIZE */
	HMM_GPU_ERR_BAD_VECTOR		= 20,	/* VEC_* >= NUM_VECTORS: ignored */
	HMM_GPU_ERR_BAD_REGISTER	= 21,	/* bad offset/size/RO write */
	HMM_GPU_ERR_FAULTQ_WRITE	= 22,	/* fatal: fault record write failed */
	HMM_GPU_ERR_BAD_TOKEN		= 23,	/* FAULT_CANCEL of no stalled job */
};

/* ---- Command ring entry (64 bytes) ------------------------------------ */
enum hmm_gpu_opcode {
	HMM_GPU_OP_NOP			= 0,
	HMM_GPU_OP_COPY			= 1,	/* src bus addr -> dst bus addr */
	HMM_GPU_OP_FILL			= 2,	/* 64-bit pattern -> dst */
	/* 1.1, on virtual addresses of context `ctx` (CAP_MMU) */
	HMM_GPU_OP_READ_VA		= 3,	/* VA src -> bus addr dst */
	HMM_GPU_OP_WRITE_VA		= 4,	/* bus addr src -> VA dst */
	HMM_GPU_OP_FILL_VA		= 5,	/* pattern -> VA dst */
	HMM_GPU_OP_COPY_VA		= 6,	/* VA src -> VA dst */
	HMM_GPU_OP_ATOMIC_ADD		= 7,	/* *dst += pattern; old -> src */
	HMM_GPU_OP_ATOMIC_CMPXCHG	= 8,	/* *dst == arg2 ? pattern; old -> src */
	HMM_GPU_OP_TLB_INVALIDATE	= 9,	/* ctx, VA dst, len (~0: all) */
	/* 1.2 copy engine (CAP_VRAM): src = bus address of a copy list */
	HMM_GPU_OP_MIGRATE		= 10,	/* len/4K pages; pattern = direction */
};

/*
 * MIGRATE: the copy engine moves len / 4096 pages (at most
 * HMM_GPU_MIGRATE_MAX_PAGES), one struct hmm_gpu_copy_ent per page, read
 * from the list at bus address `src`. `pattern` gives the direction. The
 * completion is the fence: every page has been copied when it is posted.
 * VRAM offsets must be 4 KiB aligned and inside VRAM (else ERR_BAD_VRAM).
 *
 * 1.3: with `arg2` != 0 the command first invalidates the device TLB for
 * [dst, dst + arg2) of context `ctx`, when it is fetched, exactly as a
 * TLB_INVALIDATE queued just before it would (`ctx` beyond MAX_CTX:
 * ERR_BAD_CTX): a migration's fence and copy in one command.
 */
#define HMM_GPU_MIGRATE_TO_VRAM		0	/* ent.src bus addr -> ent.dst VRAM */
#define HMM_GPU_MIGRATE_FROM_VRAM	1	/* ent.src VRAM -> ent.dst bus addr */
#define HMM_GPU_MIGRATE_MAX_PAGES	512
#define HMM_GPU_PAGE_SIZE		4096

struct hmm_gpu_copy_ent {
	uint64_t	src;
	uint64_t	dst;
};

#define HMM_GPU_CMD_F_IRQ		(1u << 0)	/* MSI-X on completion */
/*
 * 1.3: MSI-X on completion only if the command completes after the MMIO
 * write that made it run (a CMDQ_TAIL doorbell or FAULT_REPLAY) returned.
 * The device runs short commands inside that write; a driver that reaps the
 * completion ring right after its own doorbell and replay writes sets this
 * instead of F_IRQ and takes no interrupt for what completed meanwhile.
 */
#define HMM_GPU_CMD_F_IRQ_LATE		(1u << 1)
#define HMM_GPU_CMD_F_MASK		(HMM_GPU_CMD_F_IRQ | HMM_GPU_CMD_F_IRQ_LATE)

struct hmm_gpu_cmd {
	uint8_t		opcode;		/* enum hmm_gpu_opcode */
	uint8_t		flags;		/* HMM_GPU_CMD_F_* */
	uint16_t	rsvd0;
	uint32_t	ctx;		/* context id, echoed in trace */
	uint64_t	cmd_id;		/* opaque, echoed in completion/trace */
	uint64_t	src;		/* COPY: source bus address */
	uint64_t	dst;		/* destination bus address */
	uint64_t	len;		/* bytes, 1..MAX_XFER */
	uint64_t	pattern;	/* FILL: repeated little-endian; atomics */
	uint64_t	arg2;		/* CMPXCHG: compare value; else 0 */
	uint64_t	rsvd1;
};

/* ---- Completion ring entry (32 bytes) --------------------------------- */
struct hmm_gpu_cpl {
	uint64_t	cmd_id;
	uint32_t	status;		/* enum hmm_gpu_err */
	uint16_t	opcode;
	uint16_t	phase;		/* flips each time the ring wraps; starts 1 */
	uint64_t	bytes;		/* bytes transferred */
	uint64_t	timestamp_ns;	/* QEMU virtual clock */
};

/* The layouts are ABI: both sides must agree on them byte for byte. */
_Static_assert(sizeof(struct hmm_gpu_cmd) == 64, "hmm_gpu_cmd size");
_Static_assert(sizeof(struct hmm_gpu_cpl) == 32, "hmm_gpu_cpl size");
_Static_assert(sizeof(struct hmm_gpu_copy_ent) == 16, "copy ent size");

#endif /* HMMLAB_GPU_REGS_H */

/*
 * ==== Layouts shared by every hmmlab device ================================
 * (The HMM_GPU_ names are kept: the guest driver and the tools know them.)
 */
#ifndef HMMLAB_ABI_SHARED_H
#define HMMLAB_ABI_SHARED_H

/*
 * ---- Device MMU (1.1) ---------------------------------------------------
 *
 * CTX_BASE points at CTX_COUNT context descriptors. A job's `ctx` selects
 * one; its page table is a 4-level radix tree like x86-64's: 512 64-bit
 * entries per 4 KiB table, VA bits 47..39 index level 3, ..., 20..12 level 0.
 * A level-1 entry with PTE_LEAF maps a 2 MiB page (address 2 MiB aligned);
 * level-0 entries always map 4 KiB pages. Permission bits count only in
 * leaves. A missing entry or missing permission is a fault: the job stalls,
 * a struct hmm_gpu_fault_rec is posted and VEC_FAULT fires; other jobs keep
 * running. FAULT_REPLAY makes every stalled job walk again; FAULT_CANCEL
 * with a record's token completes that job with ERR_FAULT. If the fault
 * queue is disabled, a fault fails the job at once (ERR_FAULT).
 *
 * Translations may be cached in a device TLB until a TLB_INVALIDATE
 * command covering them completes. Its completion is the fence: no DMA
 * issued after it uses a translation of the range cached before it. A
 * TLB_INVALIDATE is never held up by stalled jobs.
 */
struct hmm_gpu_ctx_desc {
	uint64_t	pt_root;	/* bus address of the level-3 table */
	uint32_t	flags;		/* HMM_GPU_CTX_VALID */
	uint32_t	rsvd;
};

#define HMM_GPU_CTX_VALID		(1u << 0)

#define HMM_GPU_PT_LEVELS		4
#define HMM_GPU_PT_ENTRIES		512
#define HMM_GPU_PT_SHIFT(level)		(12 + 9 * (level))
#define HMM_GPU_VA_BITS			48

#define HMM_GPU_PTE_VALID		(1ull << 0)
#define HMM_GPU_PTE_READ		(1ull << 1)
#define HMM_GPU_PTE_WRITE		(1ull << 2)
#define HMM_GPU_PTE_ATOMIC		(1ull << 3)
#define HMM_GPU_PTE_LEAF		(1ull << 4)	/* level 1: 2 MiB page */
#define HMM_GPU_PTE_VRAM		(1ull << 5)	/* 1.2: address is a VRAM offset */
#define HMM_GPU_PTE_ADDR_MASK		0x000ffffffffff000ull

enum hmm_gpu_access {
	HMM_GPU_ACCESS_READ		= 1,
	HMM_GPU_ACCESS_WRITE		= 2,
	HMM_GPU_ACCESS_ATOMIC		= 3,
};

enum hmm_gpu_fault_reason {
	HMM_GPU_FAULT_NOT_PRESENT	= 1,	/* no valid leaf */
	HMM_GPU_FAULT_PERMISSION	= 2,	/* leaf lacks the access bit */
};

/* Fault queue entry (64 bytes). */
struct hmm_gpu_fault_rec {
	uint64_t	va;		/* faulting address, 4 KiB aligned */
	uint64_t	cmd_id;		/* the stalled job */
	uint64_t	timestamp_ns;	/* QEMU virtual clock */
	uint32_t	ctx;
	uint16_t	token;		/* for FAULT_CANCEL */
	uint8_t		access;		/* enum hmm_gpu_access */
	uint8_t		reason;		/* enum hmm_gpu_fault_reason */
	uint8_t		engine;		/* enum hmm_gpu_trace_engine */
	uint8_t		rsvd0[7];
	uint64_t	rsvd1[3];
};

/* ---- Host-side DMA trace stream (chardev "dmatrace") ------------------ */
#define HMM_GPU_TRACE_MAGIC		0x31435254474d4d48ull	/* "HMMGTRC1" */
#define HMM_GPU_TRACE_VERSION		2

/* Written once at the start of the stream. */
struct hmm_gpu_trace_hdr {
	uint64_t	magic;
	uint32_t	version;
	uint32_t	rec_size;	/* sizeof(struct hmm_gpu_trace_rec) */
	uint32_t	devfn;		/* PCI devfn of the emitting device */
	uint32_t	rsvd;
};

enum hmm_gpu_trace_engine {
	HMM_GPU_ENGINE_QUEUE		= 0,	/* command fetch, completion */
	HMM_GPU_ENGINE_COPY		= 1,	/* COPY/FILL data movement */
	HMM_GPU_ENGINE_MMU		= 2,	/* page-table walks, fault records */
	HMM_GPU_ENGINE_MIGRATE		= 3,	/* 1.2 copy engine (MIGRATE) */
};

enum hmm_gpu_trace_kind {
	HMM_GPU_TRACE_CMD_FETCH		= 0,
	HMM_GPU_TRACE_CPL_WRITE		= 1,
	HMM_GPU_TRACE_DATA		= 2,
	HMM_GPU_TRACE_CTX_FETCH		= 3,	/* context descriptor read */
	HMM_GPU_TRACE_PTW		= 4,	/* page-table entry read */
	HMM_GPU_TRACE_FAULT_WRITE	= 5,	/* fault record write */
	HMM_GPU_TRACE_COPY_LIST		= 6,	/* MIGRATE copy list read */
	/*
	 * 1.2: a job touched VRAM (device-internal, not DMA): addr is the VRAM
	 * offset, dir says read or write. MIGRATE's system-memory side is a
	 * DATA record with engine MIGRATE and the VRAM offset in aux.
	 */
	HMM_GPU_TRACE_VRAM		= 7,
	/* events, not DMA (len 0, dir NONE) */
	HMM_GPU_TRACE_EV_TLB_INV	= 16,	/* va, aux = len; at completion */
	HMM_GPU_TRACE_EV_REPLAY		= 17,
	HMM_GPU_TRACE_EV_CANCEL		= 18,	/* aux = token */
	/*
	 * 1.4, engine QUEUE: a CLOCK_SYNC_HI write. va = the guest clock value
	 * written (ns), aux = the device's sequence number (1, 2, ...).
	 */
	HMM_GPU_TRACE_EV_CLOCK_SYNC	= 19,
};

#define HMM_GPU_DIR_READ		0	/* device reads memory */
#define HMM_GPU_DIR_WRITE		1	/* device writes memory */
#define HMM_GPU_DIR_NONE		2	/* an event, no DMA */

/*
 * One record per pci_dma_read/write the device issues, and per event
 * (64 bytes). Version 2 added va, aux and level. The timestamp is the QEMU
 * virtual clock when the run of device code issuing the record (one
 * register write, or one engine step in the bottom half) began: the
 * records of a run share it.
 */
struct hmm_gpu_trace_rec {
	uint64_t	timestamp_ns;	/* QEMU virtual clock */
	uint64_t	addr;		/* bus address (IOVA under a vIOMMU) */
	uint64_t	len;
	uint64_t	cmd_id;
	uint64_t	va;		/* DATA of VA jobs, PTW, events; else 0 */
	uint64_t	aux;		/* PTW: entry read; events: see kind */
	uint32_t	ctx;
	uint8_t		engine;		/* enum hmm_gpu_trace_engine */
	uint8_t		kind;		/* enum hmm_gpu_trace_kind */
	uint8_t		dir;		/* HMM_GPU_DIR_* */
	uint8_t		result;		/* MemTxResult, 0 = OK */
	uint8_t		level;		/* PTW: table level 3..0 */
	uint8_t		rsvd[7];
};

_Static_assert(sizeof(struct hmm_gpu_trace_hdr) == 24, "trace hdr size");
_Static_assert(sizeof(struct hmm_gpu_trace_rec) == 64, "trace rec size");
_Static_assert(sizeof(struct hmm_gpu_ctx_desc) == 16, "ctx desc size");
_Static_assert(sizeof(struct hmm_gpu_fault_rec) == 64, "fault rec size");

#endif /* HMMLAB_ABI_SHARED_H */

/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * hmm_gpu: userspace interface of the /dev/hmm_gpuN character devices.
 *
 * One character device per hmm-gpu PCI function. All structures are fixed
 * size, naturally aligned and identical for 32- and 64-bit userspace; user
 * pointers travel as __u64. Reserved fields must be zero on input.
 */
#ifndef _UAPI_HMM_GPU_H
#define _UAPI_HMM_GPU_H

#include <linux/const.h>
#include <linux/ioctl.h>
#include <linux/types.h>

#define HMM_GPU_UAPI_VERSION		3	/* 2: shared virtual memory; 3: VRAM */

/* Per-ioctl transfer limit; the driver splits it into device commands. */
#define HMM_GPU_XFER_MAX_LEN		(64ULL << 20)

/*
 * HMM_GPU_IOC_INFO: describe the device behind this file.
 */
struct hmm_gpu_info {
	__u32	uapi_version;	/* out: HMM_GPU_UAPI_VERSION */
	__u32	hw_version;	/* out: device VERSION register, major << 16 | minor */
	__u32	caps;		/* out: device CAPS register (HMM_GPU_CAP_*) */
	__u32	max_xfer;	/* out: bytes per device command */
	__u64	max_len;	/* out: bytes per HMM_GPU_IOC_XFER */
	__u32	queue_entries;	/* out: command/completion ring entries */
	__u32	ctx;		/* out: context id of this open file (in the DMA trace) */
	__u32	domain;		/* out: PCI domain */
	__u8	bus;		/* out: PCI bus */
	__u8	dev;		/* out: PCI device (slot) */
	__u8	fn;		/* out: PCI function */
	__u8	rsvd0;
	char	bdf[32];	/* out: "dddd:bb:dd.f", NUL terminated */
	__u32	features;	/* out: HMM_GPU_FEATURE_*: what this kernel lets the driver do */
	__u32	rsvd1;
	__u64	rsvd[3];
};

/*
 * Features that depend on the kernel, not the device: both need
 * CONFIG_DEVICE_PRIVATE, which distribution kernels (Debian's 6.1) leave off.
 */
enum hmm_gpu_feature {
	HMM_GPU_FEATURE_VRAM		= 0x1,	/* SVM_MIGRATE to device memory */
	HMM_GPU_FEATURE_EXCLUSIVE	= 0x2,	/* device atomics on system memory */
};

enum hmm_gpu_xfer_op {
	HMM_GPU_XFER_COPY	= 1,	/* len bytes from src to dst (must not overlap) */
	HMM_GPU_XFER_FILL	= 2,	/* dst[i] = byte (i % 8) of pattern, little-endian */
};

enum hmm_gpu_map_role {
	HMM_GPU_MAP_SRC		= 1,	/* device reads this range */
	HMM_GPU_MAP_DST		= 2,	/* device writes this range */
};

/*
 * One DMA segment the driver mapped for a transfer: the device accessed bus
 * addresses [dma_addr, dma_addr + len), which back the user virtual range
 * [uaddr, uaddr + len). Together the entries of one role cover the user
 * buffer of that role exactly, in ascending uaddr order.
 */
struct hmm_gpu_map {
	__u64	uaddr;
	__u64	dma_addr;
	__u64	len;
	__u32	role;		/* enum hmm_gpu_map_role */
	__u32	rsvd;
};

/*
 * HMM_GPU_IOC_XFER: have the device move data between user buffers.
 *
 * The buffers are pinned and DMA-mapped for the duration of the call; the
 * transfer is split into one device command per contiguous (source segment,
 * destination segment) piece of at most max_xfer bytes, all submitted before
 * the call waits for them.
 *
 * Errors: EINVAL (bad op, flags, reserved fields, len 0 or > max_len, COPY
 * between overlapping ranges, device BAD_LENGTH), EFAULT (buffers not mapped,
 * dst not writable, maps not writable), EIO (a device command failed: see
 * status; or the device hit a fatal error and was reset), ETIMEDOUT (the
 * device stopped completing commands and was reset), ENOMEM, ENODEV (device
 * removed). The struct is copied back on device errors too, so status,
 * ncmds and the maps are available then.
 */
struct hmm_gpu_xfer {
	__u32	op;		/* in: enum hmm_gpu_xfer_op */
	__u32	flags;		/* in: must be 0 */
	__u64	src;		/* in: COPY source user address */
	__u64	dst;		/* in: destination user address */
	__u64	len;		/* in: bytes, 1..HMM_GPU_XFER_MAX_LEN */
	__u64	pattern;	/* in: FILL pattern */
	__u64	maps;		/* in: user pointer to struct hmm_gpu_map[maps_cap] or 0 */
	__u32	maps_cap;	/* in: entries available at maps */
	__u32	maps_out;	/* out: entries needed (may exceed maps_cap) */
	__u32	ncmds;		/* out: device commands issued */
	__u32	status;		/* out: device error code of the first failing command */
	__u64	bytes;		/* out: bytes the device reported as transferred */
	__u32	ctx;		/* out: context id stamped on the commands */
	__u32	rsvd0;
	__u64	rsvd[2];
};

/*
 * Shared virtual memory (uAPI 2). HMM_GPU_IOC_SVM_BIND binds the open file
 * to the calling process's address space: the driver creates a device
 * context whose page table it fills on device page faults with
 * hmm_range_fault(), kept coherent with the CPU by an mmu_interval_notifier.
 * Jobs then run on the process's virtual addresses.
 */
struct hmm_gpu_svm_bind {
	__u32	ctx;		/* out: device context id (in the DMA trace) */
	__u32	flags;		/* in: must be 0 */
	__u64	rsvd[2];
};

enum hmm_gpu_svm_op {
	HMM_GPU_SVM_READ	= 1,	/* device reads [va, va+len) into ptr */
	HMM_GPU_SVM_WRITE	= 2,	/* device writes ptr's bytes to [va, va+len) */
	HMM_GPU_SVM_FILL	= 3,	/* [va, va+len) = value, repeated, little-endian */
	HMM_GPU_SVM_COPY	= 4,	/* [va2, va2+len) -> [va, va+len), no overlap */
	HMM_GPU_SVM_ATOMIC_ADD	= 5,	/* *(u64 *)va += value; result = old */
	HMM_GPU_SVM_CMPXCHG	= 6,	/* if *(u64 *)va == compare: = value; result = old */
};

/*
 * One device job on virtual addresses. ptr is an ordinary user buffer for
 * READ/WRITE (the driver bounces it through DMA memory, as test_hmm does);
 * va/va2 are reached only by the device, through its MMU. Errors: EFAULT
 * (address not mapped or a fault the kernel could not resolve), EPERM (write
 * or atomic to a read-only mapping), EINVAL (bad op/flags/len/alignment),
 * EIO (device error; status says which), ETIMEDOUT, ENOTCONN (not bound),
 * EOPNOTSUPP (an atomic on memory the device cannot hold exclusively: on
 * 6.12 anything but private anonymous memory, e.g. a shared file mapping).
 */
struct hmm_gpu_svm_job {
	__u32	op;		/* in: enum hmm_gpu_svm_op */
	__u32	flags;		/* in: must be 0 */
	__u64	va;		/* in: target virtual address */
	__u64	va2;		/* in: COPY source virtual address */
	__u64	ptr;		/* in: READ/WRITE user buffer */
	__u64	len;		/* in: bytes (atomics: 8) */
	__u64	value;		/* in: FILL pattern, atomic operand, CMPXCHG new value */
	__u64	compare;	/* in: CMPXCHG expected value */
	__u64	result;		/* out: atomics: the old value */
	__u64	faults;		/* out: fault rounds the driver serviced for this job */
	__u64	pages;		/* out: pages the driver mapped for this job */
	__u32	status;		/* out: device completion status */
	__u32	rsvd0;
	__u64	rsvd[2];
};

/* Counters of this open file's context, since SVM_BIND. */
struct hmm_gpu_svm_stats {
	__u64	faults;		/* fault records received */
	__u64	fault_batches;	/* times the fault handler ran for this context */
	__u64	pages_mapped;	/* device PTEs written */
	__u64	invalidations;	/* notifier callbacks that hit the context */
	__u64	tlb_invalidates;	/* TLB_INVALIDATE commands completed */
	__u64	replays;	/* FAULT_REPLAY writes */
	__u64	cancels;	/* FAULT_CANCEL writes */
	__u64	mapped;		/* pages the device page table maps now (a 2 MiB leaf: 512) */
	__u64	pt_pages;	/* page-table pages allocated now, the root included */
	__u64	huge_mapped;	/* 2 MiB leaves written (THP, device-private THP) */
	__u64	rsvd[6];
};

/*
 * Device memory (uAPI 3). SVM_MIGRATE moves the pages of [va, va+len) of
 * the bound process into the device's VRAM (MEMORY_DEVICE_PRIVATE pages,
 * migrate_vma) or back to system memory. A CPU touch of a page in VRAM
 * migrates it back on its own (migrate_to_ram). When VRAM is full, the least
 * recently migrated chunk is evicted to system memory.
 */
enum hmm_gpu_migrate_dir {
	HMM_GPU_MIGRATE_TO_DEV	= 1,
	HMM_GPU_MIGRATE_TO_SYS	= 2,
};

struct hmm_gpu_svm_migrate {
	__u64	va;		/* in: page aligned */
	__u64	len;		/* in: bytes, page multiple */
	__u32	dir;		/* in: enum hmm_gpu_migrate_dir */
	__u32	flags;		/* in: must be 0 */
	__u64	pages;		/* out: pages that moved */
	__u64	rsvd[2];
};

/* Device-wide VRAM state and counters since the driver bound the device. */
struct hmm_gpu_vram_stats {
	__u64	vram_size;	/* bytes */
	__u64	vram_used;	/* bytes holding migrated pages */
	__u64	chunks;		/* device-private chunks registered */
	__u64	pages_to_dev;	/* pages migrated to VRAM */
	__u64	pages_to_sys;	/* pages migrated back (any reason) */
	__u64	cpu_faults;	/* migrate_to_ram calls */
	__u64	evictions;	/* chunks evicted under VRAM pressure */
	__u64	pages_evicted;	/* pages those evictions moved */
	__u64	thp_to_dev;	/* of pages_to_dev: 2 MiB folios, moved whole */
	__u64	thp_to_sys;	/* of pages_to_sys: 2 MiB folios, moved whole */
	__u64	flags;		/* HMM_GPU_VRAM_F_* */
	__u64	rsvd[5];
};

/*
 * A THP migrates as one 2 MiB device folio (one device-private PMD on the
 * CPU, one 2 MiB leaf on the device): kernels with MIGRATE_VMA_SELECT_COMPOUND.
 */
#define HMM_GPU_VRAM_F_THP	_BITULL(0)

#define HMM_GPU_IOC_MAGIC	'G'
#define HMM_GPU_IOC_INFO	_IOWR(HMM_GPU_IOC_MAGIC, 0x00, struct hmm_gpu_info)
#define HMM_GPU_IOC_XFER	_IOWR(HMM_GPU_IOC_MAGIC, 0x01, struct hmm_gpu_xfer)
#define HMM_GPU_IOC_SVM_BIND	_IOWR(HMM_GPU_IOC_MAGIC, 0x10, struct hmm_gpu_svm_bind)
#define HMM_GPU_IOC_SVM_JOB	_IOWR(HMM_GPU_IOC_MAGIC, 0x11, struct hmm_gpu_svm_job)
#define HMM_GPU_IOC_SVM_STATS	_IOR(HMM_GPU_IOC_MAGIC, 0x12, struct hmm_gpu_svm_stats)
#define HMM_GPU_IOC_SVM_MIGRATE	_IOWR(HMM_GPU_IOC_MAGIC, 0x13, struct hmm_gpu_svm_migrate)
#define HMM_GPU_IOC_VRAM_STATS	_IOR(HMM_GPU_IOC_MAGIC, 0x14, struct hmm_gpu_vram_stats)

#endif /* _UAPI_HMM_GPU_H */

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

#include <linux/ioctl.h>
#include <linux/types.h>

#define HMM_GPU_UAPI_VERSION		1

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
	__u64	rsvd[4];
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

#define HMM_GPU_IOC_MAGIC	'G'
#define HMM_GPU_IOC_INFO	_IOWR(HMM_GPU_IOC_MAGIC, 0x00, struct hmm_gpu_info)
#define HMM_GPU_IOC_XFER	_IOWR(HMM_GPU_IOC_MAGIC, 0x01, struct hmm_gpu_xfer)

#endif /* _UAPI_HMM_GPU_H */

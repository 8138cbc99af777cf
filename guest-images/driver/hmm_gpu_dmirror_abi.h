/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: the ioctl ABI of test_hmm's /dev/hmm_dmirrorN devices, which
 * hmm_gpu also offers so that the kernel's own HMM selftests
 * (tools/testing/selftests/mm/hmm-tests.c) run against the device.
 *
 * The layout and numbers are fixed by that selftest; they were written down
 * here from lib/test_hmm_uapi.h of Linux 6.12 (struct hmm_dmirror_cmd, the
 * 'H' ioctls 0x00..0x07 and the HMM_DMIRROR_PROT_* snapshot bytes) and 7.2
 * (FLAGS, 0x08).
 */
#ifndef HMM_GPU_DMIRROR_ABI_H
#define HMM_GPU_DMIRROR_ABI_H

#include <linux/bits.h>
#include <linux/ioctl.h>
#include <linux/types.h>

struct hmm_gpu_dmirror_cmd {
	__u64	addr;		/* in: start of the range, page aligned */
	__u64	ptr;		/* in: user buffer (data or snapshot bytes) */
	__u64	npages;		/* in: pages in the range */
	__u64	cpages;		/* out: pages handled */
	__u64	faults;		/* out: device fault rounds */
};

#define HMM_GPU_DMIRROR_READ		_IOWR('H', 0x00, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_WRITE		_IOWR('H', 0x01, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_MIGRATE_TO_DEV	_IOWR('H', 0x02, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_MIGRATE_TO_SYS	_IOWR('H', 0x03, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_SNAPSHOT	_IOWR('H', 0x04, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_EXCLUSIVE	_IOWR('H', 0x05, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_CHECK_EXCLUSIVE	_IOWR('H', 0x06, struct hmm_gpu_dmirror_cmd)
#define HMM_GPU_DMIRROR_RELEASE		_IOWR('H', 0x07, struct hmm_gpu_dmirror_cmd)
/* FLAGS: npages carries the flags. */
#define HMM_GPU_DMIRROR_FLAGS		_IOWR('H', 0x08, struct hmm_gpu_dmirror_cmd)

/* The next device THP allocation fails (the migration falls back to pages). */
#define HMM_GPU_DMIRROR_FLAG_FAIL_ALLOC		BIT_ULL(0)

/* SNAPSHOT: one byte per page. */
#define HMM_GPU_DMIRROR_PROT_ERROR		0xff
#define HMM_GPU_DMIRROR_PROT_NONE		0x00
#define HMM_GPU_DMIRROR_PROT_READ		0x01
#define HMM_GPU_DMIRROR_PROT_WRITE		0x02
#define HMM_GPU_DMIRROR_PROT_PMD		0x04
#define HMM_GPU_DMIRROR_PROT_PUD		0x08
#define HMM_GPU_DMIRROR_PROT_ZERO		0x10
#define HMM_GPU_DMIRROR_PROT_DEV_PRIVATE_LOCAL	0x20
#define HMM_GPU_DMIRROR_PROT_DEV_PRIVATE_REMOTE	0x30

#endif /* HMM_GPU_DMIRROR_ABI_H */

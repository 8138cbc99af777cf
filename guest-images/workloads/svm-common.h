/* SPDX-License-Identifier: GPL-2.0-only */
/* Shared helpers of the svm-* workloads: JSON lines, SVM jobs, clocks. */
#ifndef SVM_COMMON_H
#define SVM_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "hmm_gpu_uapi.h"

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One JSON object per line; the whole line is written with one call. */
static inline void jprintf(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, n) < 0)
		_exit(3);
}

/* Run one SVM job; returns 0 or -errno. */
static inline int svm_job(int fd, struct hmm_gpu_svm_job *j)
{
	return ioctl(fd, HMM_GPU_IOC_SVM_JOB, j) ? -errno : 0;
}

static inline int svm_simple(int fd, uint32_t op, void *va, void *va2, void *ptr, size_t len,
			     uint64_t value, struct hmm_gpu_svm_job *out)
{
	struct hmm_gpu_svm_job j;
	int rc;

	memset(&j, 0, sizeof(j));
	j.op = op;
	j.va = (uintptr_t)va;
	j.va2 = (uintptr_t)va2;
	j.ptr = (uintptr_t)ptr;
	j.len = len;
	j.value = value;
	rc = svm_job(fd, &j);
	if (out)
		*out = j;
	return rc;
}

static inline int svm_open_bind(const char *dev, uint32_t *ctx)
{
	struct hmm_gpu_svm_bind b;
	int fd = open(dev, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	memset(&b, 0, sizeof(b));
	if (ioctl(fd, HMM_GPU_IOC_SVM_BIND, &b)) {
		int e = errno;

		close(fd);
		return -e;
	}
	*ctx = b.ctx;
	return fd;
}

static inline void fill_u64(void *p, size_t len, uint64_t v)
{
	uint64_t *q = p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		q[i] = v;
}

/* Index of the first u64 != v, or -1. */
static inline long check_u64(const void *p, size_t len, uint64_t v)
{
	const uint64_t *q = p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		if (q[i] != v)
			return (long)i;
	return -1;
}

/* HMM_GPU_IOC_VRAM_STATS: 0 or -errno. */
static inline int svm_vram_stats(int fd, struct hmm_gpu_vram_stats *st)
{
	memset(st, 0, sizeof(*st));
	return ioctl(fd, HMM_GPU_IOC_VRAM_STATS, st) ? -errno : 0;
}

/* HMM_GPU_IOC_SVM_MIGRATE of [va, va + len): 0 or -errno; *pages moved. */
static inline int svm_migrate(int fd, void *va, size_t len, uint32_t dir, uint64_t *pages)
{
	struct hmm_gpu_svm_migrate m;

	memset(&m, 0, sizeof(m));
	m.va = (uintptr_t)va;
	m.len = len;
	m.dir = dir;
	if (ioctl(fd, HMM_GPU_IOC_SVM_MIGRATE, &m))
		return -errno;
	*pages = m.pages;
	return 0;
}

/*
 * One result line: {"test": TEST, "ok": OK, <fmt...>}; a failure counts in
 * *failures (the program's exit status).
 */
static inline void __attribute__((format(printf, 4, 5)))
svm_report(int *failures, const char *test, bool ok, const char *fmt, ...)
{
	char extra[1500] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(extra, sizeof(extra), fmt, ap);
		va_end(ap);
	}
	*failures += !ok;
	jprintf("{\"test\": \"%s\", \"ok\": %s%s%s}", test, ok ? "true" : "false",
		extra[0] ? ", " : "", extra);
}

#endif

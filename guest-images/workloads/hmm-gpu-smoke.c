// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm-gpu-smoke: exercise /dev/hmm_gpuN (HMM_GPU_IOC_INFO and XFER).
 *
 * Usage: hmm-gpu-smoke [-d /dev/hmm_gpu0] [-s SIZE[K|M]]
 *
 * Prints one JSON object per sub-test on stdout and exits 0 only if every
 * sub-test passed. Transfers report the DMA segments the driver mapped
 * ("maps") so a checker can match them against the device's DMA trace.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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

#define GUARD_BYTE 0x5a
#define FILL_PATTERN 0x8877665544332211ULL

static int dev_fd = -1;
static size_t page_size;
static int failures;

/* ---- a tiny JSON line writer ------------------------------------------- */

struct jline {
	char *buf;
	size_t len;
	FILE *f;
};

static void j_begin(struct jline *j, const char *test)
{
	j->buf = NULL;
	j->len = 0;
	j->f = open_memstream(&j->buf, &j->len);
	if (!j->f) {
		perror("open_memstream");
		exit(2);
	}
	fprintf(j->f, "{\"test\": \"%s\"", test);
}

static void j_key(struct jline *j, const char *key)
{
	fprintf(j->f, ", \"%s\": ", key);
}

static void j_str(struct jline *j, const char *key, const char *val)
{
	const unsigned char *p;

	j_key(j, key);
	fputc('"', j->f);
	for (p = (const unsigned char *)val; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(j->f, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(j->f, "\\u%04x", *p);
		else
			fputc(*p, j->f);
	}
	fputc('"', j->f);
}

static void j_u64(struct jline *j, const char *key, uint64_t val)
{
	j_key(j, key);
	fprintf(j->f, "%" PRIu64, val);
}

static void j_hex(struct jline *j, const char *key, uint64_t val)
{
	j_key(j, key);
	fprintf(j->f, "\"0x%" PRIx64 "\"", val);
}

static void j_bool(struct jline *j, const char *key, bool val)
{
	j_key(j, key);
	fputs(val ? "true" : "false", j->f);
}

static void j_maps(struct jline *j, const struct hmm_gpu_map *maps, uint32_t n)
{
	uint32_t i;

	j_key(j, "maps");
	fputc('[', j->f);
	for (i = 0; i < n; i++) {
		fprintf(j->f,
			"%s{\"role\": \"%s\", \"uaddr\": \"0x%llx\", \"dma\": \"0x%llx\", \"len\": %llu}",
			i ? ", " : "",
			maps[i].role == HMM_GPU_MAP_SRC ? "src" :
			maps[i].role == HMM_GPU_MAP_DST ? "dst" : "?",
			(unsigned long long)maps[i].uaddr,
			(unsigned long long)maps[i].dma_addr,
			(unsigned long long)maps[i].len);
	}
	fputc(']', j->f);
}

static void j_finish(struct jline *j)
{
	fputs("}\n", j->f);
	fclose(j->f);
	fwrite(j->buf, 1, j->len, stdout);
	fflush(stdout);
	free(j->buf);
}

static void j_ok(struct jline *j)
{
	j_bool(j, "ok", true);
	j_finish(j);
}

/* Finish a failed sub-test with "errno" (0 if none applies) and "error". */
__attribute__((format(printf, 3, 4)))
static void j_fail(struct jline *j, int err, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	j_bool(j, "ok", false);
	j_u64(j, "errno", err);
	j_str(j, "error", msg);
	failures++;
	j_finish(j);
}

/* ---- helpers ------------------------------------------------------------ */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void *map_anon(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static size_t round_up_page(size_t n)
{
	return (n + page_size - 1) & ~(page_size - 1);
}

static uint8_t src_byte(size_t i)
{
	return (uint8_t)(i * 7 + 13) ^ (uint8_t)(i >> 9);
}

static uint8_t fill_byte(size_t i)
{
	return (uint8_t)(FILL_PATTERN >> (8 * (i % 8)));
}

struct xfer_result {
	struct hmm_gpu_xfer x;
	struct hmm_gpu_map *maps;
	uint32_t maps_cap;
	uint64_t elapsed_ns;
	int ret;
	int err;
};

static void do_xfer(struct xfer_result *r, uint32_t op, const void *src, void *dst,
		    uint64_t len, uint64_t pattern)
{
	memset(&r->x, 0, sizeof(r->x));
	/* A segment per page at worst, for each side. */
	r->maps_cap = 2 * (len / page_size + 2);
	r->maps = calloc(r->maps_cap, sizeof(*r->maps));
	if (!r->maps) {
		perror("calloc");
		exit(2);
	}
	r->x.op = op;
	r->x.src = (uintptr_t)src;
	r->x.dst = (uintptr_t)dst;
	r->x.len = len;
	r->x.pattern = pattern;
	r->x.maps = (uintptr_t)r->maps;
	r->x.maps_cap = r->maps_cap;

	r->elapsed_ns = now_ns();
	r->ret = ioctl(dev_fd, HMM_GPU_IOC_XFER, &r->x);
	r->err = r->ret ? errno : 0;
	r->elapsed_ns = now_ns() - r->elapsed_ns;
}

static void j_xfer(struct jline *j, const struct xfer_result *r)
{
	uint32_t n = r->x.maps_out < r->maps_cap ? r->x.maps_out : r->maps_cap;

	j_u64(j, "len", r->x.len);
	j_u64(j, "ncmds", r->x.ncmds);
	j_u64(j, "bytes", r->x.bytes);
	j_u64(j, "status", r->x.status);
	j_u64(j, "ctx", r->x.ctx);
	j_u64(j, "elapsed_ns", r->elapsed_ns);
	j_u64(j, "maps_out", r->x.maps_out);
	j_maps(j, r->maps, n);
}

/*
 * The maps of one role must cover [uaddr, uaddr + len) exactly, in order.
 * Returns NULL or what is wrong.
 */
static const char *check_maps(const struct xfer_result *r, uint32_t role, uint64_t uaddr)
{
	uint64_t next = uaddr;
	uint32_t i;

	if (r->x.maps_out > r->maps_cap)
		return "maps_out exceeds the capacity offered";
	for (i = 0; i < r->x.maps_out; i++) {
		const struct hmm_gpu_map *m = &r->maps[i];

		if (m->role != role)
			continue;
		if (m->uaddr != next || !m->len)
			return "maps do not tile the buffer";
		next += m->len;
	}
	if (next != uaddr + r->x.len)
		return "maps do not cover the buffer";
	return NULL;
}

/* Byte-compare; returns the first bad offset or -1. */
static long first_mismatch(const uint8_t *buf, size_t off, size_t len,
			   uint8_t (*want)(size_t), uint8_t constant)
{
	size_t i;

	for (i = 0; i < len; i++) {
		uint8_t w = want ? want(i) : constant;

		if (buf[off + i] != w)
			return (long)(off + i);
	}
	return -1;
}

/* ---- sub-tests ---------------------------------------------------------- */

static void test_info(void)
{
	struct hmm_gpu_info info;
	struct jline j;
	int ret;

	memset(&info, 0, sizeof(info));
	ret = ioctl(dev_fd, HMM_GPU_IOC_INFO, &info);
	j_begin(&j, "info");
	if (ret) {
		int err = errno;

		j_fail(&j, err, "HMM_GPU_IOC_INFO: %s", strerror(err));
		return;
	}
	info.bdf[sizeof(info.bdf) - 1] = '\0';
	j_u64(&j, "uapi_version", info.uapi_version);
	j_hex(&j, "hw_version", info.hw_version);
	j_hex(&j, "caps", info.caps);
	j_u64(&j, "max_xfer", info.max_xfer);
	j_u64(&j, "max_len", info.max_len);
	j_u64(&j, "queue_entries", info.queue_entries);
	j_u64(&j, "ctx", info.ctx);
	j_str(&j, "bdf", info.bdf);
	if (info.uapi_version != HMM_GPU_UAPI_VERSION)
		j_fail(&j, 0, "uAPI version %u, built for %u",
		      info.uapi_version, HMM_GPU_UAPI_VERSION);
	else if (!info.max_xfer)
		j_fail(&j, 0, "max_xfer is 0");
	else
		j_ok(&j);
}

/*
 * COPY (or FILL when fill is set) of len bytes at src_off/dst_off inside
 * page-aligned buffers; checks the data, the untouched guard bytes around
 * the destination range and the reported maps.
 */
static void test_move(const char *name, bool fill, size_t len, size_t src_off, size_t dst_off)
{
	size_t src_size = round_up_page(src_off + len);
	size_t dst_size = round_up_page(dst_off + len) + page_size;
	uint8_t *src = NULL, *dst;
	struct xfer_result r;
	const char *bad;
	struct jline j;
	size_t i;
	long off;

	dst = map_anon(dst_size, PROT_READ | PROT_WRITE);
	memset(dst, fill ? GUARD_BYTE : 0, dst_size);
	if (fill) {
		do_xfer(&r, HMM_GPU_XFER_FILL, NULL, dst + dst_off, len, FILL_PATTERN);
	} else {
		src = map_anon(src_size, PROT_READ | PROT_WRITE);
		for (i = 0; i < len; i++)
			src[src_off + i] = src_byte(i);
		do_xfer(&r, HMM_GPU_XFER_COPY, src + src_off, dst + dst_off, len, 0);
	}

	j_begin(&j, name);
	j_xfer(&j, &r);
	if (r.ret) {
		j_fail(&j, r.err, "HMM_GPU_IOC_XFER: %s (device status %u)",
		      strerror(r.err), r.x.status);
		goto out;
	}
	if (r.x.bytes != len) {
		j_fail(&j, 0, "device reported %llu bytes",
		      (unsigned long long)r.x.bytes);
		goto out;
	}
	bad = src ? check_maps(&r, HMM_GPU_MAP_SRC, (uintptr_t)(src + src_off)) : NULL;
	if (!bad)
		bad = check_maps(&r, HMM_GPU_MAP_DST, (uintptr_t)(dst + dst_off));
	if (bad) {
		j_fail(&j, 0, "%s", bad);
		goto out;
	}
	off = first_mismatch(dst, dst_off, len, fill ? fill_byte : src_byte, 0);
	if (off >= 0) {
		j_fail(&j, 0, "data mismatch at destination offset %ld", off);
		goto out;
	}
	off = first_mismatch(dst, 0, dst_off, NULL, fill ? GUARD_BYTE : 0);
	if (off < 0)
		off = first_mismatch(dst, dst_off + len, dst_size - dst_off - len, NULL,
				     fill ? GUARD_BYTE : 0);
	if (off >= 0) {
		j_fail(&j, 0, "byte outside the destination range changed at %ld", off);
		goto out;
	}
	j_ok(&j);
out:
	free(r.maps);
	munmap(dst, dst_size);
	if (src)
		munmap(src, src_size);
}

/* An XFER that must fail with want_errno before the device is involved. */
static void expect_error(const char *name, int want_errno, uint32_t op,
			 const void *src, void *dst, uint64_t len)
{
	struct xfer_result r;
	struct jline j;

	do_xfer(&r, op, src, dst, len, FILL_PATTERN);
	j_begin(&j, name);
	j_xfer(&j, &r);
	j_u64(&j, "expected_errno", want_errno);
	if (!r.ret)
		j_fail(&j, 0, "succeeded, expected %s", strerror(want_errno));
	else if (r.err != want_errno)
		j_fail(&j, r.err, "%s, expected %s", strerror(r.err),
		      strerror(want_errno));
	else if (r.x.ncmds)
		j_fail(&j, r.err, "%u device commands issued", r.x.ncmds);
	else
		j_ok(&j);
	free(r.maps);
}

static void test_errors(void)
{
	uint8_t *buf = map_anon(2 * page_size, PROT_READ | PROT_WRITE);
	uint8_t *hole = map_anon(page_size, PROT_READ | PROT_WRITE);
	uint8_t *ro = map_anon(page_size, PROT_READ);

	memset(buf, 0, 2 * page_size);
	munmap(hole, page_size);	/* now an unmapped address */

	expect_error("einval_len0", EINVAL, HMM_GPU_XFER_COPY, buf, buf + page_size, 0);
	expect_error("einval_too_long", EINVAL, HMM_GPU_XFER_FILL, NULL, buf,
		     HMM_GPU_XFER_MAX_LEN + 1);
	expect_error("einval_overlap", EINVAL, HMM_GPU_XFER_COPY, buf, buf + 100, page_size);
	expect_error("efault_bad_src", EFAULT, HMM_GPU_XFER_COPY, hole, buf, page_size);
	expect_error("efault_bad_dst", EFAULT, HMM_GPU_XFER_FILL, NULL, hole, page_size);
	expect_error("efault_readonly_dst", EFAULT, HMM_GPU_XFER_FILL, NULL, ro, page_size);

	munmap(buf, 2 * page_size);
	munmap(ro, page_size);
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);

	switch (*end) {
	case 'k': case 'K':
		v <<= 10;
		end++;
		break;
	case 'm': case 'M':
		v <<= 20;
		end++;
		break;
	}
	if (*end || v < 64 || v > HMM_GPU_XFER_MAX_LEN) {
		fprintf(stderr, "bad size '%s' (64 .. %llu bytes, K/M suffix)\n", s,
			(unsigned long long)HMM_GPU_XFER_MAX_LEN);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	const char *path = "/dev/hmm_gpu0";
	size_t size = 1 << 20;
	struct jline j;
	int opt;

	while ((opt = getopt(argc, argv, "d:s:h")) != -1) {
		switch (opt) {
		case 'd':
			path = optarg;
			break;
		case 's':
			size = parse_size(optarg);
			break;
		default:
			fprintf(stderr, "usage: %s [-d /dev/hmm_gpu0] [-s SIZE[K|M]]\n", argv[0]);
			return 2;
		}
	}
	page_size = sysconf(_SC_PAGESIZE);

	dev_fd = open(path, O_RDWR | O_CLOEXEC);
	if (dev_fd < 0) {
		int err = errno;

		j_begin(&j, "open");
		j_str(&j, "device", path);
		j_fail(&j, err, "open %s: %s", path, strerror(err));
		return 1;
	}

	test_info();
	test_move("copy", false, size, 0, 0);
	test_move("fill", true, size, 0, 0);
	test_move("copy_unaligned", false, size - 11, 3, 5);
	test_move("fill_unaligned", true, size - 13, 0, 7);
	test_errors();

	close(dev_fd);
	return failures ? 1 : 0;
}

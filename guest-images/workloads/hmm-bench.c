// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm-bench: HMM mirror figures through the kernel's test_hmm ("dmirror")
 * uAPI only, so the same binary measures hmm_gpu.ko and lib/test_hmm.ko.
 *
 * Usage: hmm-bench [-d /dev/hmm_dmirror0] [-s MiB] [-n LATENCY_SAMPLES] [-r REPEATS] [-l]
 *
 * -l: only fault_latency_us (and its p10/p90), nothing else measured.
 *
 * Prints one JSON line:
 *   fault_pages_per_s  pages faulted + mapped per second: a fresh mapping
 *                      (CPU-populated), HMM_DMIRROR_READ over it in 2 MiB steps
 *   read_MBps          HMM_DMIRROR_READ bandwidth on memory already mirrored
 *   write_MBps         HMM_DMIRROR_WRITE bandwidth on memory already mirrored
 *   fault_latency_us   median (and p10/p90) of one 1-page READ of a fresh page
 *   migrate_to_dev_MBps  HMM_DMIRROR_MIGRATE_TO_DEV of a CPU-populated range in
 *                      2 MiB steps (system memory -> device memory)
 *   migrate_to_sys_MBps  HMM_DMIRROR_MIGRATE_TO_SYS of the same range back
 *   migrate_MBps       both directions together (bytes moved / time); the data
 *                      is verified by the CPU after each round trip
 *   cpu_fault_us       median (and p10/p90) of a CPU read of one page that was
 *                      just migrated to device memory (migrate_to_ram)
 *   thp_fault_pages_per_s, thp_read_MBps, thp_write_MBps
 *                      the first three again on a 2 MiB-aligned MADV_HUGEPAGE
 *                      range (transparent huge pages), in 4 KiB pages per second
 *                      so that they compare; the data the device read and wrote
 *                      is verified. thp_huge_bytes: how much of the range the
 *                      kernel backed with huge pages (/proc/self/smaps); when not
 *                      all of it, the thp_* figures are null and thp_note says why.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <lib/test_hmm_uapi.h>

#define PAGE 4096ul
#define STEP (2ul << 20)
#define HUGE (2ul << 20)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int dmirror(int fd, unsigned long req, void *addr, void *ptr, unsigned long npages,
		   uint64_t *faults)
{
	struct hmm_dmirror_cmd cmd;

	memset(&cmd, 0, sizeof(cmd));
	cmd.addr = (uintptr_t)addr;
	cmd.ptr = (uintptr_t)ptr;
	cmd.npages = npages;
	for (;;) {
		if (ioctl(fd, req, &cmd) == 0)
			break;
		if (errno != EINTR)
			return -errno;
	}
	if (faults)
		*faults += cmd.faults;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Whole range in STEP pieces; returns ns or 0 on error (errno in *err). */
static uint64_t sweep(int fd, unsigned long req, char *mem, char *buf, size_t size,
		      uint64_t *faults, int *err)
{
	uint64_t t0 = now_ns();
	size_t off;

	for (off = 0; off < size; off += STEP) {
		int rc = dmirror(fd, req, mem + off, buf + off, STEP / PAGE, faults);

		if (rc) {
			*err = rc;
			return 0;
		}
	}
	return now_ns() - t0;
}

/* A private anonymous mapping of size bytes starting on a 2 MiB boundary, or NULL. */
static char *map_huge_aligned(size_t size)
{
	size_t len = size + HUGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t start, end;

	if (p == MAP_FAILED)
		return NULL;
	start = ((uintptr_t)p + HUGE - 1) & ~(HUGE - 1);
	end = start + size;
	if (start > (uintptr_t)p)
		munmap(p, start - (uintptr_t)p);
	if ((uintptr_t)p + len > end)
		munmap((void *)end, (uintptr_t)p + len - end);
	return (char *)start;
}

/* AnonHugePages of the mappings within [p, p + size), in bytes; -1 if unreadable. */
static long long huge_bytes(const char *p, size_t size)
{
	unsigned long lo, hi;
	unsigned long long kb;
	long long total = 0;
	int inside = 0;
	char line[512];
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			inside = lo >= (uintptr_t)p && hi <= (uintptr_t)p + size;
		else if (inside && sscanf(line, "AnonHugePages: %llu kB", &kb) == 1)
			total += kb * 1024;
	}
	fclose(f);
	return total;
}

struct thp_figures {
	long long huge;		/* bytes in huge pages, -1 unknown */
	uint64_t first_faults;
	double fault_rate, rd, wr;
	const char *note;	/* why there are no figures */
};

/*
 * The fault-rate and READ/WRITE bandwidth figures on a THP-backed range: the
 * device first reads it all (every 2 MiB step faults), then reads and writes
 * it again repeats times. Returns 0, or -errno of a failed ioctl.
 */
static int measure_thp(int fd, char *buf, size_t size, int repeats, struct thp_figures *f)
{
	static char note[160];
	uint64_t faults = 0, t, tr = 0, tw = 0;
	size_t k;
	int i, err = 0;
	char *thp = map_huge_aligned(size);

	memset(f, 0, sizeof(*f));
	f->huge = -1;
	if (!thp) {
		f->note = "mmap of the THP range failed";
		return 0;
	}
	if (madvise(thp, size, MADV_HUGEPAGE)) {
		snprintf(note, sizeof(note), "madvise(MADV_HUGEPAGE): %s", strerror(errno));
		f->note = note;
		munmap(thp, size);
		return 0;
	}
	memset(thp, 0x6b, size);
	f->huge = huge_bytes(thp, size);
	if (f->huge != (long long)size) {
		snprintf(note, sizeof(note), "THP: only %lld of %zu bytes in huge pages "
			 "(transparent_hugepage disabled or memory fragmented)", f->huge, size);
		f->note = note;
		munmap(thp, size);
		return 0;
	}
	memset(buf, 0, size);
	t = sweep(fd, HMM_DMIRROR_READ, thp, buf, size, &faults, &err);
	if (!t)
		goto out;
	f->fault_rate = (size / PAGE) / (t / 1e9);
	f->first_faults = faults;
	for (k = 0; k < size; k += PAGE / 2)
		if (buf[k] != 0x6b) {
			f->note = "THP: the device read other data than the CPU wrote";
			goto out;
		}
	/* the device writes a new pattern, then reads it back, repeats times */
	memset(buf, 0x3c, size);
	for (i = 0; i < repeats; i++) {
		uint64_t x = sweep(fd, HMM_DMIRROR_WRITE, thp, buf, size, &faults, &err);

		if (!x)
			goto out;
		tw += x;
		x = sweep(fd, HMM_DMIRROR_READ, thp, buf, size, &faults, &err);
		if (!x)
			goto out;
		tr += x;
	}
	for (k = 0; k < size; k++)
		if (thp[k] != 0x3c || buf[k] != 0x3c) {
			f->note = "THP: the memory differs from what the device wrote";
			goto out;
		}
	f->rd = (double)size * repeats / (tr / 1e3);
	f->wr = (double)size * repeats / (tw / 1e3);
out:
	munmap(thp, size);
	return err;
}

static void print_thp(const struct thp_figures *f)
{
	if (f->note) {
		printf("\"thp_fault_pages_per_s\": null, \"thp_read_MBps\": null, "
		       "\"thp_write_MBps\": null, \"thp_huge_bytes\": %lld, \"thp_note\": \"%s\"",
		       f->huge, f->note);
		return;
	}
	printf("\"thp_fault_pages_per_s\": %.0f, \"thp_read_MBps\": %.1f, "
	       "\"thp_write_MBps\": %.1f, \"thp_huge_bytes\": %lld, "
	       "\"thp_first_pass_faults\": %llu",
	       f->fault_rate, f->rd, f->wr, f->huge, (unsigned long long)f->first_faults);
}

/* @samples times: a 1-page READ of a page the device never saw, timed; sorted. */
static int fault_latency(int fd, char *buf, int samples, uint64_t *lat)
{
	int i;

	for (i = 0; i < samples; i++) {
		char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);
		uint64_t t0;
		int rc;

		if (p == MAP_FAILED)
			return -errno;
		p[0] = 1;
		t0 = now_ns();
		rc = dmirror(fd, HMM_DMIRROR_READ, p, buf, 1, NULL);
		lat[i] = now_ns() - t0;
		munmap(p, PAGE);
		if (rc)
			return rc;
	}
	qsort(lat, samples, sizeof(*lat), cmp_u64);
	return 0;
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_dmirror0";
	size_t size = 64ul << 20;
	int samples = 200, repeats = 4, opt, i, err = 0, latency_only = 0;
	uint64_t faults = 0, t, tr = 0, tw = 0, *lat;
	char *mem, *buf;
	int fd;

	while ((opt = getopt(argc, argv, "d:s:n:r:l")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 's': size = strtoul(optarg, NULL, 0) << 20; break;
		case 'n': samples = atoi(optarg); break;
		case 'r': repeats = atoi(optarg); break;
		case 'l': latency_only = 1; break;
		default:
			fprintf(stderr, "usage: %s [-d DEV] [-s MiB] [-n N] [-r R] [-l]\n", argv[0]);
			return 2;
		}
	}
	size = (size + STEP - 1) & ~(STEP - 1);
	if (samples < 1 || repeats < 1 || !size)
		return 2;
	fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("{\"test\": \"bench\", \"ok\": false, \"device\": \"%s\", \"error\": \"open: %s\"}\n",
		       dev, strerror(errno));
		return 1;
	}
	if (latency_only) {
		/* -l: the fault round trip alone (hmmlab bench odp compares hmm-nic's with it) */
		buf = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		lat = calloc(samples, sizeof(*lat));
		if (buf == MAP_FAILED || !lat)
			return 2;
		err = fault_latency(fd, buf, samples, lat);
		if (err)
			goto fail;
		printf("{\"test\": \"bench\", \"ok\": true, \"device\": \"%s\", "
		       "\"fault_latency_us\": %.2f, \"fault_latency_p10_us\": %.2f, "
		       "\"fault_latency_p90_us\": %.2f, \"latency_samples\": %d}\n",
		       dev, lat[samples / 2] / 1e3, lat[samples / 10] / 1e3,
		       lat[samples * 9 / 10] / 1e3, samples);
		return 0;
	}
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || buf == MAP_FAILED)
		return 2;
	/* no THP: one 4 KiB page per device mapping, like the kernel's own tests */
	madvise(mem, size, MADV_NOHUGEPAGE);
	memset(mem, 0x5a, size);
	memset(buf, 0, size);

	/* 1. fault + map: the first device access to every page */
	t = sweep(fd, HMM_DMIRROR_READ, mem, buf, size, &faults, &err);
	if (!t)
		goto fail;
	double fault_rate = (size / PAGE) / (t / 1e9);
	uint64_t first_faults = faults;

	/* 2. bandwidth on the mirrored range (no faults expected) */
	faults = 0;
	for (i = 0; i < repeats; i++) {
		uint64_t x = sweep(fd, HMM_DMIRROR_READ, mem, buf, size, &faults, &err);

		if (!x)
			goto fail;
		tr += x;
		x = sweep(fd, HMM_DMIRROR_WRITE, mem, buf, size, &faults, &err);
		if (!x)
			goto fail;
		tw += x;
	}
	double rd = (double)size * repeats / (tr / 1e3); /* bytes/us = MB/s */
	double wr = (double)size * repeats / (tw / 1e3);
	uint64_t steady_faults = faults;

	/* 3. one fault round trip: 1-page READ of a fresh page */
	lat = calloc(samples, sizeof(*lat));
	if (!lat)
		return 2;
	err = fault_latency(fd, buf, samples, lat);
	if (err)
		goto fail;

	/* 4. migration bandwidth: system -> device -> system, data verified */
	uint64_t tdev = 0, tsys = 0;
	char *mig = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mig == MAP_FAILED)
		return 2;
	madvise(mig, size, MADV_NOHUGEPAGE);
	for (i = 0; i < repeats; i++) {
		size_t k;
		uint64_t x;

		memset(mig, 0x30 + i, size);
		x = sweep(fd, HMM_DMIRROR_MIGRATE_TO_DEV, mig, buf, size, NULL, &err);
		if (!x)
			goto fail;
		tdev += x;
		x = sweep(fd, HMM_DMIRROR_MIGRATE_TO_SYS, mig, buf, size, NULL, &err);
		if (!x)
			goto fail;
		tsys += x;
		for (k = 0; k < size; k++)
			if (mig[k] != (char)(0x30 + i)) {
				printf("{\"test\": \"bench\", \"ok\": false, \"device\": \"%s\", "
				       "\"error\": \"migrated data differs at byte %zu\"}\n", dev, k);
				return 1;
			}
	}
	munmap(mig, size);
	double mdev = (double)size * repeats / (tdev / 1e3);
	double msys = (double)size * repeats / (tsys / 1e3);
	double mboth = 2.0 * size * repeats / ((tdev + tsys) / 1e3);

	/* 5. CPU fault-back: read one page that sits in device memory */
	uint64_t *clat = calloc(samples, sizeof(*clat));

	for (i = 0; i < samples; i++) {
		volatile char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint64_t t0;
		char c;
		int rc;

		p[0] = 0x77;
		rc = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, (void *)p, buf, 1, NULL);
		if (rc) {
			err = rc;
			goto fail;
		}
		t0 = now_ns();
		c = p[0];
		clat[i] = now_ns() - t0;
		munmap((void *)p, PAGE);
		if (c != 0x77) {
			printf("{\"test\": \"bench\", \"ok\": false, \"device\": \"%s\", "
			       "\"error\": \"page read back 0x%x after migration\"}\n", dev, c);
			return 1;
		}
	}
	qsort(clat, samples, sizeof(*clat), cmp_u64);

	/* 6. 1 and 2 again on transparent huge pages (2 MiB device pages to come) */
	struct thp_figures thp;

	err = measure_thp(fd, buf, size, repeats, &thp);
	if (err)
		goto fail;
	printf("{\"test\": \"bench\", \"ok\": true, \"device\": \"%s\", \"size_bytes\": %zu, "
	       "\"pages\": %zu, \"first_pass_faults\": %llu, \"steady_faults\": %llu, "
	       "\"fault_pages_per_s\": %.0f, \"read_MBps\": %.1f, \"write_MBps\": %.1f, "
	       "\"fault_latency_us\": %.2f, \"fault_latency_p10_us\": %.2f, "
	       "\"fault_latency_p90_us\": %.2f, \"latency_samples\": %d, \"repeats\": %d, "
	       "\"migrate_to_dev_MBps\": %.1f, \"migrate_to_sys_MBps\": %.1f, "
	       "\"migrate_MBps\": %.1f, \"cpu_fault_us\": %.2f, \"cpu_fault_p10_us\": %.2f, "
	       "\"cpu_fault_p90_us\": %.2f, ",
	       dev, size, size / PAGE, (unsigned long long)first_faults,
	       (unsigned long long)steady_faults, fault_rate, rd, wr, lat[samples / 2] / 1e3,
	       lat[samples / 10] / 1e3, lat[samples * 9 / 10] / 1e3, samples, repeats, mdev, msys,
	       mboth, clat[samples / 2] / 1e3, clat[samples / 10] / 1e3,
	       clat[samples * 9 / 10] / 1e3);
	print_thp(&thp);
	printf("}\n");
	return 0;
fail:
	printf("{\"test\": \"bench\", \"ok\": false, \"device\": \"%s\", \"error\": \"ioctl: %s\"}\n",
	       dev, strerror(-err));
	return 1;
}

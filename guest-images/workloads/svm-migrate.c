// SPDX-License-Identifier: GPL-2.0-only
/*
 * svm-migrate: device-private memory through the native uAPI (SVM_MIGRATE).
 *
 * Usage: svm-migrate [-d /dev/hmm_gpu0] [-s MiB]
 *
 * On an anonymous buffer (default 8 MiB, no THP) filled by the CPU:
 *   to_dev:         SVM_MIGRATE TO_DEV moves every page into VRAM
 *   device_jobs:    device READ (data verified), FILL, WRITE, ATOMIC_ADD on
 *                   the migrated range run without a single fault
 *   cpu_touch_half: the CPU reads every other page (each one migrates back:
 *                   VRAM_STATS cpu_faults grows by at least that many) and
 *                   sees the device's data
 *   device_read_all: the device reads the whole range and sees the same data
 *   migrate_again:  TO_DEV again brings the touched half back to VRAM; the
 *                   device reads it all without a fault
 *   to_sys:         TO_SYS moves everything back; the CPU verifies it all
 *                   without a CPU fault
 *   vram_stats:     the VRAM_STATS figures
 * Then, on a 2 MiB-aligned THP (MADV_HUGEPAGE):
 *   thp:            TO_DEV moves it; where the driver has device THPs
 *                   (VRAM_STATS flags HMM_GPU_VRAM_F_THP, 6.19+) as one
 *                   2 MiB device folio (thp_to_dev + 1) that the device maps
 *                   with one 2 MiB leaf (SVM_STATS huge_mapped + 1); the
 *                   device reads it without a fault; one CPU read fault
 *                   brings all of it back as one folio (thp_to_sys + 1);
 *                   the data survives either way
 *   thp_base_after: base pages (MADV_NOHUGEPAGE, aligned 2 MiB) go to the
 *                   VRAM the THP left and back, one CPU fault per page, the
 *                   data intact (VRAM that held a 2 MiB folio, handed out
 *                   as base pages: their struct pages still describe the
 *                   old folio until each is initialised as a page of its
 *                   own; initialising the old head instead left the CPU
 *                   faulting on them forever)
 * One JSON line each; exit status 0 only if all were ok.
 */
#include "svm-common.h"

#define PAGE 4096ul

static int fd = -1;
static int failures;

/* Pattern of u64 i of the buffer in generation g. */
static inline uint64_t pat(uint64_t g, size_t i)
{
	return (g << 48) ^ (i * 0x9e3779b97f4a7c15ull);
}

static void fill_pat(uint64_t *p, size_t n, uint64_t g, size_t base)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = pat(g, base + i);
}

static long check_pat(const uint64_t *p, size_t n, uint64_t g, size_t base)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] != pat(g, base + i))
			return (long)i;
	return -1;
}

#define D(a, b) ((uint64_t)((b) - (a)))
#define HPAGE (2ul << 20)

static struct hmm_gpu_svm_stats svm_stats(void)
{
	struct hmm_gpu_svm_stats st;

	memset(&st, 0, sizeof(st));
	ioctl(fd, HMM_GPU_IOC_SVM_STATS, &st);
	return st;
}

/* AnonHugePages (kB) of the mapping holding @p: did the kernel give it a THP? */
static long anon_huge_kb(const void *p)
{
	FILE *fp = fopen("/proc/self/smaps", "r");
	unsigned long lo, hi;
	char line[256];
	bool in = false;
	long kb = -1;

	while (fp && fgets(line, sizeof(line), fp)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			in = lo <= (uintptr_t)p && (uintptr_t)p < hi;
		else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	if (fp)
		fclose(fp);
	return kb;
}

/* An aligned 2 MiB of a fresh mapping, with @advice, filled with generation @g. */
static uint64_t *aligned_2m(int advice, uint64_t g)
{
	char *raw = mmap(NULL, 2 * HPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	uint64_t *m;

	if (raw == MAP_FAILED)
		return NULL;
	m = (uint64_t *)(((uintptr_t)raw + HPAGE - 1) & ~(HPAGE - 1));
	madvise(m, HPAGE, advice);
	fill_pat(m, HPAGE / 8, g, 0);
	return m;
}

static void thp_steps(uint64_t *bounce)
{
	struct hmm_gpu_vram_stats a, b, c;
	struct hmm_gpu_svm_stats sa, sb;
	struct hmm_gpu_svm_job j;
	uint64_t pages = 0, *m;
	bool dev_thp, is_thp;
	long bad, huge_kb;
	int rc;

	m = aligned_2m(MADV_HUGEPAGE, 7);
	if (!m) {
		svm_report(&failures, "thp", false, "\"error\": \"mmap\"");
		return;
	}
	huge_kb = anon_huge_kb(m);
	is_thp = huge_kb >= 2048;
	svm_vram_stats(fd, &a);
	sa = svm_stats();
	dev_thp = a.flags & HMM_GPU_VRAM_F_THP;
	rc = svm_migrate(fd, m, HPAGE, HMM_GPU_MIGRATE_TO_DEV, &pages);
	svm_vram_stats(fd, &b);
	sb = svm_stats();
	memset(&j, 0, sizeof(j));
	if (!rc)
		rc = svm_simple(fd, HMM_GPU_SVM_READ, m, NULL, bounce, HPAGE, 0, &j);
	bad = rc ? -2 : check_pat(bounce, HPAGE / 8, 7, 0);
	if (bad < 0)
		bad = check_pat(m, HPAGE / 8, 7, 0);	/* the CPU faults it back */
	svm_vram_stats(fd, &c);
	svm_report(&failures, "thp", !rc && bad < 0 && pages == HPAGE / PAGE && !j.faults &&
		   (!dev_thp || !is_thp ||
		    (D(a.thp_to_dev, b.thp_to_dev) == 1 && D(sa.huge_mapped, sb.huge_mapped) == 1 &&
		     D(b.thp_to_sys, c.thp_to_sys) == 1 && D(b.cpu_faults, c.cpu_faults) == 1)),
		   "\"errno\": %d, \"device_thp\": %s, \"anon_huge_kb\": %ld, \"pages\": %" PRIu64
		   ", \"faults\": %" PRIu64 ", \"bad_u64\": %ld, \"thp_to_dev\": %" PRIu64
		   ", \"huge_mapped\": %" PRIu64 ", \"thp_to_sys\": %" PRIu64
		   ", \"cpu_faults\": %" PRIu64, -rc, dev_thp ? "true" : "false", huge_kb, pages,
		   (uint64_t)j.faults, bad, D(a.thp_to_dev, b.thp_to_dev),
		   D(sa.huge_mapped, sb.huge_mapped), D(b.thp_to_sys, c.thp_to_sys),
		   D(b.cpu_faults, c.cpu_faults));

	m = aligned_2m(MADV_NOHUGEPAGE, 8);
	if (!m)
		return;
	svm_vram_stats(fd, &a);
	rc = svm_migrate(fd, m, HPAGE, HMM_GPU_MIGRATE_TO_DEV, &pages);
	bad = rc ? -2 : check_pat(m, HPAGE / 8, 8, 0);
	svm_vram_stats(fd, &b);
	svm_report(&failures, "thp_base_after", !rc && bad < 0 && pages == HPAGE / PAGE &&
		   D(a.thp_to_dev, b.thp_to_dev) == 0 && D(a.cpu_faults, b.cpu_faults) == HPAGE / PAGE,
		   "\"errno\": %d, \"pages\": %" PRIu64 ", \"bad_u64\": %ld, \"cpu_faults\": %"
		   PRIu64, -rc, pages, bad, D(a.cpu_faults, b.cpu_faults));
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_gpu0";
	size_t size = 8ul << 20, npages, n64, i;
	struct hmm_gpu_vram_stats s0, s1, s2;
	struct hmm_gpu_svm_job j;
	uint64_t pages = 0, faults, t0;
	uint64_t *mem, *buf;
	uint32_t ctx = 0;
	long bad;
	int opt, rc;

	while ((opt = getopt(argc, argv, "d:s:")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 's': size = strtoul(optarg, NULL, 0) << 20; break;
		default:
			fprintf(stderr, "usage: %s [-d DEV] [-s MiB]\n", argv[0]);
			return 2;
		}
	}
	if (!size)
		return 2;
	npages = size / PAGE;
	n64 = size / 8;
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		svm_report(&failures, "bind", false, "\"errno\": %d, \"error\": \"%s\"", -fd, strerror(-fd));
		return 1;
	}
	svm_report(&failures, "bind", true, "\"ctx\": %u", ctx);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || buf == MAP_FAILED)
		return 2;
	madvise(mem, size, MADV_NOHUGEPAGE);
	fill_pat(mem, n64, 1, 0);
	memset(buf, 0, size);
	if (svm_vram_stats(fd, &s0)) {
		svm_report(&failures, "vram_stats", false, "\"errno\": %d", errno);
		return 1;
	}

	/* 1. everything to VRAM */
	t0 = now_ns();
	rc = svm_migrate(fd, mem, size, HMM_GPU_MIGRATE_TO_DEV, &pages);
	t0 = now_ns() - t0;
	svm_vram_stats(fd, &s1);
	svm_report(&failures, "to_dev", !rc && pages == npages && D(s0.pages_to_dev, s1.pages_to_dev) >= npages,
	       "\"errno\": %d, \"pages\": %" PRIu64 ", \"want\": %zu, \"pages_to_dev\": %" PRIu64
	       ", \"vram_used\": %" PRIu64 ", \"MBps\": %.1f", -rc, pages, npages,
	       D(s0.pages_to_dev, s1.pages_to_dev), (uint64_t)s1.vram_used,
	       t0 ? size / (t0 / 1e3) : 0.0);
	if (rc)
		return 1;

	/* 2. device jobs on VRAM: no faults */
	faults = 0;
	rc = svm_simple(fd, HMM_GPU_SVM_READ, mem, NULL, buf, size, 0, &j);
	faults += j.faults;
	bad = rc ? -2 : check_pat(buf, n64, 1, 0);
	if (!rc && bad < 0) {
		rc = svm_simple(fd, HMM_GPU_SVM_FILL, mem, NULL, NULL, size / 2, 0x1111, &j);
		faults += j.faults;
	}
	if (!rc && bad < 0) {
		fill_pat(buf, n64 / 2, 2, n64 / 2);
		rc = svm_simple(fd, HMM_GPU_SVM_WRITE, (char *)mem + size / 2, NULL, buf, size / 2,
				0, &j);
		faults += j.faults;
	}
	if (!rc && bad < 0) {
		/* one atomic per page of the first half: 0x1111 + page index */
		for (i = 0; i < npages / 2 && !rc; i++) {
			rc = svm_simple(fd, HMM_GPU_SVM_ATOMIC_ADD, (char *)mem + i * PAGE, NULL, NULL,
					8, i, &j);
			faults += j.faults;
			if (!rc && j.result != 0x1111)
				bad = (long)(i * PAGE / 8);
		}
	}
	svm_vram_stats(fd, &s2);
	svm_report(&failures, "device_jobs", !rc && bad < 0 && faults == 0 && s2.cpu_faults == s1.cpu_faults &&
	       s2.pages_to_sys == s1.pages_to_sys,
	       "\"errno\": %d, \"bad_u64\": %ld, \"faults\": %" PRIu64 ", \"cpu_faults\": %" PRIu64
	       ", \"pages_to_sys\": %" PRIu64, -rc, bad, faults, D(s1.cpu_faults, s2.cpu_faults),
	       D(s1.pages_to_sys, s2.pages_to_sys));
	if (rc)
		return 1;

	/* expected content now: first half 0x1111 (+page index in u64 0), second half gen 2 */
#define EXPECT(idx) ((idx) < n64 / 2 ? ((idx) % (PAGE / 8) ? 0x1111ull : \
		     0x1111ull + (idx) / (PAGE / 8)) : pat(2, (idx)))

	/* 3. the CPU touches every other page: each migrates back on its own */
	s1 = s2;
	bad = -1;
	t0 = now_ns();
	for (i = 0; i < npages; i += 2) {
		size_t k, base = i * PAGE / 8;

		for (k = 0; k < PAGE / 8; k++)
			if (mem[base + k] != EXPECT(base + k) && bad < 0)
				bad = (long)(base + k);
	}
	t0 = now_ns() - t0;
	svm_vram_stats(fd, &s2);
	svm_report(&failures, "cpu_touch_half", bad < 0 && D(s1.cpu_faults, s2.cpu_faults) >= npages / 2,
	       "\"bad_u64\": %ld, \"touched_pages\": %zu, \"cpu_faults\": %" PRIu64
	       ", \"pages_to_sys\": %" PRIu64 ", \"us_per_page\": %.2f", bad, (npages + 1) / 2,
	       D(s1.cpu_faults, s2.cpu_faults), D(s1.pages_to_sys, s2.pages_to_sys),
	       (t0 / 1e3) / ((npages + 1) / 2));

	/* 4. the device reads it all (half VRAM, half system memory) */
	memset(buf, 0, size);
	rc = svm_simple(fd, HMM_GPU_SVM_READ, mem, NULL, buf, size, 0, &j);
	bad = -1;
	for (i = 0; !rc && i < n64; i++)
		if (buf[i] != EXPECT(i)) {
			bad = (long)i;
			break;
		}
	svm_report(&failures, "device_read_all", !rc && bad < 0,
	       "\"errno\": %d, \"bad_u64\": %ld, \"faults\": %" PRIu64 ", \"pages\": %" PRIu64,
	       -rc, bad, (uint64_t)j.faults, (uint64_t)j.pages);

	/* 5. migrate again: the touched half goes back; jobs fault-free again */
	s1 = s2;
	rc = svm_migrate(fd, mem, size, HMM_GPU_MIGRATE_TO_DEV, &pages);
	svm_vram_stats(fd, &s2);
	faults = 0;
	bad = -1;
	if (!rc) {
		int r2;

		memset(buf, 0, size);
		r2 = svm_simple(fd, HMM_GPU_SVM_READ, mem, NULL, buf, size, 0, &j);
		faults = j.faults;
		for (i = 0; !r2 && i < n64; i++)
			if (buf[i] != EXPECT(i)) {
				bad = (long)i;
				break;
			}
		if (r2)
			rc = r2;
	}
	/*
	 * No device fault: the pages that stayed in VRAM kept their translations
	 * and the ones that came back were mapped by the migration.
	 */
	svm_report(&failures, "migrate_again", !rc && bad < 0 && pages >= npages / 2 && !faults &&
	       s2.vram_used >= s0.vram_used + size,
	       "\"errno\": %d, \"pages\": %" PRIu64 ", \"bad_u64\": %ld, \"faults\": %" PRIu64
	       ", \"vram_used\": %" PRIu64, -rc, pages, bad, faults, (uint64_t)s2.vram_used);

	/* 6. back to system memory; the CPU reads it all without a CPU fault */
	s1 = s2;
	t0 = now_ns();
	rc = svm_migrate(fd, mem, size, HMM_GPU_MIGRATE_TO_SYS, &pages);
	t0 = now_ns() - t0;
	bad = -1;
	for (i = 0; !rc && i < n64; i++)
		if (mem[i] != EXPECT(i)) {
			bad = (long)i;
			break;
		}
	svm_vram_stats(fd, &s2);
	svm_report(&failures, "to_sys", !rc && bad < 0 && pages == npages &&
	       s2.cpu_faults == s1.cpu_faults && D(s1.pages_to_sys, s2.pages_to_sys) >= npages,
	       "\"errno\": %d, \"pages\": %" PRIu64 ", \"bad_u64\": %ld, \"cpu_faults\": %" PRIu64
	       ", \"pages_to_sys\": %" PRIu64 ", \"MBps\": %.1f", -rc, pages, bad,
	       D(s1.cpu_faults, s2.cpu_faults), D(s1.pages_to_sys, s2.pages_to_sys),
	       t0 ? size / (t0 / 1e3) : 0.0);

	thp_steps(buf);

	svm_report(&failures, "vram_stats", s2.pages_to_dev > s0.pages_to_dev,
	       "\"vram_size\": %" PRIu64 ", \"vram_used\": %" PRIu64 ", \"chunks\": %" PRIu64
	       ", \"pages_to_dev\": %" PRIu64 ", \"pages_to_sys\": %" PRIu64
	       ", \"cpu_faults\": %" PRIu64 ", \"evictions\": %" PRIu64
	       ", \"pages_evicted\": %" PRIu64, (uint64_t)s2.vram_size, (uint64_t)s2.vram_used,
	       (uint64_t)s2.chunks, D(s0.pages_to_dev, s2.pages_to_dev),
	       D(s0.pages_to_sys, s2.pages_to_sys), D(s0.cpu_faults, s2.cpu_faults),
	       D(s0.evictions, s2.evictions), D(s0.pages_evicted, s2.pages_evicted));
	close(fd);
	return failures ? 1 : 0;
}

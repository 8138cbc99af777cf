// SPDX-License-Identifier: GPL-2.0-only
/*
 * svm-reclaim: what the device writes must survive reclaim.
 *
 *   svm-reclaim [-d /dev/hmm_gpuN] [-p pages] [-s]
 *
 * lazyfree: the CPU fills anonymous pages and frees them lazily
 *   (MADV_FREE: the pages turn clean and may be dropped, unless written
 *   again). The device writes them (SVM WRITE): the CPU PTEs are writable, so
 *   hmm_range_fault() takes no write fault and nothing dirties them on the
 *   CPU side. MADV_PAGEOUT then reclaims them: a driver that does not mark
 *   the pages dirty when its writable mapping goes lets reclaim discard the
 *   device's data, and the CPU reads zeros. (The same bug loses device writes
 *   to clean swap-cache pages.)
 * swap (-s, needs swap enabled): pages swapped out, read back in, written by
 *   the device, swapped out again: the data comes back from swap.
 *
 * JSON lines {"test": "<case>.<step>", "ok": ...}.
 */
#include "svm-common.h"

#include <sched.h>

#define PAGE 4096ul
#define PM_PRESENT (1ull << 63)
#define PM_SWAP (1ull << 62)

static int failures;
static int fd;

/* Pages of [p, p + n pages) whose pagemap entry has @bit. */
static int pagemap_count(const char *p, unsigned long n, uint64_t bit, unsigned long *count)
{
	int pm = open("/proc/self/pagemap", O_RDONLY);
	unsigned long i;

	*count = 0;
	if (pm < 0)
		return -errno;
	for (i = 0; i < n; i++) {
		uint64_t e;
		off_t off = ((uintptr_t)p / PAGE + i) * sizeof(e);

		if (pread(pm, &e, sizeof(e), off) != sizeof(e)) {
			int err = errno ? -errno : -EIO;

			close(pm);
			return err;
		}
		*count += !!(e & bit);
	}
	close(pm);
	return 0;
}

/*
 * MADV_PAGEOUT until every page is swapped out: reclaim skips a folio it
 * cannot isolate this time (still in another CPU's LRU batch after the
 * swap-in, or locked by a racing fault), so try for up to a second.
 */
static void pin_to_this_cpu(void)
{
	int cpu = sched_getcpu();
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		fprintf(stderr, "svm-reclaim: sched_setaffinity: %s\n", strerror(errno));
}

static int swap_out(char *p, unsigned long n, unsigned long *out)
{
	int tries, rc = 0;

	for (tries = 0; tries < 100; tries++) {
		if (madvise(p, n * PAGE, MADV_PAGEOUT))
			return -errno;
		rc = pagemap_count(p, n, PM_SWAP, out);
		if (rc || *out == n)
			break;
		usleep(10000);
	}
	return rc;
}

static uint64_t invalidations(void)
{
	struct hmm_gpu_svm_stats st;

	memset(&st, 0, sizeof(st));
	if (ioctl(fd, HMM_GPU_IOC_SVM_STATS, &st))
		return 0;
	return st.invalidations;
}

static int device_write(char *p, unsigned long n, uint64_t v, long *bad)
{
	char *buf = aligned_alloc(PAGE, n * PAGE);
	int rc;

	fill_u64(buf, n * PAGE, v);
	rc = svm_simple(fd, HMM_GPU_SVM_WRITE, p, NULL, buf, n * PAGE, 0, NULL);
	*bad = rc ? -2 : check_u64(p, n * PAGE, v);
	free(buf);
	return rc;
}

static void survives(const char *test, char *p, unsigned long n, uint64_t want, uint64_t old)
{
	long bad = check_u64(p, n * PAGE, want);
	uint64_t got = bad < 0 ? want : ((uint64_t *)p)[bad];

	svm_report(&failures, test, bad < 0,
		   "\"bad_index\": %ld, \"value\": \"0x%llx\", \"want\": \"0x%llx\"%s", bad,
		   (unsigned long long)got, (unsigned long long)want,
		   bad < 0 ? "" : got == old || got == 0 ?
		   ", \"error\": \"reclaim dropped the device's write: the driver did not mark the "
		   "page dirty when its writable mapping went\"" : "");
}

static void lazyfree(unsigned long n)
{
	char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t inv;
	long bad;
	int rc;

	madvise(p, n * PAGE, MADV_NOHUGEPAGE);
	fill_u64(p, n * PAGE, 0xc0ffee);
	rc = madvise(p, n * PAGE, MADV_FREE) ? -errno : 0;
	svm_report(&failures, "lazyfree.madv_free", !rc, "\"errno\": %d", -rc);
	rc = device_write(p, n, 0xdecade, &bad);
	svm_report(&failures, "lazyfree.device_write", !rc && bad < 0,
		   "\"errno\": %d, \"bad_index\": %ld", -rc, bad);
	inv = invalidations();
	rc = madvise(p, n * PAGE, MADV_PAGEOUT) ? -errno : 0;
	/* reclaim unmapped the pages: the notifier took the device's mapping away */
	svm_report(&failures, "lazyfree.reclaim", !rc && invalidations() > inv,
		   "\"errno\": %d, \"invalidations\": %llu", -rc,
		   (unsigned long long)(invalidations() - inv));
	survives("lazyfree.survives", p, n, 0xdecade, 0xc0ffee);
	munmap(p, n * PAGE);
}

static void swap_round_trip(unsigned long n)
{
	char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long got, i;
	long bad = -1;
	int rc;

	madvise(p, n * PAGE, MADV_NOHUGEPAGE);
	fill_u64(p, n * PAGE, 0xc0ffee);
	rc = swap_out(p, n, &got);
	svm_report(&failures, "swap.out", !rc && got == n, "\"swapped\": %lu, \"errno\": %d",
		   got, -rc);
	for (i = 0; i < n && bad < 0; i++)
		if (*(volatile uint64_t *)(p + i * PAGE) != 0xc0ffee)
			bad = (long)i;
	svm_report(&failures, "swap.in", bad < 0, "\"bad_page\": %ld", bad);
	rc = device_write(p, n, 0xdecade, &bad);
	svm_report(&failures, "swap.device_write", !rc && bad < 0,
		   "\"errno\": %d, \"bad_index\": %ld", -rc, bad);
	rc = swap_out(p, n, &got);
	svm_report(&failures, "swap.out_again", !rc && got == n,
		   "\"swapped\": %lu, \"errno\": %d", got, -rc);
	survives("swap.survives", p, n, 0xdecade, 0xc0ffee);
	munmap(p, n * PAGE);
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_gpu0";
	unsigned long npages = 16;
	bool swap = false;
	uint32_t ctx;
	int opt;

	while ((opt = getopt(argc, argv, "d:p:s")) != -1) {
		if (opt == 'd')
			dev = optarg;
		else if (opt == 'p')
			npages = strtoul(optarg, NULL, 0);
		else if (opt == 's')
			swap = true;
		else {
			fprintf(stderr, "usage: %s [-d DEV] [-p pages] [-s]\n", argv[0]);
			return 2;
		}
	}
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		jprintf("{\"test\": \"bind\", \"ok\": false, \"error\": \"%s\"}", strerror(-fd));
		return 1;
	}
	/*
	 * One CPU for the whole program: a folio waits in the per-CPU LRU batch of
	 * the CPU that faulted it in, and MADV_PAGEOUT drains only its own CPU's,
	 * so a page touched on the other CPU cannot be isolated (not reclaimed,
	 * "swapped 0") until that CPU happens to drain.
	 */
	pin_to_this_cpu();
	lazyfree(npages);
	if (swap)
		swap_round_trip(npages);
	close(fd);
	return failures ? 1 : 0;
}

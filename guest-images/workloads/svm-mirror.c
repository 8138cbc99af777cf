// SPDX-License-Identifier: GPL-2.0-only
/*
 * svm-mirror: device jobs on the process's own virtual memory through
 * HMM_GPU_IOC_SVM_BIND/SVM_JOB (/dev/hmm_gpuN, uAPI 2).
 *
 * Usage: svm-mirror [-d /dev/hmm_gpu0]
 *
 * For each kind of memory (malloc, anonymous mmap, tmpfs file MAP_SHARED,
 * THP with MADV_HUGEPAGE): READ (twice: the first job must fault, the second
 * on the same range must not), WRITE, FILL, COPY, ATOMIC_ADD, CMPXCHG, each
 * verified against what the CPU sees. Then never-touched memory (reads as
 * zeros), a read-only mapping (device write refused with EPERM) and an
 * unmapped range (EFAULT). One JSON object per line on stdout:
 *   {"test": "anon.read", "ok": true, "ctx": 3, "len": 262144, "faults": 2, ...}
 * A kernel without device-exclusive entries (no CONFIG_DEVICE_PRIVATE, e.g.
 * Debian's stock 6.1; the driver says so in HMM_GPU_IOC_INFO) cannot do
 * device atomics on any memory: ATOMIC_ADD and CMPXCHG are reported as
 *   {"test": "anon.atomic_add", "skip": "why"}
 * and the refusal (EOPNOTSUPP) is checked instead.
 * Exit status 0 only if every line said "ok": true (or was skipped).
 */
#include "svm-common.h"

#define SMALL (256u << 10)
#define HUGE_SZ (4u << 20)
#define HPAGE (2u << 20)

static int fd = -1;
static uint32_t ctx;
static int failures;
static char *bounce;
static bool exclusive_ok;	/* HMM_GPU_FEATURE_EXCLUSIVE */

static void result(const char *kind, const char *test, bool ok, size_t len,
		   const struct hmm_gpu_svm_job *j, int rc, const char *fmt, ...)
{
	char extra[1024] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(extra, sizeof(extra), fmt, ap);
		va_end(ap);
	}
	if (!ok)
		failures++;
	jprintf("{\"test\": \"%s.%s\", \"ok\": %s, \"ctx\": %u, \"len\": %zu, "
		"\"faults\": %" PRIu64 ", \"pages\": %" PRIu64 ", \"status\": %u, "
		"\"errno\": %d%s%s}",
		kind, test, ok ? "true" : "false", ctx, len, j ? (uint64_t)j->faults : 0,
		j ? (uint64_t)j->pages : 0, j ? j->status : 0, -rc, *extra ? ", " : "", extra);
}

static struct hmm_gpu_svm_stats stats_of(int f)
{
	struct hmm_gpu_svm_stats st;

	memset(&st, 0, sizeof(st));
	if (ioctl(f, HMM_GPU_IOC_SVM_STATS, &st))
		st.faults = ~0ull;
	return st;
}

/* AnonHugePages of the process (kB): did the kernel give it THPs? */
static long anon_huge_kb(void)
{
	FILE *fp = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long kb = -1;

	while (fp && fgets(line, sizeof(line), fp))
		if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	if (fp)
		fclose(fp);
	return kb;
}

static void pattern(void *p, size_t len, uint64_t seed)
{
	uint64_t *q = p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		q[i] = seed ^ (i * 0x9e3779b97f4a7c15ull);
}

/* Index of the first u64 that differs from pattern(seed), or -1. */
static long check_pattern(const void *p, size_t len, uint64_t seed)
{
	const uint64_t *q = p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		if (q[i] != (seed ^ (i * 0x9e3779b97f4a7c15ull)))
			return (long)i;
	return -1;
}

/*
 * @atomics: whether device atomics can work on this memory. They need the
 * page held device-exclusive, which 6.12 offers only for private anonymous
 * memory; elsewhere the driver refuses them (EOPNOTSUPP) rather than race
 * the CPU.
 */
static void run_kind(const char *kind, char *mem, size_t len, bool atomics)
{
	struct hmm_gpu_svm_job j1, j2;
	size_t half = len / 2;
	uint64_t *p = (uint64_t *)mem;
	long bad;
	int rc;

	/* READ: the CPU wrote it, the device must see it; the first job faults. */
	pattern(mem, len, 0x1111);
	memset(bounce, 0, len);
	rc = svm_simple(fd, HMM_GPU_SVM_READ, mem, NULL, bounce, len, 0, &j1);
	bad = rc ? -2 : check_pattern(bounce, len, 0x1111);
	result(kind, "read", rc == 0 && bad < 0, len, &j1, rc, "\"bad_index\": %ld", bad);
	memset(bounce, 0, len);
	rc = svm_simple(fd, HMM_GPU_SVM_READ, mem, NULL, bounce, len, 0, &j2);
	bad = rc ? -2 : check_pattern(bounce, len, 0x1111);
	result(kind, "read_again", rc == 0 && bad < 0, len, &j2, rc, "\"bad_index\": %ld", bad);
	result(kind, "refault", j1.faults > 0 && j2.faults == 0, len, &j2, 0,
	       "\"first_faults\": %" PRIu64 ", \"second_faults\": %" PRIu64,
	       (uint64_t)j1.faults, (uint64_t)j2.faults);

	/* WRITE: the device writes, the CPU must see it. */
	pattern(bounce, len, 0x2222);
	rc = svm_simple(fd, HMM_GPU_SVM_WRITE, mem, NULL, bounce, len, 0, &j1);
	bad = rc ? -2 : check_pattern(mem, len, 0x2222);
	result(kind, "write", rc == 0 && bad < 0, len, &j1, rc, "\"bad_index\": %ld", bad);

	/* FILL the second half, then COPY it over the first. */
	rc = svm_simple(fd, HMM_GPU_SVM_FILL, mem + half, NULL, NULL, half,
			0xfeedface12345678ull, &j1);
	bad = rc ? -2 : check_u64(mem + half, half, 0xfeedface12345678ull);
	if (bad < 0 && !rc && check_pattern(mem, half, 0x2222) >= 0)
		bad = -3; /* the fill spilled into the first half */
	result(kind, "fill", rc == 0 && bad == -1, half, &j1, rc, "\"bad_index\": %ld", bad);
	rc = svm_simple(fd, HMM_GPU_SVM_COPY, mem, mem + half, NULL, half, 0, &j1);
	bad = rc ? -2 : check_u64(mem, half, 0xfeedface12345678ull);
	result(kind, "copy", rc == 0 && bad < 0, half, &j1, rc, "\"bad_index\": %ld", bad);

	if (atomics && !exclusive_ok) {
		static const char *const why = "kernel built without CONFIG_DEVICE_PRIVATE: "
			"no device-exclusive entries, so no device atomics on system memory";

		jprintf("{\"test\": \"%s.atomic_add\", \"skip\": \"%s\"}", kind, why);
		jprintf("{\"test\": \"%s.cmpxchg\", \"skip\": \"%s\"}", kind, why);
		atomics = false;
	}
	if (!atomics) {
		memset(&j1, 0, sizeof(j1));
		j1.op = HMM_GPU_SVM_ATOMIC_ADD;
		j1.va = (uintptr_t)&p[1];
		j1.len = 8;
		j1.value = 5;
		rc = svm_job(fd, &j1);
		result(kind, "atomic_refused", rc == -EOPNOTSUPP, 8, &j1, rc, "\"errno\": %d",
		       -rc);
		/* a plain device write of the value the atomics would leave */
		rc = svm_simple(fd, HMM_GPU_SVM_FILL, &p[1], NULL, NULL, 8, 7, &j1);
		result(kind, "fill_word", rc == 0 && p[1] == 7, 8, &j1, rc,
		       "\"now\": %" PRIu64, p[1]);
		return;
	}

	/* Atomics on the CPU's values. */
	p[1] = 100;
	memset(&j1, 0, sizeof(j1));
	j1.op = HMM_GPU_SVM_ATOMIC_ADD;
	j1.va = (uintptr_t)&p[1];
	j1.len = 8;
	j1.value = 5;
	rc = svm_job(fd, &j1);
	result(kind, "atomic_add", rc == 0 && j1.result == 100 && p[1] == 105, 8, &j1, rc,
	       "\"old\": %" PRIu64 ", \"now\": %" PRIu64, (uint64_t)j1.result, p[1]);
	memset(&j2, 0, sizeof(j2));
	j2.op = HMM_GPU_SVM_CMPXCHG;
	j2.va = (uintptr_t)&p[1];
	j2.len = 8;
	j2.compare = 105;
	j2.value = 7;
	rc = svm_job(fd, &j2);
	bool ok = rc == 0 && j2.result == 105 && p[1] == 7;
	j2.compare = 1; /* does not match: no store */
	j2.value = 9;
	rc = rc ? rc : svm_job(fd, &j2);
	ok = ok && rc == 0 && j2.result == 7 && p[1] == 7;
	result(kind, "cmpxchg", ok, 8, &j2, rc, "\"now\": %" PRIu64, p[1]);
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_gpu0";
	struct hmm_gpu_svm_job j;
	struct hmm_gpu_svm_stats st;
	char path[] = "/tmp/svm-mirror-XXXXXX";
	char *m, *anon, *file, *thp, *ro, *gone;
	int opt, rc, tfd;
	long bad;

	while ((opt = getopt(argc, argv, "d:")) != -1) {
		if (opt == 'd')
			dev = optarg;
		else {
			fprintf(stderr, "usage: %s [-d DEV]\n", argv[0]);
			return 2;
		}
	}
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		jprintf("{\"test\": \"bind\", \"ok\": false, \"errno\": %d, \"error\": \"%s\"}",
			-fd, strerror(-fd));
		return 1;
	}
	jprintf("{\"test\": \"bind\", \"ok\": true, \"ctx\": %u}", ctx);
	{
		struct hmm_gpu_info info;

		memset(&info, 0, sizeof(info));
		rc = ioctl(fd, HMM_GPU_IOC_INFO, &info) ? -errno : 0;
		exclusive_ok = rc == 0 && (info.features & HMM_GPU_FEATURE_EXCLUSIVE);
		result("info", "features", rc == 0, 0, NULL, rc, "\"features\": %u", info.features);
	}
	bounce = aligned_alloc(4096, HUGE_SZ);
	if (!bounce)
		return 2;

	m = malloc(SMALL + 64);
	run_kind("malloc", m + 16, SMALL, true); /* not page aligned on purpose */

	anon = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	run_kind("anon", anon, SMALL, true);

	tfd = mkstemp(path);
	if (tfd < 0 || ftruncate(tfd, SMALL)) {
		perror("tmpfs file");
		return 2;
	}
	unlink(path);
	file = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_SHARED, tfd, 0);
	run_kind("file", file, SMALL, false);
	/* what the device wrote is in the page cache: read(2) sees it */
	{
		uint64_t v = 0;

		rc = pread(tfd, &v, 8, 8) == 8 ? 0 : -errno;
		result("file", "pread_sees_device", rc == 0 && v == 7, 8, NULL, rc,
		       "\"value\": %" PRIu64, v);
	}

	m = mmap(NULL, HUGE_SZ + HPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	thp = (char *)(((uintptr_t)m + HPAGE - 1) & ~(uintptr_t)(HPAGE - 1));
	rc = madvise(thp, HUGE_SZ, MADV_HUGEPAGE) ? -errno : 0;
	result("thp", "madvise", rc == 0, HUGE_SZ, NULL, rc, "\"error\": \"%s%s\"",
	       rc ? strerror(-rc) : "",
	       rc == -ENOSYS ? " (kernel without CONFIG_ADVISE_SYSCALLS)" : "");
	{
		uint64_t before = stats_of(fd).huge_mapped;

		run_kind("thp", thp, HUGE_SZ, true);
		/* what a PMD maps on the CPU, one 2 MiB leaf maps on the device */
		result("thp", "huge_leaf", anon_huge_kb() < 2048 ||
		       stats_of(fd).huge_mapped > before, HUGE_SZ, NULL, 0,
		       "\"huge_mapped\": %llu, \"anon_huge_kb\": %ld",
		       (unsigned long long)(stats_of(fd).huge_mapped - before), anon_huge_kb());
	}

	/* never touched by the CPU: the device reads zeros */
	anon = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(bounce, 0xa5, SMALL);
	rc = svm_simple(fd, HMM_GPU_SVM_READ, anon, NULL, bounce, SMALL, 0, &j);
	bad = rc ? -2 : check_u64(bounce, SMALL, 0);
	result("untouched", "read_zero", rc == 0 && bad < 0, SMALL, &j, rc,
	       "\"bad_index\": %ld", bad);
	rc = svm_simple(fd, HMM_GPU_SVM_FILL, anon, NULL, NULL, SMALL, 0x77, &j);
	bad = rc ? -2 : check_u64(anon, SMALL, 0x77);
	result("untouched", "fill", rc == 0 && bad < 0, SMALL, &j, rc, "\"bad_index\": %ld", bad);

	/* read-only: the device may read, not write */
	ro = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill_u64(ro, SMALL, 0x5151);
	mprotect(ro, SMALL, PROT_READ);
	rc = svm_simple(fd, HMM_GPU_SVM_READ, ro, NULL, bounce, SMALL, 0, &j);
	bad = rc ? -2 : check_u64(bounce, SMALL, 0x5151);
	result("readonly", "read", rc == 0 && bad < 0, SMALL, &j, rc, "\"bad_index\": %ld", bad);
	rc = svm_simple(fd, HMM_GPU_SVM_FILL, ro, NULL, NULL, SMALL, 0x99, &j);
	bad = check_u64(ro, SMALL, 0x5151);
	result("readonly", "fill_refused", rc == -EPERM && bad < 0, SMALL, &j, rc,
	       "\"bad_index\": %ld", bad);

	/* unmapped: EFAULT */
	gone = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(gone, SMALL);
	rc = svm_simple(fd, HMM_GPU_SVM_READ, gone, NULL, bounce, 4096, 0, &j);
	result("unmapped", "read_refused", rc == -EFAULT, 4096, &j, rc, NULL);

	/* munmap gives back the page tables of every span it reached */
	{
		size_t big = 64u << 20;
		struct hmm_gpu_svm_stats s0 = stats_of(fd), s1, s2;
		char *raw = mmap(NULL, big + 2 * HPAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		/*
		 * One page into a 2 MiB span: the range touches 33 spans, each
		 * with a level-0 table of its own, and its unaligned munmap
		 * must free the two at its ends too.
		 */
		char *b = (char *)(((uintptr_t)raw + HPAGE - 1) & ~(uintptr_t)(HPAGE - 1)) + 4096;

		madvise(b, big, MADV_NOHUGEPAGE);
		memset(b, 3, big);
		rc = 0;
		for (size_t off = 0; !rc && off < big; off += HUGE_SZ)
			rc = svm_simple(fd, HMM_GPU_SVM_READ, b + off, NULL, bounce, HUGE_SZ, 0,
					NULL);
		s1 = stats_of(fd);
		munmap(b, big);
		s2 = stats_of(fd);
		munmap(raw, big + 2 * HPAGE);
		/*
		 * The munmap frees at least the 33 tables; a table that was
		 * there before (prepared for a fault in a span this mapping now
		 * reuses, and left empty) may go with them.
		 */
		result("reclaim", "munmap", rc == 0 && s1.pt_pages >= s2.pt_pages + 33 &&
		       s2.pt_pages <= s0.pt_pages && s2.mapped == s0.mapped, big, NULL, rc,
		       "\"pt_pages\": [%llu, %llu, %llu], \"mapped\": [%llu, %llu, %llu]",
		       (unsigned long long)s0.pt_pages, (unsigned long long)s1.pt_pages,
		       (unsigned long long)s2.pt_pages, (unsigned long long)s0.mapped,
		       (unsigned long long)s1.mapped, (unsigned long long)s2.mapped);
	}

	/*
	 * One invalidation of a range the device maps page by page takes one
	 * TLB fence, not one per page (as nouveau does one per invalidate).
	 */
	{
		size_t len = 64 * 4096;
		char *raw = mmap(NULL, len + HPAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *b = (char *)(((uintptr_t)raw + HPAGE - 1) & ~(uintptr_t)(HPAGE - 1));
		struct hmm_gpu_svm_stats s0, s1;

		madvise(b, len, MADV_NOHUGEPAGE);
		memset(b, 5, len);
		rc = svm_simple(fd, HMM_GPU_SVM_READ, b, NULL, bounce, len, 0, NULL);
		s0 = stats_of(fd);
		madvise(b, len, MADV_DONTNEED);
		s1 = stats_of(fd);
		munmap(raw, len + HPAGE);
		result("reclaim", "fence_per_range", rc == 0 && s1.invalidations == s0.invalidations + 1 &&
		       s1.tlb_invalidates == s0.tlb_invalidates + 1 && s1.mapped + 64 == s0.mapped,
		       len, NULL, rc, "\"invalidations\": %llu, \"tlb_invalidates\": %llu, "
		       "\"unmapped\": %lld", (unsigned long long)(s1.invalidations - s0.invalidations),
		       (unsigned long long)(s1.tlb_invalidates - s0.tlb_invalidates),
		       (long long)(s0.mapped - s1.mapped));

		/*
		 * The same for a migration of pages the device maps: one fence,
		 * ahead of (on a 1.3 device, inside) the copy, not one per page.
		 */
		raw = mmap(NULL, len + HPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
		b = (char *)(((uintptr_t)raw + HPAGE - 1) & ~(uintptr_t)(HPAGE - 1));
		madvise(b, len, MADV_NOHUGEPAGE);
		memset(b, 6, len);
		rc = svm_simple(fd, HMM_GPU_SVM_READ, b, NULL, bounce, len, 0, NULL);
		s0 = stats_of(fd);
		{
			uint64_t moved = 0;
			int mrc = rc ? rc : svm_migrate(fd, b, len, HMM_GPU_MIGRATE_TO_DEV, &moved);

			s1 = stats_of(fd);
			if (mrc == -EOPNOTSUPP)
				jprintf("{\"test\": \"migrate.fence_per_range\", \"skip\": "
					"\"no device memory (kernel without CONFIG_DEVICE_PRIVATE)\"}");
			else
				result("migrate", "fence_per_range", !mrc && moved == 64 &&
				       s1.tlb_invalidates == s0.tlb_invalidates + 1, len, NULL, mrc,
				       "\"moved\": %llu, \"tlb_invalidates\": %llu",
				       (unsigned long long)moved,
				       (unsigned long long)(s1.tlb_invalidates - s0.tlb_invalidates));
		}
		munmap(raw, len + HPAGE);
	}

	/*
	 * The process a context mirrors exits while another holds the file:
	 * exit_mmap()'s invalidation must take every translation (the freed
	 * pages must not stay mapped for the device until the file goes).
	 */
	{
		int pfd[2];
		char verdict[256] = "";

		if (pipe(pfd) == 0 && fork() == 0) {
			uint32_t c;
			int f = svm_open_bind(dev, &c);
			char *b = mmap(NULL, SMALL, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			memset(b, 5, SMALL);
			if (f < 0 || svm_simple(f, HMM_GPU_SVM_READ, b, NULL, bounce, SMALL, 0,
						NULL)) {
				dprintf(pfd[1], "setup failed");
				_exit(1);
			}
			if (fork() == 0) {	/* holds f while its parent exits */
				struct hmm_gpu_svm_stats st;
				int i;

				for (i = 0; i < 200; i++) {
					st = stats_of(f);
					if (getppid() == 1 && !st.mapped)
						break;
					usleep(10000);
				}
				dprintf(pfd[1], "%llu %llu %d", (unsigned long long)st.mapped,
					(unsigned long long)st.pages_mapped, getppid() == 1);
				_exit(0);
			}
			_exit(0);
		}
		close(pfd[1]);
		rc = read(pfd[0], verdict, sizeof(verdict) - 1) > 0 ? 0 : -EIO;
		close(pfd[0]);
		{
			unsigned long long left = ~0ull, had = 0;
			int orphan = 0;

			sscanf(verdict, "%llu %llu %d", &left, &had, &orphan);
			result("exit", "unmapped", rc == 0 && orphan && had > 0 && left == 0, 0,
			       NULL, rc, "\"mapped_after_exit\": %llu, \"mapped_before\": %llu, "
			       "\"verdict\": \"%s\"", left, had, verdict);
		}
	}

	memset(&st, 0, sizeof(st));
	rc = ioctl(fd, HMM_GPU_IOC_SVM_STATS, &st) ? -errno : 0;
	result("svm", "stats", rc == 0 && st.faults > 0 && st.pages_mapped > 0, 0, NULL, rc,
	       "\"faults_total\": %" PRIu64 ", \"fault_batches\": %" PRIu64
	       ", \"pages_mapped\": %" PRIu64 ", \"invalidations\": %" PRIu64
	       ", \"tlb_invalidates\": %" PRIu64 ", \"replays\": %" PRIu64
	       ", \"cancels\": %" PRIu64 ", \"mapped\": %" PRIu64 ", \"pt_pages\": %" PRIu64
	       ", \"huge_mapped\": %" PRIu64,
	       (uint64_t)st.faults, (uint64_t)st.fault_batches, (uint64_t)st.pages_mapped,
	       (uint64_t)st.invalidations, (uint64_t)st.tlb_invalidates,
	       (uint64_t)st.replays, (uint64_t)st.cancels, (uint64_t)st.mapped,
	       (uint64_t)st.pt_pages, (uint64_t)st.huge_mapped);
	/*
	 * SVM_BIND whose answer cannot be copied back (a read-only struct):
	 * EFAULT, the context is torn down again and the file can bind later.
	 */
	{
		struct hmm_gpu_svm_bind *rob, b;
		int fd2 = open(dev, O_RDWR | O_CLOEXEC);

		rob = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(rob, 0, 4096);
		mprotect(rob, 4096, PROT_READ);
		rc = fd2 < 0 ? -errno : ioctl(fd2, HMM_GPU_IOC_SVM_BIND, rob) ? -errno : 0;
		memset(&b, 0, sizeof(b));
		bad = fd2 < 0 ? -errno : ioctl(fd2, HMM_GPU_IOC_SVM_BIND, &b) ? -errno : 0;
		result("bind", "copy_back_fails", rc == -EFAULT && bad == 0, 0, NULL, rc,
		       "\"rebind\": %ld", bad);
		if (fd2 >= 0)
			close(fd2);
		munmap(rob, 4096);
	}
	close(fd);
	return failures ? 1 : 0;
}

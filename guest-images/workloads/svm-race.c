// SPDX-License-Identifier: GPL-2.0-only
/*
 * svm-race: device jobs, CPU faults and migrations on the same pages at once,
 * every byte verified. It is the stress for the races between the fault
 * worker (hmm_range_fault() -> page table update) and a migration that
 * moves or frees the page in between: a device write that lands in a page
 * the process no longer owns is lost, and the checks below see it.
 *
 *   svm-race [-d /dev/hmm_gpuN] [-t seconds] [-p pages] [-w writers]
 *            [-c cpu readers] [-m migrators] [-f forkers] [-u]
 *
 * Each page belongs to one writer thread, which fills it on the device with
 * a per-page sequence number (SVM FILL), reads it back on the device (SVM
 * READ) and publishes it as confirmed. Migrator threads move random runs of
 * pages to VRAM and back; CPU reader threads read pages (a page in VRAM
 * migrates back on that touch). Checked:
 *   - the device reads back exactly what it just wrote (writer);
 *   - a CPU read of a page shows one value in every word, never less than
 *     the last value confirmed before the read, never more than issued;
 *   - at the end, every page holds its last confirmed value, read by the
 *     CPU and by the device;
 *   - a forker's child sees its copy of the pages stay as they were when
 *     fork() returned: fork write-protects the parent's pages, so a device
 *     write after it that lands in a page the child shares (a writable
 *     translation that outlived fork's invalidation) shows up there.
 * -u: tolerate the device going away (ENODEV) and stop quietly: background
 * load while the driver is unbound.
 *
 * JSON lines: one per check ({"test": "writer"|"cpu"|"final", "ok": ...}) and
 * a summary ({"test": "summary", "jobs": n, "migrations": n, "cpu_reads": n}).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "svm-common.h"

#define PAGE 4096ul

static const char *dev = "/dev/hmm_gpu0";
static unsigned long npages = 64;
static int seconds = 5, nwriters = 2, nreaders = 1, nmigrators = 1, nforkers;
static bool until_gone;

static char *mem;
static _Atomic uint64_t *issued;	/* per page: last value a writer started */
static _Atomic uint64_t *confirmed;	/* per page: last value read back */
static _Atomic bool stop;
static _Atomic int failures;
static _Atomic uint64_t njobs, nmigrations, nreads, nmigrated, nforks;
static char *child_msg;		/* MAP_SHARED: what a forker's child saw */
static int fd;

static void fail(const char *test, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (atomic_fetch_add(&failures, 1) < 20)
		jprintf("{\"test\": \"%s\", \"ok\": false, \"error\": \"%s\"}", test, msg);
	atomic_store(&stop, true);
}

/* A device error that means the device went away: stop (with -u: quietly). */
static bool gone(int rc)
{
	if (rc != -ENODEV)
		return false;
	if (!until_gone)
		fail("device", "device removed (ENODEV)");
	atomic_store(&stop, true);
	return true;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *writer(void *arg)
{
	long w = (long)arg;
	uint64_t *buf = aligned_alloc(PAGE, PAGE);
	uint64_t seed = 0x9e3779b97f4a7c15ull * (w + 1);

	while (!atomic_load(&stop)) {
		unsigned long p = rnd(&seed) % npages;
		uint64_t v;
		long bad;
		int rc;

		p -= p % nwriters;
		p += w;
		if (p >= npages)
			continue;
		v = atomic_load(&issued[p]) + 1;
		atomic_store(&issued[p], v);
		rc = svm_simple(fd, HMM_GPU_SVM_FILL, mem + p * PAGE, NULL, NULL, PAGE, v, NULL);
		if (gone(rc))
			break;
		if (rc) {
			fail("writer", "page %lu: device FILL of %llu: %s", p,
			     (unsigned long long)v, strerror(-rc));
			break;
		}
		memset(buf, 0, PAGE);
		rc = svm_simple(fd, HMM_GPU_SVM_READ, mem + p * PAGE, NULL, buf, PAGE, 0, NULL);
		if (gone(rc))
			break;
		if (rc) {
			fail("writer", "page %lu: device READ: %s", p, strerror(-rc));
			break;
		}
		bad = check_u64(buf, PAGE, v);
		if (bad >= 0) {
			fail("writer", "page %lu: device wrote %llu, read back %llu at word %ld",
			     p, (unsigned long long)v, (unsigned long long)buf[bad], bad);
			break;
		}
		atomic_store(&confirmed[p], v);
		atomic_fetch_add(&njobs, 2);
	}
	free(buf);
	return NULL;
}

static void *cpu_reader(void *arg)
{
	uint64_t seed = 0x51afd7ed558ccd1dull * ((long)arg + 1);

	while (!atomic_load(&stop)) {
		unsigned long p = rnd(&seed) % npages;
		uint64_t lo = atomic_load(&confirmed[p]);
		const volatile uint64_t *q = (const volatile uint64_t *)(mem + p * PAGE);
		uint64_t first = q[0], hi;
		unsigned long i;

		for (i = 1; i < PAGE / 8; i++)
			if (q[i] != first)
				break;
		hi = atomic_load(&issued[p]);
		/* A FILL in flight may be half done: only a finished page is checked. */
		if (i < PAGE / 8 && hi != lo)
			continue;
		if (i < PAGE / 8) {
			fail("cpu", "page %lu: word %lu is %llu, word 0 is %llu, no write in flight",
			     p, i, (unsigned long long)q[i], (unsigned long long)first);
			break;
		}
		if (first < lo || first > hi) {
			fail("cpu", "page %lu holds %llu: the device had confirmed %llu (issued %llu)",
			     p, (unsigned long long)first, (unsigned long long)lo,
			     (unsigned long long)hi);
			break;
		}
		atomic_fetch_add(&nreads, 1);
	}
	return NULL;
}

static void *migrator(void *arg)
{
	uint64_t seed = 0x2545f4914f6cdd1dull * ((long)arg + 1);

	while (!atomic_load(&stop)) {
		unsigned long p = rnd(&seed) % npages;
		unsigned long n = 1 + rnd(&seed) % 16;
		uint32_t dir = rnd(&seed) % 4 ? HMM_GPU_MIGRATE_TO_DEV : HMM_GPU_MIGRATE_TO_SYS;
		uint64_t moved = 0;
		int rc;

		if (p + n > npages)
			n = npages - p;
		rc = svm_migrate(fd, mem + p * PAGE, n * PAGE, dir, &moved);
		if (gone(rc))
			break;
		if (rc && rc != -EBUSY) {
			fail("migrator", "SVM_MIGRATE %s of pages %lu+%lu: %s",
			     dir == HMM_GPU_MIGRATE_TO_DEV ? "to_dev" : "to_sys", p, n,
			     strerror(-rc));
			break;
		}
		atomic_fetch_add(&nmigrations, 1);
		atomic_fetch_add(&nmigrated, moved);
	}
	return NULL;
}

/* In a forker's child: is its copy of the pages what it was at fork()? */
static int child_check(char *snap, char *msg)
{
	unsigned long p, i;

	memcpy(snap, mem, npages * PAGE);
	usleep(3000);
	for (p = 0; p < npages; p++) {
		const uint64_t *was = (const uint64_t *)(snap + p * PAGE);
		const volatile uint64_t *q = (const volatile uint64_t *)(mem + p * PAGE);

		for (i = 0; i < PAGE / 8; i++)
			if (q[i] != was[i]) {
				snprintf(msg, PAGE, "page %lu word %lu changed from %llu to %llu "
					 "in the child, 3 ms after fork()", p, i,
					 (unsigned long long)was[i], (unsigned long long)q[i]);
				return 1;
			}
	}
	return 0;
}

static void *forker(void *arg)
{
	char *snap = malloc(npages * PAGE);

	(void)arg;
	while (snap && !atomic_load(&stop)) {
		int st = 0;
		pid_t pid = fork();

		if (pid == 0)
			_exit(child_check(snap, child_msg));
		if (pid < 0) {
			fail("fork", "fork: %s", strerror(errno));
			break;
		}
		if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
			fail("fork", "child status %#x: %s", st, child_msg[0] ? child_msg :
			     "(no message)");
			break;
		}
		atomic_fetch_add(&nforks, 1);
	}
	free(snap);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th[64];
	int nth = 0, opt, i;
	uint32_t ctx = 0;
	uint64_t t0;

	while ((opt = getopt(argc, argv, "d:t:p:w:c:m:f:u")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 't': seconds = atoi(optarg); break;
		case 'p': npages = strtoul(optarg, NULL, 0); break;
		case 'w': nwriters = atoi(optarg); break;
		case 'c': nreaders = atoi(optarg); break;
		case 'm': nmigrators = atoi(optarg); break;
		case 'f': nforkers = atoi(optarg); break;
		case 'u': until_gone = true; break;
		default:
			fprintf(stderr, "usage: %s [-d dev] [-t s] [-p pages] [-w writers] "
				"[-c readers] [-m migrators] [-f forkers] [-u]\n", argv[0]);
			return 2;
		}
	}
	if (!npages || nwriters < 1 || nreaders < 0 || nmigrators < 0 || nforkers < 0 ||
	    nwriters + nreaders + nmigrators + nforkers > 64) {
		fprintf(stderr, "svm-race: bad -p/-w/-c/-m/-f\n");
		return 2;
	}
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		jprintf("{\"test\": \"bind\", \"ok\": false, \"error\": \"%s: %s\"}", dev,
			strerror(-fd));
		return 1;
	}
	mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	issued = calloc(npages, sizeof(*issued));
	confirmed = calloc(npages, sizeof(*confirmed));
	child_msg = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || !issued || !confirmed || child_msg == MAP_FAILED)
		return 2;
	madvise(mem, npages * PAGE, MADV_NOHUGEPAGE);
	/* every page starts at 0 everywhere: written, so it is not the zero page */
	memset(mem, 0, npages * PAGE);

	t0 = now_ns();
	for (i = 0; i < nwriters; i++)
		pthread_create(&th[nth++], NULL, writer, (void *)(long)i);
	for (i = 0; i < nreaders; i++)
		pthread_create(&th[nth++], NULL, cpu_reader, (void *)(long)i);
	for (i = 0; i < nmigrators; i++)
		pthread_create(&th[nth++], NULL, migrator, (void *)(long)i);
	for (i = 0; i < nforkers; i++)
		pthread_create(&th[nth++], NULL, forker, (void *)(long)i);
	while (!atomic_load(&stop) && now_ns() - t0 < (uint64_t)seconds * 1000000000ull)
		usleep(20000);
	atomic_store(&stop, true);
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);

	if (!atomic_load(&failures) && !until_gone) {
		uint64_t *buf = aligned_alloc(PAGE, PAGE);
		unsigned long p;
		int bad = 0;

		for (p = 0; p < npages && bad < 5; p++) {
			uint64_t v = atomic_load(&confirmed[p]);
			long w = check_u64(mem + p * PAGE, PAGE, v);
			int rc;

			if (w >= 0) {
				fail("final", "page %lu: CPU reads %llu, last confirmed %llu", p,
				     (unsigned long long)((uint64_t *)(mem + p * PAGE))[w],
				     (unsigned long long)v);
				bad++;
				continue;
			}
			rc = svm_simple(fd, HMM_GPU_SVM_READ, mem + p * PAGE, NULL, buf, PAGE, 0,
					NULL);
			w = rc ? 0 : check_u64(buf, PAGE, v);
			if (rc || w >= 0) {
				fail("final", "page %lu: device reads %s%llu, last confirmed %llu", p,
				     rc ? strerror(-rc) : "", rc ? 0ull :
				     (unsigned long long)buf[w], (unsigned long long)v);
				bad++;
			}
		}
		free(buf);
		if (!bad)
			jprintf("{\"test\": \"final\", \"ok\": true, \"pages\": %lu}", npages);
	}
	jprintf("{\"test\": \"summary\", \"ok\": %s, \"seconds\": %.1f, \"jobs\": %llu, "
		"\"migrations\": %llu, \"pages_migrated\": %llu, \"cpu_reads\": %llu, \"forks\": %llu, "
		"\"ctx\": %u}",
		atomic_load(&failures) ? "false" : "true", (now_ns() - t0) / 1e9,
		(unsigned long long)atomic_load(&njobs),
		(unsigned long long)atomic_load(&nmigrations),
		(unsigned long long)atomic_load(&nmigrated),
		(unsigned long long)atomic_load(&nreads),
		(unsigned long long)atomic_load(&nforks), ctx);
	return atomic_load(&failures) ? 1 : 0;
}

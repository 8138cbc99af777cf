// SPDX-License-Identifier: GPL-2.0-only
/*
 * svm-invalidate: device jobs racing with the CPU changing the address space.
 *
 * Usage: svm-invalidate [-d /dev/hmm_gpu0] [-t SECONDS] [-j DEVICE_THREADS]
 *
 * For -t seconds (default 3), device threads run FILL/READ jobs on slots of
 * anonymous memory while mutator threads munmap+mmap, mprotect,
 * madvise(MADV_DONTNEED) and fork (the child writes: copy-on-write). Each
 * operation that has a defined outcome checks it with a device job:
 *   remap:    a fresh mapping at the same address reads as zeros
 *   dontneed: after MADV_DONTNEED the device reads zeros
 *   mprotect: a read-only slot refuses device writes (EPERM) and keeps its data
 *   fork:     the parent's data is unchanged by the child's writes; after the
 *             parent writes (COW break) the device sees the parent's new data
 *   jobs:     FILL then READ back by the device and by the CPU agree
 * A "chaos" pair also runs jobs on one region while another thread unmaps,
 * protects and zaps it without any coordination: only errors other than
 * EFAULT/EPERM are failures there.
 * One JSON line per operation kind, exit status 0 only if all were ok.
 */
#include <pthread.h>
#include <sys/wait.h>

#include "svm-common.h"

#define SLOTS 8
#define SLOT_SZ (64u << 10)
#define CHAOS_SZ (256u << 10)

struct slot {
	pthread_mutex_t lock;
	char *mem;
};

struct counter {
	const char *name;
	uint64_t ops;
	uint64_t fails;
	uint64_t errs;	/* unexpected errnos */
	char first[256];
	pthread_mutex_t lock;
};

static int fd = -1;
static uint32_t ctx;
static struct slot slots[SLOTS];
static volatile int stop;
static char *chaos;

enum { C_JOBS, C_REMAP, C_DONTNEED, C_MPROTECT, C_FORK, C_CHAOS, C_N };
static struct counter counters[C_N] = {
	{ "jobs" }, { "remap" }, { "dontneed" }, { "mprotect" }, { "fork" }, { "chaos" },
};

static void note(int c, bool fail, bool err, const char *fmt, ...)
{
	struct counter *k = &counters[c];
	va_list ap;

	pthread_mutex_lock(&k->lock);
	k->ops++;
	if (fail || err) {
		if (fail)
			k->fails++;
		if (err)
			k->errs++;
		if (!k->first[0]) {
			va_start(ap, fmt);
			vsnprintf(k->first, sizeof(k->first), fmt, ap);
			va_end(ap);
		}
	}
	pthread_mutex_unlock(&k->lock);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* The device reads the slot; 0 if every u64 equals v. */
static int dev_expect(char *mem, size_t len, uint64_t v, char *buf, long *bad)
{
	int rc = svm_simple(fd, HMM_GPU_SVM_READ, mem, NULL, buf, len, 0, NULL);

	*bad = rc ? -2 : check_u64(buf, len, v);
	return rc;
}

static void *device_thread(void *arg)
{
	uint64_t seed = (uintptr_t)arg * 7919 + 1;
	char *buf = malloc(SLOT_SZ);

	while (!stop) {
		struct slot *s = &slots[rnd(&seed) % SLOTS];
		uint64_t v = rnd(&seed) | 1;
		long bad;
		int rc;

		pthread_mutex_lock(&s->lock);
		rc = svm_simple(fd, HMM_GPU_SVM_FILL, s->mem, NULL, NULL, SLOT_SZ, v, NULL);
		if (!rc)
			rc = dev_expect(s->mem, SLOT_SZ, v, buf, &bad);
		if (rc)
			note(C_JOBS, true, true, "job on slot %p: errno %d", s->mem, -rc);
		else if (bad >= 0 || check_u64(s->mem, SLOT_SZ, v) >= 0)
			note(C_JOBS, true, false, "slot %p: device/CPU disagree at %ld", s->mem, bad);
		else
			note(C_JOBS, false, false, NULL);
		pthread_mutex_unlock(&s->lock);
	}
	free(buf);
	return NULL;
}

static void *mutator_thread(void *arg)
{
	int kind = (int)(uintptr_t)arg;
	uint64_t seed = kind * 104729 + 3;
	char *buf = malloc(SLOT_SZ);

	while (!stop) {
		struct slot *s = &slots[rnd(&seed) % SLOTS];
		long bad = -1;
		int rc = 0;

		pthread_mutex_lock(&s->lock);
		switch (kind) {
		case C_REMAP: {
			/* the device touches it, then it is replaced by a fresh mapping */
			rc = svm_simple(fd, HMM_GPU_SVM_FILL, s->mem, NULL, NULL, SLOT_SZ, 0xdead, NULL);
			munmap(s->mem, SLOT_SZ);
			char *m = mmap(s->mem, SLOT_SZ, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (m == MAP_FAILED) {
				note(kind, true, true, "mmap again: %s", strerror(errno));
				stop = 1;
				break;
			}
			if (!rc)
				rc = dev_expect(s->mem, SLOT_SZ, 0, buf, &bad);
			note(kind, rc || bad >= 0, rc != 0,
			     "remapped %p: errno %d, first non-zero u64 at %ld", s->mem, -rc, bad);
			break;
		}
		case C_DONTNEED:
			fill_u64(s->mem, SLOT_SZ, 0xabcd);
			rc = dev_expect(s->mem, SLOT_SZ, 0xabcd, buf, &bad);
			if (!rc && bad < 0 && madvise(s->mem, SLOT_SZ, MADV_DONTNEED)) {
				note(kind, true, true, "madvise(MADV_DONTNEED): %s%s", strerror(errno),
				     errno == ENOSYS ? " (kernel without CONFIG_ADVISE_SYSCALLS)" : "");
				break;
			}
			if (!rc && bad < 0)
				rc = dev_expect(s->mem, SLOT_SZ, 0, buf, &bad);
			note(kind, rc || bad >= 0, rc != 0,
			     "dontneed %p: errno %d, bad u64 at %ld (device read 0x%" PRIx64
			     ", CPU reads 0x%" PRIx64 ")", s->mem, -rc, bad,
			     bad >= 0 ? ((uint64_t *)buf)[bad] : 0,
			     bad >= 0 ? ((uint64_t *)s->mem)[bad] : 0);
			break;
		case C_MPROTECT:
			fill_u64(s->mem, SLOT_SZ, 0x1357);
			rc = dev_expect(s->mem, SLOT_SZ, 0x1357, buf, &bad);
			mprotect(s->mem, SLOT_SZ, PROT_READ);
			if (!rc && bad < 0) {
				int w = svm_simple(fd, HMM_GPU_SVM_FILL, s->mem, NULL, NULL, SLOT_SZ,
						   0x2468, NULL);

				if (w != -EPERM || check_u64(s->mem, SLOT_SZ, 0x1357) >= 0) {
					note(kind, true, w != 0 && w != -EPERM,
					     "fill of read-only %p: errno %d (want EPERM), data %s",
					     s->mem, -w, check_u64(s->mem, SLOT_SZ, 0x1357) >= 0 ?
					     "changed" : "kept");
					mprotect(s->mem, SLOT_SZ, PROT_READ | PROT_WRITE);
					break;
				}
			}
			mprotect(s->mem, SLOT_SZ, PROT_READ | PROT_WRITE);
			if (!rc && bad < 0) {
				rc = svm_simple(fd, HMM_GPU_SVM_FILL, s->mem, NULL, NULL, SLOT_SZ, 0x2468,
						NULL);
				bad = rc ? -2 : check_u64(s->mem, SLOT_SZ, 0x2468);
			}
			note(kind, rc || bad >= 0, rc != 0,
			     "mprotect %p: errno %d, bad u64 at %ld", s->mem, -rc, bad);
			break;
		case C_FORK: {
			uint64_t want = 0xaaaa;
			pid_t pid;
			int st = 0;

			rc = svm_simple(fd, HMM_GPU_SVM_FILL, s->mem, NULL, NULL, SLOT_SZ, 0xaaaa, NULL);
			if (rc) {
				note(kind, true, true, "fill before fork: errno %d", -rc);
				break;
			}
			pid = fork();
			if (pid == 0) {
				fill_u64(s->mem, SLOT_SZ, 0xbbbb); /* COW: the child's own copy */
				_exit(check_u64(s->mem, SLOT_SZ, 0xbbbb) < 0 ? 0 : 1);
			}
			waitpid(pid, &st, 0);
			rc = dev_expect(s->mem, SLOT_SZ, 0xaaaa, buf, &bad);
			if (!rc && bad < 0) {
				want = 0xcccc;
				fill_u64(s->mem, SLOT_SZ, want); /* the parent breaks COW */
				rc = dev_expect(s->mem, SLOT_SZ, want, buf, &bad);
			}
			note(kind, rc || bad >= 0 || st != 0, rc != 0,
			     "fork %p: errno %d, child status %d, bad u64 at %ld (want 0x%" PRIx64
			     ", device read 0x%" PRIx64 ", CPU reads 0x%" PRIx64 ")", s->mem, -rc, st,
			     bad, want, bad >= 0 ? ((uint64_t *)buf)[bad] : 0,
			     bad >= 0 ? ((uint64_t *)s->mem)[bad] : 0);
			break;
		}
		}
		pthread_mutex_unlock(&s->lock);
	}
	free(buf);
	return NULL;
}

static void *chaos_jobs(void *arg)
{
	uint64_t seed = 99;
	char *buf = malloc(CHAOS_SZ);

	(void)arg;
	while (!stop) {
		size_t off = (rnd(&seed) % (CHAOS_SZ / 4096)) * 4096;
		size_t len = 4096 * (1 + rnd(&seed) % 8);
		int rc;

		if (off + len > CHAOS_SZ)
			len = CHAOS_SZ - off;
		rc = svm_simple(fd, (rnd(&seed) & 1) ? HMM_GPU_SVM_READ : HMM_GPU_SVM_FILL,
				chaos + off, NULL, buf, len, 0x4242, NULL);
		note(C_CHAOS, false, rc && rc != -EFAULT && rc != -EPERM,
		     "chaos job: errno %d (only EFAULT/EPERM may happen)", -rc);
	}
	free(buf);
	return NULL;
}

static void *chaos_mutator(void *arg)
{
	uint64_t seed = 5;

	(void)arg;
	while (!stop) {
		switch (rnd(&seed) % 3) {
		case 0:
			munmap(chaos, CHAOS_SZ);
			usleep(100);
			mmap(chaos, CHAOS_SZ, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			break;
		case 1:
			mprotect(chaos, CHAOS_SZ, PROT_READ);
			usleep(100);
			mprotect(chaos, CHAOS_SZ, PROT_READ | PROT_WRITE);
			break;
		default:
			madvise(chaos, CHAOS_SZ, MADV_DONTNEED);
			break;
		}
		usleep(200);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_gpu0";
	double seconds = 3.0;
	int ndev = 2, opt, i, failures = 0;
	pthread_t th[16];
	int nth = 0;
	struct hmm_gpu_svm_stats st;
	uint64_t t0;

	while ((opt = getopt(argc, argv, "d:t:j:")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 't': seconds = atof(optarg); break;
		case 'j': ndev = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-d DEV] [-t SECONDS] [-j THREADS]\n", argv[0]);
			return 2;
		}
	}
	if (ndev < 1 || ndev > 8)
		ndev = 2;
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		jprintf("{\"test\": \"bind\", \"ok\": false, \"errno\": %d, \"error\": \"%s\"}",
			-fd, strerror(-fd));
		return 1;
	}
	jprintf("{\"test\": \"bind\", \"ok\": true, \"ctx\": %u}", ctx);
	for (i = 0; i < C_N; i++)
		pthread_mutex_init(&counters[i].lock, NULL);
	for (i = 0; i < SLOTS; i++) {
		pthread_mutex_init(&slots[i].lock, NULL);
		slots[i].mem = mmap(NULL, SLOT_SZ, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	chaos = mmap(NULL, CHAOS_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	t0 = now_ns();
	for (i = 0; i < ndev; i++)
		pthread_create(&th[nth++], NULL, device_thread, (void *)(uintptr_t)i);
	for (i = C_REMAP; i <= C_FORK; i++)
		pthread_create(&th[nth++], NULL, mutator_thread, (void *)(uintptr_t)i);
	pthread_create(&th[nth++], NULL, chaos_jobs, NULL);
	pthread_create(&th[nth++], NULL, chaos_mutator, NULL);
	while (!stop && now_ns() - t0 < (uint64_t)(seconds * 1e9))
		usleep(10000);
	stop = 1;
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);

	for (i = 0; i < C_N; i++) {
		struct counter *k = &counters[i];
		bool ok = k->ops > 0 && k->fails == 0 && k->errs == 0;
		char first[300] = "";
		char *p;

		for (p = k->first; *p; p++)
			if (*p == '"' || *p == '\\')
				*p = '\'';
		if (k->first[0])
			snprintf(first, sizeof(first), ", \"first_problem\": \"%s\"", k->first);
		failures += !ok;
		jprintf("{\"test\": \"%s\", \"ok\": %s, \"ctx\": %u, \"ops\": %" PRIu64
			", \"failed\": %" PRIu64 ", \"unexpected_errors\": %" PRIu64 "%s}",
			k->name, ok ? "true" : "false", ctx, k->ops, k->fails, k->errs, first);
	}
	memset(&st, 0, sizeof(st));
	if (ioctl(fd, HMM_GPU_IOC_SVM_STATS, &st) == 0)
		jprintf("{\"test\": \"stats\", \"ok\": %s, \"ctx\": %u, \"seconds\": %.3f, "
			"\"faults\": %" PRIu64 ", \"invalidations\": %" PRIu64
			", \"tlb_invalidates\": %" PRIu64 ", \"pages_mapped\": %" PRIu64 "}",
			st.invalidations > 0 ? "true" : "false", ctx, (now_ns() - t0) / 1e9,
			(uint64_t)st.faults, (uint64_t)st.invalidations,
			(uint64_t)st.tlb_invalidates, (uint64_t)st.pages_mapped);
	else
		jprintf("{\"test\": \"stats\", \"ok\": false, \"errno\": %d}", errno);
	close(fd);
	return failures ? 1 : 0;
}

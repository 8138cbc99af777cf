// SPDX-License-Identifier: GPL-2.0-only
/*
 * atomics: device atomics racing CPU atomics and reads on the same page.
 *
 * Usage: atomics [-d /dev/hmm_gpu0] [-t SECONDS] [-n DEVICE_THREADS] [-m CPU_THREADS]
 *
 * One page of anonymous memory holds the counters (each on its own cache
 * line): dev (only the device adds), shared (device and CPU add), and one
 * own counter per CPU writer thread. For -t seconds (default 2):
 *   - N device threads run SVM_JOB ATOMIC_ADD 1 on dev, then on shared (each
 *     job takes the page device-exclusive, so every CPU access to the page
 *     must take it back);
 *   - M CPU threads __atomic_fetch_add 1 on their own counter and on shared;
 *   - one CPU thread reads dev and shared and checks they never go backwards.
 * Every atomic returns the old value; a bitmap over those old values catches
 * a duplicate (two adds that saw the same value: a lost update). At the end:
 *   device_only: dev == device adds, the old values are exactly 0..dev-1
 *   shared:      shared == device adds + CPU adds, old values exactly 0..n-1
 *   cpu_own:     each own counter == that thread's adds
 *   reader:      no value read went backwards
 *   stats:       the context's SVM_STATS (invalidations from CPU touches)
 * One JSON line each; exit status 0 only if all were ok.
 */
#include <pthread.h>

#include "svm-common.h"

#define PAGE 4096ul
#define MAX_THREADS 8
#define DEV_CAP (1ul << 21)	/* adds per device thread */
#define CPU_CAP (1ul << 22)	/* adds per CPU thread */

struct counters {
	uint64_t dev;
	uint64_t pad0[7];
	uint64_t shared;
	uint64_t pad1[7];
	uint64_t own[MAX_THREADS][8];
};

struct bitmap {
	uint64_t *bits;
	uint64_t nbits;
	uint64_t dups, out_of_range;
	uint64_t first_dup;
};

static int fd = -1;
static volatile int stop;
static struct counters *cnt;
static struct bitmap bm_dev, bm_shared;
static uint64_t dev_adds[MAX_THREADS], dev_shared_adds[MAX_THREADS], cpu_adds[MAX_THREADS];
static int dev_err[MAX_THREADS];
static uint64_t reads, backwards;
static int failures;

static void bm_init(struct bitmap *b, uint64_t nbits)
{
	b->nbits = nbits;
	b->bits = calloc((nbits + 63) / 64, 8);
	if (!b->bits)
		exit(2);
}

static void bm_mark(struct bitmap *b, uint64_t v)
{
	uint64_t bit;

	if (v >= b->nbits) {
		__atomic_fetch_add(&b->out_of_range, 1, __ATOMIC_RELAXED);
		return;
	}
	bit = 1ull << (v % 64);
	if (__atomic_fetch_or(&b->bits[v / 64], bit, __ATOMIC_RELAXED) & bit) {
		if (!__atomic_fetch_add(&b->dups, 1, __ATOMIC_RELAXED))
			b->first_dup = v;
	}
}

/* Values below n not seen. */
static uint64_t bm_missing(const struct bitmap *b, uint64_t n)
{
	uint64_t v, miss = 0;

	for (v = 0; v < n && v < b->nbits; v++)
		if (!(b->bits[v / 64] & (1ull << (v % 64))))
			miss++;
	return miss + (n > b->nbits ? n - b->nbits : 0);
}

static void *device_thread(void *arg)
{
	int t = (int)(uintptr_t)arg;
	struct hmm_gpu_svm_job j;
	int rc;

	while (!stop && dev_adds[t] < DEV_CAP) {
		rc = svm_simple(fd, HMM_GPU_SVM_ATOMIC_ADD, &cnt->dev, NULL, NULL, 8, 1, &j);
		if (rc) {
			dev_err[t] = -rc;
			break;
		}
		dev_adds[t]++;
		bm_mark(&bm_dev, j.result);
		rc = svm_simple(fd, HMM_GPU_SVM_ATOMIC_ADD, &cnt->shared, NULL, NULL, 8, 1, &j);
		if (rc) {
			dev_err[t] = -rc;
			break;
		}
		dev_shared_adds[t]++;
		bm_mark(&bm_shared, j.result);
	}
	return NULL;
}

static void *cpu_writer(void *arg)
{
	int t = (int)(uintptr_t)arg;

	while (!stop && cpu_adds[t] < CPU_CAP) {
		__atomic_fetch_add(&cnt->own[t][0], 1, __ATOMIC_SEQ_CST);
		bm_mark(&bm_shared, __atomic_fetch_add(&cnt->shared, 1, __ATOMIC_SEQ_CST));
		cpu_adds[t]++;
		if (!(cpu_adds[t] % 16))
			usleep(20); /* let the device win the page now and then */
	}
	return NULL;
}

static void *cpu_reader(void *arg)
{
	uint64_t last_dev = 0, last_shared = 0;

	(void)arg;
	while (!stop) {
		uint64_t d = __atomic_load_n(&cnt->dev, __ATOMIC_ACQUIRE);
		uint64_t s = __atomic_load_n(&cnt->shared, __ATOMIC_ACQUIRE);

		if (d < last_dev || s < last_shared)
			backwards++;
		last_dev = d;
		last_shared = s;
		reads++;
		if (!(reads % 64))
			usleep(10);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_gpu0";
	double seconds = 2.0;
	int ndev = 2, ncpu = 2, opt, i, nth = 0, err = 0;
	uint64_t dsum = 0, dssum = 0, csum = 0, t0, miss;
	struct hmm_gpu_svm_stats st;
	pthread_t th[2 * MAX_THREADS + 1];
	uint32_t ctx = 0;
	bool own_ok = true;
	char own[512] = "";
	size_t olen = 0;

	while ((opt = getopt(argc, argv, "d:t:n:m:")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 't': seconds = atof(optarg); break;
		case 'n': ndev = atoi(optarg); break;
		case 'm': ncpu = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-d DEV] [-t S] [-n DEV_THREADS] [-m CPU_THREADS]\n",
				argv[0]);
			return 2;
		}
	}
	if (ndev < 1 || ndev > MAX_THREADS || ncpu < 1 || ncpu > MAX_THREADS || seconds <= 0)
		return 2;
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		svm_report(&failures, "bind", false, "\"errno\": %d, \"error\": \"%s\"", -fd, strerror(-fd));
		return 1;
	}
	svm_report(&failures, "bind", true, "\"ctx\": %u", ctx);
	cnt = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (cnt == MAP_FAILED)
		return 2;
	memset(cnt, 0, PAGE);
	bm_init(&bm_dev, DEV_CAP * ndev);
	bm_init(&bm_shared, DEV_CAP * ndev + CPU_CAP * ncpu);

	t0 = now_ns();
	for (i = 0; i < ndev; i++)
		pthread_create(&th[nth++], NULL, device_thread, (void *)(uintptr_t)i);
	for (i = 0; i < ncpu; i++)
		pthread_create(&th[nth++], NULL, cpu_writer, (void *)(uintptr_t)i);
	pthread_create(&th[nth++], NULL, cpu_reader, NULL);
	while (now_ns() - t0 < (uint64_t)(seconds * 1e9))
		usleep(10000);
	stop = 1;
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	t0 = now_ns() - t0;

	for (i = 0; i < ndev; i++) {
		dsum += dev_adds[i];
		dssum += dev_shared_adds[i];
		if (dev_err[i] && !err)
			err = dev_err[i];
	}
	for (i = 0; i < ncpu; i++) {
		uint64_t v = __atomic_load_n(&cnt->own[i][0], __ATOMIC_SEQ_CST);

		csum += cpu_adds[i];
		own_ok &= v == cpu_adds[i];
		olen += snprintf(own + olen, sizeof(own) - olen, "%s[%" PRIu64 ", %" PRIu64 "]",
				 i ? ", " : "", v, cpu_adds[i]);
	}

	miss = bm_missing(&bm_dev, dsum);
	svm_report(&failures, "device_only", !err && dsum > 0 && cnt->dev == dsum && !bm_dev.dups && !miss &&
	       !bm_dev.out_of_range,
	       "\"errno\": %d, \"final\": %" PRIu64 ", \"device_adds\": %" PRIu64
	       ", \"device_threads\": %d, \"duplicate_olds\": %" PRIu64 ", \"missing_olds\": %"
	       PRIu64 ", \"out_of_range\": %" PRIu64 ", \"seconds\": %.3f, \"adds_per_s\": %.0f",
	       err, (uint64_t)cnt->dev, dsum, ndev, bm_dev.dups, miss, bm_dev.out_of_range,
	       t0 / 1e9, dsum / (t0 / 1e9));
	miss = bm_missing(&bm_shared, dssum + csum);
	svm_report(&failures, "shared", !err && dssum > 0 && csum > 0 && cnt->shared == dssum + csum &&
	       !bm_shared.dups && !miss && !bm_shared.out_of_range,
	       "\"final\": %" PRIu64 ", \"expected\": %" PRIu64 ", \"device_adds\": %" PRIu64
	       ", \"cpu_adds\": %" PRIu64 ", \"cpu_threads\": %d, \"duplicate_olds\": %" PRIu64
	       ", \"first_duplicate\": %" PRIu64 ", \"missing_olds\": %" PRIu64
	       ", \"out_of_range\": %" PRIu64, (uint64_t)cnt->shared, dssum + csum, dssum, csum,
	       ncpu, bm_shared.dups, bm_shared.first_dup, miss, bm_shared.out_of_range);
	svm_report(&failures, "cpu_own", own_ok && csum > 0, "\"counters_and_adds\": [%s]", own);
	svm_report(&failures, "reader", reads > 0 && !backwards, "\"reads\": %" PRIu64 ", \"backwards\": %"
	       PRIu64, reads, backwards);
	memset(&st, 0, sizeof(st));
	if (ioctl(fd, HMM_GPU_IOC_SVM_STATS, &st) == 0)
		svm_report(&failures, "stats", true, "\"faults\": %" PRIu64 ", \"invalidations\": %" PRIu64
		       ", \"tlb_invalidates\": %" PRIu64 ", \"pages_mapped\": %" PRIu64,
		       (uint64_t)st.faults, (uint64_t)st.invalidations,
		       (uint64_t)st.tlb_invalidates, (uint64_t)st.pages_mapped);
	else
		svm_report(&failures, "stats", false, "\"errno\": %d", errno);
	close(fd);
	return failures ? 1 : 0;
}

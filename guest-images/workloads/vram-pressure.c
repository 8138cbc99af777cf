// SPDX-License-Identifier: GPL-2.0-only
/*
 * vram-pressure: a working set twice the VRAM, migrated in pieces.
 *
 * Usage: vram-pressure [-d /dev/hmm_gpuN] [-p PIECE_KiB] [-x FACTOR]
 *
 * Without -d, the hmm-gpu device with the smallest VRAM is used (the default
 * configuration gives gpu2 `vram-size: 8M`). An anonymous working set of
 * FACTOR (default 2) times the VRAM is filled by the CPU and migrated to the
 * device piece by piece (default 1 MiB): VRAM overflows, so the driver must
 * evict the least recently migrated chunks. Then:
 *   migrate:     every piece moved; vram_used never exceeded vram_size;
 *                evictions > 0 and pages_evicted > 0
 *   device_read: the device reads the whole working set (some in VRAM, the
 *                rest evicted to system memory): the CPU's data
 *   device_fill: each piece is migrated again and the device overwrites it
 *                (more eviction, now of data that exists only in VRAM)
 *   cpu_verify:  the CPU reads everything: evicted and still-resident data
 *                are the device's
 *   summary:     chunks evicted, pages evicted, bytes moved each way
 * One JSON line each; exit status 0 only if all were ok.
 */
#include "svm-common.h"

#define PAGE 4096ul

static int fd = -1;
static int failures;

static inline uint64_t pat(uint64_t g, size_t i)
{
	return (g << 56) ^ (i * 0x9e3779b97f4a7c15ull);
}

/* The hmm-gpu device with the smallest VRAM. */
static int pick_device(char *path, size_t cap)
{
	uint64_t best = 0;
	int i;

	path[0] = 0;
	for (i = 0; i < 16; i++) {
		struct hmm_gpu_vram_stats st;
		char p[64];
		int f;

		snprintf(p, sizeof(p), "/dev/hmm_gpu%d", i);
		f = open(p, O_RDWR | O_CLOEXEC);
		if (f < 0)
			continue;
		memset(&st, 0, sizeof(st));
		if (!ioctl(f, HMM_GPU_IOC_VRAM_STATS, &st) && st.vram_size &&
		    (!best || st.vram_size < best)) {
			best = st.vram_size;
			snprintf(path, cap, "%s", p);
		}
		close(f);
	}
	return path[0] ? 0 : -ENODEV;
}

#define D(a, b) ((uint64_t)((b) - (a)))

int main(int argc, char **argv)
{
	char dev[64] = "";
	size_t piece = 1ul << 20, size, n64, off, i;
	struct hmm_gpu_vram_stats s0, s1, st;
	uint64_t pages, moved = 0, faults = 0, max_used = 0, t0, tmig;
	uint64_t *mem, *buf;
	int opt, rc = 0, factor = 2;
	uint32_t ctx = 0;
	long bad;

	while ((opt = getopt(argc, argv, "d:p:x:")) != -1) {
		switch (opt) {
		case 'd': snprintf(dev, sizeof(dev), "%s", optarg); break;
		case 'p': piece = strtoul(optarg, NULL, 0) << 10; break;
		case 'x': factor = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-d DEV] [-p PIECE_KiB] [-x FACTOR]\n", argv[0]);
			return 2;
		}
	}
	if (!piece || piece % PAGE || factor < 2)
		return 2;
	if (!dev[0] && pick_device(dev, sizeof(dev))) {
		svm_report(&failures, "bind", false, "\"error\": \"no hmm-gpu device with VRAM\"");
		return 1;
	}
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0 || svm_vram_stats(fd, &s0)) {
		svm_report(&failures, "bind", false, "\"device\": \"%s\", \"errno\": %d", dev, fd < 0 ? -fd : errno);
		return 1;
	}
	size = s0.vram_size * factor;
	if (size > (1ul << 30)) {
		svm_report(&failures, "bind", false, "\"device\": \"%s\", \"vram_size\": %" PRIu64 ", \"error\": "
		       "\"VRAM too large for a working set of %dx: configure a small vram-size\"",
		       dev, (uint64_t)s0.vram_size, factor);
		return 1;
	}
	size = (size + piece - 1) / piece * piece;
	n64 = size / 8;
	svm_report(&failures, "bind", true, "\"device\": \"%s\", \"ctx\": %u, \"vram_size\": %" PRIu64
	       ", \"working_set\": %zu, \"piece\": %zu", dev, ctx, (uint64_t)s0.vram_size, size,
	       piece);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, piece, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || buf == MAP_FAILED)
		return 2;
	madvise(mem, size, MADV_NOHUGEPAGE);
	for (i = 0; i < n64; i++)
		mem[i] = pat(1, i);

	/* 1. migrate piece by piece: the second half of the set evicts the first */
	t0 = now_ns();
	for (off = 0; off < size && !rc; off += piece) {
		rc = svm_migrate(fd, (char *)mem + off, piece, HMM_GPU_MIGRATE_TO_DEV, &pages);
		moved += pages;
		svm_vram_stats(fd, &st);
		if (st.vram_used > max_used)
			max_used = st.vram_used;
	}
	tmig = now_ns() - t0;
	svm_vram_stats(fd, &s1);
	svm_report(&failures, "migrate", !rc && moved == size / PAGE && max_used <= s1.vram_size &&
	       s1.evictions > s0.evictions && s1.pages_evicted > s0.pages_evicted,
	       "\"errno\": %d, \"pages\": %" PRIu64 ", \"want\": %zu, \"max_vram_used\": %" PRIu64
	       ", \"vram_size\": %" PRIu64 ", \"evictions\": %" PRIu64 ", \"pages_evicted\": %"
	       PRIu64 ", \"MBps\": %.1f", -rc, moved, size / PAGE, max_used,
	       (uint64_t)s1.vram_size, D(s0.evictions, s1.evictions),
	       D(s0.pages_evicted, s1.pages_evicted), tmig ? size / (tmig / 1e3) : 0.0);
	if (rc)
		return 1;

	/* 2. the device reads everything back: VRAM-resident and evicted pages alike */
	bad = -1;
	for (off = 0; off < size && !rc && bad < 0; off += piece) {
		struct hmm_gpu_svm_job j;

		rc = svm_simple(fd, HMM_GPU_SVM_READ, (char *)mem + off, NULL, buf, piece, 0, &j);
		faults += j.faults;
		for (i = 0; !rc && i < piece / 8; i++)
			if (buf[i] != pat(1, off / 8 + i)) {
				bad = (long)(off / 8 + i);
				break;
			}
	}
	svm_report(&failures, "device_read", !rc && bad < 0, "\"errno\": %d, \"bad_u64\": %ld, \"faults\": %"
	       PRIu64, -rc, bad, faults);

	/* 3. migrate again and let the device overwrite each piece in VRAM */
	for (off = 0; off < size && !rc; off += piece) {
		struct hmm_gpu_svm_job j;

		rc = svm_migrate(fd, (char *)mem + off, piece, HMM_GPU_MIGRATE_TO_DEV, &pages);
		moved += pages;
		for (i = 0; !rc && i < piece / 8; i++)
			buf[i] = pat(2, off / 8 + i);
		if (!rc)
			rc = svm_simple(fd, HMM_GPU_SVM_WRITE, (char *)mem + off, NULL, buf, piece, 0,
					&j);
		svm_vram_stats(fd, &st);
		if (st.vram_used > max_used)
			max_used = st.vram_used;
	}
	svm_vram_stats(fd, &st);
	svm_report(&failures, "device_fill", !rc && max_used <= st.vram_size && st.evictions > s1.evictions,
	       "\"errno\": %d, \"max_vram_used\": %" PRIu64 ", \"evictions\": %" PRIu64, -rc,
	       max_used, D(s1.evictions, st.evictions));

	/* 4. the CPU sees the device's data everywhere */
	s1 = st;
	bad = -1;
	for (i = 0; i < n64; i++)
		if (mem[i] != pat(2, i)) {
			bad = (long)i;
			break;
		}
	svm_vram_stats(fd, &st);
	svm_report(&failures, "cpu_verify", bad < 0, "\"bad_u64\": %ld, \"got\": \"0x%" PRIx64 "\", "
	       "\"cpu_faults\": %" PRIu64, bad, bad >= 0 ? mem[bad] : 0,
	       D(s1.cpu_faults, st.cpu_faults));

	svm_report(&failures, "summary", st.evictions > s0.evictions && st.pages_evicted > s0.pages_evicted,
	       "\"device\": \"%s\", \"vram_size\": %" PRIu64 ", \"working_set\": %zu, "
	       "\"chunks_evicted\": %" PRIu64 ", \"pages_evicted\": %" PRIu64
	       ", \"bytes_evicted\": %" PRIu64 ", \"pages_to_dev\": %" PRIu64
	       ", \"pages_to_sys\": %" PRIu64 ", \"bytes_to_dev\": %" PRIu64
	       ", \"bytes_to_sys\": %" PRIu64 ", \"bytes_moved\": %" PRIu64
	       ", \"cpu_faults\": %" PRIu64 ", \"max_vram_used\": %" PRIu64,
	       dev, (uint64_t)st.vram_size, size, D(s0.evictions, st.evictions),
	       D(s0.pages_evicted, st.pages_evicted),
	       D(s0.pages_evicted, st.pages_evicted) * PAGE, D(s0.pages_to_dev, st.pages_to_dev),
	       D(s0.pages_to_sys, st.pages_to_sys), D(s0.pages_to_dev, st.pages_to_dev) * PAGE,
	       D(s0.pages_to_sys, st.pages_to_sys) * PAGE,
	       (D(s0.pages_to_dev, st.pages_to_dev) + D(s0.pages_to_sys, st.pages_to_sys)) * PAGE,
	       D(s0.cpu_faults, st.cpu_faults), max_used);
	close(fd);
	return failures ? 1 : 0;
}

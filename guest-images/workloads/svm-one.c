// SPDX-License-Identifier: GPL-2.0-only
/*
 * svm-one: one SVM job, timed. For tests that need a single device job to
 * run into something (injected device faults, a signal) and report how it
 * ended.
 *
 *   svm-one [-d /dev/hmm_gpuN] [-o read|write|fill] [-p pages]
 *
 * Binds, maps and touches the pages, runs the job and prints
 * {"test": "job", "ok": <returned 0>, "errno": n, "ms": t, "faults": n}.
 */
#include "svm-common.h"

int main(int argc, char **argv)
{
	const char *dev = "/dev/hmm_gpu0", *op = "read";
	unsigned long npages = 1;
	struct hmm_gpu_svm_job j;
	uint32_t ctx, code;
	uint64_t t0;
	char *mem, *buf;
	int fd, opt, rc;

	while ((opt = getopt(argc, argv, "d:o:p:")) != -1) {
		if (opt == 'd')
			dev = optarg;
		else if (opt == 'o')
			op = optarg;
		else if (opt == 'p')
			npages = strtoul(optarg, NULL, 0);
		else {
			fprintf(stderr, "usage: %s [-d DEV] [-o read|write|fill] [-p pages]\n",
				argv[0]);
			return 2;
		}
	}
	if (!strcmp(op, "read"))
		code = HMM_GPU_SVM_READ;
	else if (!strcmp(op, "write"))
		code = HMM_GPU_SVM_WRITE;
	else if (!strcmp(op, "fill"))
		code = HMM_GPU_SVM_FILL;
	else {
		fprintf(stderr, "svm-one: unknown op %s\n", op);
		return 2;
	}
	fd = svm_open_bind(dev, &ctx);
	if (fd < 0) {
		jprintf("{\"test\": \"bind\", \"ok\": false, \"errno\": %d}", -fd);
		return 1;
	}
	mem = mmap(NULL, npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	buf = aligned_alloc(4096, npages * 4096);
	if (mem == MAP_FAILED || !buf)
		return 2;
	memset(mem, 1, npages * 4096);
	t0 = now_ns();
	rc = svm_simple(fd, code, mem, NULL, buf, npages * 4096, 0x77, &j);
	jprintf("{\"test\": \"job\", \"ok\": %s, \"errno\": %d, \"ms\": %.1f, \"faults\": %llu, "
		"\"status\": %u}", rc ? "false" : "true", -rc, (now_ns() - t0) / 1e6,
		(unsigned long long)j.faults, j.status);
	return rc ? 1 : 0;
}

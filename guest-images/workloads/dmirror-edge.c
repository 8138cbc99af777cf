// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmirror-edge: regression cases for the test_hmm "dmirror" uAPI, the
 * sequences that once hung or diverged. Each case runs in a child process;
 * a case that does not finish within the deadline is reported as hung (its
 * task is then stuck in the kernel and the kernel's own detectors speak).
 *
 *   dmirror-edge [-d /dev/hmm_dmirror0] [-t seconds] [-c case] [-x]
 *
 * One JSON line per case: {"test": case, "ok": bool, "ret": -errno,
 * "cpages": n, "want": "...", "ms": duration}. -x only prints what each
 * case returned (exploration: no verdict). Exit 0 only if every case got
 * what it wants.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/test_hmm_uapi.h"

#define PAGE 4096ul

static const char *dev = "/dev/hmm_dmirror0";

struct outcome {
	int ret;		/* 0 or -errno of the call under test */
	uint64_t cpages;
	char note[160];
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmd(int fd, unsigned long req, void *addr, void *ptr, unsigned long npages,
	       uint64_t *cpages)
{
	struct hmm_dmirror_cmd c = {
		.addr = (uintptr_t)addr,
		.ptr = (uintptr_t)ptr,
		.npages = npages,
	};
	int rc = ioctl(fd, req, &c) ? -errno : 0;

	if (cpages)
		*cpages = c.cpages;
	return rc;
}

static char *map(unsigned long npages)
{
	char *p = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	madvise(p, npages * PAGE, MADV_NOHUGEPAGE);
	return p;
}

/*
 * WRITE of 5 pages whose first two are in device memory (MIGRATE_TO_DEV of a
 * 3-page range one page earlier) and whose last three were never touched.
 * @touch: what the CPU did to the 3 pages before they migrated.
 */
static void mixed_write(int fd, struct outcome *o, int touch)
{
	char *p = map(8);
	char *buf = calloc(8, PAGE);
	unsigned long i;

	for (i = 0; i < 3; i++) {
		if (touch == 1)
			(void)*(volatile char *)(p + i * PAGE);
		else if (touch == 2)
			p[i * PAGE] = (char)i;
	}
	o->ret = cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 3, &o->cpages);
	if (o->ret) {
		snprintf(o->note, sizeof(o->note), "setup: MIGRATE_TO_DEV %d", o->ret);
		return;
	}
	memset(buf, 0x5a, 5 * PAGE);
	o->ret = cmd(fd, HMM_DMIRROR_WRITE, p + PAGE, buf, 5, &o->cpages);
	if (!o->ret)
		for (i = 0; i < 5 * PAGE; i++)
			if (p[PAGE + i] != 0x5a) {
				snprintf(o->note, sizeof(o->note),
					 "device write lost at byte %lu", i);
				o->ret = -EIO;
				break;
			}
}

static void mixed_write_untouched(int fd, struct outcome *o) { mixed_write(fd, o, 0); }
static void mixed_write_read(int fd, struct outcome *o) { mixed_write(fd, o, 1); }
static void mixed_write_written(int fd, struct outcome *o) { mixed_write(fd, o, 2); }

/*
 * The same, the 3 pages in device memory then made read-only: a device write
 * must be refused like one to read-only system memory (EPERM).
 */
static void readonly_devpage_write(int fd, struct outcome *o)
{
	char *p = map(8);
	char *buf = calloc(8, PAGE);

	memset(p, 1, 3 * PAGE);
	o->ret = cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 3, &o->cpages);
	if (o->ret) {
		snprintf(o->note, sizeof(o->note), "setup: MIGRATE_TO_DEV %d", o->ret);
		return;
	}
	if (mprotect(p, 8 * PAGE, PROT_READ)) {
		o->ret = -errno;
		snprintf(o->note, sizeof(o->note), "setup: mprotect");
		return;
	}
	o->ret = cmd(fd, HMM_DMIRROR_WRITE, p + PAGE, buf, 5, &o->cpages);
}

/*
 * A page write-protected by fork (copy-on-write) migrated to device memory:
 * its device-private entry is read-only though the mapping is writable. A
 * device write must break COW as a CPU write would, and the child keep its
 * copy.
 */
static void cow_devpage_write(int fd, struct outcome *o)
{
	char *p = map(4);
	char *buf = calloc(4, PAGE);
	unsigned long i;
	int status;
	pid_t pid;

	memset(p, 0x11, 4 * PAGE);
	pid = fork();
	if (pid == 0)
		_exit(0);
	waitpid(pid, &status, 0);
	/* the child is gone, the PTEs stay write-protected */
	o->ret = cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 4, &o->cpages);
	if (o->ret) {
		snprintf(o->note, sizeof(o->note), "setup: MIGRATE_TO_DEV %d", o->ret);
		return;
	}
	memset(buf, 0x22, 4 * PAGE);
	o->ret = cmd(fd, HMM_DMIRROR_WRITE, p, buf, 4, &o->cpages);
	if (!o->ret)
		for (i = 0; i < 4 * PAGE; i++)
			if (p[i] != 0x22) {
				snprintf(o->note, sizeof(o->note),
					 "device write lost at byte %lu", i);
				o->ret = -EIO;
				break;
			}
}

/*
 * MIGRATE_TO_DEV of 2 pages: the first never touched, the second already in
 * device memory.
 */
static void migrate_mixed_2(int fd, struct outcome *o)
{
	char *p = map(2);
	char *buf = calloc(2, PAGE);

	p[PAGE] = 7;
	o->ret = cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p + PAGE, buf, 1, &o->cpages);
	if (o->ret) {
		snprintf(o->note, sizeof(o->note), "setup: MIGRATE_TO_DEV %d", o->ret);
		return;
	}
	o->ret = cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 2, &o->cpages);
	if (!o->ret && (buf[0] != 0 || buf[PAGE] != 7))
		snprintf(o->note, sizeof(o->note), "read back %d %d", buf[0], buf[PAGE]);
}

struct edge_case {
	const char *name;
	void (*run)(int fd, struct outcome *o);
	int want_ret;
	const char *why;
};

static const struct edge_case cases[] = {
	{ "mixed_write_untouched", mixed_write_untouched, 0, "" },
	{ "mixed_write_read", mixed_write_read, 0, "" },
	{ "mixed_write_written", mixed_write_written, 0, "" },
	{ "readonly_devpage_write", readonly_devpage_write, -EPERM, "" },
	{ "cow_devpage_write", cow_devpage_write, 0, "" },
	{ "migrate_mixed_2", migrate_mixed_2, 0, "" },
};

int main(int argc, char **argv)
{
	const char *only = NULL;
	bool explore = false;
	int deadline = 20, opt, failed = 0;
	size_t i;

	while ((opt = getopt(argc, argv, "d:t:c:x")) != -1) {
		switch (opt) {
		case 'd':
			dev = optarg;
			break;
		case 't':
			deadline = atoi(optarg);
			break;
		case 'c':
			only = optarg;
			break;
		case 'x':
			explore = true;
			break;
		default:
			fprintf(stderr, "usage: %s [-d dev] [-t seconds] [-c case] [-x]\n", argv[0]);
			return 2;
		}
	}
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct edge_case *c = &cases[i];
		struct outcome *o;
		uint64_t t0 = now_ms(), ms;
		int status, fd;
		bool hung = true, ok;
		pid_t pid;

		if (only && strcmp(only, c->name))
			continue;
		o = mmap(NULL, sizeof(*o), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			 -1, 0);
		memset(o, 0, sizeof(*o));
		o->ret = 1;
		pid = fork();
		if (pid == 0) {
			fd = open(dev, O_RDWR | O_CLOEXEC);
			if (fd < 0) {
				o->ret = -errno;
				snprintf(o->note, sizeof(o->note), "open %s failed", dev);
				_exit(0);
			}
			c->run(fd, o);
			_exit(0);
		}
		while (now_ms() - t0 < (uint64_t)deadline * 1000) {
			if (waitpid(pid, &status, WNOHANG) == pid) {
				hung = false;
				break;
			}
			usleep(10000);
		}
		ms = now_ms() - t0;
		if (hung) {
			kill(pid, SIGKILL);
			printf("{\"test\": \"%s\", \"ok\": false, \"hung\": true, \"ms\": %llu, "
			       "\"error\": \"no answer within %d s\"}\n", c->name,
			       (unsigned long long)ms, deadline);
			fflush(stdout);
			return 1;	/* the device file may be wedged: stop here */
		}
		ok = explore || (o->ret == c->want_ret && !o->note[0]);
		failed += !ok;
		printf("{\"test\": \"%s\", \"ok\": %s, \"ret\": %d, \"want\": %d, \"cpages\": %llu, "
		       "\"ms\": %llu, \"note\": \"%s\"}\n", c->name, ok ? "true" : "false", o->ret,
		       c->want_ret, (unsigned long long)o->cpages, (unsigned long long)ms, o->note);
		fflush(stdout);
		munmap(o, sizeof(*o));
	}
	return failed ? 1 : 0;
}

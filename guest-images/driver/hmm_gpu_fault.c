// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: device page faults (see hmm_gpu_svm.h). The fault worker hands
 * the drained records here: each is matched to its job, serviced with
 * hmm_range_fault() (faulting ahead over the job's range) and answered with
 * one REPLAY, or a CANCEL for the jobs whose faults cannot be resolved.
 */
#include <linux/delay.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/sort.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_svm.h"
#include "hmm_gpu_trace.h"

/* Fault ahead at most this far past the faulting page, per fault round. */
#define HMM_GPU_FAULT_AHEAD_MAX	(64ull << 20)

/*
 * Fault in and map [start, end), which lies within one level-0 table.
 * Returns the pages mapped or an error of hmm_range_fault(); -EROFS if a
 * write finds its first page in our VRAM mapped read-only by the CPU.
 */
static long hmm_gpu_svm_map_window(struct hmm_gpu_svm *svm, u64 start, u64 end,
				   bool write, unsigned long *pfns, u64 *fresh)
{
	struct hmm_gpu_range_notifier rn;
	bool rn_used = false;
	struct hmm_range range = {
		.start		= start,
		.end		= end,
		.hmm_pfns	= pfns,
		.default_flags	= HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = svm->gdev,
	};
	/* A whole aligned 2 MiB may become one leaf: no level-0 table yet. */
	unsigned int level = end - start == HMM_GPU_PT_SPAN(1) ? 1 : 0;
	unsigned long n;
	int tries = 0;
	long ret;

again:
	rn_used = false;
	ret = hmm_gpu_pt_prepare(svm, start, level);
	if (ret)
		return ret;
	if (!mmget_not_zero(svm->mm))
		return -EFAULT;
	/*
	 * First under the context's notifier, which costs nothing extra; if an
	 * invalidation anywhere in the mm came in between, go on under one
	 * watching just this range, as nouveau does for every fault.
	 */
	range.notifier = &svm->notifier;
	ret = hmm_gpu_svm_range_fault_once(svm, &range);
	if (!ret)
		goto locked;
	if (ret != -EAGAIN)
		goto out_mm;
	ret = hmm_gpu_range_notifier_insert(svm, &rn, start, end);
	if (ret)
		goto out_mm;
	range.notifier = &rn.notifier;
	ret = hmm_gpu_svm_range_fault(svm, &range);
	rn_used = true;
	if (ret)
		goto out;
locked:
	if (svm->dead) {
		mutex_unlock(&svm->lock);
		ret = -ENODEV;
		goto out;
	}
	n = (end - start) >> PAGE_SHIFT;
	if (write) {
		unsigned long i;

		/*
		 * hmm_range_fault() faults nothing in for our own device pages,
		 * write access or not: a read-only device-private entry (a
		 * copy-on-write page, an mprotect()ed range) comes back without
		 * HMM_PFN_WRITE. Mapping it read-only would fault again at once,
		 * forever; map what precedes it and let the caller deal with it.
		 */
		for (i = 0; i < n; i++)
			if ((pfns[i] & HMM_PFN_VALID) && !(pfns[i] & HMM_PFN_WRITE) &&
			    is_device_private_page(hmm_pfn_to_page(pfns[i])))
				break;
		if (!i) {
			mutex_unlock(&svm->lock);
			ret = -EROFS;
			goto out;
		}
		n = i;
	}
	ret = hmm_gpu_svm_write_ptes(svm, start, write ? start + (n << PAGE_SHIFT) : end, pfns,
				     fresh);
	if (ret > 0)
		svm->stats.pages_mapped += ret;
	mutex_unlock(&svm->lock);
	if (!ret)
		ret = -EFAULT;
out:
	if (rn_used)
		hmm_gpu_range_notifier_remove(&rn);
out_mm:
	mmput(svm->mm);
	/* The table a 4 KiB mapping needs is missing (not made, or freed). */
	if (ret == -EAGAIN && tries++ < 3) {
		level = 0;
		goto again;
	}
	return ret == -EAGAIN ? -EBUSY : ret;
}

/*
 * Service one fault: map the faulting page, then fault ahead up to
 * f->ahead_end in windows that end on 2 MiB boundaries, stopping quietly at
 * the first window that fails. *@end is where the mapped range ends.
 *
 * A range that was invalidated for as long as hmm_range_fault() retries
 * (-EBUSY) is not the job's fault: 0 with nothing mapped, so the device
 * faults again on replay; job_timeout_ms and fatal signals bound how long
 * that can go on.
 */
static int hmm_gpu_svm_service(struct hmm_gpu_svm *svm, struct hmm_gpu_fault *f,
			       unsigned long *pfns, u64 *pages, u64 *fresh, u64 *end)
{
	bool write = f->access != HMM_GPU_ACCESS_READ;
	bool atomic = f->access == HMM_GPU_ACCESS_ATOMIC;
	u64 va = f->va & PAGE_MASK;
	unsigned long first = 0;
	unsigned long deadline = 0;
	bool readonly = false;
	long n;

	*end = va;
	/* Already exclusive or in VRAM (mapped by another record): replay. */
	if (atomic && hmm_gpu_svm_atomic_mapped(svm, va)) {
		*end = va + PAGE_SIZE;
		return 0;
	}
	/*
	 * Mapped by an earlier round since the device faulted (its record
	 * was drained late): replay. Servicing it would start a window at
	 * this unaligned address and break up the 2 MiB leaf that covers it.
	 */
	if (!atomic && hmm_gpu_svm_mapped(svm, va, va + PAGE_SIZE, write)) {
		*end = va + PAGE_SIZE;
		return 0;
	}
	while (va < f->ahead_end) {
		u64 wend = min(f->ahead_end, ALIGN(va + 1, HMM_GPU_PT_SPAN(1)));

		n = hmm_gpu_svm_map_window(svm, va, wend, write, pfns, fresh);
		/* The window failed (a bad page ahead?): the faulting page alone. */
		if (n < 0 && n != -EROFS && va == *end && *end == (f->va & PAGE_MASK) &&
		    wend - va > PAGE_SIZE)
			n = hmm_gpu_svm_map_window(svm, va, va + PAGE_SIZE, write, pfns, fresh);
		if (n == -EROFS) {
			u64 moved = 0;

			/*
			 * A write to a page of our VRAM the CPU maps read-only:
			 * bring it back to system memory, where the write fault
			 * breaks copy-on-write or fails (a read-only mapping)
			 * as it does for any page. test_hmm WARNs and fails.
			 * A page shared with a forked child may not move at
			 * once (the child is migrating its copy, the page is
			 * locked), or come back (another migration, another
			 * fork): like a CPU write fault, try again, here for
			 * as long as hmm_range_fault() would, then replay.
			 */
			if (!readonly) {
				readonly = true;
				deadline = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
			}
			if (!time_before(jiffies, deadline)) {
				n = -EBUSY;
			} else if (!hmm_gpu_svm_migrate(svm, va, PAGE_SIZE, false, &moved)) {
				if (!moved)
					usleep_range(20, 50);
				continue;
			} else {
				n = -EFAULT;
			}
		}
		if (n < 0) {
			if (va == (f->va & PAGE_MASK))
				return n == -EBUSY ? 0 : n;
			break;
		}
		if (va == (f->va & PAGE_MASK))
			first = pfns[0];
		*pages += n;
		va += n * PAGE_SIZE;
		*end = va;
		if (va < wend)
			break;
	}
	/*
	 * An atomic access to system memory: the page is mapped without
	 * PTE_ATOMIC; take it exclusive (the CPU entry becomes a device
	 * exclusive one, ours gets PTE_ATOMIC) and let the replay retry.
	 */
	if (atomic && !is_device_private_page(hmm_pfn_to_page(first))) {
		int ret = hmm_gpu_svm_exclusive(svm, f->va & PAGE_MASK, 1);

		return ret == -EBUSY ? 0 : ret;
	}
	return 0;
}

/* The op of a job in flight, from its cmd_id. gdev->lock held. */
static struct hmm_gpu_op *hmm_gpu_fault_op(struct hmm_gpu_dev *gdev, u64 cmd_id,
					   struct hmm_gpu_batch **batchp)
{
	unsigned int tag = cmd_id & HMM_GPU_TAG_MASK;
	struct hmm_gpu_slot *slot;

	if (batchp)
		*batchp = NULL;
	if (tag >= HMM_GPU_QUEUE_DEPTH)
		return NULL;
	slot = &gdev->slots[tag];
	if (!slot->batch || slot->cmd_id != cmd_id)
		return NULL;
	if (batchp)
		*batchp = slot->batch;
	return slot->batch->priv;
}

static int hmm_gpu_fault_cmp(const void *a, const void *b)
{
	const struct hmm_gpu_fault *x = a, *y = b;

	if (x->ctx != y->ctx)
		return x->ctx < y->ctx ? -1 : 1;
	if (x->va != y->va)
		return x->va < y->va ? -1 : 1;
	return (int)x->access - (int)y->access;
}

int hmm_gpu_fault_errno(int err)
{
	return err == -EPERM || err == -ENOMEM ? err : -EFAULT;
}

/* Handle @n drained fault records in gdev->faults. Fault worker only. */
void hmm_gpu_svm_handle_faults(struct hmm_gpu_dev *gdev, unsigned int n)
{
	struct hmm_gpu_fault *faults = gdev->faults;
	struct hmm_gpu_svm *done_svm = NULL;
	u64 done_start = 0, done_end = 0;
	bool done_write = false, replay = false, cancel;
	unsigned int i, j;
	u64 round;

	/*
	 * A job replayed by an earlier round may have faulted again before
	 * that round's record was drained: only its latest token is live.
	 */
	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++)
			if (faults[j].cmd_id == faults[i].cmd_id) {
				faults[i].gone = true;
				break;
			}

	/* Find each record's job, context and fault-ahead range. */
	spin_lock_irq(&gdev->lock);
	round = gdev->stats.fault_rounds;
	for (i = 0; i < n; i++) {
		struct hmm_gpu_fault *f = &faults[i];
		struct hmm_gpu_batch *batch;
		struct hmm_gpu_op *op;

		if (f->gone)
			continue;
		op = hmm_gpu_fault_op(gdev, f->cmd_id, &batch);
		if (!op) {
			/* Completed meanwhile (cancelled, reset): nothing to do. */
			f->gone = !batch;
			continue;
		}
		batch->progress++;
		if (op->svm->ctx != f->ctx)
			continue;
		/* The waiter gave up on the job (a fatal signal, its deadline). */
		f->err = batch->abort;
		f->svm = op->svm;
		kref_get(&f->svm->ref);
		f->ahead_end = (f->va & PAGE_MASK) + PAGE_SIZE;
		for (j = 0; j < op->nrng; j++) {
			if (f->va >= (op->rng[j].start & PAGE_MASK) && f->va < op->rng[j].end) {
				f->ahead_end = min(PAGE_ALIGN(op->rng[j].end),
						   (f->va & PAGE_MASK) + HMM_GPU_FAULT_AHEAD_MAX);
				break;
			}
		}
	}
	spin_unlock_irq(&gdev->lock);

	sort(faults, n, sizeof(*faults), hmm_gpu_fault_cmp, NULL);

	for (i = 0; i < n; i++) {
		struct hmm_gpu_fault *f = &faults[i];
		bool write = f->access != HMM_GPU_ACCESS_READ;
		struct hmm_gpu_op *op;
		u64 pages = 0, fresh = 0, end;

		if (f->gone)
			continue;
		if (!f->svm) {
			f->err = -EFAULT;
			continue;
		}
		if (f->err)
			continue;
		mutex_lock(&f->svm->lock);
		f->svm->stats.faults++;
		if (f->svm != done_svm)
			f->svm->stats.fault_batches++;
		mutex_unlock(&f->svm->lock);

		/*
		 * Covered by the fault ahead of an earlier record? Atomic
		 * accesses are not: fault ahead never grants PTE_ATOMIC on
		 * system memory.
		 */
		if (f->svm == done_svm && f->va >= done_start && f->va < done_end &&
		    (done_write || !write) && f->access != HMM_GPU_ACCESS_ATOMIC)
			continue;

		f->err = hmm_gpu_svm_service(f->svm, f, gdev->fault_pfns, &pages, &fresh, &end);
		if (f->err) {
			f->err = hmm_gpu_fault_errno(f->err);
			done_svm = NULL;
		} else {
			done_svm = f->svm;
			done_start = f->va & PAGE_MASK;
			done_end = end;
			done_write = write;
		}
		spin_lock_irq(&gdev->lock);
		op = hmm_gpu_fault_op(gdev, f->cmd_id, NULL);
		if (op)
			op->pages += pages;
		/*
		 * A fault round of the job, as test_hmm counts one: a round
		 * that had to map what was not mapped. A record for a page an
		 * earlier round of the job already mapped (several jobs of one
		 * op fault on the same range) is no new fault.
		 */
		if (op && fresh && op->round != round) {
			op->round = round;
			op->faults++;
		}
		spin_unlock_irq(&gdev->lock);
	}

	/* Fail the jobs whose faults cannot be resolved, then let the rest retry. */
	for (i = 0; i < n; i++) {
		struct hmm_gpu_fault *f = &faults[i];
		struct hmm_gpu_op *op;

		if (f->gone) {
			trace_hmm_gpu_fault_end(gdev->pdev, f->token, f->ctx, f->va, 0,
						HMM_GPU_FAULT_DROP);
			continue;
		}
		if (!f->err) {
			trace_hmm_gpu_fault_end(gdev->pdev, f->token, f->ctx, f->va, 0,
						HMM_GPU_FAULT_REPLAY);
			replay = true;
			continue;
		}
		spin_lock_irq(&gdev->lock);
		op = hmm_gpu_fault_op(gdev, f->cmd_id, NULL);
		if (op && !op->err)
			op->err = f->err;
		cancel = op || !f->svm;
		if (cancel)
			gdev->stats.cancels++;
		spin_unlock_irq(&gdev->lock);
		trace_hmm_gpu_fault_end(gdev->pdev, f->token, f->ctx, f->va, f->err,
					cancel ? HMM_GPU_FAULT_CANCEL : HMM_GPU_FAULT_DROP);
		if (cancel)
			hmm_gpu_write(gdev, HMM_GPU_REG_FAULT_CANCEL, f->token);
		if (f->svm) {
			mutex_lock(&f->svm->lock);
			f->svm->stats.cancels++;
			mutex_unlock(&f->svm->lock);
		}
	}
	if (replay)
		hmm_gpu_replay(gdev);

	for (i = 0; i < n; i++) {
		struct hmm_gpu_svm *svm = faults[i].svm;

		if (!svm)
			continue;
		if (replay && (i == 0 || faults[i - 1].svm != svm)) {
			mutex_lock(&svm->lock);
			svm->stats.replays++;
			mutex_unlock(&svm->lock);
		}
		faults[i].svm = NULL;
		hmm_gpu_svm_put(svm);
	}
}

/*
 * Fault [va, end) in for the device from the submitting thread, before the
 * job runs: what the fault worker would do for the job's first fault, minus
 * the fault interrupt, the worker wakeup and the replay. Counts as one fault
 * round of @op. Returns 0 (even if the fault ahead stopped early: the device
 * faults on the rest as usual) or the errno the job would have failed with.
 */
int hmm_gpu_svm_prefault(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op,
			 u64 va, u64 end, bool write)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct hmm_gpu_fault f = {
		.va = va,
		.ctx = svm->ctx,
		.access = write ? HMM_GPU_ACCESS_WRITE : HMM_GPU_ACCESS_READ,
		.ahead_end = min(PAGE_ALIGN(end), (va & PAGE_MASK) + HMM_GPU_FAULT_AHEAD_MAX),
	};
	unsigned long small[16], *pfns = small;
	u64 pages = 0, fresh = 0, mapped_end;
	int err;

	/* A short job (a fault round trip) need not allocate. */
	if (f.ahead_end - (va & PAGE_MASK) > ARRAY_SIZE(small) * PAGE_SIZE) {
		pfns = kmalloc_array(HMM_GPU_PT_ENTRIES, sizeof(*pfns), GFP_KERNEL);
		if (!pfns)
			return 0;	/* the device faults instead */
	}
	err = hmm_gpu_svm_service(svm, &f, pfns, &pages, &fresh, &mapped_end);
	if (pfns != small)
		kfree(pfns);

	mutex_lock(&svm->lock);
	svm->stats.faults++;
	svm->stats.fault_batches++;
	if (err)
		svm->stats.cancels++;
	mutex_unlock(&svm->lock);

	spin_lock_irq(&gdev->lock);
	op->faults++;
	op->round = U64_MAX;	/* a device fault after this is another round */
	op->pages += pages;
	spin_unlock_irq(&gdev->lock);
	return err ? hmm_gpu_fault_errno(err) : 0;
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: SVM contexts (see hmm_gpu_svm.h): creation and teardown, the
 * mmu_interval_notifier, the hmm_range_fault() retry protocol, SNAPSHOT and
 * device-exclusive access for device atomics.
 */
#include <linux/delay.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/pgtable.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_svm.h"
#include "hmm_gpu_dmirror_abi.h"
#include "hmm_gpu_trace.h"

u32 hmm_gpu_svm_ctx(struct hmm_gpu_svm *svm)
{
	return svm->ctx;
}

struct mm_struct *hmm_gpu_svm_mm(struct hmm_gpu_svm *svm)
{
	return svm->mm;
}

/*
 * An invalidation as the notifier @mni sees it: the part of it in [lo, hi)
 * loses its device translations under svm->lock, in the same critical
 * section that bumps @mni's sequence. A fault checks one notifier only
 * (mmu_interval_read_retry()), and the interval tree calls the context's
 * notifier before a fault's own, so each must zap what it watches: a fault
 * that takes svm->lock between the two calls would otherwise map the pages
 * the CPU is about to change, after the context's zap, and keep them.
 */
static bool hmm_gpu_mirror_invalidate(struct hmm_gpu_svm *svm,
				      struct mmu_interval_notifier *mni,
				      const struct mmu_notifier_range *range,
				      unsigned long cur_seq, u64 lo, u64 hi)
{
	/* PAGE_ALIGN() of exit_mmap()'s ULONG_MAX would wrap to 0 */
	u64 start = max_t(u64, range->start & PAGE_MASK, lo);
	u64 end = range->end >= hi ? hi : PAGE_ALIGN(range->end);
	bool own = range->owner == svm->gdev;

	trace_hmm_gpu_invalidate(svm->gdev->pdev, range, cur_seq);
	/*
	 * Our own exclusive grabs map the device side themselves, under their
	 * own read_begin/read_retry section, which this event must not fail.
	 */
	if (range->event == MMU_NOTIFY_EXCLUSIVE && own)
		return true;

	if (mmu_notifier_range_blockable(range)) {
		mutex_lock(&svm->lock);
	} else if (!mutex_trylock(&svm->lock)) {
		return false;
	} else if (start < end && !svm->dead && !(range->event == MMU_NOTIFY_MIGRATE && own) &&
		   hmm_gpu_pt_count(svm, svm->root, 0, start, end)) {
		/* The fence needs a sleep: let the caller retry blocking. */
		mutex_unlock(&svm->lock);
		return false;
	}

	/*
	 * Always, as nouveau does: a fault being serviced with a page this
	 * migration moves (and frees) must go round again, even when the
	 * migration is ours.
	 */
	mmu_interval_set_seq(mni, cur_seq);
	/*
	 * Our own migrations zap the device translations of the pages they
	 * actually move (hmm_gpu_svm_zap_migrating()): pages that stay where
	 * they are keep theirs.
	 */
	if (range->event == MMU_NOTIFY_MIGRATE && own) {
		mutex_unlock(&svm->lock);
		return true;
	}
	/* munmap (and exit): the tables of whole spans unmapped go too. */
	if (start < end && !svm->dead &&
	    hmm_gpu_svm_zap(svm, start, end, range->event == MMU_NOTIFY_UNMAP ||
			    range->event == MMU_NOTIFY_RELEASE))
		svm->stats.invalidations++;
	mutex_unlock(&svm->lock);
	return true;
}

static bool hmm_gpu_svm_invalidate(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	struct hmm_gpu_svm *svm = container_of(mni, struct hmm_gpu_svm, notifier);

	return hmm_gpu_mirror_invalidate(svm, mni, range, cur_seq, 0, svm->va_end);
}

static const struct mmu_interval_notifier_ops hmm_gpu_svm_mni_ops = {
	.invalidate = hmm_gpu_svm_invalidate,
};

static bool hmm_gpu_range_invalidate(struct mmu_interval_notifier *mni,
				     const struct mmu_notifier_range *range,
				     unsigned long cur_seq)
{
	struct hmm_gpu_range_notifier *rn =
		container_of(mni, struct hmm_gpu_range_notifier, notifier);

	/* Testing: widen the gap after the context notifier's call. */
	if (mmu_notifier_range_blockable(range))
		hmm_gpu_race_window();
	return hmm_gpu_mirror_invalidate(rn->svm, mni, range, cur_seq, rn->start, rn->end);
}

static const struct mmu_interval_notifier_ops hmm_gpu_range_mni_ops = {
	.invalidate = hmm_gpu_range_invalidate,
};

/* Watch [start, end) of @svm's mm for one fault. No mmap_lock held. */
int hmm_gpu_range_notifier_insert(struct hmm_gpu_svm *svm, struct hmm_gpu_range_notifier *rn,
				  u64 start, u64 end)
{
	rn->svm = svm;
	rn->start = start;
	rn->end = end;
	return mmu_interval_notifier_insert(&rn->notifier, svm->mm, start, end - start,
					    &hmm_gpu_range_mni_ops);
}

/* Neither mmap_lock nor svm->lock held: this may wait for an invalidation. */
void hmm_gpu_range_notifier_remove(struct hmm_gpu_range_notifier *rn)
{
	mmu_interval_notifier_remove(&rn->notifier);
}

static void hmm_gpu_svm_free(struct kref *ref)
{
	struct hmm_gpu_svm *svm = container_of(ref, struct hmm_gpu_svm, ref);

	mmdrop(svm->mm);
	kfree(svm);
}

void hmm_gpu_svm_put(struct hmm_gpu_svm *svm)
{
	kref_put(&svm->ref, hmm_gpu_svm_free);
}

struct hmm_gpu_svm *hmm_gpu_svm_create(struct hmm_gpu_dev *gdev, struct mm_struct *mm)
{
	struct hmm_gpu_svm *svm;
	int ret;

	if (!mm)
		return ERR_PTR(-EINVAL);
	/* See hmm_gpu_dma_probe(). */
	if (gdev->dma_bounces) {
		dev_err_ratelimited(&gdev->pdev->dev,
				    "SVM refused: streaming DMA is bounced (swiotlb)\n");
		return ERR_PTR(-EOPNOTSUPP);
	}
	svm = kzalloc(sizeof(*svm), GFP_KERNEL);
	if (!svm)
		return ERR_PTR(-ENOMEM);
	kref_init(&svm->ref);
	mutex_init(&svm->lock);
	INIT_LIST_HEAD(&svm->pt_cache);
	mutex_init(&svm->bounce_lock);
	svm->gdev = gdev;
	svm->va_end = min_t(u64, TASK_SIZE, 1ull << HMM_GPU_VA_BITS) & PAGE_MASK;

	ret = ida_alloc_range(&gdev->ctx_ida, 1, gdev->nctx - 1, GFP_KERNEL);
	if (ret < 0)
		goto err_free;
	svm->ctx = ret;

	svm->root = hmm_gpu_pt_alloc(gdev, HMM_GPU_PT_LEVELS - 1);
	if (!svm->root) {
		ret = -ENOMEM;
		goto err_ida;
	}
	svm->stats.pt_pages = 1;

	mmgrab(mm);
	svm->mm = mm;
	ret = mmu_interval_notifier_insert(&svm->notifier, mm, 0, svm->va_end,
					   &hmm_gpu_svm_mni_ops);
	if (ret)
		goto err_mm;

	hmm_gpu_ctx_set(gdev, svm->ctx, svm->root->dma);
	down_write(&gdev->svms_sem);
	list_add_tail(&svm->node, &gdev->svms);
	up_write(&gdev->svms_sem);
	return svm;

err_mm:
	mmdrop(mm);
	hmm_gpu_pt_free(gdev, svm->root);
err_ida:
	ida_free(&gdev->ctx_ida, svm->ctx);
err_free:
	kfree(svm);
	return ERR_PTR(ret);
}

/*
 * Unbind: tear the context down. No job of it may be running. The
 * translations go (PTEs cleared, context invalid, whole-context fence, then
 * dma_unmap) and the tables are freed while the notifier is still
 * registered, so no page is freed by the CPU while it is still mapped for
 * the device; "dead" keeps the fault worker from mapping anything anew.
 * The caller holds gdev->remove_sem for read (remove() must not shut the
 * device down under the fence): an ioctl's error path.
 */
void __hmm_gpu_svm_destroy(struct hmm_gpu_svm *svm)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct hmm_gpu_zap z;

	lockdep_assert_held(&gdev->remove_sem);
	down_write(&gdev->svms_sem);
	list_del(&svm->node);
	up_write(&gdev->svms_sem);

	mutex_lock(&svm->lock);
	svm->dead = true;
	hmm_gpu_zap_init(&z, false);
	hmm_gpu_pt_clear(svm, 0, svm->va_end, &z);
	/* remove() reset the device for good: it no longer walks or caches. */
	if (!gdev->dead) {
		hmm_gpu_ctx_set(gdev, svm->ctx, 0);
		hmm_gpu_tlb_fence(gdev, svm->ctx, 0, ~0ull);
	}
	hmm_gpu_pt_release(svm, &z);
	/* After the fence: no walk can reach the tables any more. */
	hmm_gpu_pt_free(gdev, svm->root);
	svm->root = NULL;
	hmm_gpu_pt_cache_free(svm);
	svm->stats.pt_pages = 0;
	mutex_unlock(&svm->lock);

	mmu_interval_notifier_remove(&svm->notifier);
	if (svm->bounce)
		dma_free_coherent(&gdev->pdev->dev, svm->bounce_size, svm->bounce,
				  svm->bounce_dma);
	svm->bounce = NULL;
	ida_free(&gdev->ctx_ida, svm->ctx);
	hmm_gpu_svm_put(svm);
}

/* Unbind from a file's release(): takes gdev->remove_sem itself. */
void hmm_gpu_svm_destroy(struct hmm_gpu_svm *svm)
{
	struct rw_semaphore *sem = &svm->gdev->remove_sem;

	down_read(sem);
	__hmm_gpu_svm_destroy(svm);
	up_read(sem);
}

void hmm_gpu_svm_stats(struct hmm_gpu_svm *svm, struct hmm_gpu_svm_stats *st)
{
	mutex_lock(&svm->lock);
	*st = svm->stats;
	mutex_unlock(&svm->lock);
}

/*
 * Race testing: widen the windows where a concurrent invalidation,
 * migration or removal must be caught: between hmm_range_fault() and the
 * page table update, and between reserving VRAM and migrating into it
 * (the svm-race scenario and the unbind test set it).
 */
static unsigned int hmm_gpu_race_delay_us;
module_param_named(race_delay_us, hmm_gpu_race_delay_us, uint, 0644);
MODULE_PARM_DESC(race_delay_us, "Testing: sleep this long in the driver's race windows (default 0)");

void hmm_gpu_race_window(void)
{
	unsigned int delay = READ_ONCE(hmm_gpu_race_delay_us);

	if (delay)
		usleep_range(delay, delay + delay / 4 + 1);
}

/*
 * One round of hmm_gpu_svm_range_fault(): 0 with svm->lock held, -EAGAIN if the
 * range was invalidated meanwhile (or hmm_range_fault() said -EBUSY).
 */
int hmm_gpu_svm_range_fault_once(struct hmm_gpu_svm *svm, struct hmm_range *range)
{
	int ret;

	range->notifier_seq = mmu_interval_read_begin(range->notifier);
	mmap_read_lock(svm->mm);
	ret = hmm_range_fault(range);
	mmap_read_unlock(svm->mm);
	if (ret)
		return ret == -EBUSY ? -EAGAIN : ret;
	hmm_gpu_race_window();
	mutex_lock(&svm->lock);
	if (!mmu_interval_read_retry(range->notifier, range->notifier_seq))
		return 0;
	mutex_unlock(&svm->lock);
	return -EAGAIN;
}

/*
 * The mirroring protocol: hmm_range_fault() under mmu_interval_read_begin(),
 * then svm->lock and mmu_interval_read_retry(), again while the range was
 * invalidated meanwhile, for at most HMM_RANGE_DEFAULT_TIMEOUT. On success
 * svm->lock is held and range->hmm_pfns stay valid until it is dropped.
 * The caller holds a reference on svm->mm.
 */
int hmm_gpu_svm_range_fault(struct hmm_gpu_svm *svm, struct hmm_range *range)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	int ret;

	do {
		if (time_after(jiffies, timeout))
			return -EBUSY;
		ret = hmm_gpu_svm_range_fault_once(svm, range);
	} while (ret == -EAGAIN);
	return ret;
}

/*
 * What the CPU maps at the @n pages from @va, faulting nothing in, into
 * @pfns: 0 with svm->lock held (the pfns valid until it is dropped), or an
 * error.
 */
int hmm_gpu_svm_range_peek(struct hmm_gpu_svm *svm, u64 va, u64 n, unsigned long *pfns)
{
	struct hmm_range range = {
		.notifier	= &svm->notifier,
		.start		= va,
		.end		= va + (n << PAGE_SHIFT),
		.hmm_pfns	= pfns,
		.dev_private_owner = svm->gdev,
	};

	return hmm_gpu_svm_range_fault(svm, &range);
}

/* The snapshot byte of one hmm_range_fault() entry. */
static u8 hmm_gpu_snapshot_prot(struct hmm_gpu_svm *svm, unsigned long hpfn)
{
	unsigned int shift;
	struct page *page;
	u8 prot;

	if (hpfn & HMM_PFN_ERROR)
		return HMM_GPU_DMIRROR_PROT_ERROR;
	if (!(hpfn & HMM_PFN_VALID))
		return HMM_GPU_DMIRROR_PROT_NONE;

	page = hmm_pfn_to_page(hpfn);
	if (is_device_private_page(page))
		prot = hmm_gpu_page_pgmap(page)->owner == svm->gdev ?
		       HMM_GPU_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
		       HMM_GPU_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (is_zero_pfn(page_to_pfn(page)))
		prot = HMM_GPU_DMIRROR_PROT_ZERO;
	else
		prot = HMM_GPU_DMIRROR_PROT_NONE;
	prot |= hpfn & HMM_PFN_WRITE ? HMM_GPU_DMIRROR_PROT_WRITE : HMM_GPU_DMIRROR_PROT_READ;

	shift = hmm_pfn_to_map_order(hpfn) + PAGE_SHIFT;
	if (shift == PMD_SHIFT)
		prot |= HMM_GPU_DMIRROR_PROT_PMD;
	else if (shift == PUD_SHIFT)
		prot |= HMM_GPU_DMIRROR_PROT_PUD;
	return prot;
}

/*
 * Report what the CPU page table holds for [va, va + npages pages) without
 * faulting anything in: one HMM_GPU_DMIRROR_PROT_* byte per page.
 */
int hmm_gpu_svm_snapshot(struct hmm_gpu_svm *svm, u64 va, u8 __user *uprot,
			 u64 npages, u64 *done)
{
	const unsigned long chunk = PAGE_SIZE / sizeof(unsigned long);
	unsigned long *pfns;
	u8 *prot;
	int ret = 0;
	u64 off;

	*done = 0;
	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	pfns = kmalloc_array(chunk, sizeof(*pfns), GFP_KERNEL);
	prot = kmalloc(chunk, GFP_KERNEL);
	if (!pfns || !prot) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (!mmget_not_zero(svm->mm)) {
		ret = -EINVAL;
		goto out_free;
	}

	for (off = 0; off < npages; ) {
		u64 n = min_t(u64, npages - off, chunk);
		u64 i;

		ret = hmm_gpu_svm_range_peek(svm, va + (off << PAGE_SHIFT), n, pfns);
		if (ret)
			goto out_mm;
		for (i = 0; i < n; i++)
			prot[i] = hmm_gpu_snapshot_prot(svm, pfns[i]);
		mutex_unlock(&svm->lock);

		if (copy_to_user(uprot + off, prot, n)) {
			ret = -EFAULT;
			goto out_mm;
		}
		off += n;
		*done = off;
	}
out_mm:
	mmput(svm->mm);
out_free:
	kfree(prot);
	kfree(pfns);
	return ret;
}

/*
 * Whether [start, end) can be made device-exclusive at all: only anonymous
 * folios can (not shared or hugetlb mappings). mmap_lock held.
 */
static bool hmm_gpu_svm_excl_vma_ok(struct mm_struct *mm, u64 start, u64 end)
{
	struct vm_area_struct *vma;

	for (; start < end; start = vma->vm_end) {
		vma = vma_lookup(mm, start);
		if (!vma || (vma->vm_flags & (VM_SHARED | VM_HUGETLB | VM_IO | VM_PFNMAP)))
			return false;
	}
	return true;
}

/*
 * Take [addr, next) (within table @pt, at most 64 pages) exclusive and map
 * it with PTE_ATOMIC, under the notifier's read_begin/read_retry protocol:
 * an invalidation between make_device_exclusive_range() and svm->lock (the
 * entries may already be back to normal PTEs) means another round.
 */
static int hmm_gpu_svm_exclusive_chunk(struct hmm_gpu_svm *svm, u64 addr, u64 next)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	unsigned long i, n = (next - addr) >> PAGE_SHIFT, seq;
	struct mm_struct *mm = svm->mm;
	struct hmm_gpu_zap z;
	struct page *pages[64];
	bool again;
	int got, ret;

	for (;;) {
		if (time_after(jiffies, timeout))
			return -EBUSY;
		/*
		 * Fault the range in first: a stale exclusive entry (ours, from
		 * a round that had to retry) restored by the GUP of
		 * make_device_exclusive_range() would invalidate the read
		 * section every round.
		 */
		mmap_read_lock(mm);
		got = hmm_gpu_svm_excl_vma_ok(mm, addr, next) ?
		      hmm_gpu_fault_in(mm, addr, n, FOLL_WRITE) : -EOPNOTSUPP;
		mmap_read_unlock(mm);
		if (got < 0)
			return got;
		seq = mmu_interval_read_begin(&svm->notifier);
		mmap_read_lock(mm);
		if (!hmm_gpu_svm_excl_vma_ok(mm, addr, next)) {
			mmap_read_unlock(mm);
			return -EOPNOTSUPP;
		}
		got = hmm_gpu_make_exclusive(mm, addr, next, pages, svm->gdev);
		mmap_read_unlock(mm);
		if (got < 0)
			return got;
		ret = (unsigned long)got == n ? 0 : -EBUSY;
		/* A page that could not be locked or made exclusive: retry. */
		again = false;
		for (i = 0; !ret && i < n; i++)
			again |= !pages[i];

		ret = ret ?: hmm_gpu_pt_prepare(svm, addr, 0);
		mutex_lock(&svm->lock);
		if (svm->dead)
			ret = -ENODEV;
		else if (!ret && !again && mmu_interval_read_retry(&svm->notifier, seq))
			again = true;
		if (!ret && !again) {
			/* Other pages there go first, all behind one fence. */
			hmm_gpu_zap_init(&z, false);
			for (i = 0; i < n; i++) {
				u64 a = addr + (i << PAGE_SHIFT);

				if (!hmm_gpu_svm_excl_keeps(svm, a, pages[i]))
					hmm_gpu_pt_clear_page(svm, a, &z);
			}
			if (z.pages) {
				if (!hmm_gpu_tlb_fence(svm->gdev, svm->ctx, z.start,
						       z.end - z.start))
					svm->stats.tlb_invalidates++;
				hmm_gpu_pt_release(svm, &z);
			}
		}
		for (i = 0; !ret && !again && i < n; i++) {
			ret = hmm_gpu_pt_set_exclusive(svm, addr + (i << PAGE_SHIFT), pages[i]);
			/* Its table went (munmap): go round again. */
			if (ret == -EAGAIN) {
				ret = 0;
				again = true;
			}
		}
		mutex_unlock(&svm->lock);

		/* Unlocked, a CPU touch may restore the entries: the notifier zaps ours. */
		for (i = 0; i < (unsigned long)got; i++) {
			if (pages[i])
				hmm_gpu_exclusive_put(pages[i]);
		}
		if (ret || !again)
			return ret;
		cond_resched();
	}
}

/*
 * Map [va, va + npages pages) for exclusive device access: the CPU PTEs
 * become device-exclusive entries (make_device_exclusive_range(), owner:
 * this device, so the notifier skips the event) and the device PTEs get
 * PTE_ATOMIC. A CPU touch restores the PTE and the notifier zaps ours
 * (clear, TLB fence) before the CPU goes on.
 */
int hmm_gpu_svm_exclusive(struct hmm_gpu_svm *svm, u64 va, u64 npages)
{
	u64 addr, end = va + (npages << PAGE_SHIFT), next;
	int ret = 0;

	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	if (!mmget_not_zero(svm->mm))
		return -EINVAL;
	for (addr = va; addr < end && !ret; addr = next) {
		next = min3(end, (u64)(addr + 64 * PAGE_SIZE),
			    (u64)ALIGN(addr + 1, HMM_GPU_PT_SPAN(1)));
		ret = hmm_gpu_svm_exclusive_chunk(svm, addr, next);
	}
	mmput(svm->mm);
	trace_hmm_gpu_exclusive(svm->gdev->pdev, va, end, ret);
	return ret;
}

/* test_hmm's CHECK_EXCLUSIVE: -EPERM if a page is still mapped exclusively. */
int hmm_gpu_svm_check_exclusive(struct hmm_gpu_svm *svm, u64 va, u64 npages)
{
	u64 a, end = va + (npages << PAGE_SHIFT);
	int ret = 0;

	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	mutex_lock(&svm->lock);
	for (a = va; a < end && !ret; a += PAGE_SIZE)
		if (hmm_gpu_svm_excl_mapped(svm, a))
			ret = -EPERM;
	mutex_unlock(&svm->lock);
	return ret;
}

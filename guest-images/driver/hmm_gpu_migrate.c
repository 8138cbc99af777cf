// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: migration of an SVM context's pages to VRAM and back
 * (SVM_MIGRATE, the dmirror MIGRATE_TO_DEV/TO_SYS) with migrate_vma_*(); the
 * device pages themselves are hmm_gpu_dmem.c's.
 */
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_svm.h"

/* Apply @op to the runs of pages @args selected for migration. svm->lock held. */
static unsigned long hmm_gpu_svm_walk_migrating(struct hmm_gpu_svm *svm,
						const struct migrate_vma *args,
						enum hmm_gpu_pt_op op)
{
	unsigned long i = 0, j, n = 0;

	while (i < args->npages) {
		u64 start, end;

		if (!(args->src[i] & MIGRATE_PFN_MIGRATE)) {
			i++;
			continue;
		}
		for (j = i + 1; j < args->npages && (args->src[j] & MIGRATE_PFN_MIGRATE); j++)
			;
		start = args->start + (i << PAGE_SHIFT);
		end = min_t(u64, args->start + (j << PAGE_SHIFT), svm->va_end);
		if (start < end)
			n += hmm_gpu_pt_walk(svm, svm->root, 0, start, end, op);
		i = j;
	}
	return n;
}

/*
 * Clear the translations of the pages a migration of this driver selected,
 * in every context of @gdev that mirrors @mm (the notifier leaves our own
 * migrations to us), and queue one TLB_INVALIDATE per context that had any
 * into @batch. The caller queues the copy behind them and rings once: the
 * device fetches in ring order, so the invalidations are done before the
 * copy starts, and a device access before them only changes data the copy
 * then carries over. Pages that stay where they are (already in VRAM, not
 * collected) keep their translations. Returns the invalidations queued;
 * hmm_gpu_svm_unmap_migrating() finishes the job once the batch is done.
 */
unsigned int hmm_gpu_svm_zap_migrating(struct hmm_gpu_dev *gdev, struct mm_struct *mm,
				       const struct migrate_vma *args, struct hmm_gpu_batch *batch)
{
	struct hmm_gpu_svm *svm;
	unsigned int n = 0;

	down_read(&gdev->svms_sem);
	list_for_each_entry(svm, &gdev->svms, node) {
		if (svm->mm != mm)
			continue;
		mutex_lock(&svm->lock);
		if (!svm->dead && hmm_gpu_svm_walk_migrating(svm, args, HMM_GPU_PT_ZAP) &&
		    !hmm_gpu_tlb_queue(gdev, batch, svm->ctx, args->start,
				       args->end - args->start))
			n++;
		mutex_unlock(&svm->lock);
	}
	up_read(&gdev->svms_sem);
	return n;
}

/*
 * After the batch of hmm_gpu_svm_zap_migrating() (its @nfences
 * invalidations first) has completed: unmap the DMA mappings of the
 * translations it cleared. hmm_gpu_fences_done() resets the device if a
 * fence could not be had, so no stale translation can be in use here.
 */
void hmm_gpu_svm_unmap_migrating(struct hmm_gpu_dev *gdev, struct mm_struct *mm,
				 const struct migrate_vma *args, struct hmm_gpu_batch *batch,
				 unsigned int nfences)
{
	bool fenced = nfences && hmm_gpu_fences_done(gdev, batch, nfences);
	struct hmm_gpu_svm *svm;

	down_read(&gdev->svms_sem);
	list_for_each_entry(svm, &gdev->svms, node) {
		if (svm->mm != mm)
			continue;
		mutex_lock(&svm->lock);
		if (hmm_gpu_svm_walk_migrating(svm, args, HMM_GPU_PT_UNMAP) || fenced) {
			svm->stats.invalidations++;
			svm->stats.tlb_invalidates += fenced;
		}
		mutex_unlock(&svm->lock);
	}
	up_read(&gdev->svms_sem);
}

/*
 * Map the device pages a migration to VRAM just filled: PTE_VRAM leaves,
 * unless the range was invalidated since @seq (the device then faults).
 */
static void hmm_gpu_svm_map_migrated(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				     const struct migrate_vma *args, unsigned long seq)
{
	unsigned long i;

	mutex_lock(&svm->lock);
	if (svm->dead || mmu_interval_read_retry(&svm->notifier, seq))
		goto out;
	for (i = 0; i < args->npages; i++) {
		u64 va = args->start + (i << PAGE_SHIFT);
		unsigned int idx = hmm_gpu_pt_index(va, 0);
		struct page *page = migrate_pfn_to_page(args->dst[i]);
		u64 pte;

		if (!page || !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (pt->page[idx])
			hmm_gpu_svm_zap(svm, va, va + PAGE_SIZE);
		pte = hmm_gpu_dmem_vram_offset(page) | HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ |
		      HMM_GPU_PTE_VRAM;
		if (args->dst[i] & MIGRATE_PFN_WRITE)
			pte |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
		pt->page[idx] = page;
		WRITE_ONCE(pt->cpu[idx], cpu_to_le64(pte));
		svm->stats.pages_mapped++;
	}
out:
	mutex_unlock(&svm->lock);
}

/*
 * Migrate [start, end) (one VMA, one level-0 table, at most
 * HMM_GPU_MIGRATE_MAX_PAGES) to VRAM. mmap_lock held for read. Returns the
 * pages migrated or an error.
 */
static long hmm_gpu_svm_window_to_dev(struct hmm_gpu_svm *svm, struct vm_area_struct *vma,
				      u64 start, u64 end, unsigned long *src,
				      unsigned long *dst, struct page **res)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct migrate_vma args = {
		.vma		= vma,
		.start		= start,
		.end		= end,
		.src		= src,
		.dst		= dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_SYSTEM,
	};
	unsigned long nres, i, seq;
	struct hmm_gpu_batch batch;
	unsigned int nfences;
	struct hmm_gpu_pt *pt;
	long ret;

	pt = hmm_gpu_pt_get(svm, start);
	if (IS_ERR(pt))
		return PTR_ERR(pt);
	ret = hmm_gpu_dmem_reserve(gdev, res, npages);
	if (ret < 0)
		return ret;
	nres = ret;
	hmm_gpu_race_window();

	ret = migrate_vma_setup(&args);
	if (ret)
		goto out;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		goto out;
	}
	/*
	 * After setup, whose own invalidation bumped the sequence: from here
	 * the pages are locked behind migration entries, and whatever else
	 * invalidates the range (MADV_DONTNEED under the same mmap_lock) makes
	 * map_migrated() leave the device to fault. migrate_vma_pages() also
	 * invalidates for the holes it fills: those fault too.
	 */
	seq = mmu_interval_read_begin(&svm->notifier);
	/* No device access to the old pages once the copy starts. */
	hmm_gpu_batch_init(&batch, 0);
	nfences = hmm_gpu_svm_zap_migrating(gdev, vma->vm_mm, &args, &batch);
	ret = hmm_gpu_dmem_copy_to_dev(gdev, vma, src, dst, npages, res, &nres, &batch);
	hmm_gpu_svm_unmap_migrating(gdev, vma->vm_mm, &args, &batch, nfences);
	if (ret < 0)
		memset(dst, 0, npages * sizeof(*dst));
	migrate_vma_pages(&args);
	if (ret >= 0) {
		hmm_gpu_svm_map_migrated(svm, pt, &args, seq);
		hmm_gpu_dmem_touch(gdev, dst, npages);
		ret = 0;
		for (i = 0; i < npages; i++)
			if ((src[i] & MIGRATE_PFN_MIGRATE) && dst[i])
				ret++;
	}
	migrate_vma_finalize(&args);
out:
	hmm_gpu_dmem_unreserve(gdev, res, nres);
	return ret;
}

/* Migrate [start, end) (one VMA, <= HMM_GPU_MIGRATE_MAX_PAGES) back to RAM. */
static long hmm_gpu_svm_window_to_sys(struct hmm_gpu_svm *svm, struct vm_area_struct *vma,
				      u64 start, u64 end, unsigned long *src,
				      unsigned long *dst)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct migrate_vma args = {
		.vma		= vma,
		.start		= start,
		.end		= end,
		.src		= src,
		.dst		= dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
	};
	struct hmm_gpu_batch batch;
	unsigned int nfences;
	unsigned long i;
	long ret;

	ret = migrate_vma_setup(&args);
	if (ret)
		return ret;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		return 0;
	}
	hmm_gpu_batch_init(&batch, 0);
	nfences = hmm_gpu_svm_zap_migrating(gdev, vma->vm_mm, &args, &batch);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, vma, start, src, dst, npages, &batch);
	hmm_gpu_svm_unmap_migrating(gdev, vma->vm_mm, &args, &batch, nfences);
	if (ret < 0)
		memset(dst, 0, npages * sizeof(*dst));
	migrate_vma_pages(&args);
	if (ret >= 0) {
		ret = 0;
		for (i = 0; i < npages; i++)
			if ((src[i] & MIGRATE_PFN_VALID) && (src[i] & MIGRATE_PFN_MIGRATE))
				ret++;
	}
	migrate_vma_finalize(&args);
	return ret;
}

/*
 * Migrate the pages of [va, va + len) to VRAM or back, VMA by VMA, in
 * windows of at most HMM_GPU_MIGRATE_MAX_PAGES that do not cross a level-0
 * table. Like test_hmm: -EINVAL if a page of the range has no readable VMA.
 * *pages: the pages migrated.
 */
int hmm_gpu_svm_migrate(struct hmm_gpu_svm *svm, u64 va, u64 len, bool to_dev, u64 *pages)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct mm_struct *mm = svm->mm;
	unsigned long *src, *dst;
	struct page **res;
	u64 addr, end = va + len, next;
	long n;
	int ret = 0;

	*pages = 0;
	if (!PAGE_ALIGNED(va) || !PAGE_ALIGNED(len) || hmm_gpu_range_bad(svm, va, len))
		return -EINVAL;
	if (to_dev && !gdev->dmem.max_chunks)
		return -EOPNOTSUPP;
	src = kcalloc(HMM_GPU_MIGRATE_MAX_PAGES, sizeof(*src), GFP_KERNEL);
	dst = kcalloc(HMM_GPU_MIGRATE_MAX_PAGES, sizeof(*dst), GFP_KERNEL);
	res = kcalloc(HMM_GPU_MIGRATE_MAX_PAGES, sizeof(*res), GFP_KERNEL);
	if (!src || !dst || !res) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (!mmget_not_zero(mm)) {
		ret = -EINVAL;
		goto out_free;
	}
	mmap_read_lock(mm);
	for (addr = va; addr < end; addr = next) {
		struct vm_area_struct *vma = vma_lookup(mm, addr);

		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;
			break;
		}
		next = min3(end, (u64)vma->vm_end,
			    ALIGN(addr + 1, HMM_GPU_PT_SPAN(1)));
		next = min_t(u64, next, addr + HMM_GPU_MIGRATE_MAX_PAGES * PAGE_SIZE);
		if (!to_dev && !gdev->dmem.max_chunks)
			break;
		if (to_dev)
			n = hmm_gpu_svm_window_to_dev(svm, vma, addr, next, src, dst, res);
		else
			n = hmm_gpu_svm_window_to_sys(svm, vma, addr, next, src, dst);
		if (n < 0) {
			ret = n;
			break;
		}
		*pages += n;
	}
	mmap_read_unlock(mm);
	mmput(mm);
out_free:
	kfree(res);
	kfree(dst);
	kfree(src);
	return ret;
}

/*
 * Whether every page of [va, va + npages pages) is in this device's VRAM
 * (test_hmm's MIGRATE_TO_DEV reads back only pages in its device memory):
 * 0, -ENOENT or an error.
 */
int hmm_gpu_svm_dev_check(struct hmm_gpu_svm *svm, u64 va, u64 npages)
{
	const unsigned long chunk = PAGE_SIZE / sizeof(unsigned long);
	unsigned long *pfns;
	int ret = 0;
	u64 off;

	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	pfns = kmalloc_array(chunk, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return -ENOMEM;
	if (!mmget_not_zero(svm->mm)) {
		kfree(pfns);
		return -EINVAL;
	}
	for (off = 0; off < npages && !ret; ) {
		u64 n = min_t(u64, npages - off, chunk);
		struct hmm_range range = {
			.notifier	= &svm->notifier,
			.start		= va + (off << PAGE_SHIFT),
			.end		= va + ((off + n) << PAGE_SHIFT),
			.hmm_pfns	= pfns,
			.dev_private_owner = svm->gdev,
		};
		u64 i;

		ret = hmm_gpu_svm_range_fault(svm, &range);
		if (ret)
			break;
		for (i = 0; i < n; i++)
			if (!(pfns[i] & HMM_PFN_VALID) ||
			    !hmm_gpu_dmem_page_local(svm->gdev, hmm_pfn_to_page(pfns[i])))
				ret = -ENOENT;
		mutex_unlock(&svm->lock);
		off += n;
	}
	mmput(svm->mm);
	kfree(pfns);
	return ret;
}

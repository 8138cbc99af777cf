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
#include "hmm_gpu_trace.h"

/* Clear the translations of the runs of pages @args selected into @z. */
static void hmm_gpu_svm_clear_migrating(struct hmm_gpu_svm *svm, const struct migrate_vma *args,
					struct hmm_gpu_zap *z)
{
	unsigned long i = 0, j;

	while (i < args->npages) {
		if (!(args->src[i] & MIGRATE_PFN_MIGRATE)) {
			i++;
			continue;
		}
		for (j = i; j < args->npages && (args->src[j] & MIGRATE_PFN_MIGRATE); )
			j += hmm_gpu_migrate_entry_pages(args->src[j], args->npages - j);
		hmm_gpu_pt_clear(svm, args->start + (i << PAGE_SHIFT),
				 min_t(u64, args->start + (j << PAGE_SHIFT), svm->va_end), z);
		i = j;
	}
}

/*
 * Clear the translations of the pages a migration of this driver selected,
 * in every context of @gdev that mirrors @mm (the notifier leaves our own
 * migrations to us), and queue one TLB_INVALIDATE per context that had any
 * into @batch. The caller queues the copy behind them and rings once: the
 * device fetches in ring order, so the invalidations are done before the
 * copy starts, and a device access before them only changes data the copy
 * then carries over. On a 1.3 device the MIGRATE itself carries the first
 * invalidation (batch->inv_*), so a CPU fault is one command. Pages that
 * stay where they are (already in VRAM, not collected) keep their
 * translations. Returns the separate invalidations queued;
 * *@unmap says whether hmm_gpu_svm_unmap_migrating() has DMA mappings to
 * drop once the batch is done (VRAM pages have none).
 */
unsigned int hmm_gpu_svm_zap_migrating(struct hmm_gpu_dev *gdev, struct mm_struct *mm,
				       const struct migrate_vma *args, struct hmm_gpu_batch *batch,
				       bool *unmap)
{
	struct hmm_gpu_svm *svm;
	unsigned int n = 0;

	*unmap = false;
	down_read(&gdev->svms_sem);
	list_for_each_entry(svm, &gdev->svms, node) {
		struct hmm_gpu_zap z;

		if (svm->mm != mm)
			continue;
		hmm_gpu_zap_init(&z, false);
		mutex_lock(&svm->lock);
		if (!svm->dead)
			hmm_gpu_svm_clear_migrating(svm, args, &z);
		if (z.pages) {
			svm->stats.invalidations++;
			if (gdev->migrate_inv && !batch->inv_len) {
				/* The copy's own command carries the first one. */
				batch->inv_ctx = svm->ctx;
				batch->inv_va = args->start;
				batch->inv_len = args->end - args->start;
				svm->stats.tlb_invalidates++;
			} else if (!hmm_gpu_tlb_queue(gdev, batch, svm->ctx, args->start,
						      args->end - args->start)) {
				n++;
				svm->stats.tlb_invalidates++;
			}
			*unmap |= z.unmap;
		}
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
				 unsigned int nfences, bool unmap)
{
	struct hmm_gpu_svm *svm;

	/* A failed fence resets the device: after that nothing stale is cached. */
	if (nfences)
		hmm_gpu_fences_done(gdev, batch, nfences);
	if (!unmap)
		return;
	down_read(&gdev->svms_sem);
	list_for_each_entry(svm, &gdev->svms, node) {
		struct hmm_gpu_zap z;

		if (svm->mm != mm)
			continue;
		hmm_gpu_zap_init(&z, false);
		z.start = args->start;
		z.end = args->end;
		z.unmap = unmap;
		mutex_lock(&svm->lock);
		hmm_gpu_pt_release(svm, &z);
		mutex_unlock(&svm->lock);
	}
	up_read(&gdev->svms_sem);
}

/*
 * Map the device memory a migration to VRAM just filled: PTE_VRAM leaves,
 * 2 MiB for a 2 MiB device folio, unless the range was invalidated since
 * @seq (the device then faults).
 */
static void hmm_gpu_svm_map_migrated(struct hmm_gpu_svm *svm, const struct migrate_vma *args,
				     unsigned long seq)
{
	bool huge = args->dst[0] & HMM_GPU_MIGRATE_PFN_COMPOUND;
	struct hmm_gpu_zap z;
	unsigned long i, nr;

	if (hmm_gpu_pt_prepare(svm, args->start, huge ? 1 : 0))
		return;
	hmm_gpu_zap_init(&z, false);
	mutex_lock(&svm->lock);
	if (svm->dead || mmu_interval_read_retry(&svm->notifier, seq))
		goto out;
	for (i = 0; i < args->npages; i += nr) {
		struct page *page = migrate_pfn_to_page(args->dst[i]);
		bool write = args->dst[i] & MIGRATE_PFN_WRITE;
		u64 va = args->start + (i << PAGE_SHIFT);

		nr = 1;
		if (!page || !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (args->dst[i] & HMM_GPU_MIGRATE_PFN_COMPOUND) {
			/* Or the device faults, and maps what the CPU maps then. */
			nr = hmm_gpu_migrate_entry_pages(args->dst[i], args->npages - i);
			if (hmm_gpu_pt_set_vram_huge(svm, va, page, write, &z))
				svm->stats.pages_mapped += nr;
			continue;
		}
		if (!hmm_gpu_pt_set_vram(svm, va, page, write, &z))
			break;
		svm->stats.pages_mapped++;
	}
	/* Anything that was in the way went: one fence for all of it. */
	if (z.pages || !list_empty(&z.detached)) {
		if (!hmm_gpu_tlb_fence(svm->gdev, svm->ctx, z.start, z.end - z.start))
			svm->stats.tlb_invalidates++;
		hmm_gpu_pt_release(svm, &z);
	}
out:
	mutex_unlock(&svm->lock);
}

/* Pages a migration moved, once migrate_vma_pages() has run. */
static long hmm_gpu_migrated_pages(const struct migrate_vma *args)
{
	unsigned long i, nr;
	long n = 0;

	for (i = 0; i < args->npages; i += nr) {
		nr = hmm_gpu_migrate_entry_pages(args->src[i], args->npages - i);
		if ((args->src[i] & MIGRATE_PFN_MIGRATE) && args->dst[i])
			n += nr;
	}
	return n;
}

/*
 * Migrate [start, end) (one VMA, one level-0 table, at most
 * HMM_GPU_MIGRATE_MAX_PAGES) to VRAM: an aligned 2 MiB as one device folio
 * where the kernel and VRAM allow. mmap_lock held for read. Returns the
 * pages migrated or an error; *@cpages: the pages migrate_vma_setup()
 * collected.
 */
static long hmm_gpu_svm_window_to_dev(struct hmm_gpu_svm *svm, struct vm_area_struct *vma,
				      u64 start, u64 end, unsigned long *src,
				      unsigned long *dst, struct page **pages,
				      unsigned long *cpages)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	bool huge = IS_ALIGNED(start, PMD_SIZE) && end - start == PMD_SIZE && gdev->dmem.thp;
	struct migrate_vma args = {
		.vma		= vma,
		.start		= start,
		.end		= end,
		.src		= src,
		.dst		= dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_SYSTEM,
	};
	struct hmm_gpu_res res = { .pages = pages };
	struct hmm_gpu_batch batch;
	unsigned int nfences;
	unsigned long seq;
	bool unmap;
	long ret;

	if (huge)
		args.flags |= HMM_GPU_SELECT_COMPOUND;
	/* FAIL_ALLOC (dmirror FLAGS): this THP goes to base pages. */
	if (huge && test_and_clear_bit(HMM_GPU_SVM_FAIL_ALLOC, &svm->flags))
		ret = hmm_gpu_dmem_reserve(gdev, &res, npages, false);
	else
		ret = hmm_gpu_dmem_reserve(gdev, &res, npages, huge);
	if (ret < 0)
		return ret;
	hmm_gpu_race_window();

	ret = migrate_vma_setup(&args);
	if (ret)
		goto out;
	*cpages = args.cpages;
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
	nfences = hmm_gpu_svm_zap_migrating(gdev, vma->vm_mm, &args, &batch, &unmap);
	ret = hmm_gpu_dmem_copy_to_dev(gdev, vma, src, dst, npages, &res, &batch);
	hmm_gpu_svm_unmap_migrating(gdev, vma->vm_mm, &args, &batch, nfences, unmap);
	migrate_vma_pages(&args);
	if (ret >= 0) {
		hmm_gpu_svm_map_migrated(svm, &args, seq);
		hmm_gpu_dmem_touch(gdev, dst, npages);
		ret = hmm_gpu_migrated_pages(&args);
	}
	migrate_vma_finalize(&args);
out:
	hmm_gpu_dmem_unreserve(gdev, &res);
	return ret;
}

/*
 * Migrate [start, end) (one VMA, <= HMM_GPU_MIGRATE_MAX_PAGES) back to RAM,
 * a 2 MiB device folio to a 2 MiB system folio where one can be had.
 * Returns as hmm_gpu_svm_window_to_dev() does.
 */
static long hmm_gpu_svm_window_to_sys(struct hmm_gpu_svm *svm, struct vm_area_struct *vma,
				      u64 start, u64 end, unsigned long *src,
				      unsigned long *dst, unsigned long *cpages)
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
	bool unmap;
	long ret;

	if (gdev->dmem.thp)
		args.flags |= HMM_GPU_SELECT_COMPOUND;
	ret = migrate_vma_setup(&args);
	if (ret)
		return ret;
	*cpages = args.cpages;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		return 0;
	}
	hmm_gpu_batch_init(&batch, 0);
	nfences = hmm_gpu_svm_zap_migrating(gdev, vma->vm_mm, &args, &batch, &unmap);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, vma, start, src, dst, npages,
				       !test_and_clear_bit(HMM_GPU_SVM_FAIL_ALLOC, &svm->flags),
				       &batch);
	hmm_gpu_svm_unmap_migrating(gdev, vma->vm_mm, &args, &batch, nfences, unmap);
	migrate_vma_pages(&args);
	if (ret >= 0)
		ret = hmm_gpu_migrated_pages(&args);
	migrate_vma_finalize(&args);
	return ret;
}

/* Migrations of this many pages or fewer keep their arrays on the stack. */
#define HMM_GPU_MIGRATE_FEW	8

/* The next 2 MiB migration of @svm, either way, goes to base pages. */
void hmm_gpu_svm_fail_next_alloc(struct hmm_gpu_svm *svm)
{
	set_bit(HMM_GPU_SVM_FAIL_ALLOC, &svm->flags);
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
	/* The windows are never longer than the range: size the arrays to it. */
	unsigned long n_max = min_t(u64, HMM_GPU_MIGRATE_MAX_PAGES, len >> PAGE_SHIFT);
	unsigned long few_src[HMM_GPU_MIGRATE_FEW], few_dst[HMM_GPU_MIGRATE_FEW];
	struct page *few_res[HMM_GPU_MIGRATE_FEW];
	unsigned long *src = few_src, *dst = few_dst;
	struct page **res = few_res;
	u64 addr, end = va + len, next;
	unsigned long cpages;
	long n;
	int ret = 0;

	*pages = 0;
	if (!PAGE_ALIGNED(va) || !PAGE_ALIGNED(len) || hmm_gpu_range_bad(svm, va, len))
		return -EINVAL;
	if (to_dev && !gdev->dmem.max_chunks)
		return -EOPNOTSUPP;
	if (n_max > HMM_GPU_MIGRATE_FEW) {
		/* migrate_vma_setup() fills them: no need to zero */
		src = kmalloc_array(n_max, sizeof(*src), GFP_KERNEL);
		dst = kmalloc_array(n_max, sizeof(*dst), GFP_KERNEL);
		res = kmalloc_array(n_max, sizeof(*res), GFP_KERNEL);
		if (!src || !dst || !res) {
			ret = -ENOMEM;
			goto out_free;
		}
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
		cpages = 0;
		trace_hmm_gpu_migrate_begin(gdev->pdev, to_dev, addr, next,
					    (next - addr) >> PAGE_SHIFT);
		if (to_dev)
			n = hmm_gpu_svm_window_to_dev(svm, vma, addr, next, src, dst, res, &cpages);
		else
			n = hmm_gpu_svm_window_to_sys(svm, vma, addr, next, src, dst, &cpages);
		trace_hmm_gpu_migrate_end(gdev->pdev, to_dev, addr, next,
					  (next - addr) >> PAGE_SHIFT, cpages, n);
		if (n < 0) {
			ret = n;
			break;
		}
		*pages += n;
	}
	mmap_read_unlock(mm);
	mmput(mm);
out_free:
	if (src != few_src) {
		kfree(res);
		kfree(dst);
		kfree(src);
	}
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
		u64 i;

		ret = hmm_gpu_svm_range_peek(svm, va + (off << PAGE_SHIFT), n, pfns);
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

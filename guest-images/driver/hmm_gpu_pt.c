// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: the device page tables of an SVM context (see hmm_gpu_svm.h):
 * allocation, lookup, zapping with the TLB fence, and writing PTEs from
 * hmm_range_fault() output.
 */
#include <linux/dma-mapping.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/slab.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_svm.h"

void hmm_gpu_pt_free(struct hmm_gpu_dev *gdev, struct hmm_gpu_pt *pt)
{
	unsigned int i;

	if (!pt)
		return;
	if (pt->child)
		for (i = 0; i < HMM_GPU_PT_ENTRIES; i++)
			hmm_gpu_pt_free(gdev, pt->child[i]);
	if (pt->cpu)
		dma_free_coherent(&gdev->pdev->dev, PAGE_SIZE, pt->cpu, pt->dma);
	kfree(pt->child);
	kfree(pt->page);
	kfree(pt->map);
	kfree(pt);
}

struct hmm_gpu_pt *hmm_gpu_pt_alloc(struct hmm_gpu_dev *gdev, unsigned int level)
{
	struct hmm_gpu_pt *pt;

	pt = kzalloc(sizeof(*pt), GFP_KERNEL);
	if (!pt)
		return NULL;
	pt->level = level;
	pt->cpu = dma_alloc_coherent(&gdev->pdev->dev, PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (level) {
		pt->child = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->child), GFP_KERNEL);
	} else {
		pt->page = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->page), GFP_KERNEL);
		pt->map = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->map), GFP_KERNEL);
	}
	if (!pt->cpu || (level && !pt->child) || (!level && (!pt->page || !pt->map))) {
		hmm_gpu_pt_free(gdev, pt);
		return NULL;
	}
	return pt;
}

/*
 * The level-0 table covering @va, allocating the missing tables with
 * svm->lock dropped. The table stays valid until the context is destroyed.
 */
struct hmm_gpu_pt *hmm_gpu_pt_get(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt, *new = NULL;
	unsigned int level, idx;

	mutex_lock(&svm->lock);
	for (;;) {
		if (svm->dead) {
			pt = ERR_PTR(-ENODEV);
			break;
		}
		pt = svm->root;
		for (level = HMM_GPU_PT_LEVELS - 1; level > 0; level--) {
			idx = hmm_gpu_pt_index(va, level);
			if (!pt->child[idx])
				break;
			pt = pt->child[idx];
		}
		if (!level)
			break;
		if (new && new->level == level - 1) {
			pt->child[idx] = new;
			/* The zeroed table before the entry a device walk follows to it. */
			dma_wmb();
			WRITE_ONCE(pt->cpu[idx], cpu_to_le64(new->dma | HMM_GPU_PTE_VALID));
			new = NULL;
			continue;
		}
		mutex_unlock(&svm->lock);
		hmm_gpu_pt_free(svm->gdev, new);
		new = hmm_gpu_pt_alloc(svm->gdev, level - 1);
		mutex_lock(&svm->lock);
		if (!new) {
			pt = ERR_PTR(-ENOMEM);
			break;
		}
	}
	mutex_unlock(&svm->lock);
	hmm_gpu_pt_free(svm->gdev, new);
	return pt;
}

/* The level-0 table covering @va, NULL if there is none. svm->lock held. */
struct hmm_gpu_pt *hmm_gpu_pt_find(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt = svm->root;
	unsigned int level;

	for (level = HMM_GPU_PT_LEVELS - 1; level > 0 && pt; level--)
		pt = pt->child[hmm_gpu_pt_index(va, level)];
	return pt;
}

/*
 * Whether the device may update the page at @va atomically now: mapped with
 * PTE_ATOMIC (held exclusively, or in this device's VRAM).
 */
bool hmm_gpu_svm_atomic_mapped(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt;
	bool ret = false;

	mutex_lock(&svm->lock);
	pt = svm->dead ? NULL : hmm_gpu_pt_find(svm, va);
	if (pt && pt->page[hmm_gpu_pt_index(va, 0)])
		ret = le64_to_cpu(READ_ONCE(pt->cpu[hmm_gpu_pt_index(va, 0)])) &
		      HMM_GPU_PTE_ATOMIC;
	mutex_unlock(&svm->lock);
	return ret;
}

/* Apply @op to the level-0 entries of [start, end). svm->lock held. */
unsigned long hmm_gpu_pt_walk(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
			      u64 base, u64 start, u64 end, enum hmm_gpu_pt_op op)
{
	u64 span = HMM_GPU_PT_SPAN(pt->level);
	u64 lo = max(start, base);
	u64 hi = min(end, base + span * HMM_GPU_PT_ENTRIES);
	unsigned long n = 0;
	unsigned int i, first, last;

	if (lo >= hi)
		return 0;
	first = (lo - base) >> HMM_GPU_PT_SHIFT(pt->level);
	last = (hi - 1 - base) >> HMM_GPU_PT_SHIFT(pt->level);
	for (i = first; i <= last; i++) {
		if (pt->level) {
			if (pt->child[i])
				n += hmm_gpu_pt_walk(svm, pt->child[i], base + i * span,
						     start, end, op);
			continue;
		}
		switch (op) {
		case HMM_GPU_PT_COUNT:
			n += !!pt->page[i];
			break;
		case HMM_GPU_PT_ZAP:
			if (pt->page[i]) {
				u64 pte = le64_to_cpu(pt->cpu[i]);

				/*
				 * The device may have written the page and the
				 * CPU PTE need not be dirty (no write fault was
				 * needed): as RDMA ODP does, or reclaim drops a
				 * clean page (lazily freed, in the swap cache)
				 * with the device's data.
				 */
				if ((pte & HMM_GPU_PTE_WRITE) && !(pte & HMM_GPU_PTE_VRAM))
					folio_mark_dirty(page_folio(pt->page[i]));
				WRITE_ONCE(pt->cpu[i], 0);
				pt->page[i] = NULL;
				clear_bit(i, pt->excl);
				n++;
			}
			break;
		case HMM_GPU_PT_UNMAP:
			if (pt->map[i] && !pt->page[i]) {
				dma_unmap_page(&svm->gdev->pdev->dev, pt->map[i], PAGE_SIZE,
					       DMA_BIDIRECTIONAL);
				pt->map[i] = 0;
				n++;
			}
			break;
		}
	}
	return n;
}

/*
 * Remove the device's translations of [start, end). svm->lock held. The
 * order is what makes it safe:
 *
 *  1. clear the PTEs, so a walk from now on faults;
 *  2. TLB_INVALIDATE the range and wait for its completion: a walk the
 *     device did before step 1 may have cached the old translation, and only
 *     the completed fence guarantees no later DMA uses it (fenced in the
 *     other order, such a walk could re-cache it after the fence);
 *  3. only then dma_unmap the pages.
 *
 * hmm_gpu_tlb_fence() resets the device if the fence cannot be had, so step
 * 3 never runs while a stale translation may be in use.
 */
unsigned long hmm_gpu_svm_zap(struct hmm_gpu_svm *svm, u64 start, u64 end)
{
	unsigned long n;

	n = hmm_gpu_pt_walk(svm, svm->root, 0, start, end, HMM_GPU_PT_ZAP);
	if (!n)
		return 0;
	if (!hmm_gpu_tlb_fence(svm->gdev, svm->ctx, start, end - start))
		svm->stats.tlb_invalidates++;
	hmm_gpu_pt_walk(svm, svm->root, 0, start, end, HMM_GPU_PT_UNMAP);
	return n;
}

/*
 * Write the PTEs of [start, end) from @pfns (hmm_range_fault() output).
 * svm->lock held, the range is within table @pt. Returns the PTEs written.
 */
long hmm_gpu_svm_write_ptes(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
			    u64 start, u64 end, const unsigned long *pfns, u64 *fresh)
{
	struct device *dev = &svm->gdev->pdev->dev;
	long n = 0;
	u64 va;

	for (va = start; va < end; va += PAGE_SIZE, pfns++) {
		unsigned int idx = hmm_gpu_pt_index(va, 0);
		struct page *page;
		dma_addr_t dma;
		u64 pte;

		if (!(*pfns & HMM_PFN_VALID))
			break;
		page = hmm_pfn_to_page(*pfns);
		if (is_device_private_page(page)) {
			/* Only ours come back from hmm_range_fault(). */
			if (!hmm_gpu_dmem_page_local(svm->gdev, page))
				break;
			if (pt->page[idx] && pt->page[idx] != page)
				hmm_gpu_svm_zap(svm, va, va + PAGE_SIZE);
			*fresh += !pt->page[idx];
			pt->page[idx] = page;
			pte = hmm_gpu_dmem_vram_offset(page) | HMM_GPU_PTE_VALID |
			      HMM_GPU_PTE_READ | HMM_GPU_PTE_VRAM;
			if (*pfns & HMM_PFN_WRITE)
				pte |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
			WRITE_ONCE(pt->cpu[idx], cpu_to_le64(pte));
			n++;
			continue;
		}

		/*
		 * A different page, or fewer permissions, cannot happen without
		 * an invalidation; be safe anyway: a remap or a downgrade needs
		 * the same clear -> fence -> unmap as any other removal.
		 */
		if (pt->page[idx] &&
		    (pt->page[idx] != page ||
		     (le64_to_cpu(pt->cpu[idx]) & HMM_GPU_PTE_ATOMIC) ||
		     ((le64_to_cpu(pt->cpu[idx]) & HMM_GPU_PTE_WRITE) &&
		      !(*pfns & HMM_PFN_WRITE)))) {
			WARN_ONCE(pt->page[idx] != page,
				  "hmm_gpu: ctx %u: PTE %#llx changed without invalidation\n",
				  svm->ctx, va);
			hmm_gpu_svm_zap(svm, va, va + PAGE_SIZE);
		}
		if (pt->page[idx]) {
			dma = pt->map[idx];
		} else {
			dma = dma_map_page(dev, page, 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
			if (dma_mapping_error(dev, dma))
				break;
			(*fresh)++;
			pt->page[idx] = page;
			pt->map[idx] = dma;
		}

		pte = (dma & HMM_GPU_PTE_ADDR_MASK) | HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ;
		/*
		 * Policy: never PTE_ATOMIC on system memory the CPU can still
		 * access, or the device's read-modify-write races the CPU's
		 * atomics. Only pages this device holds exclusively
		 * (hmm_gpu_svm_exclusive()) and pages in its VRAM get it; an
		 * atomic access here faults and takes the page exclusive.
		 */
		if (*pfns & HMM_PFN_WRITE)
			pte |= HMM_GPU_PTE_WRITE;
		WRITE_ONCE(pt->cpu[idx], cpu_to_le64(pte));
		n++;
	}
	return n;
}

/*
 * Does the device page table map every page of [start, end) for @write
 * (else read) access? A hint only: an invalidation may clear it any time.
 */
bool hmm_gpu_svm_mapped(struct hmm_gpu_svm *svm, u64 start, u64 end, bool write)
{
	u64 need = HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ | (write ? HMM_GPU_PTE_WRITE : 0);
	struct hmm_gpu_pt *pt = NULL;
	bool ok = true;
	unsigned int level;
	u64 va;

	mutex_lock(&svm->lock);
	for (va = start & PAGE_MASK; ok && va < end; va += PAGE_SIZE) {
		if (!pt || !hmm_gpu_pt_index(va, 0)) {
			pt = svm->root;
			for (level = HMM_GPU_PT_LEVELS - 1; pt && level > 0; level--)
				pt = pt->child[hmm_gpu_pt_index(va, level)];
			if (!pt || svm->dead) {
				ok = false;
				break;
			}
		}
		ok = (le64_to_cpu(READ_ONCE(pt->cpu[hmm_gpu_pt_index(va, 0)])) & need) == need;
	}
	mutex_unlock(&svm->lock);
	return ok;
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: the device page tables of an SVM context (see hmm_gpu_svm.h).
 *
 * A 4-level radix tree in coherent memory, as the device walks it. A leaf
 * is a level-0 entry (4 KiB) or a level-1 entry with PTE_LEAF (2 MiB: a
 * PMD-mapped THP, or a device-private THP in VRAM). Every leaf has a shadow:
 * the page it maps (for 2 MiB, the head page) and its DMA mapping (none for
 * VRAM).
 *
 * Translations go in three steps, the fence in the middle:
 *  1. hmm_gpu_pt_clear(): clear the entries, so a walk from now on faults;
 *     tables the clear emptied may be detached from their parent;
 *  2. a TLB_INVALIDATE of the range, completed: a walk the device did before
 *     step 1 may have cached the old translation or be reading a detached
 *     table, and only the completed fence guarantees neither is used again;
 *  3. hmm_gpu_pt_release(): dma_unmap the pages, free the detached tables.
 * hmm_gpu_svm_zap() does all three; migrations queue the fence in front of
 * their copy instead (hmm_gpu_svm_zap_migrating()).
 *
 * Everything here runs under svm->lock, except hmm_gpu_pt_prepare(), which
 * allocates the tables a mapping will need, and alloc/free.
 */
#include <linux/dma-mapping.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/sizes.h>
#include <linux/slab.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_svm.h"

#define HMM_GPU_HUGE_PAGES	(HMM_GPU_PT_SPAN(1) >> PAGE_SHIFT)

/* ---- tables ------------------------------------------------------------ */

/* Free @pt and the tables below it. Nothing they map may still be DMA mapped. */
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

/*
 * Level-0 tables an svm keeps once emptied and released: a process that maps
 * and unmaps small buffers over and over would otherwise allocate and free
 * a table (a coherent page and its shadows) in every device fault.
 */
#define HMM_GPU_PT_CACHE	8

/* Free the tables kept for reuse. */
void hmm_gpu_pt_cache_free(struct hmm_gpu_svm *svm)
{
	struct hmm_gpu_pt *pt, *next;

	list_for_each_entry_safe(pt, next, &svm->pt_cache, detached) {
		list_del(&pt->detached);
		hmm_gpu_pt_free(svm->gdev, pt);
	}
	svm->pt_cached = 0;
}

struct hmm_gpu_pt *hmm_gpu_pt_alloc(struct hmm_gpu_dev *gdev, unsigned int level)
{
	struct hmm_gpu_pt *pt;

	pt = kzalloc(sizeof(*pt), GFP_KERNEL);
	if (!pt)
		return NULL;
	pt->level = level;
	INIT_LIST_HEAD(&pt->detached);
	pt->cpu = dma_alloc_coherent(&gdev->pdev->dev, PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (level)
		pt->child = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->child), GFP_KERNEL);
	/* Leaves: 4 KiB at level 0, 2 MiB at level 1. */
	if (level <= 1) {
		pt->page = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->page), GFP_KERNEL);
		pt->map = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->map), GFP_KERNEL);
	}
	if (!pt->cpu || (level && !pt->child) || (level <= 1 && (!pt->page || !pt->map))) {
		hmm_gpu_pt_free(gdev, pt);
		return NULL;
	}
	return pt;
}

/* The table at @level covering @va, NULL if there is none. */
struct hmm_gpu_pt *hmm_gpu_pt_find(struct hmm_gpu_svm *svm, u64 va, unsigned int level)
{
	struct hmm_gpu_pt *pt = svm->root;
	unsigned int l;

	for (l = HMM_GPU_PT_LEVELS - 1; l > level && pt; l--)
		pt = pt->child[hmm_gpu_pt_index(va, l)];
	return pt;
}

/*
 * Make sure the tables down to @level covering @va exist, allocating them
 * with svm->lock dropped. A 2 MiB leaf where a level-0 table must go is
 * zapped first. Callers look the table up again under svm->lock: an
 * invalidation of its whole span may have freed it meanwhile.
 */
int hmm_gpu_pt_prepare(struct hmm_gpu_svm *svm, u64 va, unsigned int level)
{
	struct hmm_gpu_pt *pt, *new = NULL;
	unsigned int l, idx;
	int ret = 0;

	mutex_lock(&svm->lock);
	for (;;) {
		if (svm->dead) {
			ret = -ENODEV;
			break;
		}
		pt = svm->root;
		for (l = HMM_GPU_PT_LEVELS - 1; l > level; l--) {
			idx = hmm_gpu_pt_index(va, l);
			if (!pt->child[idx])
				break;
			pt = pt->child[idx];
		}
		if (l == level)
			break;
		if (l == 1 && pt->page[idx]) {
			/* A 2 MiB leaf: 4 KiB entries replace it. */
			u64 base = va & ~(HMM_GPU_PT_SPAN(1) - 1);

			hmm_gpu_svm_zap(svm, base, base + HMM_GPU_PT_SPAN(1), false);
			continue;
		}
		if (!new && l == 1 && svm->pt_cached) {
			new = list_first_entry(&svm->pt_cache, struct hmm_gpu_pt, detached);
			list_del_init(&new->detached);
			svm->pt_cached--;
			continue;
		}
		if (new && new->level == l - 1) {
			pt->child[idx] = new;
			pt->nr++;
			svm->stats.pt_pages++;
			/* The zeroed table before the entry a device walk follows to it. */
			dma_wmb();
			WRITE_ONCE(pt->cpu[idx], cpu_to_le64(new->dma | HMM_GPU_PTE_VALID));
			new = NULL;
			continue;
		}
		mutex_unlock(&svm->lock);
		hmm_gpu_pt_free(svm->gdev, new);
		new = hmm_gpu_pt_alloc(svm->gdev, l - 1);
		mutex_lock(&svm->lock);
		if (!new) {
			ret = -ENOMEM;
			break;
		}
	}
	mutex_unlock(&svm->lock);
	hmm_gpu_pt_free(svm->gdev, new);
	return ret;
}

/* ---- clearing, releasing ------------------------------------------------ */

void hmm_gpu_zap_init(struct hmm_gpu_zap *z, bool reclaim)
{
	*z = (struct hmm_gpu_zap){ .start = U64_MAX, .reclaim = reclaim };
	INIT_LIST_HEAD(&z->detached);
}

static u64 hmm_gpu_pte(const struct hmm_gpu_pt *pt, unsigned int i)
{
	return le64_to_cpu(READ_ONCE(pt->cpu[i]));
}

/* Pages one leaf of @pt maps. */
static unsigned long hmm_gpu_leaf_pages(const struct hmm_gpu_pt *pt)
{
	return pt->level ? HMM_GPU_HUGE_PAGES : 1;
}

/* Clear leaf @i of @pt (at address @va) into @z. */
static void hmm_gpu_leaf_clear(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
			       unsigned int i, u64 va, struct hmm_gpu_zap *z)
{
	u64 pte = hmm_gpu_pte(pt, i);
	unsigned long n = hmm_gpu_leaf_pages(pt);

	/*
	 * The device may have written the page and the CPU PTE need not be
	 * dirty (no write fault was needed): as RDMA ODP does, or reclaim
	 * drops a clean page (lazily freed, in the swap cache) with the
	 * device's data.
	 */
	if ((pte & HMM_GPU_PTE_WRITE) && !(pte & HMM_GPU_PTE_VRAM))
		folio_mark_dirty(page_folio(pt->page[i]));
	WRITE_ONCE(pt->cpu[i], 0);
	pt->page[i] = NULL;
	if (!pt->level)
		clear_bit(i, pt->excl);
	pt->nr--;
	pt->unmap += !!pt->map[i];
	svm->stats.mapped -= n;
	z->pages += n;
	z->unmap += !!pt->map[i];
	z->start = min(z->start, va);
	z->end = max(z->end, va + (n << PAGE_SHIFT));
}

/*
 * Clear the leaves of @pt (covering @base..) that overlap [start, end). With
 * z->reclaim, a level-0 table the range reaches into that is empty
 * afterwards is detached from @pt and queued on z->detached, even if the
 * range covers only part of its span (an unaligned munmap empties the
 * tables at its ends too), and so is an emptied higher table if the range
 * is at least as long as one of its entries spans. A table someone just
 * prepared for a mapping outside the range may go with it: callers look
 * their table up again under svm->lock.
 */
static void hmm_gpu_pt_clear_level(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				   u64 base, u64 start, u64 end, struct hmm_gpu_zap *z)
{
	u64 span = HMM_GPU_PT_SPAN(pt->level);
	u64 lo = max(start, base);
	u64 hi = min(end, base + span * HMM_GPU_PT_ENTRIES);
	unsigned int i, first, last;

	if (lo >= hi)
		return;
	first = (lo - base) >> HMM_GPU_PT_SHIFT(pt->level);
	last = (hi - 1 - base) >> HMM_GPU_PT_SHIFT(pt->level);
	for (i = first; i <= last; i++) {
		u64 va = base + i * span;
		struct hmm_gpu_pt *child = pt->level ? pt->child[i] : NULL;

		if (child) {
			hmm_gpu_pt_clear_level(svm, child, va, start, end, z);
			/*
			 * Leaf tables the range emptied go even if it covers
			 * them only in part; the few above them when the range
			 * spans at least one of their entries (a munmap of one
			 * page must not free and rebuild a table of tables).
			 */
			if (z->reclaim && !child->nr &&
			    (!child->level || end - start >= HMM_GPU_PT_SPAN(child->level))) {
				WRITE_ONCE(pt->cpu[i], 0);
				pt->child[i] = NULL;
				pt->nr--;
				list_add_tail(&child->detached, &z->detached);
				/* The fence covers every walk that could be in it. */
				z->start = min(z->start, va);
				z->end = max(z->end, va + span);
			}
		} else if (pt->level <= 1 && pt->page[i]) {
			hmm_gpu_leaf_clear(svm, pt, i, va, z);
		}
	}
}

/* Step 1: clear the translations of [start, end) into @z. */
void hmm_gpu_pt_clear(struct hmm_gpu_svm *svm, u64 start, u64 end, struct hmm_gpu_zap *z)
{
	if (start < end)
		hmm_gpu_pt_clear_level(svm, svm->root, 0, start, end, z);
}

/* dma_unmap what cleared leaves of @pt in [start, end) still map. */
static void hmm_gpu_pt_unmap_level(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				   u64 base, u64 start, u64 end)
{
	struct device *dev = &svm->gdev->pdev->dev;
	u64 span = HMM_GPU_PT_SPAN(pt->level);
	u64 lo = max(start, base);
	u64 hi = min(end, base + span * HMM_GPU_PT_ENTRIES);
	unsigned int i, first, last;

	/* A leaf table with nothing left to unmap: skip its 512 entries. */
	if (lo >= hi || (!pt->level && !pt->unmap))
		return;
	first = (lo - base) >> HMM_GPU_PT_SHIFT(pt->level);
	last = (hi - 1 - base) >> HMM_GPU_PT_SHIFT(pt->level);
	for (i = first; i <= last; i++) {
		if (pt->level && pt->child[i]) {
			hmm_gpu_pt_unmap_level(svm, pt->child[i], base + i * span, start, end);
		} else if (pt->level <= 1 && pt->map[i] && !pt->page[i]) {
			dma_unmap_page(dev, pt->map[i], span, DMA_BIDIRECTIONAL);
			pt->map[i] = 0;
			pt->unmap--;
		}
	}
}

/* Tables in the subtree of @pt, @pt included. */
unsigned long hmm_gpu_pt_count_tables(const struct hmm_gpu_pt *pt)
{
	unsigned long n = 1;
	unsigned int i;

	if (pt->level)
		for (i = 0; i < HMM_GPU_PT_ENTRIES; i++)
			if (pt->child[i])
				n += hmm_gpu_pt_count_tables(pt->child[i]);
	return n;
}

/*
 * Step 3, once a fence issued after step 1 has completed: unmap what the
 * cleared leaves mapped, free the detached tables. Any leaf cleared but not
 * yet unmapped in the range was cleared before that fence was queued (under
 * svm->lock, in ring order), so unmapping it is safe too.
 */
void hmm_gpu_pt_release(struct hmm_gpu_svm *svm, struct hmm_gpu_zap *z)
{
	struct hmm_gpu_pt *pt, *next;

	if (z->unmap)
		hmm_gpu_pt_unmap_level(svm, svm->root, 0, z->start, z->end);
	list_for_each_entry_safe(pt, next, &z->detached, detached) {
		list_del(&pt->detached);
		/* Its leaves were cleared, not unmapped, on the way out. */
		hmm_gpu_pt_unmap_level(svm, pt, 0, 0, U64_MAX);
		svm->stats.pt_pages -= hmm_gpu_pt_count_tables(pt);
		if (!pt->level && svm->pt_cached < HMM_GPU_PT_CACHE && !svm->dead) {
			/* Empty: every entry and shadow is zero again. */
			list_add(&pt->detached, &svm->pt_cache);
			svm->pt_cached++;
			continue;
		}
		hmm_gpu_pt_free(svm->gdev, pt);
	}
	z->unmap = 0;
}

/*
 * Remove the device's translations of [start, end): clear, TLB_INVALIDATE
 * and wait for it, release. hmm_gpu_tlb_fence() resets the device if the
 * fence cannot be had, so the release never runs while a stale translation
 * may be in use. @reclaim: free the tables the range leaves empty
 * (munmap). Returns the pages whose translation went.
 */
unsigned long hmm_gpu_svm_zap(struct hmm_gpu_svm *svm, u64 start, u64 end, bool reclaim)
{
	struct hmm_gpu_zap z;

	hmm_gpu_zap_init(&z, reclaim);
	hmm_gpu_pt_clear(svm, start, end, &z);
	if (!z.pages && list_empty(&z.detached))
		return 0;
	/* Detached tables widen z's range to their whole span. */
	start = min(start, z.start);
	end = max(end, z.end);
	if (!hmm_gpu_tlb_fence(svm->gdev, svm->ctx, start, end - start))
		svm->stats.tlb_invalidates++;
	hmm_gpu_pt_release(svm, &z);
	return z.pages;
}

/* Pages [start, end) has translations for. */
unsigned long hmm_gpu_pt_count(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt, u64 base,
			       u64 start, u64 end)
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
		if (pt->level && pt->child[i])
			n += hmm_gpu_pt_count(svm, pt->child[i], base + i * span, start, end);
		else if (pt->level <= 1 && pt->page[i])
			n += hmm_gpu_leaf_pages(pt);
	}
	return n;
}

/* ---- writing leaves ------------------------------------------------------ */

/*
 * A DMA mapping of @size at @page that the device may keep using: none
 * (DMA_MAPPING_ERROR) if the DMA layer bounced it (see hmm_gpu_dma_probe()).
 */
static dma_addr_t hmm_gpu_pt_dma_map(struct hmm_gpu_svm *svm, struct page *page, size_t size)
{
	struct device *dev = &svm->gdev->pdev->dev;
	dma_addr_t map = dma_map_page(dev, page, 0, size, DMA_BIDIRECTIONAL);

	if (dma_mapping_error(dev, map) || !hmm_gpu_dma_bounced(dev, map))
		return map;
	dma_unmap_page(dev, map, size, DMA_BIDIRECTIONAL);
	dev_err_ratelimited(dev, "ctx %u: page %#lx bounced by swiotlb: not mapped\n",
			    svm->ctx, page_to_pfn(page));
	return DMA_MAPPING_ERROR;
}

/* Write leaf @i of @pt. */
static void hmm_gpu_leaf_set(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt, unsigned int i,
			     struct page *page, dma_addr_t map, u64 pte)
{
	if (!pt->page[i]) {
		pt->nr++;
		svm->stats.mapped += hmm_gpu_leaf_pages(pt);
	}
	pt->page[i] = page;
	pt->map[i] = map;
	WRITE_ONCE(pt->cpu[i], cpu_to_le64(pte | HMM_GPU_PTE_VALID));
}

/* The PTE of a device-private page of ours (its VRAM offset). */
static u64 hmm_gpu_vram_pte(struct page *page, bool write)
{
	u64 pte = hmm_gpu_dmem_vram_offset(page) | HMM_GPU_PTE_READ | HMM_GPU_PTE_VRAM;

	/* In VRAM only the device reaches the page: atomics are safe. */
	if (write)
		pte |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
	return pte;
}

/*
 * Does leaf @i of @pt have to go before it can map @page with @pte? A
 * different page or fewer permissions cannot happen without an
 * invalidation, but stay safe: a remap or a downgrade needs the same
 * clear -> fence -> release as any removal. An exclusive (atomic) mapping
 * of system memory that hmm_range_fault() now reports as an ordinary page
 * lost its exclusivity.
 */
static bool hmm_gpu_leaf_stale(const struct hmm_gpu_pt *pt, unsigned int i, struct page *page,
			       u64 pte)
{
	u64 old = hmm_gpu_pte(pt, i);

	if (!pt->page[i])
		return false;
	if (pt->page[i] != page || (old & HMM_GPU_PTE_VRAM) != (pte & HMM_GPU_PTE_VRAM))
		return true;
	if ((old & HMM_GPU_PTE_WRITE) && !(pte & HMM_GPU_PTE_WRITE))
		return true;
	return (old & HMM_GPU_PTE_ATOMIC) && !(pte & HMM_GPU_PTE_VRAM);
}

/* Fence and release what @z cleared, if anything. */
static void hmm_gpu_zap_finish(struct hmm_gpu_svm *svm, struct hmm_gpu_zap *z)
{
	if (!z->pages && list_empty(&z->detached))
		return;
	if (!hmm_gpu_tlb_fence(svm->gdev, svm->ctx, z->start, z->end - z->start))
		svm->stats.tlb_invalidates++;
	hmm_gpu_pt_release(svm, z);
}

/*
 * Whether @pfns (hmm_range_fault() output for the 2 MiB at @va) can be one
 * 2 MiB leaf: a PMD-mapped folio, all of it present with the same rights.
 */
static bool hmm_gpu_pfns_huge(struct hmm_gpu_svm *svm, const unsigned long *pfns)
{
	unsigned long first = pfns[0], pfn, i;
	struct page *head;

	if (!(first & HMM_PFN_VALID) ||
	    hmm_pfn_to_map_order(first) < HMM_GPU_PT_SHIFT(1) - PAGE_SHIFT)
		return false;
	head = hmm_pfn_to_page(first);
	pfn = page_to_pfn(head);
	if (!IS_ALIGNED(pfn, HMM_GPU_HUGE_PAGES))
		return false;
	for (i = 1; i < HMM_GPU_HUGE_PAGES; i++)
		if (page_to_pfn(hmm_pfn_to_page(pfns[i])) != pfn + i ||
		    (pfns[i] & (HMM_PFN_VALID | HMM_PFN_WRITE)) !=
		    (first & (HMM_PFN_VALID | HMM_PFN_WRITE)))
			return false;
	if (is_device_private_page(head))
		return hmm_gpu_dmem_page_local(svm->gdev, head) &&
		       IS_ALIGNED(hmm_gpu_dmem_vram_offset(head), HMM_GPU_PT_SPAN(1));
	return true;
}

/* Map the 2 MiB at @va with one level-1 leaf. Returns pages mapped, 0 if not. */
static long hmm_gpu_write_huge(struct hmm_gpu_svm *svm, u64 va, const unsigned long *pfns,
			       u64 *fresh)
{
	struct device *dev = &svm->gdev->pdev->dev;
	struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, va, 1);
	unsigned int i = hmm_gpu_pt_index(va, 1);
	struct page *head = hmm_pfn_to_page(pfns[0]);
	bool write = pfns[0] & HMM_PFN_WRITE;
	struct hmm_gpu_pt *child;
	struct hmm_gpu_zap z;
	dma_addr_t map = 0;
	u64 pte;

	if (!pt)
		return 0;
	child = pt->child[i];
	if (child && child->nr)
		return 0;	/* 4 KiB mappings there: stay with them */
	pte = is_device_private_page(head) ? hmm_gpu_vram_pte(head, write) :
	      HMM_GPU_PTE_READ | (write ? HMM_GPU_PTE_WRITE : 0);
	hmm_gpu_zap_init(&z, true);
	if (child) {
		/* An empty table goes, after the fence: a walk may be in it. */
		WRITE_ONCE(pt->cpu[i], 0);
		pt->child[i] = NULL;
		pt->nr--;
		list_add_tail(&child->detached, &z.detached);
		z.start = va;
		z.end = va + HMM_GPU_PT_SPAN(1);
	} else if (hmm_gpu_leaf_stale(pt, i, head, pte)) {
		hmm_gpu_leaf_clear(svm, pt, i, va, &z);
	}
	hmm_gpu_zap_finish(svm, &z);

	if (pt->page[i]) {
		map = pt->map[i];
	} else if (!is_device_private_page(head)) {
		map = hmm_gpu_pt_dma_map(svm, head, HMM_GPU_PT_SPAN(1));
		if (dma_mapping_error(dev, map))
			return 0;
	}
	if (map)
		pte |= map & HMM_GPU_PTE_ADDR_MASK;
	*fresh += pt->page[i] ? 0 : HMM_GPU_HUGE_PAGES;
	hmm_gpu_leaf_set(svm, pt, i, head, map, pte | HMM_GPU_PTE_LEAF);
	svm->stats.huge_mapped++;
	return HMM_GPU_HUGE_PAGES;
}

/*
 * Write the leaves of [start, end) from @pfns (hmm_range_fault() output).
 * The range lies within one 2 MiB span. A whole span that a PMD maps on
 * the CPU gets one 2 MiB leaf, as nouveau maps by hmm_pfn_to_map_order();
 * otherwise 4 KiB leaves. Entries that must go first are cleared together,
 * behind one fence. Returns the pages mapped (from @start on), -EAGAIN if
 * the level-0 table a 4 KiB mapping needs is missing (the caller prepares
 * it and retries). *@fresh counts the pages that were not mapped before.
 */
long hmm_gpu_svm_write_ptes(struct hmm_gpu_svm *svm, u64 start, u64 end,
			    const unsigned long *pfns, u64 *fresh)
{
	struct device *dev = &svm->gdev->pdev->dev;
	struct hmm_gpu_pt *pt;
	struct hmm_gpu_zap z;
	long n = 0;
	u64 va;

	if (end - start == HMM_GPU_PT_SPAN(1) && IS_ALIGNED(start, HMM_GPU_PT_SPAN(1)) &&
	    hmm_gpu_pfns_huge(svm, pfns)) {
		n = hmm_gpu_write_huge(svm, start, pfns, fresh);
		if (n)
			return n;
	}
	pt = hmm_gpu_pt_find(svm, start, 0);
	if (!pt)
		return -EAGAIN;

	/* Pass 1: what is in the way goes, behind one fence. */
	hmm_gpu_zap_init(&z, false);
	for (va = start; va < end; va += PAGE_SIZE) {
		unsigned long pfn = pfns[(va - start) >> PAGE_SHIFT];
		unsigned int i = hmm_gpu_pt_index(va, 0);
		struct page *page;

		if (!(pfn & HMM_PFN_VALID))
			break;
		page = hmm_pfn_to_page(pfn);
		if (is_device_private_page(page) && !hmm_gpu_dmem_page_local(svm->gdev, page))
			break;
		if (hmm_gpu_leaf_stale(pt, i, page,
				       is_device_private_page(page) ?
				       hmm_gpu_vram_pte(page, pfn & HMM_PFN_WRITE) :
				       HMM_GPU_PTE_READ |
				       (pfn & HMM_PFN_WRITE ? HMM_GPU_PTE_WRITE : 0))) {
			WARN_ONCE(pt->page[i] != page,
				  "hmm_gpu: ctx %u: PTE %#llx changed without invalidation\n",
				  svm->ctx, va);
			hmm_gpu_leaf_clear(svm, pt, i, va, &z);
		}
	}
	hmm_gpu_zap_finish(svm, &z);

	/* Pass 2: write them. */
	for (va = start; va < end; va += PAGE_SIZE, pfns++) {
		unsigned int i = hmm_gpu_pt_index(va, 0);
		struct page *page;
		dma_addr_t map;
		u64 pte;

		if (!(*pfns & HMM_PFN_VALID))
			break;
		page = hmm_pfn_to_page(*pfns);
		if (is_device_private_page(page)) {
			/* Only ours come back from hmm_range_fault(). */
			if (!hmm_gpu_dmem_page_local(svm->gdev, page))
				break;
			*fresh += !pt->page[i];
			hmm_gpu_leaf_set(svm, pt, i, page, 0,
					 hmm_gpu_vram_pte(page, *pfns & HMM_PFN_WRITE));
			n++;
			continue;
		}
		if (pt->page[i]) {
			map = pt->map[i];
		} else {
			map = hmm_gpu_pt_dma_map(svm, page, PAGE_SIZE);
			if (dma_mapping_error(dev, map))
				break;
			(*fresh)++;
		}
		pte = (map & HMM_GPU_PTE_ADDR_MASK) | HMM_GPU_PTE_READ;
		/*
		 * Policy: never PTE_ATOMIC on system memory the CPU can still
		 * access, or the device's read-modify-write races the CPU's
		 * atomics. Only pages this device holds exclusively
		 * (hmm_gpu_svm_exclusive()) and pages in its VRAM get it; an
		 * atomic access here faults and takes the page exclusive.
		 */
		if (*pfns & HMM_PFN_WRITE)
			pte |= HMM_GPU_PTE_WRITE;
		hmm_gpu_leaf_set(svm, pt, i, page, map, pte);
		n++;
	}
	return n;
}

/*
 * Map the 4 KiB device page @page of ours at @va (a migration to VRAM just
 * filled it), clearing what was there into @z, which the caller fences and
 * releases. The level-0 table must exist: false if it does not.
 */
bool hmm_gpu_pt_set_vram(struct hmm_gpu_svm *svm, u64 va, struct page *page, bool write,
			 struct hmm_gpu_zap *z)
{
	struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, va, 0);
	unsigned int i = hmm_gpu_pt_index(va, 0);

	if (!pt)
		return false;
	if (pt->page[i])
		hmm_gpu_leaf_clear(svm, pt, i, va, z);
	hmm_gpu_leaf_set(svm, pt, i, page, 0, hmm_gpu_vram_pte(page, write));
	return true;
}

/*
 * Map the 2 MiB device folio @head of ours at @va (2 MiB aligned) with one
 * level-1 leaf, clearing what was there into @z, which the caller fences
 * and releases; an empty level-0 table there goes too. The level-1 table
 * must exist, and no 4 KiB leaf may be left below: false if either is not
 * so.
 */
bool hmm_gpu_pt_set_vram_huge(struct hmm_gpu_svm *svm, u64 va, struct page *head, bool write,
			      struct hmm_gpu_zap *z)
{
	struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, va, 1);
	unsigned int i = hmm_gpu_pt_index(va, 1);
	struct hmm_gpu_pt *child;

	if (!pt)
		return false;
	child = pt->child[i];
	if (child) {
		if (child->nr)
			return false;
		WRITE_ONCE(pt->cpu[i], 0);
		pt->child[i] = NULL;
		pt->nr--;
		list_add_tail(&child->detached, &z->detached);
		z->start = min(z->start, va);
		z->end = max(z->end, va + HMM_GPU_PT_SPAN(1));
	} else if (pt->page[i]) {
		hmm_gpu_leaf_clear(svm, pt, i, va, z);
	}
	hmm_gpu_leaf_set(svm, pt, i, head, 0, hmm_gpu_vram_pte(head, write) | HMM_GPU_PTE_LEAF);
	svm->stats.huge_mapped++;
	return true;
}

/* Whether the 4 KiB leaf at @va already maps @page (and may stay). */
bool hmm_gpu_svm_excl_keeps(struct hmm_gpu_svm *svm, u64 va, struct page *page)
{
	struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, va, 0);
	unsigned int i = hmm_gpu_pt_index(va, 0);

	return pt && pt->page[i] == page && !(hmm_gpu_pte(pt, i) & HMM_GPU_PTE_VRAM);
}

/* Clear the leaf translating @va (4 KiB, or the 2 MiB around it) into @z. */
void hmm_gpu_pt_clear_page(struct hmm_gpu_svm *svm, u64 va, struct hmm_gpu_zap *z)
{
	hmm_gpu_pt_clear(svm, va & PAGE_MASK, (va & PAGE_MASK) + PAGE_SIZE, z);
}

/*
 * Map system page @page at @va for exclusive (atomic) device access, the
 * CPU's entry being device-exclusive now. Whatever translated @va before
 * must be gone (cleared and released), unless it is @page already. The
 * level-0 table must exist. 0 or an errno.
 */
int hmm_gpu_pt_set_exclusive(struct hmm_gpu_svm *svm, u64 va, struct page *page)
{
	struct device *dev = &svm->gdev->pdev->dev;
	struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, va, 0);
	unsigned int i = hmm_gpu_pt_index(va, 0);
	dma_addr_t map;

	if (!pt)
		return -EAGAIN;
	if (pt->page[i] && pt->page[i] != page)
		return -EAGAIN;
	if (pt->page[i]) {
		map = pt->map[i];
	} else {
		map = hmm_gpu_pt_dma_map(svm, page, PAGE_SIZE);
		if (dma_mapping_error(dev, map))
			return -ENOMEM;
	}
	hmm_gpu_leaf_set(svm, pt, i, page, map,
			 (map & HMM_GPU_PTE_ADDR_MASK) | HMM_GPU_PTE_READ | HMM_GPU_PTE_WRITE |
			 HMM_GPU_PTE_ATOMIC);
	set_bit(i, pt->excl);
	return 0;
}

/* ---- queries ------------------------------------------------------------- */

/* The leaf translating @va: its table and index, or NULL. */
static struct hmm_gpu_pt *hmm_gpu_leaf_of(struct hmm_gpu_svm *svm, u64 va, unsigned int *idx)
{
	struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, va, 1);

	if (!pt)
		return NULL;
	*idx = hmm_gpu_pt_index(va, 1);
	if (pt->page[*idx])
		return pt;
	pt = pt->child[*idx];
	*idx = hmm_gpu_pt_index(va, 0);
	return pt && pt->page[*idx] ? pt : NULL;
}

/*
 * Whether the device may update the page at @va atomically now: mapped with
 * PTE_ATOMIC (held exclusively, or in this device's VRAM).
 */
bool hmm_gpu_svm_atomic_mapped(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt;
	unsigned int i;
	bool ret = false;

	mutex_lock(&svm->lock);
	pt = svm->dead ? NULL : hmm_gpu_leaf_of(svm, va, &i);
	if (pt)
		ret = hmm_gpu_pte(pt, i) & HMM_GPU_PTE_ATOMIC;
	mutex_unlock(&svm->lock);
	return ret;
}

/* Whether the page at @va is mapped for exclusive access (CHECK_EXCLUSIVE). */
bool hmm_gpu_svm_excl_mapped(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt;
	unsigned int i;

	pt = svm->dead ? NULL : hmm_gpu_leaf_of(svm, va, &i);
	return pt && !pt->level && test_bit(i, pt->excl);
}

/*
 * Does the device page table map every page of [start, end) for @write
 * (else read) access? A hint only: an invalidation may clear it any time.
 */
bool hmm_gpu_svm_mapped(struct hmm_gpu_svm *svm, u64 start, u64 end, bool write)
{
	u64 need = HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ | (write ? HMM_GPU_PTE_WRITE : 0);
	struct hmm_gpu_pt *pt;
	bool ok = true;
	unsigned int i;
	u64 va;

	mutex_lock(&svm->lock);
	for (va = start & PAGE_MASK; ok && va < end; ) {
		pt = svm->dead ? NULL : hmm_gpu_leaf_of(svm, va, &i);
		ok = pt && (hmm_gpu_pte(pt, i) & need) == need;
		va = pt && pt->level ? ALIGN(va + 1, HMM_GPU_PT_SPAN(1)) : va + PAGE_SIZE;
	}
	mutex_unlock(&svm->lock);
	return ok;
}

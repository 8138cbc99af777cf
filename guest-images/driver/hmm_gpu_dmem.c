// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: device memory (ABI 1.2, CAP_VRAM).
 *
 * VRAM is exposed to the kernel as MEMORY_DEVICE_PRIVATE pages, owned by
 * the hmm_gpu device (so two devices see each other's pages as remote).
 * Two granularities:
 *  - blocks of up to 64 MiB, each a request_free_mem_region() range
 *    registered with memremap_pages() on first need. Registration is
 *    expensive (memory hotplug takes a global lock and waits for RCU), so
 *    it is done rarely, in big pieces, like amdgpu does for all of VRAM;
 *  - chunks of 2 MiB, the unit of allocation bookkeeping and of eviction,
 *    and on 6.19+ the size of a device-private THP: a chunk holds either
 *    one 2 MiB folio (mapped by one device-private PMD on the CPU, one
 *    2 MiB leaf on the device) or up to 512 base pages.
 * Device page n of chunk c holds VRAM offset c * 2 MiB + n * 4 KiB. The CPU
 * cannot reach VRAM: every byte moves with the MIGRATE copy engine, one
 * command per copy list of at most HMM_GPU_MIGRATE_MAX_PAGES entries in
 * coherent memory; its completion is the fence.
 *
 * Allocator, under dmem->lock (a spinlock: folio_free may be called from
 * any context): each chunk keeps its own free pages, linked through
 * page->zone_device_data, and sits on dmem->partial (some free) or
 * dmem->empty (all free). Base pages come from partial chunks first, so
 * empty chunks stay whole for 2 MiB folios. A chunk whose 2 MiB folio was
 * freed whole keeps that folio's compound metadata in its struct pages
 * (the kernel resets it only when a page is handed out again), and
 * migrate_device_range() reads a free head page's order: such a chunk is
 * "stale", reused whole as a folio, or first made clean (its head page
 * handed out and freed as a base page) before base pages come from it.
 * Pages are reserved before migrate_vma_setup() and initialised
 * (zone_device_folio_init(), which locks them) only once used, so eviction
 * never meets a page the caller holds locked.
 *
 * Eviction: when nothing is free and every chunk is in use, the chunk
 * whose pages were migrated to the device least recently is moved back to
 * system memory with migrate_device_range/pages/finalize, and allocation is
 * retried. evict_lock serialises evictions. Each migration has its own copy
 * list (a dma_pool block), so CPU faults on different pages do not wait for
 * each other.
 */
#include <linux/dma-mapping.h>
#include <linux/dmapool.h>
#include <linux/highmem.h>
#include <linux/ioport.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/slab.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_trace.h"

#define HMM_GPU_CHUNK_SIZE	(2ul << 20)
#define HMM_GPU_CHUNK_PAGES	(HMM_GPU_CHUNK_SIZE >> PAGE_SHIFT)
#define HMM_GPU_CHUNK_ORDER	(21 - PAGE_SHIFT)
#define HMM_GPU_BLOCK_CHUNKS	32
#define HMM_GPU_BLOCK_SIZE	(HMM_GPU_BLOCK_CHUNKS * HMM_GPU_CHUNK_SIZE)

struct hmm_gpu_block {
	struct dev_pagemap	pagemap;
	struct hmm_gpu_dev	*gdev;
	unsigned int		index;		/* VRAM offset / block size */
	unsigned long		pfn_first;
};

struct hmm_gpu_chunk {
	struct hmm_gpu_dev	*gdev;
	unsigned long		pfn_first;
	/* Under dmem->lock: */
	struct list_head	node;		/* on dmem->partial or ->empty, or none */
	struct page		*free;		/* free pages (unless whole) */
	unsigned int		nfree;
	bool			whole;		/* every page free, `free` not built */
	bool			stale;		/* whole, after a 2 MiB folio */
	bool			held;		/* reserved whole: on no list */
	u64			lru;		/* last migration to the chunk */
};

static struct hmm_gpu_block *hmm_gpu_page_block(struct page *page)
{
	return container_of(hmm_gpu_page_pgmap(page), struct hmm_gpu_block, pagemap);
}

static struct hmm_gpu_chunk *hmm_gpu_page_chunk(struct page *page)
{
	struct hmm_gpu_block *block = hmm_gpu_page_block(page);
	unsigned long n = (page_to_pfn(page) - block->pfn_first) / HMM_GPU_CHUNK_PAGES;

	return &block->gdev->dmem.chunks[block->index * HMM_GPU_BLOCK_CHUNKS + n];
}

bool hmm_gpu_dmem_page_local(struct hmm_gpu_dev *gdev, struct page *page)
{
	return is_device_private_page(page) && hmm_gpu_page_pgmap(page)->owner == gdev;
}

u64 hmm_gpu_dmem_vram_offset(struct page *page)
{
	struct hmm_gpu_block *block = hmm_gpu_page_block(page);

	return (u64)block->index * HMM_GPU_BLOCK_SIZE +
	       ((u64)(page_to_pfn(page) - block->pfn_first) << PAGE_SHIFT);
}

/* ---- allocator ------------------------------------------------------- */

/* Put the free @page on its @chunk's list. dmem->lock held. */
static void hmm_gpu_chunk_push(struct hmm_gpu_dmem *dmem, struct hmm_gpu_chunk *chunk,
			       struct page *page)
{
	page->zone_device_data = chunk->free;
	chunk->free = page;
	dmem->nfree++;
	if (chunk->held) {
		/* hmm_gpu_dmem_clean() freeing the head: it takes it back. */
		chunk->nfree++;
		return;
	}
	if (!chunk->nfree++)
		list_add_tail(&chunk->node, &dmem->partial);
	if (chunk->nfree == HMM_GPU_CHUNK_PAGES)
		list_move_tail(&chunk->node, &dmem->empty);
}

/* A free base page of @chunk (which has one), off its list. dmem->lock held. */
static struct page *hmm_gpu_chunk_pop(struct hmm_gpu_dmem *dmem, struct hmm_gpu_chunk *chunk)
{
	struct page *page;

	if (chunk->whole) {
		unsigned long i;

		WARN_ON_ONCE(chunk->stale);
		chunk->free = NULL;
		for (i = HMM_GPU_CHUNK_PAGES; i--; ) {
			page = pfn_to_page(chunk->pfn_first + i);
			page->zone_device_data = chunk->free;
			chunk->free = page;
		}
		chunk->whole = false;
	}
	page = chunk->free;
	chunk->free = page->zone_device_data;
	dmem->nfree--;
	if (!--chunk->nfree)
		list_del_init(&chunk->node);
	else if (chunk->nfree == HMM_GPU_CHUNK_PAGES - 1)
		list_move_tail(&chunk->node, &dmem->partial);
	return page;
}

/* A chunk base pages may come from: partial first, then a clean empty one. */
static struct hmm_gpu_chunk *hmm_gpu_dmem_small_chunk(struct hmm_gpu_dmem *dmem)
{
	struct hmm_gpu_chunk *chunk;

	chunk = list_first_entry_or_null(&dmem->partial, struct hmm_gpu_chunk, node);
	if (chunk)
		return chunk;
	list_for_each_entry(chunk, &dmem->empty, node)
		if (!chunk->stale)
			return chunk;
	return NULL;
}

/*
 * Take an empty chunk whole (held: on no list), stale ones first: they are
 * good for nothing else. dmem->lock held.
 */
static struct hmm_gpu_chunk *hmm_gpu_dmem_hold(struct hmm_gpu_dmem *dmem, bool stale_only)
{
	struct hmm_gpu_chunk *chunk, *pick = NULL;

	list_for_each_entry(chunk, &dmem->empty, node) {
		if (chunk->stale) {
			pick = chunk;
			break;
		}
		if (!pick && !stale_only)
			pick = chunk;
	}
	if (!pick)
		return NULL;
	list_del_init(&pick->node);
	dmem->nfree -= HMM_GPU_CHUNK_PAGES;
	pick->nfree = 0;
	pick->free = NULL;
	pick->whole = false;
	pick->held = true;
	return pick;
}

/* Give a held chunk back, every page free. dmem->lock held. */
static void hmm_gpu_dmem_unhold(struct hmm_gpu_dmem *dmem, struct hmm_gpu_chunk *chunk)
{
	chunk->held = false;
	chunk->whole = true;
	chunk->free = NULL;
	chunk->nfree = HMM_GPU_CHUNK_PAGES;
	dmem->nfree += HMM_GPU_CHUNK_PAGES;
	list_add_tail(&chunk->node, &dmem->empty);
}

/*
 * Make a held stale chunk clean: hand its head page out as a base page and
 * free it again, which is how the kernel resets a page's compound state.
 * The tail pages then point at a base-page head, which is harmless (and
 * reset when each is handed out).
 */
static void hmm_gpu_dmem_clean(struct hmm_gpu_dmem *dmem, struct hmm_gpu_chunk *chunk)
{
	struct page *head = pfn_to_page(chunk->pfn_first);

	if (!chunk->stale)
		return;
	hmm_gpu_device_folio_init(head, &hmm_gpu_page_block(head)->pagemap, 0);
	unlock_page(head);
	put_page(head);		/* folio_free: pushed back onto the held chunk */
	spin_lock_irq(&dmem->lock);
	WARN_ON_ONCE(chunk->free != head || chunk->nfree != 1);
	chunk->free = NULL;
	chunk->nfree = 0;
	dmem->nfree--;
	chunk->stale = false;
	spin_unlock_irq(&dmem->lock);
}

/* The last reference to a device folio (a base page or a chunk's 2 MiB) went. */
static void hmm_gpu_dmem_folio_free(struct page *page)
{
	struct hmm_gpu_chunk *chunk = hmm_gpu_page_chunk(page);
	struct hmm_gpu_dmem *dmem = &chunk->gdev->dmem;
	unsigned long flags;

	spin_lock_irqsave(&dmem->lock, flags);
	if (folio_order(page_folio(page))) {
		/* Ours are whole chunks. */
		WARN_ON_ONCE(chunk->nfree || chunk->held);
		chunk->free = NULL;
		chunk->nfree = HMM_GPU_CHUNK_PAGES;
		chunk->whole = true;
		chunk->stale = true;
		dmem->nfree += HMM_GPU_CHUNK_PAGES;
		list_add_tail(&chunk->node, &dmem->empty);
	} else {
		hmm_gpu_chunk_push(dmem, chunk, page);
	}
	spin_unlock_irqrestore(&dmem->lock, flags);
}

/* The kernel's callback (page_free or folio_free) for the function above. */
HMM_GPU_DEFINE_PAGE_FREE(hmm_gpu_dmem_folio_free)

/*
 * A migration's copy list: short ones (a CPU fault moves one page) from a
 * few preallocated slots, without a lock; longer ones from the pool.
 */
#define HMM_GPU_SMALL_LIST	16
#define HMM_GPU_SMALL_SLOTS	BITS_PER_LONG

struct hmm_gpu_list {
	struct hmm_gpu_copy_ent	*ent;
	dma_addr_t		dma;
	int			slot;		/* -1: from the pool */
};

static bool hmm_gpu_dmem_list_alloc(struct hmm_gpu_dev *gdev, unsigned long npages,
				    struct hmm_gpu_list *l)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	int slot;

	if (npages <= HMM_GPU_SMALL_LIST) {
		while ((slot = find_first_zero_bit(&dmem->small_busy, HMM_GPU_SMALL_SLOTS)) <
		       HMM_GPU_SMALL_SLOTS) {
			if (test_and_set_bit(slot, &dmem->small_busy))
				continue;
			l->slot = slot;
			l->ent = dmem->small + slot * HMM_GPU_SMALL_LIST;
			l->dma = dmem->small_dma + slot * HMM_GPU_SMALL_LIST * sizeof(*l->ent);
			return true;
		}
	}
	l->slot = -1;
	l->ent = dma_pool_alloc(dmem->copy_pool, GFP_KERNEL, &l->dma);
	return l->ent;
}

static void hmm_gpu_dmem_list_free(struct hmm_gpu_dev *gdev, struct hmm_gpu_list *l)
{
	if (l->slot >= 0)
		clear_bit(l->slot, &gdev->dmem.small_busy);
	else
		dma_pool_free(gdev->dmem.copy_pool, l->ent, l->dma);
}

/*
 * Queue one MIGRATE over the @n entries of @list behind whatever @batch
 * holds already (the TLB invalidations of hmm_gpu_svm_zap_migrating()),
 * ring and wait for the batch. Returns 0 once every page is copied.
 */
static int hmm_gpu_dmem_run_copy(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
				 dma_addr_t list, unsigned int n, u32 dir)
{
	struct hmm_gpu_cmd_desc desc = {
		.opcode = HMM_GPU_OP_MIGRATE,
		.src = list,
		.len = (u64)n * HMM_GPU_PAGE_SIZE,
		.pattern = dir,
		/* A CPU fault may wait for it while jobs stall on device faults. */
		.urgent = true,
	};
	u32 first = batch->submitted;
	int ret = 0;

	if (n && batch->inv_len) {
		/* The invalidation of hmm_gpu_svm_zap_migrating(), in the same command. */
		desc.has_ctx = true;
		desc.ctx = batch->inv_ctx;
		desc.dst = batch->inv_va;
		desc.arg2 = batch->inv_len;
	} else if (batch->inv_len) {
		/* Nothing to copy after all: the invalidation on its own. */
		ret = hmm_gpu_tlb_queue(gdev, batch, batch->inv_ctx, batch->inv_va,
					batch->inv_len);
	}
	if (n) {
		/* The list (coherent memory) before the command that points at it. */
		dma_wmb();
		ret = hmm_gpu_submit(gdev, batch, &desc);
	}
	hmm_gpu_batch_wait(gdev, batch);
	if (!n)
		return 0;
	if (!ret)
		ret = batch->err;
	if (!ret && batch->status && batch->first_fail >= first) {
		dev_err_ratelimited(&gdev->pdev->dev, "MIGRATE failed: status %u\n",
				    batch->status);
		ret = -EIO;
	}
	return ret;
}

static void hmm_gpu_dmem_set_ent(struct hmm_gpu_copy_ent *list, unsigned int i, u64 src,
				 u64 dst)
{
	list[i].src = (__force u64)cpu_to_le64(src);
	list[i].dst = (__force u64)cpu_to_le64(dst);
}

/* A migration's copy: the list the device reads, each page's DMA address. */
struct hmm_gpu_copy {
	struct hmm_gpu_list	list;
	dma_addr_t		*bus;		/* per src entry, 0: none */
	dma_addr_t		small_bus[HMM_GPU_SMALL_LIST];
	unsigned int		n;		/* list entries */
};

/*
 * Start a copy of up to @npages: @dst and the DMA addresses zeroed, a copy
 * list taken. On failure what @batch holds (or carries: invalidations) runs
 * all the same and an error is returned.
 */
static int hmm_gpu_copy_begin(struct hmm_gpu_dev *gdev, struct hmm_gpu_copy *c,
			      unsigned long *dst, unsigned long npages,
			      struct hmm_gpu_batch *batch)
{
	memset(dst, 0, npages * sizeof(*dst));
	c->n = 0;
	c->bus = c->small_bus;
	if (npages > HMM_GPU_SMALL_LIST)
		c->bus = npages <= HMM_GPU_MIGRATE_MAX_PAGES ?
			 kcalloc(npages, sizeof(*c->bus), GFP_KERNEL) : NULL;
	else
		memset(c->small_bus, 0, npages * sizeof(*c->bus));
	if (c->bus && hmm_gpu_dmem_list_alloc(gdev, npages, &c->list))
		return 0;
	hmm_gpu_dmem_run_copy(gdev, batch, 0, 0, 0);
	if (c->bus != c->small_bus)
		kfree(c->bus);
	return WARN_ON(npages > HMM_GPU_MIGRATE_MAX_PAGES) ? -EINVAL : -ENOMEM;
}

/* Run the copy (behind what @batch holds) in direction @dir; the list goes. */
static long hmm_gpu_copy_run(struct hmm_gpu_dev *gdev, struct hmm_gpu_copy *c,
			     struct hmm_gpu_batch *batch, u32 dir)
{
	long ret = hmm_gpu_dmem_run_copy(gdev, batch, c->list.dma, c->n, dir);

	hmm_gpu_dmem_list_free(gdev, &c->list);
	return ret;
}

static void hmm_gpu_copy_end(struct hmm_gpu_copy *c)
{
	if (c->bus != c->small_bus)
		kfree(c->bus);
}

/* Release what a failed copy would have migrated to: dst entries go to 0. */
static void hmm_gpu_dmem_drop_dst(unsigned long *dst, unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct page *page = migrate_pfn_to_page(dst[i]);

		dst[i] = 0;
		if (page) {
			folio_unlock(page_folio(page));
			/* A device folio goes back to the allocator (folio_free). */
			folio_put(page_folio(page));
		}
	}
}

/*
 * Copy device pages back to system memory for a migration (CPU fault,
 * MIGRATE_TO_SYS, eviction): for each src entry selected for migration,
 * allocate system memory, copy VRAM into it and fill dst. A 2 MiB device
 * folio goes to a 2 MiB system folio if @huge and one can be had, else
 * (with a VMA: migrate_vma_pages() then splits the device folio) to base
 * pages. @vma may be NULL (eviction). Entries that cannot be copied are
 * left unmigrated (dst 0). Returns the pages copied or an error.
 */
long hmm_gpu_dmem_copy_to_sys(struct hmm_gpu_dev *gdev, struct vm_area_struct *vma,
			      unsigned long addr, const unsigned long *src,
			      unsigned long *dst, unsigned long npages, bool huge,
			      struct hmm_gpu_batch *batch)
{
	struct device *dev = &gdev->pdev->dev;
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long i, j, nr, thp = 0;
	struct hmm_gpu_copy c;
	dma_addr_t *bus;
	long ret;

	ret = hmm_gpu_copy_begin(gdev, &c, dst, npages, batch);
	if (ret)
		return ret;
	bus = c.bus;

	for (i = 0; i < npages; i += nr) {
		struct page *spage = migrate_pfn_to_page(src[i]);
		unsigned long write = src[i] & MIGRATE_PFN_WRITE;
		u64 from = spage ? hmm_gpu_dmem_vram_offset(spage) : 0;
		struct folio *folio = NULL;

		nr = hmm_gpu_migrate_entry_pages(src[i], npages - i);
		if (!spage || !(src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (WARN_ON_ONCE(!hmm_gpu_dmem_page_local(gdev, spage)))
			continue;
		if (nr == HMM_GPU_CHUNK_PAGES && huge)
			folio = hmm_gpu_folio_alloc(vma, addr + (i << PAGE_SHIFT),
						    HMM_GPU_CHUNK_ORDER);
		if (folio) {
			bus[i] = dma_map_page(dev, &folio->page, 0, HMM_GPU_CHUNK_SIZE,
					      DMA_FROM_DEVICE);
			if (dma_mapping_error(dev, bus[i])) {
				bus[i] = 0;
				folio_put(folio);
				continue;
			}
			folio_lock(folio);
			dst[i] = migrate_pfn(folio_pfn(folio)) | write |
				 HMM_GPU_MIGRATE_PFN_COMPOUND;
			for (j = 0; j < nr; j++)
				hmm_gpu_dmem_set_ent(c.list.ent, c.n++, from + (j << PAGE_SHIFT),
						     bus[i] + (j << PAGE_SHIFT));
			thp++;
			continue;
		}
		/* Without a VMA the kernel cannot split the device folio. */
		if (nr > 1 && !vma)
			continue;
		for (j = 0; j < nr; j++) {
			struct page *dpage;

			if (vma)
				dpage = alloc_page_vma(GFP_HIGHUSER_MOVABLE, vma,
						       addr + ((i + j) << PAGE_SHIFT));
			else
				dpage = alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL);
			if (!dpage)
				break;
			bus[i + j] = dma_map_page(dev, dpage, 0, PAGE_SIZE, DMA_FROM_DEVICE);
			if (dma_mapping_error(dev, bus[i + j])) {
				bus[i + j] = 0;
				__free_page(dpage);
				break;
			}
			lock_page(dpage);
			dst[i + j] = migrate_pfn(page_to_pfn(dpage)) | write;
			hmm_gpu_dmem_set_ent(c.list.ent, c.n++, from + (j << PAGE_SHIFT),
					     bus[i + j]);
		}
	}
	ret = hmm_gpu_copy_run(gdev, &c, batch, HMM_GPU_MIGRATE_FROM_VRAM);

	for (i = 0; i < npages; i++)
		if (bus[i])
			dma_unmap_page(dev, bus[i], dst[i] & HMM_GPU_MIGRATE_PFN_COMPOUND ?
				       HMM_GPU_CHUNK_SIZE : PAGE_SIZE, DMA_FROM_DEVICE);
	hmm_gpu_copy_end(&c);
	if (ret) {
		/* The data did not arrive: migrate nothing. */
		hmm_gpu_dmem_drop_dst(dst, npages);
		return ret;
	}

	spin_lock_irq(&dmem->lock);
	dmem->stats.pages_to_sys += c.n;
	dmem->stats.thp_to_sys += thp;
	spin_unlock_irq(&dmem->lock);
	return c.n;
}

/*
 * @nr base pages from @res, which then holds at least that many: a held
 * chunk is turned into base pages if need be. false if there are not enough.
 */
static bool hmm_gpu_dmem_res_base(struct hmm_gpu_dev *gdev, struct hmm_gpu_res *res,
				  unsigned long nr)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	struct hmm_gpu_chunk *chunk = res->chunk;
	unsigned long i;

	if (res->n >= nr)
		return true;
	if (!chunk || res->n)
		return false;
	hmm_gpu_dmem_clean(dmem, chunk);
	for (i = HMM_GPU_CHUNK_PAGES; i--; )
		res->pages[res->n++] = pfn_to_page(chunk->pfn_first + i);
	spin_lock_irq(&dmem->lock);
	chunk->held = false;
	spin_unlock_irq(&dmem->lock);
	res->chunk = NULL;
	return res->n >= nr;
}

/*
 * Fill device memory for a migration to VRAM: for each src entry selected,
 * copy the system page (or zeroes) into device memory from @res and fill
 * dst. A 2 MiB entry (MIGRATE_PFN_COMPOUND) gets the reserved chunk as one
 * folio if @res holds one, else base pages (migrate_vma_pages() then splits
 * the source). Entries without memory left unmigrated. Returns the pages
 * copied or an error.
 */
long hmm_gpu_dmem_copy_to_dev(struct hmm_gpu_dev *gdev, struct vm_area_struct *vma,
			      const unsigned long *src, unsigned long *dst,
			      unsigned long npages, struct hmm_gpu_res *res,
			      struct hmm_gpu_batch *batch)
{
	struct device *dev = &gdev->pdev->dev;
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long i, j, nr, thp = 0;
	struct hmm_gpu_copy c;
	dma_addr_t *bus;
	long ret;

	ret = hmm_gpu_copy_begin(gdev, &c, dst, npages, batch);
	if (ret)
		return ret;
	bus = c.bus;

	for (i = 0; i < npages; i += nr) {
		struct page *spage = migrate_pfn_to_page(src[i]);
		unsigned long write = 0;
		struct page *dpage;

		nr = hmm_gpu_migrate_entry_pages(src[i], npages - i);
		if (!(src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (spage && WARN_ON_ONCE(is_zone_device_page(spage)))
			continue;
		if ((src[i] & MIGRATE_PFN_WRITE) || (!spage && (vma->vm_flags & VM_WRITE)))
			write = MIGRATE_PFN_WRITE;
		if (spage) {
			/* A THP is mapped whole: its pages are contiguous. */
			bus[i] = dma_map_page(dev, spage, 0, nr << PAGE_SHIFT, DMA_TO_DEVICE);
			if (dma_mapping_error(dev, bus[i])) {
				bus[i] = 0;
				continue;
			}
		}
		if (nr == HMM_GPU_CHUNK_PAGES && res->chunk) {
			dpage = pfn_to_page(res->chunk->pfn_first);
			spin_lock_irq(&dmem->lock);
			res->chunk->held = false;
			res->chunk->stale = false;
			spin_unlock_irq(&dmem->lock);
			res->chunk = NULL;
		} else if (hmm_gpu_dmem_res_base(gdev, res, nr)) {
			dpage = NULL;
		} else {
			if (bus[i])
				dma_unmap_page(dev, bus[i], nr << PAGE_SHIFT, DMA_TO_DEVICE);
			bus[i] = 0;
			continue;
		}
		if (dpage) {
			hmm_gpu_device_folio_init(dpage, &hmm_gpu_page_block(dpage)->pagemap,
						  HMM_GPU_CHUNK_ORDER);
			dst[i] = migrate_pfn(page_to_pfn(dpage)) | write |
				 HMM_GPU_MIGRATE_PFN_COMPOUND;
			for (j = 0; j < nr; j++)
				hmm_gpu_dmem_set_ent(c.list.ent, c.n++,
						     spage ? bus[i] + (j << PAGE_SHIFT) :
						     dmem->zero_dma,
						     hmm_gpu_dmem_vram_offset(dpage) +
						     (j << PAGE_SHIFT));
			thp++;
			continue;
		}
		for (j = 0; j < nr; j++) {
			dpage = res->pages[--res->n];
			/* Referenced, locked. */
			hmm_gpu_device_folio_init(dpage, &hmm_gpu_page_block(dpage)->pagemap, 0);
			dst[i + j] = migrate_pfn(page_to_pfn(dpage)) | write;
			hmm_gpu_dmem_set_ent(c.list.ent, c.n++,
					     spage ? bus[i] + (j << PAGE_SHIFT) : dmem->zero_dma,
					     hmm_gpu_dmem_vram_offset(dpage));
		}
	}
	ret = hmm_gpu_copy_run(gdev, &c, batch, HMM_GPU_MIGRATE_TO_VRAM);

	for (i = 0; i < npages; i++) {
		if (!bus[i])
			continue;
		nr = hmm_gpu_migrate_entry_pages(src[i], npages - i);
		dma_unmap_page(dev, bus[i], nr << PAGE_SHIFT, DMA_TO_DEVICE);
	}
	hmm_gpu_copy_end(&c);
	if (ret) {
		hmm_gpu_dmem_drop_dst(dst, npages);
		return ret;
	}

	spin_lock_irq(&dmem->lock);
	dmem->stats.pages_to_dev += c.n;
	dmem->stats.thp_to_dev += thp;
	spin_unlock_irq(&dmem->lock);
	return c.n;
}

/* Mark the chunks of migrated device pages as the most recently used. */
void hmm_gpu_dmem_touch(struct hmm_gpu_dev *gdev, const unsigned long *dst,
			unsigned long npages)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long i;

	spin_lock_irq(&dmem->lock);
	dmem->lru_clock++;
	for (i = 0; i < npages; i++) {
		struct page *page = migrate_pfn_to_page(dst[i]);

		if (page)
			hmm_gpu_page_chunk(page)->lru = dmem->lru_clock;
	}
	spin_unlock_irq(&dmem->lock);
}

static const struct dev_pagemap_ops hmm_gpu_dmem_ops;

/* Register VRAM block @index (memremap_pages) on its first use. */
static int hmm_gpu_dmem_add_block(struct hmm_gpu_dev *gdev, unsigned int index)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	u64 size = min_t(u64, HMM_GPU_BLOCK_SIZE,
			 (u64)dmem->max_chunks * HMM_GPU_CHUNK_SIZE -
			 (u64)index * HMM_GPU_BLOCK_SIZE);
	struct hmm_gpu_block *block;
	struct resource *res;
	void *ptr;
	int ret;

	block = kzalloc(sizeof(*block), GFP_KERNEL);
	if (!block)
		return -ENOMEM;
	res = request_free_mem_region(&iomem_resource, size, gdev->name);
	if (IS_ERR(res)) {
		ret = PTR_ERR(res);
		goto err_free;
	}
	block->gdev = gdev;
	block->index = index;
	block->pagemap.type = MEMORY_DEVICE_PRIVATE;
	block->pagemap.range.start = res->start;
	block->pagemap.range.end = res->end;
	block->pagemap.nr_range = 1;
	block->pagemap.ops = &hmm_gpu_dmem_ops;
	block->pagemap.owner = gdev;
	ptr = memremap_pages(&block->pagemap, dev_to_node(&gdev->pdev->dev));
	if (IS_ERR(ptr)) {
		ret = PTR_ERR(ptr);
		goto err_region;
	}
	block->pfn_first = res->start >> PAGE_SHIFT;
	if (dmem->thp && !IS_ALIGNED(block->pfn_first, HMM_GPU_CHUNK_PAGES)) {
		/* A folio's head must be as aligned as its size. */
		dev_info(&gdev->pdev->dev, "VRAM block %u not 2 MiB aligned: no device THP\n",
			 index);
		WRITE_ONCE(dmem->thp, false);
	}
	dmem->blocks[index] = block;
	dev_dbg(&gdev->pdev->dev, "VRAM block %u: %llu MiB at pfn %#lx\n", index, size >> 20,
		block->pfn_first);
	return 0;

err_region:
	release_mem_region(res->start, resource_size(res));
err_free:
	kfree(block);
	return ret;
}

/* Register the next unused chunk of VRAM: an empty chunk. evict_lock held. */
static int hmm_gpu_dmem_add_chunk(struct hmm_gpu_dev *gdev)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned int index = dmem->nchunks;
	unsigned int bi = index / HMM_GPU_BLOCK_CHUNKS;
	struct hmm_gpu_chunk *chunk = &dmem->chunks[index];
	int ret;

	if (index >= dmem->max_chunks || dmem->closing)
		return -ENOSPC;
	if (!dmem->blocks[bi]) {
		ret = hmm_gpu_dmem_add_block(gdev, bi);
		if (ret)
			return ret;
	}
	chunk->gdev = gdev;
	chunk->pfn_first = dmem->blocks[bi]->pfn_first +
			   (index % HMM_GPU_BLOCK_CHUNKS) * HMM_GPU_CHUNK_PAGES;
	spin_lock_irq(&dmem->lock);
	chunk->whole = true;
	chunk->nfree = HMM_GPU_CHUNK_PAGES;
	list_add_tail(&chunk->node, &dmem->empty);
	dmem->nfree += HMM_GPU_CHUNK_PAGES;
	dmem->nchunks++;
	spin_unlock_irq(&dmem->lock);
	return 0;
}

/*
 * Move every device page of @chunk back to system memory. Returns the pages
 * moved or an error.
 */
static long hmm_gpu_dmem_evict_chunk(struct hmm_gpu_chunk *chunk)
{
	struct hmm_gpu_dev *gdev = chunk->gdev;
	struct hmm_gpu_batch batch;
	unsigned long *src, *dst;
	long ret;

	src = kvcalloc(HMM_GPU_CHUNK_PAGES, sizeof(*src), GFP_KERNEL);
	dst = kvcalloc(HMM_GPU_CHUNK_PAGES, sizeof(*dst), GFP_KERNEL);
	if (!src || !dst) {
		ret = -ENOMEM;
		goto out;
	}
	/* CPU PTEs become migration entries: the notifier (CLEAR) zaps the device's. */
	migrate_device_range(src, chunk->pfn_first, HMM_GPU_CHUNK_PAGES);
	/*
	 * The notifier (CLEAR, not ours) fenced the device's translations. A
	 * 2 MiB folio needs a 2 MiB system folio: migrate_device_pages()
	 * cannot split it.
	 */
	hmm_gpu_batch_init(&batch, 0);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, NULL, 0, src, dst, HMM_GPU_CHUNK_PAGES, true,
				       &batch);
	migrate_device_pages(src, dst, HMM_GPU_CHUNK_PAGES);
	migrate_device_finalize(src, dst, HMM_GPU_CHUNK_PAGES);
	/* Empty chunks (evict_all() goes through all of them) are no news. */
	if (ret)
		trace_hmm_gpu_evict(gdev->pdev, (u64)(chunk - gdev->dmem.chunks) * HMM_GPU_CHUNK_SIZE,
				    max(ret, 0L));
out:
	kvfree(src);
	kvfree(dst);
	return ret;
}

/* The in-use chunk migrated to least recently, or NULL. dmem->lock held. */
static struct hmm_gpu_chunk *hmm_gpu_dmem_victim(struct hmm_gpu_dmem *dmem)
{
	struct hmm_gpu_chunk *victim = NULL;
	unsigned int i;

	for (i = 0; i < dmem->nchunks; i++) {
		struct hmm_gpu_chunk *c = &dmem->chunks[i];

		if (c->nfree < HMM_GPU_CHUNK_PAGES && !c->held && (!victim || c->lru < victim->lru))
			victim = c;
	}
	return victim;
}

/*
 * Make room when no chunk can give what is asked: register the next chunk,
 * else (for base pages) clean a stale empty chunk, else evict the least
 * recently migrated chunk. Returns 0 to retry, or an error.
 */
static int hmm_gpu_dmem_make_room(struct hmm_gpu_dev *gdev, bool base)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	struct hmm_gpu_chunk *stale = NULL, *victim = NULL;
	long ret;

	mutex_lock(&dmem->evict_lock);
	ret = hmm_gpu_dmem_add_chunk(gdev);
	if (ret != -ENOSPC)
		goto out;
	spin_lock_irq(&dmem->lock);
	if (base)
		stale = hmm_gpu_dmem_hold(dmem, true);
	if (!stale)
		victim = hmm_gpu_dmem_victim(dmem);
	spin_unlock_irq(&dmem->lock);
	ret = 0;
	if (stale) {
		hmm_gpu_dmem_clean(dmem, stale);
		spin_lock_irq(&dmem->lock);
		hmm_gpu_dmem_unhold(dmem, stale);
		spin_unlock_irq(&dmem->lock);
	} else if (victim) {
		ret = hmm_gpu_dmem_evict_chunk(victim);
		if (ret >= 0) {
			spin_lock_irq(&dmem->lock);
			dmem->stats.evictions++;
			dmem->stats.pages_evicted += ret;
			spin_unlock_irq(&dmem->lock);
		}
	} else {
		/* Everything is reserved by migrations in flight. */
		ret = -ENOMEM;
	}
out:
	mutex_unlock(&dmem->evict_lock);
	return ret < 0 ? ret : 0;
}

/*
 * Reserve device memory for a migration of @n pages into @res: with @huge
 * (an aligned 2 MiB that may be a THP) a whole chunk if the kernel and the
 * device allow 2 MiB device folios, else up to @n base pages (not
 * initialised: they stay off the free lists until used or handed back).
 * Registers chunks and evicts as needed. Returns the pages reserved (> 0)
 * or an error.
 */
long hmm_gpu_dmem_reserve(struct hmm_gpu_dev *gdev, struct hmm_gpu_res *res, unsigned long n,
			  bool huge)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long got = 0;
	int tries;
	long ret = 0;

	res->n = 0;
	res->chunk = NULL;
	if (!dmem->max_chunks)
		return -EOPNOTSUPP;
	for (tries = 0; huge && READ_ONCE(dmem->thp) && n == HMM_GPU_CHUNK_PAGES && tries < 8;
	     tries++) {
		spin_lock_irq(&dmem->lock);
		if (!dmem->closing)
			res->chunk = hmm_gpu_dmem_hold(dmem, false);
		spin_unlock_irq(&dmem->lock);
		if (res->chunk)
			return HMM_GPU_CHUNK_PAGES;
		if (dmem->closing || hmm_gpu_dmem_make_room(gdev, false))
			break;
	}
	for (tries = 0; ; tries++) {
		struct hmm_gpu_chunk *chunk;

		spin_lock_irq(&dmem->lock);
		if (dmem->closing) {
			spin_unlock_irq(&dmem->lock);
			break;
		}
		while (got < n && (chunk = hmm_gpu_dmem_small_chunk(dmem)))
			res->pages[got++] = hmm_gpu_chunk_pop(dmem, chunk);
		spin_unlock_irq(&dmem->lock);
		res->n = got;
		if (got == n || tries >= 8)
			break;
		ret = hmm_gpu_dmem_make_room(gdev, true);
		if (ret < 0)
			break;
	}
	if (got)
		return got;
	return ret < 0 ? ret : -ENOMEM;
}

/* Hand back what a migration reserved and did not use. */
void hmm_gpu_dmem_unreserve(struct hmm_gpu_dev *gdev, struct hmm_gpu_res *res)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long i;

	spin_lock_irq(&dmem->lock);
	for (i = 0; i < res->n; i++)
		hmm_gpu_chunk_push(dmem, hmm_gpu_page_chunk(res->pages[i]), res->pages[i]);
	if (res->chunk)
		hmm_gpu_dmem_unhold(dmem, res->chunk);
	spin_unlock_irq(&dmem->lock);
	res->n = 0;
	res->chunk = NULL;
}

/* Move everything in VRAM back to system memory (RELEASE, removal). */
int hmm_gpu_dmem_evict_all(struct hmm_gpu_dev *gdev)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned int i, nchunks;
	long ret;
	int err = 0;

	mutex_lock(&dmem->evict_lock);
	spin_lock_irq(&dmem->lock);
	nchunks = dmem->nchunks;
	spin_unlock_irq(&dmem->lock);
	for (i = 0; i < nchunks; i++) {
		ret = hmm_gpu_dmem_evict_chunk(&dmem->chunks[i]);
		if (ret < 0 && !err)
			err = ret;
	}
	mutex_unlock(&dmem->evict_lock);
	return err;
}

void hmm_gpu_dmem_stats(struct hmm_gpu_dev *gdev, struct hmm_gpu_vram_stats *st)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;

	spin_lock_irq(&dmem->lock);
	*st = dmem->stats;
	st->vram_size = dmem->vram_size;
	st->chunks = dmem->nchunks;
	st->vram_used = ((u64)dmem->nchunks * HMM_GPU_CHUNK_PAGES - dmem->nfree) << PAGE_SHIFT;
	st->flags = READ_ONCE(dmem->thp) ? HMM_GPU_VRAM_F_THP : 0;
	spin_unlock_irq(&dmem->lock);
}

/*
 * A CPU access to a device page: bring it back, with the rest of its 2 MiB
 * folio if one device-private PMD maps that (vmf->pte is NULL; a 2 MiB
 * system folio if one can be had, else base pages and the device folio is
 * split). A PTE-mapped page of a folio comes back alone, as test_hmm does:
 * the folio may be only partly mapped.
 */
static vm_fault_t hmm_gpu_dmem_migrate_to_ram(struct vm_fault *vmf)
{
	struct hmm_gpu_chunk *chunk = hmm_gpu_page_chunk(vmf->page);
	struct hmm_gpu_dev *gdev = chunk->gdev;
	unsigned long nr = vmf->pte ? 1 : folio_nr_pages(page_folio(vmf->page));
	unsigned long one_src = 0, one_dst = 0;
	struct migrate_vma args = {
		.vma		= vmf->vma,
		.start		= ALIGN_DOWN(vmf->address, nr << PAGE_SHIFT),
		.end		= ALIGN_DOWN(vmf->address, nr << PAGE_SHIFT) + (nr << PAGE_SHIFT),
		.src		= &one_src,
		.dst		= &one_dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
		.fault_page	= vmf->page,
	};
	struct hmm_gpu_batch batch;
	unsigned int nfences;
	vm_fault_t vret = 0;
	bool unmap;
	long ret;

	trace_hmm_gpu_migrate_begin(gdev->pdev, false, args.start, args.end, nr);
	if (nr > 1) {
		args.src = kcalloc(nr, sizeof(*args.src), GFP_KERNEL);
		args.dst = kcalloc(nr, sizeof(*args.dst), GFP_KERNEL);
		args.flags |= HMM_GPU_SELECT_COMPOUND;
		if (!args.src || !args.dst) {
			vret = VM_FAULT_OOM;
			ret = -ENOMEM;
			goto out;
		}
	}
	ret = migrate_vma_setup(&args);
	if (ret) {
		vret = VM_FAULT_SIGBUS;
		goto out;
	}
	/*
	 * The notifier leaves our own migration to us: one doorbell for the
	 * TLB invalidations and the copy behind them.
	 */
	hmm_gpu_batch_init(&batch, 0);
	nfences = hmm_gpu_svm_zap_migrating(gdev, vmf->vma->vm_mm, &args, &batch, &unmap);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, vmf->vma, args.start, args.src, args.dst, nr, true,
				       &batch);
	hmm_gpu_svm_unmap_migrating(gdev, vmf->vma->vm_mm, &args, &batch, nfences, unmap);
	if (ret < 0 && (args.src[0] & MIGRATE_PFN_MIGRATE))
		vret = VM_FAULT_SIGBUS;
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);

	spin_lock_irq(&gdev->dmem.lock);
	gdev->dmem.stats.cpu_faults++;
	spin_unlock_irq(&gdev->dmem.lock);
out:
	trace_hmm_gpu_migrate_end(gdev->pdev, false, args.start, args.end, nr, args.cpages, ret);
	if (nr > 1) {
		kfree(args.src);
		kfree(args.dst);
	}
	return vret;
}

static const struct dev_pagemap_ops hmm_gpu_dmem_ops = {
	HMM_GPU_PAGE_FREE_OP(hmm_gpu_dmem_folio_free),
	.migrate_to_ram	= hmm_gpu_dmem_migrate_to_ram,
};

int hmm_gpu_dmem_init(struct hmm_gpu_dev *gdev)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	struct device *dev = &gdev->pdev->dev;
	u64 size;

	spin_lock_init(&dmem->lock);
	mutex_init(&dmem->evict_lock);
	INIT_LIST_HEAD(&dmem->partial);
	INIT_LIST_HEAD(&dmem->empty);
	if (!(gdev->caps & HMM_GPU_CAP_VRAM))
		return 0;
	size = hmm_gpu_read(gdev, HMM_GPU_REG_VRAM_SIZE_LO);
	size |= (u64)hmm_gpu_read(gdev, HMM_GPU_REG_VRAM_SIZE_HI) << 32;
	dmem->vram_size = size;
	if (!hmm_gpu_has_device_private()) {
		dev_info(dev, "no device memory: kernel built without CONFIG_DEVICE_PRIVATE\n");
		return 0;
	}
	dmem->max_chunks = min_t(u64, size / HMM_GPU_CHUNK_SIZE, HMM_GPU_MAX_CHUNKS);
	if (!dmem->max_chunks)
		return 0;
	/* A chunk is a PMD's worth: one device-private THP. */
	dmem->thp = hmm_gpu_has_device_thp() && HMM_GPU_CHUNK_SIZE == PMD_SIZE;
	dmem->chunks = kcalloc(dmem->max_chunks, sizeof(*dmem->chunks), GFP_KERNEL);
	dmem->blocks = kcalloc(DIV_ROUND_UP(dmem->max_chunks, HMM_GPU_BLOCK_CHUNKS),
			       sizeof(*dmem->blocks), GFP_KERNEL);
	dmem->small = dmam_alloc_coherent(dev, HMM_GPU_SMALL_SLOTS * HMM_GPU_SMALL_LIST *
					  sizeof(*dmem->small), &dmem->small_dma, GFP_KERNEL);
	dmem->copy_pool = dmam_pool_create("hmm_gpu_copy", dev,
					   HMM_GPU_MIGRATE_MAX_PAGES *
					   sizeof(struct hmm_gpu_copy_ent), 64, 0);
	dmem->zero = dmam_alloc_coherent(dev, PAGE_SIZE, &dmem->zero_dma, GFP_KERNEL);
	if (!dmem->chunks || !dmem->blocks || !dmem->copy_pool || !dmem->small || !dmem->zero) {
		kfree(dmem->chunks);
		kfree(dmem->blocks);
		dmem->chunks = NULL;
		dmem->blocks = NULL;
		dmem->max_chunks = 0;
		return -ENOMEM;
	}
	return 0;
}

/*
 * Removal, while the device still works: no new device pages, everything
 * back to system memory, then the blocks go (memunmap_pages() waits for
 * the last page reference).
 */
void hmm_gpu_dmem_fini(struct hmm_gpu_dev *gdev)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned int i;

	if (!dmem->max_chunks)
		return;
	spin_lock_irq(&dmem->lock);
	dmem->closing = true;
	spin_unlock_irq(&dmem->lock);
	hmm_gpu_dmem_evict_all(gdev);
	for (i = 0; i < DIV_ROUND_UP(dmem->max_chunks, HMM_GPU_BLOCK_CHUNKS); i++) {
		struct hmm_gpu_block *block = dmem->blocks[i];

		if (!block)
			continue;
		memunmap_pages(&block->pagemap);
		release_mem_region(block->pagemap.range.start,
				   range_len(&block->pagemap.range));
		kfree(block);
	}
	kfree(dmem->blocks);
	kfree(dmem->chunks);
	dmem->blocks = NULL;
	dmem->chunks = NULL;
	dmem->nchunks = 0;
	dmem->max_chunks = 0;
}

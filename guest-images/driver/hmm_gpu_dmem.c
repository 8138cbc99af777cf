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
 *  - chunks of 2 MiB, the unit of allocation bookkeeping and of eviction.
 *    A chunk's pages go on the free list when the chunk is first needed.
 * Device page n of chunk c holds VRAM offset c * 2 MiB + n * 4 KiB. The CPU
 * cannot reach VRAM: every byte moves with the MIGRATE copy engine, one
 * command per copy list of at most HMM_GPU_MIGRATE_MAX_PAGES entries in
 * coherent memory; its completion is the fence.
 *
 * Allocator: one free list of device pages (linked through
 * page->zone_device_data) and per-chunk use counts, under dmem->lock (a
 * spinlock: page_free may be called from any context). Pages are reserved
 * before migrate_vma_setup() and initialised (zone_device_page_init(), which
 * locks them) only once used, so eviction never meets a page the caller
 * holds locked.
 *
 * Eviction: when no page is free and every chunk is in use, the chunk
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

#define HMM_GPU_CHUNK_SIZE	(2ul << 20)
#define HMM_GPU_CHUNK_PAGES	(HMM_GPU_CHUNK_SIZE >> PAGE_SHIFT)
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
	unsigned long		used;		/* under dmem->lock */
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

static void hmm_gpu_dmem_page_free(struct page *page)
{
	struct hmm_gpu_chunk *chunk = hmm_gpu_page_chunk(page);
	struct hmm_gpu_dmem *dmem = &chunk->gdev->dmem;
	unsigned long flags;

	spin_lock_irqsave(&dmem->lock, flags);
	page->zone_device_data = dmem->free;
	dmem->free = page;
	dmem->nfree++;
	chunk->used--;
	spin_unlock_irqrestore(&dmem->lock, flags);
}

/* The kernel's callback (page_free or folio_free) for the function above. */
HMM_GPU_DEFINE_PAGE_FREE(hmm_gpu_dmem_page_free)

/* A copy list for up to @n pages (coherent memory from the pool). */
static struct hmm_gpu_copy_ent *hmm_gpu_dmem_list_alloc(struct hmm_gpu_dev *gdev,
							dma_addr_t *dma)
{
	return dma_pool_alloc(gdev->dmem.copy_pool, GFP_KERNEL, dma);
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

/*
 * Copy device pages back to system memory for a migration (CPU fault,
 * MIGRATE_TO_SYS, eviction): for each src entry selected for migration,
 * allocate a system page, copy VRAM into it and fill dst. @vma may be NULL
 * (eviction). Entries that cannot be copied are left unmigrated (dst 0).
 * Returns the pages copied or an error.
 */
long hmm_gpu_dmem_copy_to_sys(struct hmm_gpu_dev *gdev, struct vm_area_struct *vma,
			      unsigned long addr, const unsigned long *src,
			      unsigned long *dst, unsigned long npages,
			      struct hmm_gpu_batch *batch)
{
	struct device *dev = &gdev->pdev->dev;
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	struct hmm_gpu_copy_ent *list;
	dma_addr_t *bus, list_dma;
	unsigned long i;
	unsigned int n = 0;
	long ret;

	bus = npages <= HMM_GPU_MIGRATE_MAX_PAGES ?
	      kcalloc(npages, sizeof(*bus), GFP_KERNEL) : NULL;
	list = bus ? hmm_gpu_dmem_list_alloc(gdev, &list_dma) : NULL;
	if (!list) {
		/* What the batch holds already (invalidations) must finish. */
		hmm_gpu_batch_wait(gdev, batch);
		kfree(bus);
		return WARN_ON(npages > HMM_GPU_MIGRATE_MAX_PAGES) ? -EINVAL : -ENOMEM;
	}

	for (i = 0; i < npages; i++) {
		struct page *spage = migrate_pfn_to_page(src[i]);
		struct page *dpage;

		dst[i] = 0;
		if (!spage || !(src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (WARN_ON_ONCE(!hmm_gpu_dmem_page_local(gdev, spage)))
			continue;
		if (vma)
			dpage = alloc_page_vma(GFP_HIGHUSER_MOVABLE, vma,
					       addr + (i << PAGE_SHIFT));
		else
			dpage = alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL);
		if (!dpage)
			continue;
		bus[i] = dma_map_page(dev, dpage, 0, PAGE_SIZE, DMA_FROM_DEVICE);
		if (dma_mapping_error(dev, bus[i])) {
			bus[i] = 0;
			__free_page(dpage);
			continue;
		}
		lock_page(dpage);
		dst[i] = migrate_pfn(page_to_pfn(dpage));
		if (src[i] & MIGRATE_PFN_WRITE)
			dst[i] |= MIGRATE_PFN_WRITE;
		hmm_gpu_dmem_set_ent(list, n++, hmm_gpu_dmem_vram_offset(spage), bus[i]);
	}
	ret = hmm_gpu_dmem_run_copy(gdev, batch, list_dma, n, HMM_GPU_MIGRATE_FROM_VRAM);
	dma_pool_free(dmem->copy_pool, list, list_dma);

	for (i = 0; i < npages; i++) {
		struct page *dpage;

		if (!bus[i])
			continue;
		dma_unmap_page(dev, bus[i], PAGE_SIZE, DMA_FROM_DEVICE);
		if (!ret)
			continue;
		/* The data did not arrive: do not migrate this page. */
		dpage = migrate_pfn_to_page(dst[i]);
		dst[i] = 0;
		unlock_page(dpage);
		__free_page(dpage);
	}
	kfree(bus);
	if (ret)
		return ret;

	spin_lock_irq(&dmem->lock);
	dmem->stats.pages_to_sys += n;
	spin_unlock_irq(&dmem->lock);
	return n;
}

/*
 * Fill device pages for a migration to VRAM: for each src entry selected,
 * take a reserved page from @res (*nres of them, consumed from the end),
 * copy the system page (or zeroes) into it, fill dst. Entries without a
 * page left unmigrated. Returns the pages copied or an error.
 */
long hmm_gpu_dmem_copy_to_dev(struct hmm_gpu_dev *gdev, struct vm_area_struct *vma,
			      const unsigned long *src, unsigned long *dst,
			      unsigned long npages, struct page **res, unsigned long *nres,
			      struct hmm_gpu_batch *batch)
{
	struct device *dev = &gdev->pdev->dev;
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	struct hmm_gpu_copy_ent *list;
	dma_addr_t *bus, list_dma;
	unsigned long i;
	unsigned int n = 0;
	long ret;

	bus = npages <= HMM_GPU_MIGRATE_MAX_PAGES ?
	      kcalloc(npages, sizeof(*bus), GFP_KERNEL) : NULL;
	list = bus ? hmm_gpu_dmem_list_alloc(gdev, &list_dma) : NULL;
	if (!list) {
		/* What the batch holds already (invalidations) must finish. */
		hmm_gpu_batch_wait(gdev, batch);
		kfree(bus);
		return WARN_ON(npages > HMM_GPU_MIGRATE_MAX_PAGES) ? -EINVAL : -ENOMEM;
	}

	for (i = 0; i < npages; i++) {
		struct page *spage = migrate_pfn_to_page(src[i]);
		struct page *dpage;
		u64 from;

		dst[i] = 0;
		if (!(src[i] & MIGRATE_PFN_MIGRATE) || !*nres)
			continue;
		if (spage && WARN_ON_ONCE(is_zone_device_page(spage)))
			continue;
		if (spage) {
			bus[i] = dma_map_page(dev, spage, 0, PAGE_SIZE, DMA_TO_DEVICE);
			if (dma_mapping_error(dev, bus[i])) {
				bus[i] = 0;
				continue;
			}
			from = bus[i];
		} else {
			from = dmem->zero_dma;
		}
		dpage = res[--*nres];
		hmm_gpu_device_page_init(dpage);	/* referenced, locked */
		dst[i] = migrate_pfn(page_to_pfn(dpage));
		if ((src[i] & MIGRATE_PFN_WRITE) || (!spage && (vma->vm_flags & VM_WRITE)))
			dst[i] |= MIGRATE_PFN_WRITE;
		hmm_gpu_dmem_set_ent(list, n++, from, hmm_gpu_dmem_vram_offset(dpage));
	}
	ret = hmm_gpu_dmem_run_copy(gdev, batch, list_dma, n, HMM_GPU_MIGRATE_TO_VRAM);
	dma_pool_free(dmem->copy_pool, list, list_dma);

	for (i = 0; i < npages; i++) {
		struct page *dpage;

		if (bus[i])
			dma_unmap_page(dev, bus[i], PAGE_SIZE, DMA_TO_DEVICE);
		if (!ret || !dst[i])
			continue;
		dpage = migrate_pfn_to_page(dst[i]);
		dst[i] = 0;
		unlock_page(dpage);
		put_page(dpage);	/* page_free: back to the free list */
	}
	kfree(bus);
	if (ret)
		return ret;

	spin_lock_irq(&dmem->lock);
	dmem->stats.pages_to_dev += n;
	spin_unlock_irq(&dmem->lock);
	return n;
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

/* Put the pages of the next unused chunk of VRAM on the free list. */
static int hmm_gpu_dmem_add_chunk(struct hmm_gpu_dev *gdev)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned int index = dmem->nchunks;
	unsigned int bi = index / HMM_GPU_BLOCK_CHUNKS;
	struct hmm_gpu_chunk *chunk = &dmem->chunks[index];
	struct page *head = NULL, *tail = NULL;
	unsigned long i;
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
	for (i = 0; i < HMM_GPU_CHUNK_PAGES; i++) {
		struct page *page = pfn_to_page(chunk->pfn_first + i);

		page->zone_device_data = NULL;
		if (tail)
			tail->zone_device_data = page;
		else
			head = page;
		tail = page;
	}
	spin_lock_irq(&dmem->lock);
	tail->zone_device_data = dmem->free;
	dmem->free = head;
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
	/* The notifier (CLEAR, not ours) fenced the device's translations. */
	hmm_gpu_batch_init(&batch, 0);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, NULL, 0, src, dst, HMM_GPU_CHUNK_PAGES, &batch);
	if (ret < 0)
		memset(dst, 0, HMM_GPU_CHUNK_PAGES * sizeof(*dst));
	migrate_device_pages(src, dst, HMM_GPU_CHUNK_PAGES);
	migrate_device_finalize(src, dst, HMM_GPU_CHUNK_PAGES);
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

		if (c->used && (!victim || c->lru < victim->lru))
			victim = c;
	}
	return victim;
}

/*
 * Reserve up to @n free device pages into @res (not initialised: they stay
 * off the free list until used or handed back). Registers chunks and evicts
 * as needed. Returns the pages reserved (> 0) or an error.
 */
long hmm_gpu_dmem_reserve(struct hmm_gpu_dev *gdev, struct page **res, unsigned long n)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long got = 0;
	int tries = 0;
	long ret = 0;

	if (!dmem->max_chunks)
		return -EOPNOTSUPP;
	for (;;) {
		struct hmm_gpu_chunk *victim;

		spin_lock_irq(&dmem->lock);
		if (dmem->closing) {
			spin_unlock_irq(&dmem->lock);
			break;
		}
		while (got < n && dmem->free) {
			struct page *page = dmem->free;

			dmem->free = page->zone_device_data;
			dmem->nfree--;
			hmm_gpu_page_chunk(page)->used++;
			res[got++] = page;
		}
		spin_unlock_irq(&dmem->lock);
		if (got == n || tries++ >= 8)
			break;

		mutex_lock(&dmem->evict_lock);
		ret = hmm_gpu_dmem_add_chunk(gdev);
		if (ret == -ENOSPC) {
			/* VRAM full: evict the least recently migrated chunk. */
			spin_lock_irq(&dmem->lock);
			victim = dmem->nfree ? NULL : hmm_gpu_dmem_victim(dmem);
			ret = dmem->nfree ? 0 : -ENOMEM;
			spin_unlock_irq(&dmem->lock);
			if (victim) {
				ret = hmm_gpu_dmem_evict_chunk(victim);
				if (ret >= 0) {
					spin_lock_irq(&dmem->lock);
					dmem->stats.evictions++;
					dmem->stats.pages_evicted += ret;
					spin_unlock_irq(&dmem->lock);
				}
			}
		}
		mutex_unlock(&dmem->evict_lock);
		if (ret < 0)
			break;
	}
	if (got)
		return got;
	return ret < 0 ? ret : -ENOMEM;
}

/* Hand back reserved pages that were not used. */
void hmm_gpu_dmem_unreserve(struct hmm_gpu_dev *gdev, struct page **res, unsigned long n)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	unsigned long i;

	spin_lock_irq(&dmem->lock);
	for (i = 0; i < n; i++) {
		res[i]->zone_device_data = dmem->free;
		dmem->free = res[i];
		dmem->nfree++;
		hmm_gpu_page_chunk(res[i])->used--;
	}
	spin_unlock_irq(&dmem->lock);
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
	spin_unlock_irq(&dmem->lock);
}

/* A CPU access to a device page: bring it (and only it) back. */
static vm_fault_t hmm_gpu_dmem_migrate_to_ram(struct vm_fault *vmf)
{
	struct hmm_gpu_chunk *chunk = hmm_gpu_page_chunk(vmf->page);
	struct hmm_gpu_dev *gdev = chunk->gdev;
	unsigned long src = 0, dst = 0;
	struct migrate_vma args = {
		.vma		= vmf->vma,
		.start		= vmf->address & PAGE_MASK,
		.end		= (vmf->address & PAGE_MASK) + PAGE_SIZE,
		.src		= &src,
		.dst		= &dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
		.fault_page	= vmf->page,
	};
	struct hmm_gpu_batch batch;
	unsigned int nfences;
	vm_fault_t vret = 0;
	long ret;

	if (migrate_vma_setup(&args))
		return VM_FAULT_SIGBUS;
	/*
	 * The notifier leaves our own migration to us: one doorbell for the
	 * TLB invalidations and the copy behind them.
	 */
	hmm_gpu_batch_init(&batch, 0);
	nfences = hmm_gpu_svm_zap_migrating(gdev, vmf->vma->vm_mm, &args, &batch);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, vmf->vma, args.start, &src, &dst, 1, &batch);
	hmm_gpu_svm_unmap_migrating(gdev, vmf->vma->vm_mm, &args, &batch, nfences);
	if (ret < 0 && (src & MIGRATE_PFN_MIGRATE))
		vret = VM_FAULT_SIGBUS;
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);

	spin_lock_irq(&gdev->dmem.lock);
	gdev->dmem.stats.cpu_faults++;
	spin_unlock_irq(&gdev->dmem.lock);
	return vret;
}

static const struct dev_pagemap_ops hmm_gpu_dmem_ops = {
	HMM_GPU_PAGE_FREE_OP(hmm_gpu_dmem_page_free),
	.migrate_to_ram	= hmm_gpu_dmem_migrate_to_ram,
};

int hmm_gpu_dmem_init(struct hmm_gpu_dev *gdev)
{
	struct hmm_gpu_dmem *dmem = &gdev->dmem;
	struct device *dev = &gdev->pdev->dev;
	u64 size;

	spin_lock_init(&dmem->lock);
	mutex_init(&dmem->evict_lock);
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
	dmem->chunks = kcalloc(dmem->max_chunks, sizeof(*dmem->chunks), GFP_KERNEL);
	dmem->blocks = kcalloc(DIV_ROUND_UP(dmem->max_chunks, HMM_GPU_BLOCK_CHUNKS),
			       sizeof(*dmem->blocks), GFP_KERNEL);
	dmem->copy_pool = dmam_pool_create("hmm_gpu_copy", dev,
					   HMM_GPU_MIGRATE_MAX_PAGES *
					   sizeof(struct hmm_gpu_copy_ent), 64, 0);
	dmem->zero = dmam_alloc_coherent(dev, PAGE_SIZE, &dmem->zero_dma, GFP_KERNEL);
	if (!dmem->chunks || !dmem->blocks || !dmem->copy_pool || !dmem->zero) {
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

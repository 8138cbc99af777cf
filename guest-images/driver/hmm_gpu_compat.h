/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: the kernel API differences between the kernels we build for.
 * Every kernel version and CONFIG_DEVICE_PRIVATE test lives here.
 *
 * Compiled (W=1) against 6.1.192, 6.12.117 and 7.2.13 (Debian's
 * linux-source packages) and Debian's stock 6.1 headers (no
 * DEVICE_PRIVATE). The versions in between are upstream's history, not
 * compiled here:
 *   6.5   get_user_pages_remote() loses its vmas argument
 *   6.11  pcim_iomap_region()
 *   6.15  page_pgmap() (struct page loses pgmap);
 *         make_device_exclusive() replaces make_device_exclusive_range()
 *   6.19  dev_pagemap_ops.folio_free replaces page_free;
 *         zone_device_page_init() takes an order; 7.2's also takes the
 *         pgmap, which this header assumes from 6.19 on (not checked on 6.19);
 *         device-private THP (MIGRATE_VMA_SELECT_COMPOUND)
 */
#ifndef HMM_GPU_COMPAT_H
#define HMM_GPU_COMPAT_H

#include <linux/dma-mapping.h>
#include <linux/err.h>
#include <linux/io.h>
#include <linux/iommu.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/pci.h>
#include <linux/rmap.h>
#include <linux/version.h>

/*
 * The one read of LINUX_VERSION_CODE (the only checkpatch warning left: an
 * out-of-tree driver cannot be "for the version to which it is merged").
 */
#define HMM_GPU_KERNEL_AT_LEAST(major, minor) \
	(KERNEL_VERSION(major, minor, 0) <= LINUX_VERSION_CODE)

/*
 * Request and map one BAR, managed. pcim_iomap_region() appeared in 6.11 and
 * pcim_iomap_regions() is deprecated since.
 */
static inline void __iomem *hmm_gpu_iomap_bar(struct pci_dev *pdev, int bar,
					      const char *name)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 11)
	return pcim_iomap_region(pdev, bar, name);
#else
	int ret = pcim_iomap_regions(pdev, BIT(bar), name);

	if (ret)
		return IOMEM_ERR_PTR(ret);
	return pcim_iomap_table(pdev)[bar];
#endif
}

/*
 * Device-private memory (VRAM as ZONE_DEVICE pages, migration to it,
 * device-exclusive entries) needs CONFIG_DEVICE_PRIVATE, which distribution
 * kernels (Debian's 6.1, 6.12) leave off: the driver then runs without VRAM.
 */
static inline bool hmm_gpu_has_device_private(void)
{
	return IS_ENABLED(CONFIG_DEVICE_PRIVATE);
}

/* Fault [addr, addr + n pages) in (no pages returned). mmap_lock held. */
static inline long hmm_gpu_fault_in(struct mm_struct *mm, unsigned long addr,
				    unsigned long n, unsigned int gup_flags)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 5)
	return get_user_pages_remote(mm, addr, n, gup_flags, NULL, NULL);
#else
	return get_user_pages_remote(mm, addr, n, gup_flags, NULL, NULL, NULL);
#endif
}

/* The dev_pagemap of a ZONE_DEVICE page. */
static inline struct dev_pagemap *hmm_gpu_page_pgmap(struct page *page)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 15)
	return page_pgmap(page);
#else
	return page->pgmap;
#endif
}

/*
 * Make [start, end) device-exclusive for @owner (the MMU_NOTIFY_EXCLUSIVE
 * events carry it). mmap_lock held for read. Returns the number of entries
 * filled in @pages (a NULL entry: that page could not be made exclusive
 * this time) or an error; release every non-NULL entry with
 * hmm_gpu_exclusive_put() once the device mapping is written.
 *
 * 6.15+ converts one address at a time and returns the folio locked; the
 * lock is dropped at once, because two pages of one large folio would
 * otherwise wait for each other. The caller's mmu_interval_read_begin()/
 * read_retry() section, not the folio lock, is what detects a CPU access
 * restoring the entry before the device mapping is written.
 */
static inline long hmm_gpu_make_exclusive(struct mm_struct *mm, unsigned long start,
					  unsigned long end, struct page **pages,
					  void *owner)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 15)
	unsigned long addr, n = 0;

	if (!hmm_gpu_has_device_private())
		return -EOPNOTSUPP;
	for (addr = start; addr < end; addr += PAGE_SIZE, n++) {
		struct folio *folio;
		struct page *page;

		page = make_device_exclusive(mm, addr, owner, &folio);
		if (IS_ERR(page)) {
			while (n--)
				put_page(pages[n]);
			return PTR_ERR(page);
		}
		folio_unlock(folio);
		pages[n] = page;
	}
	return n;
#else
	if (!hmm_gpu_has_device_private())
		return -EOPNOTSUPP;
	return make_device_exclusive_range(mm, start, end, pages, owner);
#endif
}

/* Drop what hmm_gpu_make_exclusive() holds on one page. */
static inline void hmm_gpu_exclusive_put(struct page *page)
{
#if !HMM_GPU_KERNEL_AT_LEAST(6, 15)
	unlock_page(page);
#endif
	put_page(page);
}

/*
 * Whether the streaming mapping at @addr is a bounce buffer (swiotlb): the
 * device then works on a copy that only dma_sync_*() reconciles, which a
 * mapping kept for the lifetime of a device translation never gets.
 * dma_need_sync() answers exactly for direct mapping; through a DMA API
 * IOMMU domain it is true for every mapping before 6.11 (and under
 * DMA_API_DEBUG), while dma-iommu bounces only untrusted devices.
 */
static inline bool hmm_gpu_dma_bounced(struct device *dev, dma_addr_t addr)
{
	struct iommu_domain *dom;

	if (!dma_need_sync(dev, addr))
		return false;
	dom = iommu_get_domain_for_dev(dev);
	if (dom && (dom->type & __IOMMU_DOMAIN_DMA_API))
		return dev_is_pci(dev) && to_pci_dev(dev)->untrusted;
	return true;
}

/*
 * Device-private THP (6.19): migrate_vma_setup() with
 * MIGRATE_VMA_SELECT_COMPOUND collects a PMD-mapped THP (or an empty,
 * aligned 2 MiB) as one entry with MIGRATE_PFN_COMPOUND, and the CPU maps a
 * device folio of PMD order with one device-private PMD entry. Before it,
 * the flags are 0 and every migration is of base pages.
 */
#if HMM_GPU_KERNEL_AT_LEAST(6, 19)
#define HMM_GPU_MIGRATE_PFN_COMPOUND	MIGRATE_PFN_COMPOUND
#define HMM_GPU_SELECT_COMPOUND		MIGRATE_VMA_SELECT_COMPOUND
#else
#define HMM_GPU_MIGRATE_PFN_COMPOUND	0ul
#define HMM_GPU_SELECT_COMPOUND		0
#endif

/*
 * Pages migration entry @src stands for: a PMD's worth for a THP (or an
 * empty, aligned 2 MiB) collected with MIGRATE_VMA_SELECT_COMPOUND, else
 * one; at most the @left entries there are.
 */
static inline unsigned long hmm_gpu_migrate_entry_pages(unsigned long src, unsigned long left)
{
	struct page *page = migrate_pfn_to_page(src);
	unsigned long nr = 1;

	if (src & HMM_GPU_MIGRATE_PFN_COMPOUND)
		nr = page ? folio_nr_pages(page_folio(page)) : 1ul << (PMD_SHIFT - PAGE_SHIFT);
	return min(nr, left);
}

static inline bool hmm_gpu_has_device_thp(void)
{
	return HMM_GPU_SELECT_COMPOUND && thp_migration_supported() &&
	       hmm_gpu_has_device_private();
}

/*
 * Hand out the free device page @page of @pgmap as a folio of @order (0, or
 * PMD order): referenced and locked. Not page_folio(@page): a page that was
 * a tail of a freed 2 MiB folio still points at its old head.
 */
static inline void hmm_gpu_device_folio_init(struct page *page, struct dev_pagemap *pgmap,
					     unsigned int order)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 19)
	zone_device_folio_init((struct folio *)page, pgmap, order);
#else
	WARN_ON_ONCE(order);
	zone_device_page_init(page);
#endif
}

/* A system folio of @order for a migration out of VRAM; NULL if none. */
static inline struct folio *hmm_gpu_folio_alloc(struct vm_area_struct *vma, unsigned long addr,
						unsigned int order)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 19)
	if (vma)
		return vma_alloc_folio(GFP_HIGHUSER_MOVABLE, order, vma, addr);
	return folio_alloc(GFP_HIGHUSER_MOVABLE | __GFP_RETRY_MAYFAIL, order);
#else
	return NULL;
#endif
}

/*
 * The dev_pagemap_ops entry for @fn(struct page *), called when a device
 * page's last reference goes: HMM_GPU_DEFINE_PAGE_FREE(fn) defines the
 * adapter the kernel calls, HMM_GPU_PAGE_FREE_OP(fn) names it in the ops.
 */
#if HMM_GPU_KERNEL_AT_LEAST(6, 19)
#define HMM_GPU_DEFINE_PAGE_FREE(fn)					\
	static void fn##_cb(struct folio *folio)			\
	{								\
		fn(&folio->page);					\
	}
#define HMM_GPU_PAGE_FREE_OP(fn)	.folio_free = fn##_cb
#else
#define HMM_GPU_DEFINE_PAGE_FREE(fn)					\
	static void fn##_cb(struct page *page)			\
	{								\
		fn(page);						\
	}
#define HMM_GPU_PAGE_FREE_OP(fn)	.page_free = fn##_cb
#endif

#endif /* HMM_GPU_COMPAT_H */

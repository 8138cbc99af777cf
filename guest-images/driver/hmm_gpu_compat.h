/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: the kernel API differences between the kernels we build for.
 * Every kernel version and CONFIG_DEVICE_PRIVATE test lives here.
 *
 * Compiled (W=1) against 6.1.192, 6.12.107 and 7.2.13 (Debian's
 * linux-source packages) and Debian's stock 6.1 headers (no
 * DEVICE_PRIVATE). The versions in between are upstream's history, not
 * compiled here:
 *   6.5   get_user_pages_remote() loses its vmas argument
 *   6.11  pcim_iomap_region()
 *   6.15  page_pgmap() (struct page loses pgmap);
 *         make_device_exclusive() replaces make_device_exclusive_range()
 *   6.19  dev_pagemap_ops.folio_free replaces page_free;
 *         zone_device_page_init() takes an order; 7.2's also takes the
 *         pgmap, which this header assumes from 6.19 on (not checked on 6.19)
 */
#ifndef HMM_GPU_COMPAT_H
#define HMM_GPU_COMPAT_H

#include <linux/err.h>
#include <linux/io.h>
#include <linux/memremap.h>
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

/* Hand out a free device page: referenced and locked. */
static inline void hmm_gpu_device_page_init(struct page *page)
{
#if HMM_GPU_KERNEL_AT_LEAST(6, 19)
	zone_device_page_init(page, page_pgmap(page), 0);
#else
	zone_device_page_init(page);
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

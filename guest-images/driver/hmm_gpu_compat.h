/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: the few kernel API differences between the kernels we build for
 * (6.1, 6.12). Keep every LINUX_VERSION_CODE test in this file.
 */
#ifndef HMM_GPU_COMPAT_H
#define HMM_GPU_COMPAT_H

#include <linux/err.h>
#include <linux/io.h>
#include <linux/pci.h>
#include <linux/version.h>

/*
 * Request and map one BAR, managed. pcim_iomap_region() appeared in 6.11 and
 * pcim_iomap_regions() is deprecated since.
 */
static inline void __iomem *hmm_gpu_iomap_bar(struct pci_dev *pdev, int bar,
					      const char *name)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	return pcim_iomap_region(pdev, bar, name);
#else
	int ret = pcim_iomap_regions(pdev, BIT(bar), name);

	if (ret)
		return IOMEM_ERR_PTR(ret);
	return pcim_iomap_table(pdev)[bar];
#endif
}

#endif /* HMM_GPU_COMPAT_H */

/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_nic: the kernel API differences between the kernels we build for.
 * Every kernel version test of the driver lives here.
 *
 * Compiled (W=1) against 6.1.192, 6.12.117 and 7.2.13 (Debian's
 * linux-source packages). The versions in between are upstream's history,
 * not compiled here:
 *   6.10  create_cq gets the uverbs_attr_bundle instead of the udata
 *   6.11  pcim_iomap_region()
 *   6.16  ODP umems keep a struct hmm_dma_map: the driver DMA-maps the
 *         pages it is given (hmm_dma_map_pfn()), access is HMM_PFN_WRITE;
 *         the ODP caps are uAPI, with IB_ODP_SUPPORT_FLUSH and
 *         _ATOMIC_WRITE (685f9537a728, "RDMA/core: Move ODP capability
 *         definitions to uapi"; 6.12 has the FLUSH and ATOMIC_WRITE device
 *         caps, 6.1 neither)
 *   6.17  reg_user_mr() takes a struct ib_dmah
 *   7.2   ib_umem_get() is ib_umem_get_va() (the first kernel we have
 *         with the new name; the rename may be older)
 */
#ifndef HMM_NIC_COMPAT_H
#define HMM_NIC_COMPAT_H

#include <linux/hmm.h>
#include <linux/pci.h>
#include <linux/version.h>
#include <rdma/ib_umem.h>
#include <rdma/ib_umem_odp.h>
#include <rdma/ib_verbs.h>
#include <rdma/uverbs_ioctl.h>

/*
 * The one read of LINUX_VERSION_CODE (an out-of-tree driver cannot be "for
 * the version to which it is merged").
 */
#define HMM_NIC_KERNEL_AT_LEAST(major, minor) \
	(KERNEL_VERSION(major, minor, 0) <= LINUX_VERSION_CODE)

#if HMM_NIC_KERNEL_AT_LEAST(6, 16)
#include <linux/hmm-dma.h>
#include <linux/pci-p2pdma.h>
#endif

/* Request and map one BAR, managed. */
static inline void __iomem *hmm_nic_iomap_bar(struct pci_dev *pdev, int bar,
					      const char *name)
{
#if HMM_NIC_KERNEL_AT_LEAST(6, 11)
	return pcim_iomap_region(pdev, bar, name);
#else
	int ret = pcim_iomap_regions(pdev, BIT(bar), name);

	if (ret)
		return IOMEM_ERR_PTR(ret);
	return pcim_iomap_table(pdev)[bar];
#endif
}

/* Pin [addr, addr + size) of the calling process. */
static inline struct ib_umem *hmm_nic_umem_get(struct ib_device *dev, unsigned long addr,
					       size_t size, int access)
{
#if HMM_NIC_KERNEL_AT_LEAST(7, 2)
	return ib_umem_get_va(dev, addr, size, access);
#else
	return ib_umem_get(dev, addr, size, access);
#endif
}

/* The access_mask of ib_umem_odp_map_dma_and_lock() for a read or a write. */
static inline u64 hmm_nic_odp_access(bool write)
{
#if HMM_NIC_KERNEL_AT_LEAST(6, 16)
	return write ? HMM_PFN_WRITE : 0;
#else
	return ODP_READ_ALLOWED_BIT | (write ? ODP_WRITE_ALLOWED_BIT : 0);
#endif
}

/*
 * The bus address of page @idx of @odp, which ib_umem_odp_map_dma_and_lock()
 * mapped (umem_mutex held), and whether the device may write it. -ENOENT:
 * the page is not present (a snapshot that found none). Before 6.16 the
 * core DMA-mapped the page; from 6.16 the driver does, as mlx5's
 * populate_mtt() does, and the core unmaps it in
 * ib_umem_odp_unmap_dma_pages().
 */
static inline int hmm_nic_odp_dma(struct ib_umem_odp *odp, size_t idx,
				  dma_addr_t *addr, bool *writable)
{
#if HMM_NIC_KERNEL_AT_LEAST(6, 16)
	struct pci_p2pdma_map_state p2pdma_state = {};
	struct ib_device *dev = odp->umem.ibdev;
	unsigned long pfn = odp->map.pfn_list[idx];
	dma_addr_t dma;

	if (!(pfn & HMM_PFN_VALID))
		return -ENOENT;
	dma = hmm_dma_map_pfn(dev->dma_device, &odp->map, idx, &p2pdma_state);
	if (ib_dma_mapping_error(dev, dma))
		return -EFAULT;
	if (!(pfn & HMM_PFN_DMA_MAPPED))
		odp->npages++;
	*addr = dma;
	*writable = pfn & HMM_PFN_WRITE;
	return 0;
#else
	dma_addr_t dma = odp->dma_list[idx];

	if (!dma)
		return -ENOENT;
	*addr = dma & ODP_DMA_ADDR_MASK;
	*writable = dma & ODP_WRITE_ALLOWED_BIT;
	return 0;
#endif
}

/*
 * FLUSH and ATOMIC_WRITE: the device executes them (CAP_FLUSH,
 * CAP_ATOMIC_WRITE), and the driver claims them where the kernel can say
 * so for ODP MRs too (6.16+): the device caps, the MR and QP access bits
 * and the ODP caps. On older kernels it claims none of it, so the core
 * refuses MRs with FLUSH access and rdma-core's tests skip.
 */
#if HMM_NIC_KERNEL_AT_LEAST(6, 16)
#define HMM_NIC_IB_ACCESS_FLUSH	(IB_ACCESS_FLUSH_GLOBAL | IB_ACCESS_FLUSH_PERSISTENT)

static_assert(HMM_NIC_ACCESS_FLUSH_GLOBAL == IB_ACCESS_FLUSH_GLOBAL);
static_assert(HMM_NIC_ACCESS_FLUSH_PERSISTENT == IB_ACCESS_FLUSH_PERSISTENT);

static inline void hmm_nic_flush_caps(struct ib_device_attr *attr, u32 caps, bool odp)
{
	u32 *rc = &attr->odp_caps.per_transport_caps.rc_odp_caps;

	if (caps & HMM_NIC_CAP_FLUSH) {
		attr->device_cap_flags |= IB_DEVICE_FLUSH_GLOBAL | IB_DEVICE_FLUSH_PERSISTENT;
		if (odp)
			*rc |= IB_ODP_SUPPORT_FLUSH;
	}
	if (caps & HMM_NIC_CAP_ATOMIC_WRITE) {
		attr->device_cap_flags |= IB_DEVICE_ATOMIC_WRITE;
		if (odp)
			*rc |= IB_ODP_SUPPORT_ATOMIC_WRITE;
	}
}
#else
#define HMM_NIC_IB_ACCESS_FLUSH	0

static inline void hmm_nic_flush_caps(struct ib_device_attr *attr, u32 caps, bool odp)
{
}
#endif

/* ---- ib_device_ops whose signature changed -------------------------------- */

#if HMM_NIC_KERNEL_AT_LEAST(6, 10)
static inline int hmm_nic_create_cq_op(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
				       struct uverbs_attr_bundle *attrs)
{
	return hmm_nic_create_cq(ibcq, attr, attrs ? &attrs->driver_udata : NULL);
}
#else
static inline int hmm_nic_create_cq_op(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
				       struct ib_udata *udata)
{
	return hmm_nic_create_cq(ibcq, attr, udata);
}
#endif

#if HMM_NIC_KERNEL_AT_LEAST(6, 17)
static inline struct ib_mr *hmm_nic_reg_user_mr_op(struct ib_pd *pd, u64 start, u64 length,
						   u64 virt, int access, struct ib_dmah *dmah,
						   struct ib_udata *udata)
{
	/* No DMA handles (TPH steering): there is no host bridge to steer. */
	if (dmah)
		return ERR_PTR(-EOPNOTSUPP);
	return hmm_nic_reg_user_mr(pd, start, length, virt, access, udata);
}
#else
static inline struct ib_mr *hmm_nic_reg_user_mr_op(struct ib_pd *pd, u64 start, u64 length,
						   u64 virt, int access, struct ib_udata *udata)
{
	return hmm_nic_reg_user_mr(pd, start, length, virt, access, udata);
}
#endif

#endif /* HMM_NIC_COMPAT_H */

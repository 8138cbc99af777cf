// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_nic: PCI probe, device bring-up, interrupts, and the ib_device.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/pci.h>

#include "hmm_nic.h"
#include "hmm_nic_compat.h"

/*
 * implicit_odp=0 makes the device look like one without implicit ODP (most
 * RDMA NICs), so a suite's paths for that case can be run too.
 */
bool hmm_nic_implicit_odp = true;
module_param_named(implicit_odp, hmm_nic_implicit_odp, bool, 0444);
MODULE_PARM_DESC(implicit_odp, "Advertise and accept implicit ODP memory regions (default: on)");

static void hmm_nic_wr64(struct hmm_nic_dev *nd, u32 lo, u64 val)
{
	hmm_nic_wr(nd, lo, lower_32_bits(val));
	hmm_nic_wr(nd, lo + 4, upper_32_bits(val));
}

/*
 * Zap with fence: when the INV_GO write returns, no later device DMA uses a
 * translation of [va, va + len) in @ctx cached before it.
 */
void hmm_nic_inv_go(struct hmm_nic_dev *nd, u32 ctx, u64 va, u64 len)
{
	spin_lock(&nd->inv_lock);
	hmm_nic_wr(nd, HMM_NIC_REG_INV_CTX, ctx);
	hmm_nic_wr64(nd, HMM_NIC_REG_INV_VA_LO, va);
	hmm_nic_wr64(nd, HMM_NIC_REG_INV_LEN_LO, len);
	hmm_nic_wr(nd, HMM_NIC_REG_INV_GO, 1);
	/* Non-posted: the read returns after the INV_GO write took effect. */
	hmm_nic_rd(nd, HMM_NIC_REG_STATUS);
	spin_unlock(&nd->inv_lock);
	atomic64_inc(&nd->invalidations);
}

/* ---- interrupts --------------------------------------------------------- */

static irqreturn_t hmm_nic_irq_eq(int irq, void *data)
{
	struct hmm_nic_dev *nd = data;

	hmm_nic_wr(nd, HMM_NIC_REG_INTR_STATUS, HMM_NIC_INTR_EQ);
	queue_work(nd->wq, &nd->eq_work);
	return IRQ_HANDLED;
}

static irqreturn_t hmm_nic_irq_fault(int irq, void *data)
{
	struct hmm_nic_dev *nd = data;

	hmm_nic_wr(nd, HMM_NIC_REG_INTR_STATUS, HMM_NIC_INTR_FAULT);
	queue_work(nd->wq, &nd->fault_work);
	return IRQ_HANDLED;
}

static irqreturn_t hmm_nic_irq_err(int irq, void *data)
{
	struct hmm_nic_dev *nd = data;
	u32 err = hmm_nic_rd(nd, HMM_NIC_REG_ERROR);
	u64 addr = hmm_nic_rd(nd, HMM_NIC_REG_ERROR_ADDR_LO) |
		   (u64)hmm_nic_rd(nd, HMM_NIC_REG_ERROR_ADDR_HI) << 32;

	hmm_nic_wr(nd, HMM_NIC_REG_INTR_STATUS, HMM_NIC_INTR_ERROR);
	dev_warn_ratelimited(&nd->pdev->dev, "device error %u at %#llx, status %#x\n",
			     err, addr, hmm_nic_rd(nd, HMM_NIC_REG_STATUS));
	return IRQ_HANDLED;
}

static const struct {
	irq_handler_t	handler;
	u32		vec_reg;
	const char	*name;
} hmm_nic_vectors[HMM_NIC_NUM_VECTORS] = {
	[HMM_NIC_VEC_EQ_DEFAULT]	= { hmm_nic_irq_eq, HMM_NIC_REG_VEC_EQ, "hmm_nic-eq" },
	[HMM_NIC_VEC_ERR_DEFAULT]	= { hmm_nic_irq_err, HMM_NIC_REG_VEC_ERR, "hmm_nic-err" },
	[HMM_NIC_VEC_FAULT_DEFAULT]	= { hmm_nic_irq_fault, HMM_NIC_REG_VEC_FAULT,
					    "hmm_nic-fault" },
};

static int hmm_nic_setup_irqs(struct hmm_nic_dev *nd)
{
	struct pci_dev *pdev = nd->pdev;
	int ret, v;

	ret = pci_alloc_irq_vectors(pdev, HMM_NIC_NUM_VECTORS, HMM_NIC_NUM_VECTORS,
				    PCI_IRQ_MSIX);
	if (ret < 0)
		return ret;
	for (v = 0; v < HMM_NIC_NUM_VECTORS; v++) {
		nd->irq[v] = pci_irq_vector(pdev, v);
		ret = request_irq(nd->irq[v], hmm_nic_vectors[v].handler, 0,
				  hmm_nic_vectors[v].name, nd);
		if (ret)
			goto err;
		hmm_nic_wr(nd, hmm_nic_vectors[v].vec_reg, v);
	}
	return 0;
err:
	while (v--)
		free_irq(nd->irq[v], nd);
	pci_free_irq_vectors(pdev);
	return ret;
}

static void hmm_nic_free_irqs(struct hmm_nic_dev *nd)
{
	int v;

	for (v = 0; v < HMM_NIC_NUM_VECTORS; v++)
		free_irq(nd->irq[v], nd);
	pci_free_irq_vectors(nd->pdev);
}

/* ---- device tables -------------------------------------------------------- */

static int hmm_nic_reset(struct hmm_nic_dev *nd)
{
	int i;

	hmm_nic_wr(nd, HMM_NIC_REG_RESET, HMM_NIC_RESET_MAGIC);
	for (i = 0; i < 1000; i++) {
		if (hmm_nic_rd(nd, HMM_NIC_REG_STATUS) & HMM_NIC_STATUS_READY)
			return 0;
		usleep_range(100, 200);
	}
	return -ETIMEDOUT;
}

/* Coherent, zeroed, device-managed: the tables live as long as the device. */
static void *hmm_nic_table(struct hmm_nic_dev *nd, size_t size, dma_addr_t *dma)
{
	return dmam_alloc_coherent(&nd->pdev->dev, size, dma, GFP_KERNEL);
}

static int hmm_nic_setup_tables(struct hmm_nic_dev *nd)
{
	nd->ctx_tbl = hmm_nic_table(nd, HMM_NIC_NUM_MR * sizeof(*nd->ctx_tbl), &nd->ctx_tbl_dma);
	nd->mr_tbl = hmm_nic_table(nd, HMM_NIC_NUM_MR * sizeof(*nd->mr_tbl), &nd->mr_tbl_dma);
	nd->qp_tbl = hmm_nic_table(nd, HMM_NIC_NUM_QP * sizeof(*nd->qp_tbl), &nd->qp_tbl_dma);
	nd->cq_tbl = hmm_nic_table(nd, HMM_NIC_NUM_CQ * sizeof(*nd->cq_tbl), &nd->cq_tbl_dma);
	nd->eq = hmm_nic_table(nd, HMM_NIC_EQ_ENTRIES * sizeof(*nd->eq), &nd->eq_dma);
	nd->faultq = hmm_nic_table(nd, HMM_NIC_FAULTQ_ENTRIES * sizeof(*nd->faultq),
				   &nd->faultq_dma);
	if (!nd->ctx_tbl || !nd->mr_tbl || !nd->qp_tbl || !nd->cq_tbl || !nd->eq ||
	    !nd->faultq)
		return -ENOMEM;
	if (hmm_nic_pt_init(nd, &nd->ring_pt))
		return -ENOMEM;
	nd->ctx_tbl[HMM_NIC_RING_CTX].pt_root = cpu_to_le64(nd->ring_pt.top->dma);
	nd->ctx_tbl[HMM_NIC_RING_CTX].flags = cpu_to_le32(HMM_GPU_CTX_VALID);

	/* The MMU and its fault queue, then the object tables and events. */
	hmm_nic_wr64(nd, HMM_NIC_REG_CTX_BASE_LO, nd->ctx_tbl_dma);
	hmm_nic_wr(nd, HMM_NIC_REG_CTX_COUNT, HMM_NIC_NUM_MR);
	hmm_nic_wr(nd, HMM_NIC_REG_MMU_CTRL, HMM_NIC_ENABLE);
	hmm_nic_wr64(nd, HMM_NIC_REG_FAULTQ_BASE_LO, nd->faultq_dma);
	hmm_nic_wr(nd, HMM_NIC_REG_FAULTQ_SIZE, HMM_NIC_FAULTQ_ENTRIES);
	hmm_nic_wr(nd, HMM_NIC_REG_FAULTQ_CTRL, HMM_NIC_ENABLE);
	hmm_nic_wr64(nd, HMM_NIC_REG_MR_BASE_LO, nd->mr_tbl_dma);
	hmm_nic_wr64(nd, HMM_NIC_REG_QP_BASE_LO, nd->qp_tbl_dma);
	hmm_nic_wr(nd, HMM_NIC_REG_QP_COUNT, HMM_NIC_NUM_QP);
	hmm_nic_wr64(nd, HMM_NIC_REG_CQ_BASE_LO, nd->cq_tbl_dma);
	hmm_nic_wr(nd, HMM_NIC_REG_CQ_COUNT, HMM_NIC_NUM_CQ);
	hmm_nic_wr64(nd, HMM_NIC_REG_EQ_BASE_LO, nd->eq_dma);
	hmm_nic_wr(nd, HMM_NIC_REG_EQ_SIZE, HMM_NIC_EQ_ENTRIES);
	hmm_nic_wr(nd, HMM_NIC_REG_EQ_CTRL, HMM_NIC_ENABLE);
	hmm_nic_wr(nd, HMM_NIC_REG_INTR_MASK,
		   HMM_NIC_INTR_EQ | HMM_NIC_INTR_ERROR | HMM_NIC_INTR_FAULT);
	hmm_nic_wr(nd, HMM_NIC_REG_NIC_CTRL, HMM_NIC_ENABLE);
	if (!(hmm_nic_rd(nd, HMM_NIC_REG_NIC_CTRL) & HMM_NIC_ENABLE)) {
		dev_err(&nd->pdev->dev, "NIC did not enable: error %u\n",
			hmm_nic_rd(nd, HMM_NIC_REG_ERROR));
		return -EIO;
	}
	return 0;
}

/* ---- ib_device ---------------------------------------------------------- */

static const struct ib_device_ops hmm_nic_dev_ops = {
	.owner = THIS_MODULE,
	.driver_id = RDMA_DRIVER_RXE,
	.uverbs_abi_ver = HMM_NIC_UVERBS_ABI_VERSION,

	.advise_mr = hmm_nic_advise_mr,
	.alloc_pd = hmm_nic_alloc_pd,
	.alloc_ucontext = hmm_nic_alloc_ucontext,
	.create_cq = hmm_nic_create_cq_op,
	.create_qp = hmm_nic_create_qp,
	.dealloc_pd = hmm_nic_dealloc_pd,
	.dealloc_ucontext = hmm_nic_dealloc_ucontext,
	.dereg_mr = hmm_nic_dereg_mr,
	.destroy_cq = hmm_nic_destroy_cq,
	.destroy_qp = hmm_nic_destroy_qp,
	.get_dma_mr = hmm_nic_get_dma_mr,
	.get_port_immutable = hmm_nic_port_immutable,
	.mmap = hmm_nic_mmap,
	.mmap_free = hmm_nic_mmap_free,
	.modify_qp = hmm_nic_modify_qp,
	.poll_cq = hmm_nic_poll_cq,
	.post_recv = hmm_nic_post_recv,
	.post_send = hmm_nic_post_send,
	.query_device = hmm_nic_query_device,
	.query_gid = hmm_nic_query_gid,
	.query_pkey = hmm_nic_query_pkey,
	.query_port = hmm_nic_query_port,
	.query_qp = hmm_nic_query_qp,
	.reg_user_mr = hmm_nic_reg_user_mr_op,
	.req_notify_cq = hmm_nic_req_notify_cq,

	INIT_RDMA_OBJ_SIZE(ib_cq, hmm_nic_ib_cq, ibcq),
	INIT_RDMA_OBJ_SIZE(ib_pd, hmm_nic_ib_pd, ibpd),
	INIT_RDMA_OBJ_SIZE(ib_qp, hmm_nic_ib_qp, ibqp),
	INIT_RDMA_OBJ_SIZE(ib_ucontext, hmm_nic_ucontext, ibuc),
};

/* A GUID from the PCI address: stable across boots, unique per slot. */
static __be64 hmm_nic_guid(struct pci_dev *pdev)
{
	u64 guid = 0x02a0b0c000000000ull;	/* locally administered */

	guid |= (u64)pci_domain_nr(pdev->bus) << 16 | pdev->bus->number << 8 | pdev->devfn;
	return cpu_to_be64(guid);
}

static int hmm_nic_register(struct hmm_nic_dev *nd)
{
	struct ib_device *ibdev = &nd->ibdev;

	ibdev->node_type = RDMA_NODE_IB_CA;
	ibdev->phys_port_cnt = 1;
	ibdev->num_comp_vectors = 1;
	ibdev->node_guid = nd->guid;
	strscpy(ibdev->node_desc, "hmm-nic", sizeof(ibdev->node_desc));
	/*
	 * Not in the core's default mask: the rxe provider rings the send
	 * doorbell with an empty POST_SEND and arms CQs with REQ_NOTIFY_CQ.
	 */
	ibdev->uverbs_cmd_mask |= BIT_ULL(IB_USER_VERBS_CMD_POST_SEND) |
				  BIT_ULL(IB_USER_VERBS_CMD_REQ_NOTIFY_CQ);
	ib_set_device_ops(ibdev, &hmm_nic_dev_ops);
	return ib_register_device(ibdev, "hmmnic%d", &nd->pdev->dev);
}

static int hmm_nic_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct hmm_nic_dev *nd;
	u32 magic, version;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	pci_set_master(pdev);

	nd = ib_alloc_device(hmm_nic_dev, ibdev);
	if (!nd)
		return -ENOMEM;
	nd->pdev = pdev;
	pci_set_drvdata(pdev, nd);
	spin_lock_init(&nd->inv_lock);
	ida_init(&nd->pd_ida);
	ida_init(&nd->mr_ida);
	ida_init(&nd->qp_ida);
	ida_init(&nd->cq_ida);
	ida_init(&nd->slot_ida);
	xa_init(&nd->mrs);
	xa_init_flags(&nd->qps, XA_FLAGS_LOCK_IRQ);
	xa_init_flags(&nd->cqs, XA_FLAGS_LOCK_IRQ);
	INIT_WORK(&nd->fault_work, hmm_nic_fault_work);
	INIT_WORK(&nd->eq_work, hmm_nic_eq_work);
	nd->guid = hmm_nic_guid(pdev);

	nd->mmio = hmm_nic_iomap_bar(pdev, HMM_NIC_BAR_MMIO, HMM_NIC_NAME);
	if (IS_ERR(nd->mmio)) {
		ret = PTR_ERR(nd->mmio);
		goto err_dealloc;
	}
	magic = hmm_nic_rd(nd, HMM_NIC_REG_ID);
	version = hmm_nic_rd(nd, HMM_NIC_REG_VERSION);
	/*
	 * The device and the driver come from one tree: the driver relies on
	 * its header's minor (1.3: CQ_RESET, 1.4: the QP's retry_cnt and
	 * timeout, 1.5: FLUSH and ATOMIC_WRITE, which it claims from CAPS).
	 */
	if (magic != HMM_NIC_ID_MAGIC || version >> 16 != HMM_NIC_VERSION_MAJOR ||
	    (version & 0xffff) < HMM_NIC_VERSION_MINOR) {
		dev_err(&pdev->dev, "not an hmm-nic 1.%u or later (id %#x, version %#x)\n",
			HMM_NIC_VERSION_MINOR, magic, version);
		ret = -ENODEV;
		goto err_dealloc;
	}
	nd->caps = hmm_nic_rd(nd, HMM_NIC_REG_CAPS);
	nd->lid = hmm_nic_rd(nd, HMM_NIC_REG_PORT_LID);

	/* ODP needs 64 bits: 6.16+ refuses the DMA-mapping it uses otherwise. */
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret) {
		ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(32));
		if (ret)
			goto err_dealloc;
		dev_warn(&pdev->dev, "no 64-bit DMA: on-demand paging disabled\n");
	} else {
		nd->odp = nd->caps & HMM_NIC_CAP_ODP;
	}

	ret = hmm_nic_reset(nd);
	if (ret)
		goto err_dealloc;
	nd->wq = alloc_workqueue("hmm_nic", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!nd->wq) {
		ret = -ENOMEM;
		goto err_dealloc;
	}
	ret = hmm_nic_setup_irqs(nd);
	if (ret)
		goto err_wq;
	ret = hmm_nic_setup_tables(nd);
	if (ret)
		goto err_reset;
	ret = hmm_nic_register(nd);
	if (ret)
		goto err_reset;
	dev_info(&pdev->dev, "%s: hmm-nic %u.%u, caps %#x%s\n", dev_name(&nd->ibdev.dev),
		 version >> 16, version & 0xffff, nd->caps, nd->odp ? ", ODP" : "");
	return 0;

err_reset:
	hmm_nic_reset(nd);
	hmm_nic_free_irqs(nd);
	hmm_nic_pt_destroy(nd, &nd->ring_pt);
err_wq:
	destroy_workqueue(nd->wq);
err_dealloc:
	ib_dealloc_device(&nd->ibdev);
	return ret;
}

static void hmm_nic_remove(struct pci_dev *pdev)
{
	struct hmm_nic_dev *nd = pci_get_drvdata(pdev);

	/* Destroys every user object (and so every MR and queue) first. */
	ib_unregister_device(&nd->ibdev);
	hmm_nic_reset(nd);
	hmm_nic_free_irqs(nd);
	destroy_workqueue(nd->wq);
	hmm_nic_pt_destroy(nd, &nd->ring_pt);
	ib_dealloc_device(&nd->ibdev);
}

static const struct pci_device_id hmm_nic_ids[] = {
	{ PCI_DEVICE(HMM_NIC_PCI_VENDOR_ID, HMM_NIC_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, hmm_nic_ids);

static struct pci_driver hmm_nic_driver = {
	.name = HMM_NIC_NAME,
	.id_table = hmm_nic_ids,
	.probe = hmm_nic_probe,
	.remove = hmm_nic_remove,
};
module_pci_driver(hmm_nic_driver);

MODULE_DESCRIPTION("hmmlab hmm-nic: emulated RDMA NIC with on-demand paging");
MODULE_LICENSE("GPL");

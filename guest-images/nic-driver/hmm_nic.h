/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_nic: driver for the emulated hmm-nic RDMA NIC (docs/hmm-nic.md).
 *
 * The device ABI is qemu-devices/include/hmm_nic_regs.h. The user ABI is
 * rxe's (rdma_user_rxe.h, ABI 2), so the stock rxe provider drives the
 * device: queues are rxe_queue_buf buffers the process maps, which the
 * driver also maps into the device's MMU context HMM_NIC_RING_CTX.
 */
#ifndef HMM_NIC_H
#define HMM_NIC_H

#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/refcount.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include <rdma/ib_umem_odp.h>
#include <rdma/ib_verbs.h>

#include "hmm_nic_regs.h"

#define HMM_NIC_NAME		"hmm_nic"

/* rxe's user ABI version (drivers/infiniband/sw/rxe/rxe.h; not in uapi). */
#define HMM_NIC_UVERBS_ABI_VERSION	2

/* Table sizes this driver programs (the device allows more). */
#define HMM_NIC_NUM_MR		1024	/* MMU contexts; index 0 is the queues' */
#define HMM_NIC_NUM_QP		256	/* QPNs 0 and 1 are IB's special QPs */
#define HMM_NIC_NUM_CQ		256
#define HMM_NIC_EQ_ENTRIES	256
#define HMM_NIC_FAULTQ_ENTRIES	256
#define HMM_NIC_MAX_WR		4095	/* queue slots are a power of two */

/* Each queue gets a 1 GiB window in the queues' context. */
#define HMM_NIC_RING_SLOT_SHIFT	30
#define HMM_NIC_RING_SLOTS	(2 * HMM_NIC_NUM_QP + HMM_NIC_NUM_CQ)

/* Implicit ODP children: one umem per 1 GiB of address space. */
#define HMM_NIC_CHILD_SHIFT	30

/* ---- device page tables (hmm_nic_pt.c) ----------------------------------- */

struct hmm_nic_pt {
	__le64			*cpu;		/* 512 entries, the device walks them */
	dma_addr_t		dma;
	struct hmm_nic_pt	**child;	/* NULL at level 0 */
};

/* The page table of one MMU context. */
struct hmm_nic_ptroot {
	struct hmm_nic_pt	*top;		/* level 3 */
	struct mutex		lock;		/* adding tables; leaves: the owner's */
};

struct hmm_nic_dev;

int hmm_nic_pt_init(struct hmm_nic_dev *nd, struct hmm_nic_ptroot *root);
void hmm_nic_pt_destroy(struct hmm_nic_dev *nd, struct hmm_nic_ptroot *root);
int hmm_nic_pt_prepare(struct hmm_nic_dev *nd, struct hmm_nic_ptroot *root,
		       u64 start, u64 end);
int hmm_nic_pt_set(struct hmm_nic_ptroot *root, u64 va, dma_addr_t addr, u64 perm);
void hmm_nic_pt_clear(struct hmm_nic_ptroot *root, u64 start, u64 end);

/* ---- objects ------------------------------------------------------------- */

struct hmm_nic_ucontext {
	struct ib_ucontext	ibuc;
};

struct hmm_nic_ib_pd {
	struct ib_pd		ibpd;
	u32			pdn;
};

/* The mmap entry of one queue buffer: freed when no mapping is left. */
struct hmm_nic_mmap {
	struct rdma_user_mmap_entry	rdma;
	void				*buf;
};

/* An rxe-layout queue (struct rxe_queue_buf) mapped in the queues' context. */
struct hmm_nic_queue {
	void			*buf;		/* vmalloc_user */
	size_t			size;		/* bytes, page aligned */
	u32			log2_elem;
	u32			mask;
	unsigned int		slot;
	u64			va;		/* HMM_NIC_RING_CTX address */
	dma_addr_t		*dma;		/* one per page */
	struct hmm_nic_mmap	*mentry;
};

struct hmm_nic_ib_cq {
	struct ib_cq		ibcq;
	u32			cqn;
	struct hmm_nic_queue	q;
};

struct hmm_nic_ib_qp {
	struct ib_qp		ibqp;
	struct hmm_nic_queue	sq;
	struct hmm_nic_queue	rq;
	struct mutex		lock;		/* attr and the table entry */
	struct ib_qp_attr	attr;		/* what modify_qp set */
	struct ib_qp_cap	cap;
	bool			sig_all;
};

struct hmm_nic_ib_mr {
	struct ib_mr		ibmr;
	struct hmm_nic_dev	*nd;
	u32			index;		/* MR table entry and MMU context */
	u64			va;		/* the iova the device translates */
	u64			length;
	u64			iova_off;	/* iova - user address (ODP) */
	int			access;		/* IB_ACCESS_* */
	struct ib_umem		*umem;		/* pinned, or the ODP (root) umem */
	bool			odp;
	bool			implicit;
	struct hmm_nic_ptroot	pt;
	refcount_t		users;		/* faults and prefetches in flight */
	struct completion	unused;
	struct mutex		child_lock;	/* creating children */
	struct xarray		children;	/* implicit: umem_odp per 1 GiB */
};

/* ---- the device ---------------------------------------------------------- */

struct hmm_nic_dev {
	struct ib_device	ibdev;
	struct pci_dev		*pdev;
	void __iomem		*mmio;
	u32			caps;		/* HMM_NIC_CAP_* */
	u16			lid;		/* PORT_LID: the device's, fixed */
	bool			odp;		/* 64-bit DMA: ODP allowed */
	__be64			guid;

	/* Device tables in coherent memory. */
	struct hmm_gpu_ctx_desc	*ctx_tbl;
	dma_addr_t		ctx_tbl_dma;
	struct hmm_nic_mr	*mr_tbl;
	dma_addr_t		mr_tbl_dma;
	struct hmm_nic_qp	*qp_tbl;
	dma_addr_t		qp_tbl_dma;
	struct hmm_nic_cq	*cq_tbl;
	dma_addr_t		cq_tbl_dma;
	struct hmm_nic_eqe	*eq;
	dma_addr_t		eq_dma;
	u32			eq_head;
	struct hmm_gpu_fault_rec *faultq;
	dma_addr_t		faultq_dma;
	u32			fault_head;

	struct hmm_nic_ptroot	ring_pt;	/* HMM_NIC_RING_CTX */
	spinlock_t		inv_lock;	/* the INV_* register sequence */

	struct ida		pd_ida;
	struct ida		mr_ida;
	struct ida		qp_ida;
	struct ida		cq_ida;
	struct ida		slot_ida;
	u8			mr_tag[HMM_NIC_NUM_MR];

	struct xarray		mrs;		/* index -> struct hmm_nic_ib_mr */
	struct xarray		qps;		/* qpn -> struct hmm_nic_ib_qp */
	struct xarray		cqs;		/* cqn -> struct hmm_nic_ib_cq */

	struct workqueue_struct	*wq;
	struct work_struct	fault_work;
	struct work_struct	eq_work;
	int			irq[HMM_NIC_NUM_VECTORS];

	/* Statistics (debug and the tests' dmesg). */
	atomic64_t		faults;
	atomic64_t		cancels;
	atomic64_t		invalidations;
};

static inline struct hmm_nic_dev *to_nd(struct ib_device *ibdev)
{
	return container_of(ibdev, struct hmm_nic_dev, ibdev);
}

static inline struct hmm_nic_ib_pd *to_npd(struct ib_pd *ibpd)
{
	return container_of(ibpd, struct hmm_nic_ib_pd, ibpd);
}

static inline struct hmm_nic_ib_cq *to_ncq(struct ib_cq *ibcq)
{
	return container_of(ibcq, struct hmm_nic_ib_cq, ibcq);
}

static inline struct hmm_nic_ib_qp *to_nqp(struct ib_qp *ibqp)
{
	return container_of(ibqp, struct hmm_nic_ib_qp, ibqp);
}

static inline struct hmm_nic_ib_mr *to_nmr(struct ib_mr *ibmr)
{
	return container_of(ibmr, struct hmm_nic_ib_mr, ibmr);
}

extern bool hmm_nic_implicit_odp;

/* Implicit ODP: the device can, and the module parameter allows it. */
static inline bool hmm_nic_has_implicit(struct hmm_nic_dev *nd)
{
	return nd->odp && (nd->caps & HMM_NIC_CAP_IMPLICIT) && hmm_nic_implicit_odp;
}

static inline u32 hmm_nic_rd(struct hmm_nic_dev *nd, u32 reg)
{
	return readl(nd->mmio + reg);
}

static inline void hmm_nic_wr(struct hmm_nic_dev *nd, u32 reg, u32 val)
{
	writel(val, nd->mmio + reg);
}

/* hmm_nic_main.c */
void hmm_nic_inv_go(struct hmm_nic_dev *nd, u32 ctx, u64 va, u64 len);

/* hmm_nic_queue.c */
int hmm_nic_queue_init(struct hmm_nic_dev *nd, struct hmm_nic_queue *q,
		       u32 entries, size_t elem_size, struct ib_ucontext *uctx);
void hmm_nic_queue_destroy(struct hmm_nic_dev *nd, struct hmm_nic_queue *q);
int hmm_nic_mmap(struct ib_ucontext *uctx, struct vm_area_struct *vma);
void hmm_nic_mmap_free(struct rdma_user_mmap_entry *entry);

/* hmm_nic_verbs.c */
int hmm_nic_query_device(struct ib_device *ibdev, struct ib_device_attr *attr,
			 struct ib_udata *udata);
int hmm_nic_query_port(struct ib_device *ibdev, u32 port, struct ib_port_attr *attr);
int hmm_nic_port_immutable(struct ib_device *ibdev, u32 port,
			   struct ib_port_immutable *imm);
int hmm_nic_query_gid(struct ib_device *ibdev, u32 port, int index, union ib_gid *gid);
int hmm_nic_query_pkey(struct ib_device *ibdev, u32 port, u16 index, u16 *pkey);
int hmm_nic_alloc_ucontext(struct ib_ucontext *uctx, struct ib_udata *udata);
void hmm_nic_dealloc_ucontext(struct ib_ucontext *uctx);
int hmm_nic_alloc_pd(struct ib_pd *ibpd, struct ib_udata *udata);
int hmm_nic_dealloc_pd(struct ib_pd *ibpd, struct ib_udata *udata);
int hmm_nic_create_cq(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
		      struct ib_udata *udata);
int hmm_nic_destroy_cq(struct ib_cq *ibcq, struct ib_udata *udata);
int hmm_nic_poll_cq(struct ib_cq *ibcq, int n, struct ib_wc *wc);
int hmm_nic_req_notify_cq(struct ib_cq *ibcq, enum ib_cq_notify_flags flags);
int hmm_nic_create_qp(struct ib_qp *ibqp, struct ib_qp_init_attr *init,
		      struct ib_udata *udata);
int hmm_nic_modify_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		      struct ib_udata *udata);
int hmm_nic_query_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		     struct ib_qp_init_attr *init);
int hmm_nic_destroy_qp(struct ib_qp *ibqp, struct ib_udata *udata);
int hmm_nic_post_send(struct ib_qp *ibqp, const struct ib_send_wr *wr,
		      const struct ib_send_wr **bad);
int hmm_nic_post_recv(struct ib_qp *ibqp, const struct ib_recv_wr *wr,
		      const struct ib_recv_wr **bad);
void hmm_nic_eq_work(struct work_struct *work);

/* hmm_nic_mr.c */
struct ib_mr *hmm_nic_get_dma_mr(struct ib_pd *ibpd, int access);
struct ib_mr *hmm_nic_reg_user_mr(struct ib_pd *ibpd, u64 start, u64 length,
				  u64 virt, int access, struct ib_udata *udata);
int hmm_nic_dereg_mr(struct ib_mr *ibmr, struct ib_udata *udata);
struct hmm_nic_ib_mr *hmm_nic_mr_get(struct hmm_nic_dev *nd, u32 index);
void hmm_nic_mr_put(struct hmm_nic_ib_mr *mr);

/* hmm_nic_odp.c */
extern const struct mmu_interval_notifier_ops hmm_nic_odp_ops;
int hmm_nic_odp_map(struct hmm_nic_ib_mr *mr, u64 va, u64 len, bool write, bool fault);
void hmm_nic_odp_release(struct hmm_nic_ib_mr *mr);
void hmm_nic_fault_work(struct work_struct *work);
int hmm_nic_advise_mr(struct ib_pd *ibpd, enum ib_uverbs_advise_mr_advice advice,
		      u32 flags, struct ib_sge *sgl, u32 num_sge,
		      struct uverbs_attr_bundle *attrs);

#endif /* HMM_NIC_H */

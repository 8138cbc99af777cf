// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_nic: device, port, PD, CQ and QP verbs, and the event queue.
 *
 * Only user (uverbs) CQs and QPs exist: they speak rxe's ABI, and the rxe
 * provider posts and polls in the mapped queues itself. The kernel's part
 * is the device tables: a CQ or QP is an entry the device reads on each
 * doorbell.
 */
#include <rdma/ib_addr.h>
#include <rdma/ib_mad.h>
#include <rdma/rdma_user_rxe.h>
#include <rdma/uverbs_ioctl.h>

#include "hmm_nic.h"
#include "hmm_nic_compat.h"

static_assert(sizeof(struct rxe_send_wqe) == HMM_NIC_SWQE_SGE);
static_assert(offsetof(struct rxe_send_wqe, dma) == HMM_NIC_SWQE_DMA);
static_assert(sizeof(struct rxe_recv_wqe) == HMM_NIC_RWQE_SGE);
static_assert(sizeof(struct ib_uverbs_wc) == sizeof(struct hmm_nic_cqe));

#define HMM_NIC_MAX_RD_ATOM	16

/* ---- device and port ---------------------------------------------------- */

int hmm_nic_query_device(struct ib_device *ibdev, struct ib_device_attr *attr,
			 struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibdev);
	struct ib_odp_caps *odp = &attr->odp_caps;

	if (udata && (udata->inlen || udata->outlen))
		return -EINVAL;

	memset(attr, 0, sizeof(*attr));
	attr->sys_image_guid = nd->guid;
	attr->vendor_id = HMM_NIC_PCI_VENDOR_ID;
	attr->vendor_part_id = HMM_NIC_PCI_DEVICE_ID;
	attr->hw_ver = nd->pdev->revision;
	/* The device MMU translates 48-bit addresses. */
	attr->max_mr_size = BIT_ULL(HMM_GPU_VA_BITS - 1);
	attr->page_size_cap = PAGE_SIZE;
	attr->max_qp = HMM_NIC_NUM_QP - 2;
	attr->max_qp_wr = HMM_NIC_MAX_WR;
	attr->max_send_sge = HMM_NIC_MAX_SGE;
	attr->max_recv_sge = HMM_NIC_MAX_SGE;
	attr->max_sge_rd = HMM_NIC_MAX_SGE;
	attr->max_cq = HMM_NIC_NUM_CQ;
	attr->max_cqe = HMM_NIC_MAX_WR;
	attr->max_mr = HMM_NIC_NUM_MR - 1;
	attr->max_pd = 0xffff;
	attr->max_qp_rd_atom = HMM_NIC_MAX_RD_ATOM;
	attr->max_qp_init_rd_atom = HMM_NIC_MAX_RD_ATOM;
	attr->max_res_rd_atom = HMM_NIC_MAX_RD_ATOM * attr->max_qp;
	attr->atomic_cap = nd->caps & HMM_NIC_CAP_ATOMIC ? IB_ATOMIC_HCA : IB_ATOMIC_NONE;
	attr->max_pkeys = 1;
	attr->local_ca_ack_delay = 15;

	if (nd->odp) {
		attr->kernel_cap_flags |= IBK_ON_DEMAND_PAGING;
		odp->general_caps = IB_ODP_SUPPORT;
		if (hmm_nic_has_implicit(nd))
			odp->general_caps |= IB_ODP_SUPPORT_IMPLICIT;
		odp->per_transport_caps.rc_odp_caps = IB_ODP_SUPPORT_SEND | IB_ODP_SUPPORT_RECV |
			IB_ODP_SUPPORT_WRITE | IB_ODP_SUPPORT_READ;
		if (nd->caps & HMM_NIC_CAP_ATOMIC)
			odp->per_transport_caps.rc_odp_caps |= IB_ODP_SUPPORT_ATOMIC;
	}
	hmm_nic_flush_caps(attr, nd->caps, nd->odp);
	return 0;
}

int hmm_nic_query_port(struct ib_device *ibdev, u32 port, struct ib_port_attr *attr)
{
	struct hmm_nic_dev *nd = to_nd(ibdev);

	/* The core zeroed *attr. No subnet manager: the device's LID is fixed. */
	attr->state = IB_PORT_ACTIVE;
	attr->phys_state = IB_PORT_PHYS_STATE_LINK_UP;
	attr->max_mtu = IB_MTU_4096;
	attr->active_mtu = IB_MTU_4096;
	attr->gid_tbl_len = 1;
	attr->pkey_tbl_len = 1;
	attr->max_msg_sz = HMM_NIC_MAX_MSG;
	attr->lid = nd->lid;
	attr->sm_lid = nd->lid;
	attr->max_vl_num = 1;
	attr->active_width = IB_WIDTH_4X;
	attr->active_speed = IB_SPEED_EDR;
	return 0;
}

/*
 * InfiniBand transport, without the MAD, SMI, CM and SA capabilities: the
 * device has no special QPs, and the core would otherwise create them.
 */
int hmm_nic_port_immutable(struct ib_device *ibdev, u32 port,
			   struct ib_port_immutable *imm)
{
	imm->core_cap_flags = RDMA_CORE_CAP_PROT_IB;
	imm->pkey_tbl_len = 1;
	imm->gid_tbl_len = 1;
	return 0;
}

/* The link-local GID of the GUID. */
int hmm_nic_query_gid(struct ib_device *ibdev, u32 port, int index, union ib_gid *gid)
{
	if (index)
		return -EINVAL;
	gid->global.subnet_prefix = cpu_to_be64(0xfe80000000000000ull);
	gid->global.interface_id = to_nd(ibdev)->guid;
	return 0;
}

int hmm_nic_query_pkey(struct ib_device *ibdev, u32 port, u16 index, u16 *pkey)
{
	if (index)
		return -EINVAL;
	*pkey = IB_DEFAULT_PKEY_FULL;
	return 0;
}

/* ---- contexts and protection domains -------------------------------------- */

int hmm_nic_alloc_ucontext(struct ib_ucontext *uctx, struct ib_udata *udata)
{
	return 0;
}

void hmm_nic_dealloc_ucontext(struct ib_ucontext *uctx)
{
}

int hmm_nic_alloc_pd(struct ib_pd *ibpd, struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibpd->device);
	int pdn = ida_alloc_range(&nd->pd_ida, 1, 0xffff, GFP_KERNEL);

	if (pdn < 0)
		return pdn;
	to_npd(ibpd)->pdn = pdn;
	return 0;
}

int hmm_nic_dealloc_pd(struct ib_pd *ibpd, struct ib_udata *udata)
{
	ida_free(&to_nd(ibpd->device)->pd_ida, to_npd(ibpd)->pdn);
	return 0;
}

/* ---- completion queues ------------------------------------------------------ */

static void hmm_nic_mminfo(struct hmm_nic_queue *q, struct mminfo *mi)
{
	mi->offset = rdma_user_mmap_get_offset(&q->mentry->rdma);
	mi->size = q->size;
}

int hmm_nic_create_cq(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
		      struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibcq->device);
	struct hmm_nic_ib_cq *cq = to_ncq(ibcq);
	struct rxe_create_cq_resp resp = {};
	struct hmm_nic_cq *ent;
	struct ib_ucontext *uctx;
	int ret;

	/* Kernel CQs: no kernel poll path (user QPs only). */
	if (!udata)
		return -EOPNOTSUPP;
	if (attr->flags)
		return -EOPNOTSUPP;
	if (!attr->cqe || attr->cqe > HMM_NIC_MAX_WR || udata->outlen < sizeof(resp))
		return -EINVAL;
	uctx = &rdma_udata_to_drv_context(udata, struct hmm_nic_ucontext, ibuc)->ibuc;

	ret = ida_alloc_max(&nd->cq_ida, HMM_NIC_NUM_CQ - 1, GFP_KERNEL);
	if (ret < 0)
		return ret;
	cq->cqn = ret;
	ret = hmm_nic_queue_init(nd, &cq->q, attr->cqe, sizeof(struct ib_uverbs_wc), uctx);
	if (ret)
		goto err_ida;
	ibcq->cqe = cq->q.mask;

	hmm_nic_mminfo(&cq->q, &resp.mi);
	ret = ib_copy_to_udata(udata, &resp, sizeof(resp));
	if (ret)
		goto err_queue;

	ent = &nd->cq_tbl[cq->cqn];
	ent->va = cq->q.va;
	ent->mask = cq->q.mask;
	ent->log2_elem = cq->q.log2_elem;
	/* The rest of the entry before the device may use it. */
	dma_wmb();
	WRITE_ONCE(ent->flags, HMM_NIC_CQ_VALID);
	/* The CQN may be a destroyed CQ's: the device must not go on at its index. */
	hmm_nic_wr(nd, HMM_NIC_REG_CQ_RESET, cq->cqn);
	ret = xa_insert_irq(&nd->cqs, cq->cqn, cq, GFP_KERNEL);
	if (ret)
		goto err_entry;
	return 0;

err_entry:
	memset(ent, 0, sizeof(*ent));
err_queue:
	hmm_nic_queue_destroy(nd, &cq->q);
err_ida:
	ida_free(&nd->cq_ida, cq->cqn);
	return ret;
}

int hmm_nic_destroy_cq(struct ib_cq *ibcq, struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibcq->device);
	struct hmm_nic_ib_cq *cq = to_ncq(ibcq);

	xa_erase_irq(&nd->cqs, cq->cqn);
	WRITE_ONCE(nd->cq_tbl[cq->cqn].flags, 0);
	hmm_nic_queue_destroy(nd, &cq->q);
	memset(&nd->cq_tbl[cq->cqn], 0, sizeof(nd->cq_tbl[0]));
	ida_free(&nd->cq_ida, cq->cqn);
	return 0;
}

/* The rxe provider polls in the mapped queue; nothing polls from the kernel. */
int hmm_nic_poll_cq(struct ib_cq *ibcq, int n, struct ib_wc *wc)
{
	return -EOPNOTSUPP;
}

int hmm_nic_req_notify_cq(struct ib_cq *ibcq, enum ib_cq_notify_flags flags)
{
	u32 arm = to_ncq(ibcq)->cqn;

	if ((flags & IB_CQ_SOLICITED_MASK) == IB_CQ_SOLICITED)
		arm |= HMM_NIC_CQ_ARM_SOLICITED;
	hmm_nic_wr(to_nd(ibcq->device), HMM_NIC_REG_CQ_ARM, arm);
	return 0;
}

/* ---- queue pairs ---------------------------------------------------------- */

static u8 hmm_nic_hw_state(enum ib_qp_state state)
{
	switch (state) {
	case IB_QPS_INIT:
		return HMM_NIC_QPS_INIT;
	case IB_QPS_RTR:
		return HMM_NIC_QPS_RTR;
	case IB_QPS_RTS:
		return HMM_NIC_QPS_RTS;
	case IB_QPS_ERR:
		return HMM_NIC_QPS_ERR;
	default:
		return HMM_NIC_QPS_RESET;
	}
}

/* Write the QP's table entry from qp->attr; the state byte goes last. */
static void hmm_nic_qp_write(struct hmm_nic_dev *nd, struct hmm_nic_ib_qp *qp)
{
	struct hmm_nic_qp *ent = &nd->qp_tbl[qp->ibqp.qp_num];
	struct hmm_nic_qp new = {
		.sq_va = qp->sq.va,
		.rq_va = qp->rq.va,
		.sq_mask = qp->sq.mask,
		.rq_mask = qp->rq.mask,
		.sq_log2_elem = qp->sq.log2_elem,
		.rq_log2_elem = qp->rq.log2_elem,
		.state = READ_ONCE(ent->state),
		.type = HMM_NIC_QPT_RC,
		.send_cqn = to_ncq(qp->ibqp.send_cq)->cqn,
		.recv_cqn = to_ncq(qp->ibqp.recv_cq)->cqn,
		.dest_qpn = qp->attr.dest_qp_num,
		.pdn = to_npd(qp->ibqp.pd)->pdn,
		.access = qp->attr.qp_access_flags & (IB_ACCESS_REMOTE_WRITE |
			  IB_ACCESS_REMOTE_READ | IB_ACCESS_REMOTE_ATOMIC |
			  HMM_NIC_IB_ACCESS_FLUSH),
		.flags = qp->sig_all ? HMM_NIC_QP_SIG_ALL : 0,
		.rnr_retry = qp->attr.rnr_retry,
		.min_rnr_timer = qp->attr.min_rnr_timer,
		/* Our own LID (or none) is loopback; another goes over the link. */
		.dest_lid = rdma_ah_get_dlid(&qp->attr.ah_attr),
		.retry_cnt = qp->attr.retry_cnt,
		.timeout = qp->attr.timeout,
	};

	memcpy(ent, &new, sizeof(new));
	dma_wmb();
	WRITE_ONCE(ent->state, hmm_nic_hw_state(qp->attr.qp_state));
}

int hmm_nic_create_qp(struct ib_qp *ibqp, struct ib_qp_init_attr *init,
		      struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibqp->device);
	struct hmm_nic_ib_qp *qp = to_nqp(ibqp);
	struct ib_qp_cap *cap = &init->cap;
	struct rxe_create_qp_resp resp = {};
	struct ib_ucontext *uctx;
	size_t data;
	int ret;

	/* Kernel QPs would need a kernel post and poll path: user QPs only. */
	if (!udata || init->qp_type != IB_QPT_RC || init->srq || init->create_flags)
		return -EOPNOTSUPP;
	if (udata->inlen || udata->outlen < sizeof(resp))
		return -EINVAL;
	if (cap->max_send_wr > HMM_NIC_MAX_WR || cap->max_recv_wr > HMM_NIC_MAX_WR ||
	    cap->max_send_sge > HMM_NIC_MAX_SGE || cap->max_recv_sge > HMM_NIC_MAX_SGE ||
	    cap->max_inline_data > HMM_NIC_MAX_INLINE)
		return -EINVAL;
	uctx = &rdma_udata_to_drv_context(udata, struct hmm_nic_ucontext, ibuc)->ibuc;

	ret = ida_alloc_range(&nd->qp_ida, 2, HMM_NIC_NUM_QP - 1, GFP_KERNEL);
	if (ret < 0)
		return ret;
	ibqp->qp_num = ret;
	mutex_init(&qp->lock);

	/* As rxe sizes it: SGEs or inline data, whichever is larger. */
	data = max_t(size_t, cap->max_send_sge * sizeof(struct ib_sge), cap->max_inline_data);
	ret = hmm_nic_queue_init(nd, &qp->sq, cap->max_send_wr,
				 sizeof(struct rxe_send_wqe) + data, uctx);
	if (ret)
		goto err_ida;
	ret = hmm_nic_queue_init(nd, &qp->rq, cap->max_recv_wr, sizeof(struct rxe_recv_wqe) +
				 cap->max_recv_sge * sizeof(struct ib_sge), uctx);
	if (ret)
		goto err_sq;

	cap->max_send_wr = qp->sq.mask;
	cap->max_recv_wr = qp->rq.mask;
	cap->max_send_sge = min_t(u32, data / sizeof(struct ib_sge), HMM_NIC_MAX_SGE);
	cap->max_inline_data = data;
	qp->cap = *cap;
	qp->sig_all = init->sq_sig_type == IB_SIGNAL_ALL_WR;
	qp->attr.qp_state = IB_QPS_RESET;

	hmm_nic_mminfo(&qp->rq, &resp.rq_mi);
	hmm_nic_mminfo(&qp->sq, &resp.sq_mi);
	ret = ib_copy_to_udata(udata, &resp, sizeof(resp));
	if (ret)
		goto err_rq;

	hmm_nic_qp_write(nd, qp);
	ret = xa_insert_irq(&nd->qps, ibqp->qp_num, qp, GFP_KERNEL);
	if (ret)
		goto err_entry;
	return 0;

err_entry:
	memset(&nd->qp_tbl[ibqp->qp_num], 0, sizeof(nd->qp_tbl[0]));
err_rq:
	hmm_nic_queue_destroy(nd, &qp->rq);
err_sq:
	hmm_nic_queue_destroy(nd, &qp->sq);
err_ida:
	ida_free(&nd->qp_ida, ibqp->qp_num);
	return ret;
}

/* What the device did to the QP on its own: it moves a failed QP to ERR. */
static void hmm_nic_qp_sync(struct hmm_nic_dev *nd, struct hmm_nic_ib_qp *qp)
{
	if (READ_ONCE(nd->qp_tbl[qp->ibqp.qp_num].state) == HMM_NIC_QPS_ERR)
		qp->attr.qp_state = IB_QPS_ERR;
}

static void hmm_nic_qp_reset_queues(struct hmm_nic_ib_qp *qp)
{
	struct rxe_queue_buf *sq = qp->sq.buf, *rq = qp->rq.buf;

	WRITE_ONCE(sq->producer_index, 0);
	WRITE_ONCE(sq->consumer_index, 0);
	WRITE_ONCE(rq->producer_index, 0);
	WRITE_ONCE(rq->consumer_index, 0);
}

static int hmm_nic_check_attr(struct hmm_nic_ib_qp *qp, struct ib_qp_attr *attr, int mask)
{
	enum ib_qp_state cur, new;

	cur = mask & IB_QP_CUR_STATE ? attr->cur_qp_state : qp->attr.qp_state;
	new = mask & IB_QP_STATE ? attr->qp_state : cur;
	if (!ib_modify_qp_is_ok(cur, new, IB_QPT_RC, mask))
		return -EINVAL;
	if (new == IB_QPS_SQD || new == IB_QPS_SQE)
		return -EOPNOTSUPP;
	if ((mask & IB_QP_PORT) && attr->port_num != 1)
		return -EINVAL;
	if ((mask & IB_QP_PKEY_INDEX) && attr->pkey_index)
		return -EINVAL;
	if ((mask & IB_QP_DEST_QPN) && attr->dest_qp_num >= HMM_NIC_NUM_QP)
		return -EINVAL;
	if ((mask & IB_QP_PATH_MTU) && attr->path_mtu > IB_MTU_4096)
		return -EINVAL;
	if ((mask & IB_QP_MAX_QP_RD_ATOMIC) && attr->max_rd_atomic > HMM_NIC_MAX_RD_ATOM)
		return -EINVAL;
	if ((mask & IB_QP_MAX_DEST_RD_ATOMIC) && attr->max_dest_rd_atomic > HMM_NIC_MAX_RD_ATOM)
		return -EINVAL;
	return 0;
}

int hmm_nic_modify_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		      struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibqp->device);
	struct hmm_nic_ib_qp *qp = to_nqp(ibqp);
	struct ib_qp_attr *a = &qp->attr;
	int ret;

	if (mask & ~IB_QP_ATTR_STANDARD_BITS)
		return -EOPNOTSUPP;
	mutex_lock(&qp->lock);
	hmm_nic_qp_sync(nd, qp);
	ret = hmm_nic_check_attr(qp, attr, mask);
	if (ret)
		goto out;

	if (mask & IB_QP_STATE)
		a->qp_state = attr->qp_state;
	if (mask & IB_QP_ACCESS_FLAGS)
		a->qp_access_flags = attr->qp_access_flags;
	if (mask & IB_QP_PKEY_INDEX)
		a->pkey_index = attr->pkey_index;
	if (mask & IB_QP_PORT)
		a->port_num = attr->port_num;
	if (mask & IB_QP_AV) {
		a->ah_attr = attr->ah_attr;
		/* The core's reference ends with this call. */
		a->ah_attr.grh.sgid_attr = NULL;
	}
	if (mask & IB_QP_PATH_MTU)
		a->path_mtu = attr->path_mtu;
	if (mask & IB_QP_TIMEOUT)
		a->timeout = attr->timeout;
	if (mask & IB_QP_RETRY_CNT)
		a->retry_cnt = attr->retry_cnt;
	if (mask & IB_QP_RNR_RETRY)
		a->rnr_retry = attr->rnr_retry;
	if (mask & IB_QP_RQ_PSN)
		a->rq_psn = attr->rq_psn;
	if (mask & IB_QP_MAX_QP_RD_ATOMIC)
		a->max_rd_atomic = attr->max_rd_atomic;
	if (mask & IB_QP_MIN_RNR_TIMER)
		a->min_rnr_timer = attr->min_rnr_timer;
	if (mask & IB_QP_SQ_PSN)
		a->sq_psn = attr->sq_psn;
	if (mask & IB_QP_MAX_DEST_RD_ATOMIC)
		a->max_dest_rd_atomic = attr->max_dest_rd_atomic;
	if (mask & IB_QP_DEST_QPN)
		a->dest_qp_num = attr->dest_qp_num;

	/*
	 * RESET: the device starts its indices of the QP over; so do the
	 * buffers, whatever the process left in them.
	 */
	if ((mask & IB_QP_STATE) && a->qp_state == IB_QPS_RESET)
		hmm_nic_qp_reset_queues(qp);
	hmm_nic_qp_write(nd, qp);
	if (mask & IB_QP_STATE) {
		/*
		 * INIT: the device starts the QP's indices over when it reads
		 * the entry in INIT, which a receive doorbell makes it do.
		 * ERR: a doorbell flushes what is posted.
		 */
		if (a->qp_state == IB_QPS_INIT)
			hmm_nic_wr(nd, HMM_NIC_REG_RQ_DOORBELL, ibqp->qp_num);
		else if (a->qp_state == IB_QPS_ERR)
			hmm_nic_wr(nd, HMM_NIC_REG_SQ_DOORBELL, ibqp->qp_num);
	}
out:
	mutex_unlock(&qp->lock);
	return ret;
}

int hmm_nic_query_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		     struct ib_qp_init_attr *init)
{
	struct hmm_nic_ib_qp *qp = to_nqp(ibqp);

	mutex_lock(&qp->lock);
	hmm_nic_qp_sync(to_nd(ibqp->device), qp);
	*attr = qp->attr;
	attr->cur_qp_state = qp->attr.qp_state;
	attr->cap = qp->cap;
	mutex_unlock(&qp->lock);

	memset(init, 0, sizeof(*init));
	init->qp_type = IB_QPT_RC;
	init->send_cq = ibqp->send_cq;
	init->recv_cq = ibqp->recv_cq;
	init->cap = qp->cap;
	init->sq_sig_type = qp->sig_all ? IB_SIGNAL_ALL_WR : IB_SIGNAL_REQ_WR;
	return 0;
}

int hmm_nic_destroy_qp(struct ib_qp *ibqp, struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibqp->device);
	struct hmm_nic_ib_qp *qp = to_nqp(ibqp);
	struct hmm_nic_qp *ent = &nd->qp_tbl[ibqp->qp_num];

	xa_erase_irq(&nd->qps, ibqp->qp_num);
	/* RESET first: the device rejects doorbells and peers of the QP. */
	WRITE_ONCE(ent->state, HMM_NIC_QPS_RESET);
	hmm_nic_queue_destroy(nd, &qp->sq);
	hmm_nic_queue_destroy(nd, &qp->rq);
	memset(ent, 0, sizeof(*ent));
	ida_free(&nd->qp_ida, ibqp->qp_num);
	return 0;
}

/*
 * The rxe provider's doorbell: a POST_SEND with no work requests, after it
 * wrote the WQEs and the producer index. The RQ doorbell goes with it:
 * the provider has no receive doorbell, and a peer that waits for this
 * QP's receives (RNR) is woken by it; entering the kernel to send is the
 * next chance to ring it.
 */
int hmm_nic_post_send(struct ib_qp *ibqp, const struct ib_send_wr *wr,
		      const struct ib_send_wr **bad)
{
	struct hmm_nic_dev *nd = to_nd(ibqp->device);
	u8 state = READ_ONCE(nd->qp_tbl[ibqp->qp_num].state);

	if (wr) {
		*bad = wr;
		return -EOPNOTSUPP;
	}
	if (state == HMM_NIC_QPS_RTS)
		hmm_nic_wr(nd, HMM_NIC_REG_RQ_DOORBELL, ibqp->qp_num);
	if (state == HMM_NIC_QPS_RTS || state == HMM_NIC_QPS_ERR)
		hmm_nic_wr(nd, HMM_NIC_REG_SQ_DOORBELL, ibqp->qp_num);
	return 0;
}

/* The provider writes the receive queue itself; a kernel post is not used. */
int hmm_nic_post_recv(struct ib_qp *ibqp, const struct ib_recv_wr *wr,
		      const struct ib_recv_wr **bad)
{
	struct hmm_nic_dev *nd = to_nd(ibqp->device);

	if (wr) {
		*bad = wr;
		return -EOPNOTSUPP;
	}
	if (READ_ONCE(nd->qp_tbl[ibqp->qp_num].state) != HMM_NIC_QPS_RESET)
		hmm_nic_wr(nd, HMM_NIC_REG_RQ_DOORBELL, ibqp->qp_num);
	return 0;
}

/* ---- events ---------------------------------------------------------------- */

static void hmm_nic_event(struct hmm_nic_dev *nd, const struct hmm_nic_eqe *eqe)
{
	struct ib_event ev = { .device = &nd->ibdev };
	struct hmm_nic_ib_qp *qp;
	struct hmm_nic_ib_cq *cq;

	switch (eqe->type) {
	case HMM_NIC_EV_CQ:
	case HMM_NIC_EV_CQ_ERR:
		/* Under the xarray lock: destroy_cq erases first. */
		xa_lock_irq(&nd->cqs);
		cq = xa_load(&nd->cqs, eqe->num);
		if (cq && eqe->type == HMM_NIC_EV_CQ && cq->ibcq.comp_handler) {
			cq->ibcq.comp_handler(&cq->ibcq, cq->ibcq.cq_context);
		} else if (cq && cq->ibcq.event_handler) {
			ev.event = IB_EVENT_CQ_ERR;
			ev.element.cq = &cq->ibcq;
			cq->ibcq.event_handler(&ev, cq->ibcq.cq_context);
		}
		xa_unlock_irq(&nd->cqs);
		break;
	case HMM_NIC_EV_QP_FATAL:
		xa_lock_irq(&nd->qps);
		qp = xa_load(&nd->qps, eqe->num);
		if (qp && qp->ibqp.event_handler) {
			ev.event = IB_EVENT_QP_FATAL;
			ev.element.qp = &qp->ibqp;
			qp->ibqp.event_handler(&ev, qp->ibqp.qp_context);
		}
		xa_unlock_irq(&nd->qps);
		break;
	default:
		dev_warn_ratelimited(&nd->pdev->dev, "unknown event %u\n", eqe->type);
	}
}

void hmm_nic_eq_work(struct work_struct *work)
{
	struct hmm_nic_dev *nd = container_of(work, struct hmm_nic_dev, eq_work);
	u32 tail;

	while ((tail = hmm_nic_rd(nd, HMM_NIC_REG_EQ_TAIL)) != nd->eq_head) {
		while (nd->eq_head != tail) {
			struct hmm_nic_eqe eqe;

			/* The tail read before the entry it covers. */
			dma_rmb();
			eqe = nd->eq[nd->eq_head];
			hmm_nic_event(nd, &eqe);
			nd->eq_head = (nd->eq_head + 1) % HMM_NIC_EQ_ENTRIES;
		}
		hmm_nic_wr(nd, HMM_NIC_REG_EQ_HEAD, nd->eq_head);
	}
}

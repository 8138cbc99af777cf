// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_nic: memory regions. Region N (key N << 8 | tag) is MR table entry N
 * and MMU context N. A pinned region's page table is filled here, at
 * registration; an ODP region's starts empty and fills from faults and
 * prefetches (hmm_nic_odp.c).
 */
#include <linux/slab.h>
#include <rdma/ib_umem.h>
#include <rdma/iter.h>

#include "hmm_nic.h"
#include "hmm_nic_compat.h"

#define HMM_NIC_MR_ACCESS	(IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | \
				 IB_ACCESS_REMOTE_READ | IB_ACCESS_REMOTE_ATOMIC | \
				 HMM_NIC_IB_ACCESS_FLUSH)

static_assert(HMM_NIC_ACCESS_LOCAL_WRITE == IB_ACCESS_LOCAL_WRITE);
static_assert(HMM_NIC_ACCESS_REMOTE_WRITE == IB_ACCESS_REMOTE_WRITE);
static_assert(HMM_NIC_ACCESS_REMOTE_READ == IB_ACCESS_REMOTE_READ);
static_assert(HMM_NIC_ACCESS_REMOTE_ATOMIC == IB_ACCESS_REMOTE_ATOMIC);

/* The MR at @index with a reference (faults, prefetches); NULL if none. */
struct hmm_nic_ib_mr *hmm_nic_mr_get(struct hmm_nic_dev *nd, u32 index)
{
	struct hmm_nic_ib_mr *mr;

	xa_lock(&nd->mrs);
	mr = xa_load(&nd->mrs, index);
	if (mr && !refcount_inc_not_zero(&mr->users))
		mr = NULL;
	xa_unlock(&nd->mrs);
	return mr;
}

void hmm_nic_mr_put(struct hmm_nic_ib_mr *mr)
{
	if (refcount_dec_and_test(&mr->users))
		complete(&mr->unused);
}

/* Kernel ULPs only: this device serves user QPs. */
struct ib_mr *hmm_nic_get_dma_mr(struct ib_pd *ibpd, int access)
{
	return ERR_PTR(-EOPNOTSUPP);
}

/* Fill the page table of a pinned region: its pages in iova order. */
static int hmm_nic_mr_fill(struct hmm_nic_dev *nd, struct hmm_nic_ib_mr *mr)
{
	u64 perm = HMM_GPU_PTE_READ;
	struct ib_block_iter biter;
	u64 va;
	int ret;

	if (!ib_umem_find_best_pgsz(mr->umem, PAGE_SIZE, mr->va))
		return -EINVAL;
	ret = hmm_nic_pt_prepare(nd, &mr->pt, mr->va, mr->va + mr->length);
	if (ret)
		return ret;
	if (mr->umem->writable)
		perm |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
	va = ALIGN_DOWN(mr->va, PAGE_SIZE);
	mutex_lock(&mr->pt.lock);
	rdma_umem_for_each_dma_block(mr->umem, &biter, PAGE_SIZE) {
		hmm_nic_pt_set(&mr->pt, va, rdma_block_iter_dma_address(&biter), perm);
		va += PAGE_SIZE;
	}
	mutex_unlock(&mr->pt.lock);
	return 0;
}

/* Get the umem: pinned, ODP over [start, start + length), or implicit ODP. */
static int hmm_nic_mr_umem(struct hmm_nic_dev *nd, struct hmm_nic_ib_mr *mr, u64 start)
{
	struct ib_umem_odp *odp;

	if (!mr->odp) {
		mr->umem = hmm_nic_umem_get(&nd->ibdev, start, mr->length, mr->access);
		if (IS_ERR(mr->umem))
			return PTR_ERR(mr->umem);
		return hmm_nic_mr_fill(nd, mr);
	}
	if (mr->implicit)
		odp = ib_umem_odp_alloc_implicit(&nd->ibdev, mr->access);
	else
		odp = ib_umem_odp_get(&nd->ibdev, start, mr->length, mr->access,
				      &hmm_nic_odp_ops);
	if (IS_ERR(odp))
		return PTR_ERR(odp);
	mr->umem = &odp->umem;
	/* The invalidate callback may already run; it finds the MR from now on. */
	mutex_lock(&odp->umem_mutex);
	odp->private = mr;
	mutex_unlock(&odp->umem_mutex);
	return 0;
}

static void hmm_nic_mr_release_umem(struct hmm_nic_dev *nd, struct hmm_nic_ib_mr *mr)
{
	if (IS_ERR_OR_NULL(mr->umem))
		return;
	if (mr->odp) {
		hmm_nic_odp_release(mr);
		return;
	}
	mutex_lock(&mr->pt.lock);
	hmm_nic_pt_clear(&mr->pt, mr->va, mr->va + mr->length);
	mutex_unlock(&mr->pt.lock);
	hmm_nic_inv_go(nd, mr->index, 0, ~0ull);
	ib_umem_release(mr->umem);
}

struct ib_mr *hmm_nic_reg_user_mr(struct ib_pd *ibpd, u64 start, u64 length,
				  u64 virt, int access, struct ib_udata *udata)
{
	struct hmm_nic_dev *nd = to_nd(ibpd->device);
	struct hmm_nic_mr *ent;
	struct hmm_nic_ib_mr *mr;
	u32 key;
	int ret;

	if (access & IB_ACCESS_ON_DEMAND) {
		if (!nd->odp)
			return ERR_PTR(-EOPNOTSUPP);
		if (!start && length == U64_MAX) {
			/* Implicit: the whole address space, iova = address. */
			if (virt || !hmm_nic_has_implicit(nd))
				return ERR_PTR(-EINVAL);
		} else if ((virt - start) & ~PAGE_MASK) {
			return ERR_PTR(-EINVAL);
		}
	}
	if (!length || (length != U64_MAX && virt + length > BIT_ULL(HMM_GPU_VA_BITS)))
		return ERR_PTR(-EINVAL);

	mr = kzalloc(sizeof(*mr), GFP_KERNEL);
	if (!mr)
		return ERR_PTR(-ENOMEM);
	mr->nd = nd;
	mr->va = virt;
	mr->length = length;
	mr->access = access;
	mr->odp = access & IB_ACCESS_ON_DEMAND;
	mr->implicit = mr->odp && !start && length == U64_MAX;
	mr->iova_off = virt - start;
	refcount_set(&mr->users, 1);
	init_completion(&mr->unused);
	mutex_init(&mr->child_lock);
	xa_init(&mr->children);

	ret = ida_alloc_range(&nd->mr_ida, 1, HMM_NIC_NUM_MR - 1, GFP_KERNEL);
	if (ret < 0)
		goto err_free;
	mr->index = ret;
	ret = hmm_nic_pt_init(nd, &mr->pt);
	if (ret)
		goto err_ida;
	ret = hmm_nic_mr_umem(nd, mr, start);
	if (ret)
		goto err_umem;

	/* A new tag per registration: a stale key of the index fails the check. */
	key = mr->index << 8 | ++nd->mr_tag[mr->index];
	mr->ibmr.lkey = key;
	mr->ibmr.rkey = key;
	nd->ctx_tbl[mr->index].pt_root = cpu_to_le64(mr->pt.top->dma);
	nd->ctx_tbl[mr->index].flags = cpu_to_le32(HMM_GPU_CTX_VALID);
	ent = &nd->mr_tbl[mr->index];
	ent->va = virt;
	ent->length = length;
	ent->key = key;
	ent->access = access & HMM_NIC_MR_ACCESS;
	ent->pdn = to_npd(ibpd)->pdn;
	/* Context and entry before the flag that makes the device use them. */
	dma_wmb();
	WRITE_ONCE(ent->flags, HMM_NIC_MR_VALID | (mr->odp ? HMM_NIC_MR_ODP : 0) |
		   (mr->implicit ? HMM_NIC_MR_IMPLICIT : 0));
	ret = xa_insert(&nd->mrs, mr->index, mr, GFP_KERNEL);
	if (ret)
		goto err_entry;
	return &mr->ibmr;

err_entry:
	WRITE_ONCE(ent->flags, 0);
	memset(&nd->ctx_tbl[mr->index], 0, sizeof(nd->ctx_tbl[0]));
err_umem:
	hmm_nic_mr_release_umem(nd, mr);
	hmm_nic_pt_destroy(nd, &mr->pt);
err_ida:
	ida_free(&nd->mr_ida, mr->index);
err_free:
	kfree(mr);
	return ERR_PTR(ret);
}

/*
 * The device loses the region (entry invalid, no fault handler finds it),
 * the handlers in flight finish, the translations go with a fence, then
 * the pages and the tables.
 */
int hmm_nic_dereg_mr(struct ib_mr *ibmr, struct ib_udata *udata)
{
	struct hmm_nic_ib_mr *mr = to_nmr(ibmr);
	struct hmm_nic_dev *nd = mr->nd;

	WRITE_ONCE(nd->mr_tbl[mr->index].flags, 0);
	xa_erase(&nd->mrs, mr->index);
	hmm_nic_mr_put(mr);
	wait_for_completion(&mr->unused);

	hmm_nic_mr_release_umem(nd, mr);
	memset(&nd->ctx_tbl[mr->index], 0, sizeof(nd->ctx_tbl[0]));
	hmm_nic_inv_go(nd, mr->index, 0, ~0ull);
	hmm_nic_pt_destroy(nd, &mr->pt);
	memset(&nd->mr_tbl[mr->index], 0, sizeof(nd->mr_tbl[0]));
	ida_free(&nd->mr_ida, mr->index);
	kfree(mr);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_nic: on-demand paging, in mlx5's shape.
 *
 * A device access to a page its context does not map stalls the QP and
 * posts a fault record (ctx = MR index). The fault worker maps the page
 * with ib_umem_odp_map_dma_and_lock(), writes the entries while it holds
 * umem_mutex, and replays (or cancels what cannot be mapped). The
 * invalidate callback clears entries under umem_mutex, fences with INV_GO,
 * and only then lets the core DMA-unmap the pages. Implicit regions map
 * through children of HMM_NIC_CHILD_SHIFT bytes, created on first use.
 */
#include <linux/slab.h>
#include <rdma/ib_umem_odp.h>

#include "hmm_nic.h"
#include "hmm_nic_compat.h"

static bool hmm_nic_odp_invalidate(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	struct ib_umem_odp *odp = container_of(mni, struct ib_umem_odp, notifier);
	struct hmm_nic_ib_mr *mr;
	u64 start, end;

	if (!mmu_notifier_range_blockable(range))
		return false;

	mutex_lock(&odp->umem_mutex);
	mmu_interval_set_seq(mni, cur_seq);
	start = max_t(u64, ib_umem_start(odp), range->start);
	end = min_t(u64, ib_umem_end(odp), range->end);
	/* NULL only before registration set it, when nothing is mapped yet. */
	mr = odp->private;
	if (mr) {
		hmm_nic_pt_clear(&mr->pt, start + mr->iova_off, end + mr->iova_off);
		hmm_nic_inv_go(mr->nd, mr->index, start + mr->iova_off, end - start);
	}
	ib_umem_odp_unmap_dma_pages(odp, start, end);
	mutex_unlock(&odp->umem_mutex);
	return true;
}

const struct mmu_interval_notifier_ops hmm_nic_odp_ops = {
	.invalidate = hmm_nic_odp_invalidate,
};

/*
 * Map [addr, addr + len) of @odp (user addresses) into @mr's context.
 * Returns the number of pages mapped, or an error.
 */
static int hmm_nic_odp_map_umem(struct hmm_nic_ib_mr *mr, struct ib_umem_odp *odp,
				u64 addr, u64 len, bool write, bool fault)
{
	unsigned long psize = BIT(odp->page_shift);
	u64 start = ALIGN_DOWN(addr, psize);
	u64 end = ALIGN(addr + len, psize);
	int ret, mapped = 0;
	u64 a, k;

	ret = hmm_nic_pt_prepare(mr->nd, &mr->pt, start + mr->iova_off, end + mr->iova_off);
	if (ret)
		return ret;
	ret = ib_umem_odp_map_dma_and_lock(odp, start, end - start,
					   hmm_nic_odp_access(write), fault);
	if (ret < 0)
		return ret;

	/* umem_mutex held: an invalidation of these pages waits for us. */
	for (a = start; a < end; a += psize) {
		size_t idx = (a - ib_umem_start(odp)) >> odp->page_shift;
		u64 perm = HMM_GPU_PTE_READ;
		dma_addr_t dma;
		bool writable;

		ret = hmm_nic_odp_dma(odp, idx, &dma, &writable);
		if (ret == -ENOENT)
			continue;
		if (ret)
			break;
		if (writable && odp->umem.writable)
			perm |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
		for (k = 0; k < psize; k += PAGE_SIZE)
			hmm_nic_pt_set(&mr->pt, a + k + mr->iova_off, dma + k, perm);
		mapped++;
	}
	mutex_unlock(&odp->umem_mutex);
	return ret < 0 && ret != -ENOENT ? ret : mapped;
}

/* The child of an implicit region covering @addr, created on first use. */
static struct ib_umem_odp *hmm_nic_odp_child(struct hmm_nic_ib_mr *mr, u64 addr)
{
	unsigned long idx = addr >> HMM_NIC_CHILD_SHIFT;
	struct ib_umem_odp *child;
	int ret;

	child = xa_load(&mr->children, idx);
	if (child)
		return child;
	mutex_lock(&mr->child_lock);
	child = xa_load(&mr->children, idx);
	if (child)
		goto out;
	child = ib_umem_odp_alloc_child(to_ib_umem_odp(mr->umem),
					(u64)idx << HMM_NIC_CHILD_SHIFT,
					BIT_ULL(HMM_NIC_CHILD_SHIFT), &hmm_nic_odp_ops);
	if (IS_ERR(child))
		goto out;
	mutex_lock(&child->umem_mutex);
	child->private = mr;
	mutex_unlock(&child->umem_mutex);
	ret = xa_err(xa_store(&mr->children, idx, child, GFP_KERNEL));
	if (ret) {
		ib_umem_odp_release(child);
		child = ERR_PTR(ret);
	}
out:
	mutex_unlock(&mr->child_lock);
	return child;
}

/*
 * Map [va, va + len) of the region (device addresses, iova), faulting the
 * pages in unless !@fault (a snapshot of what is present). Returns the
 * pages mapped or an error.
 */
int hmm_nic_odp_map(struct hmm_nic_ib_mr *mr, u64 va, u64 len, bool write, bool fault)
{
	int ret, total = 0;

	if (!len)
		return 0;
	if (!mr->implicit) {
		/* A fault names a whole page, which may start before the region. */
		u64 start = max(va, mr->va);
		u64 end = min(va + len, mr->va + mr->length);

		if (va + len < va || start >= end)
			return -EFAULT;
		return hmm_nic_odp_map_umem(mr, to_ib_umem_odp(mr->umem), start - mr->iova_off,
					    end - start, write, fault);
	}
	while (len) {
		u64 chunk = min_t(u64, len, BIT_ULL(HMM_NIC_CHILD_SHIFT) -
				  (va & (BIT_ULL(HMM_NIC_CHILD_SHIFT) - 1)));
		struct ib_umem_odp *child = hmm_nic_odp_child(mr, va);

		if (IS_ERR(child))
			return PTR_ERR(child);
		ret = hmm_nic_odp_map_umem(mr, child, va, chunk, write, fault);
		if (ret < 0)
			return ret;
		total += ret;
		va += chunk;
		len -= chunk;
	}
	return total;
}

/*
 * Deregistration (no fault or prefetch can find the MR any more): clear
 * every entry, fence, then release the umems, which DMA-unmaps the pages.
 */
void hmm_nic_odp_release(struct hmm_nic_ib_mr *mr)
{
	struct ib_umem_odp *odp = to_ib_umem_odp(mr->umem);
	struct ib_umem_odp *child;
	unsigned long idx;

	xa_for_each(&mr->children, idx, child) {
		mutex_lock(&child->umem_mutex);
		hmm_nic_pt_clear(&mr->pt, ib_umem_start(child), ib_umem_end(child));
		mutex_unlock(&child->umem_mutex);
	}
	if (!mr->implicit) {
		mutex_lock(&odp->umem_mutex);
		hmm_nic_pt_clear(&mr->pt, ib_umem_start(odp) + mr->iova_off,
				 ib_umem_end(odp) + mr->iova_off);
		mutex_unlock(&odp->umem_mutex);
	}
	hmm_nic_inv_go(mr->nd, mr->index, 0, ~0ull);

	xa_for_each(&mr->children, idx, child)
		ib_umem_odp_release(child);
	xa_destroy(&mr->children);
	ib_umem_odp_release(odp);
}

/* ---- device faults -------------------------------------------------------- */

/* Map what the fault needs; false: cancel it. */
static bool hmm_nic_fault(struct hmm_nic_dev *nd, const struct hmm_gpu_fault_rec *rec)
{
	struct hmm_nic_ib_mr *mr = hmm_nic_mr_get(nd, rec->ctx);
	bool write = rec->access != HMM_GPU_ACCESS_READ;
	int ret = -ENOENT;

	/* A pinned region is mapped whole: a fault there is outside of it. */
	if (mr && mr->odp)
		ret = hmm_nic_odp_map(mr, rec->va, PAGE_SIZE, write, true);
	if (mr)
		hmm_nic_mr_put(mr);
	if (ret <= 0) {
		u64 cmd = rec->cmd_id;

		dev_dbg(&nd->pdev->dev,
			"cancel fault ctx %u va %#llx access %u qp %u wqe %u%s: %d\n",
			rec->ctx, rec->va, rec->access, HMM_NIC_FAULT_QPN(cmd),
			HMM_NIC_FAULT_INDEX(cmd),
			HMM_NIC_FAULT_RESPONDER(cmd) ? " (responder)" : "", ret);
		return false;
	}
	return true;
}

void hmm_nic_fault_work(struct work_struct *work)
{
	struct hmm_nic_dev *nd = container_of(work, struct hmm_nic_dev, fault_work);
	bool replay = false;
	u32 tail;

	while ((tail = hmm_nic_rd(nd, HMM_NIC_REG_FAULTQ_TAIL)) != nd->fault_head) {
		while (nd->fault_head != tail) {
			struct hmm_gpu_fault_rec rec;

			/* The tail read before the record it covers. */
			dma_rmb();
			rec = nd->faultq[nd->fault_head];
			nd->fault_head = (nd->fault_head + 1) % HMM_NIC_FAULTQ_ENTRIES;
			atomic64_inc(&nd->faults);
			if (hmm_nic_fault(nd, &rec)) {
				replay = true;
			} else {
				atomic64_inc(&nd->cancels);
				hmm_nic_wr(nd, HMM_NIC_REG_FAULT_CANCEL, rec.token);
			}
		}
		hmm_nic_wr(nd, HMM_NIC_REG_FAULTQ_HEAD, nd->fault_head);
	}
	/* After the head: a replayed access that faults again needs the room. */
	if (replay)
		hmm_nic_wr(nd, HMM_NIC_REG_FAULT_REPLAY, 1);
}

/* ---- prefetch (ibv_advise_mr) ------------------------------------------------ */

struct hmm_nic_prefetch {
	struct work_struct	work;
	bool			write;
	bool			fault;
	u32			num_sge;
	struct {
		struct hmm_nic_ib_mr	*mr;
		u64			addr;
		u32			length;
	} sge[];
};

/* The ODP region @lkey names in @pd, with a reference. */
static struct hmm_nic_ib_mr *hmm_nic_prefetch_mr(struct ib_pd *pd, u32 lkey, bool write)
{
	struct hmm_nic_ib_mr *mr = hmm_nic_mr_get(to_nd(pd->device), HMM_NIC_KEY_INDEX(lkey));

	if (!mr)
		return ERR_PTR(-ENOENT);
	if (mr->ibmr.lkey != lkey || mr->ibmr.pd != pd || !mr->odp) {
		hmm_nic_mr_put(mr);
		return ERR_PTR(-ENOENT);
	}
	if (write && !mr->umem->writable) {
		hmm_nic_mr_put(mr);
		return ERR_PTR(-EPERM);
	}
	return mr;
}

static void hmm_nic_prefetch_work(struct work_struct *w)
{
	struct hmm_nic_prefetch *pf = container_of(w, struct hmm_nic_prefetch, work);
	u32 i;

	/* Best effort, as mlx5: nobody waits for the result. */
	for (i = 0; i < pf->num_sge; i++) {
		hmm_nic_odp_map(pf->sge[i].mr, pf->sge[i].addr, pf->sge[i].length,
				pf->write, pf->fault);
		hmm_nic_mr_put(pf->sge[i].mr);
	}
	kvfree(pf);
}

int hmm_nic_advise_mr(struct ib_pd *pd, enum ib_uverbs_advise_mr_advice advice,
		      u32 flags, struct ib_sge *sgl, u32 num_sge,
		      struct uverbs_attr_bundle *attrs)
{
	bool write = advice == IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE;
	bool fault = advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT;
	struct hmm_nic_prefetch *pf;
	struct hmm_nic_ib_mr *mr;
	int ret = 0;
	u32 i;

	if (advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH &&
	    advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE &&
	    advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT)
		return -EOPNOTSUPP;

	if (flags & IB_UVERBS_ADVISE_MR_FLAG_FLUSH) {
		/* hmm_nic_odp_map() returns the pages it mapped: stop on errors only. */
		for (i = 0; i < num_sge && ret >= 0; i++) {
			mr = hmm_nic_prefetch_mr(pd, sgl[i].lkey, write);
			if (IS_ERR(mr))
				return PTR_ERR(mr);
			if (sgl[i].length)
				ret = hmm_nic_odp_map(mr, sgl[i].addr, sgl[i].length, write, fault);
			hmm_nic_mr_put(mr);
		}
		return ret < 0 ? ret : 0;
	}

	pf = kvzalloc(struct_size(pf, sge, num_sge), GFP_KERNEL);
	if (!pf)
		return -ENOMEM;
	INIT_WORK(&pf->work, hmm_nic_prefetch_work);
	pf->write = write;
	pf->fault = fault;
	for (i = 0; i < num_sge; i++) {
		mr = hmm_nic_prefetch_mr(pd, sgl[i].lkey, write);
		if (IS_ERR(mr)) {
			ret = PTR_ERR(mr);
			goto err;
		}
		pf->sge[i].mr = mr;
		pf->sge[i].addr = sgl[i].addr;
		pf->sge[i].length = sgl[i].length;
		pf->num_sge = i + 1;
	}
	queue_work(to_nd(pd->device)->wq, &pf->work);
	return 0;
err:
	for (i = 0; i < pf->num_sge; i++)
		hmm_nic_mr_put(pf->sge[i].mr);
	kvfree(pf);
	return ret;
}

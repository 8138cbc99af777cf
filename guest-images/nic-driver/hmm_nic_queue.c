// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_nic: rxe-layout queues (struct rxe_queue_buf) shared with the process
 * and the device.
 *
 * A queue is allocated as rxe allocates it (vmalloc_user, the header, then
 * a power of two of power-of-two elements), handed to the process through
 * an rdma_user_mmap entry (the rxe provider maps struct mminfo's offset
 * and size), and mapped page by page into the device's MMU context
 * HMM_NIC_RING_CTX at a 1 GiB window of its own, so the device reaches it
 * without it being contiguous.
 */
#include <linux/cache.h>
#include <linux/dma-mapping.h>
#include <linux/log2.h>
#include <linux/vmalloc.h>
#include <rdma/rdma_user_rxe.h>

#include "hmm_nic.h"

static_assert(offsetof(struct rxe_queue_buf, producer_index) == HMM_NIC_QBUF_PRODUCER);
static_assert(offsetof(struct rxe_queue_buf, consumer_index) == HMM_NIC_QBUF_CONSUMER);
static_assert(sizeof(struct rxe_queue_buf) == HMM_NIC_QBUF_DATA);

/* Take the device's access away from the queue's pages, then unmap them. */
static void hmm_nic_queue_unmap(struct hmm_nic_dev *nd, struct hmm_nic_queue *q,
				unsigned int npages)
{
	unsigned int i;

	mutex_lock(&nd->ring_pt.lock);
	hmm_nic_pt_clear(&nd->ring_pt, q->va, q->va + q->size);
	mutex_unlock(&nd->ring_pt.lock);
	hmm_nic_inv_go(nd, HMM_NIC_RING_CTX, q->va, q->size);
	for (i = 0; i < npages; i++)
		dma_unmap_page(&nd->pdev->dev, q->dma[i], PAGE_SIZE, DMA_BIDIRECTIONAL);
}

/*
 * Allocate a queue of at least @entries elements of @elem_size bytes, map
 * it in the queues' context and, for a process (@uctx), insert its mmap
 * entry. @entries becomes what the process may post (slots - 1).
 */
int hmm_nic_queue_init(struct hmm_nic_dev *nd, struct hmm_nic_queue *q,
		       u32 entries, size_t elem_size, struct ib_ucontext *uctx)
{
	struct rxe_queue_buf *buf;
	unsigned int npages, i;
	u32 slots;
	int ret;

	/* rxe: at least a cache line, a power of two; slots a power of two. */
	elem_size = roundup_pow_of_two(max_t(size_t, elem_size, SMP_CACHE_BYTES));
	slots = roundup_pow_of_two(entries + 1);
	q->log2_elem = ilog2(elem_size);
	q->mask = slots - 1;
	q->size = PAGE_ALIGN(sizeof(*buf) + (size_t)slots * elem_size);
	if (q->size > BIT_ULL(HMM_NIC_RING_SLOT_SHIFT))
		return -EINVAL;

	ret = ida_alloc_max(&nd->slot_ida, HMM_NIC_RING_SLOTS - 1, GFP_KERNEL);
	if (ret < 0)
		return ret;
	q->slot = ret;
	/* Slot 0 stays unused: a zero queue address is always a bug. */
	q->va = (u64)(q->slot + 1) << HMM_NIC_RING_SLOT_SHIFT;

	ret = -ENOMEM;
	q->buf = vmalloc_user(q->size);
	npages = q->size >> PAGE_SHIFT;
	q->dma = kcalloc(npages, sizeof(*q->dma), GFP_KERNEL);
	if (!q->buf || !q->dma)
		goto err_free;
	buf = q->buf;
	buf->log2_elem_size = q->log2_elem;
	buf->index_mask = q->mask;

	ret = hmm_nic_pt_prepare(nd, &nd->ring_pt, q->va, q->va + q->size);
	if (ret)
		goto err_free;
	for (i = 0; i < npages; i++) {
		struct page *page = vmalloc_to_page(q->buf + ((size_t)i << PAGE_SHIFT));

		q->dma[i] = dma_map_page(&nd->pdev->dev, page, 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
		if (dma_mapping_error(&nd->pdev->dev, q->dma[i])) {
			ret = -ENOMEM;
			goto err_unmap;
		}
		mutex_lock(&nd->ring_pt.lock);
		hmm_nic_pt_set(&nd->ring_pt, q->va + ((u64)i << PAGE_SHIFT), q->dma[i],
			       HMM_GPU_PTE_READ | HMM_GPU_PTE_WRITE);
		mutex_unlock(&nd->ring_pt.lock);
	}

	if (uctx) {
		q->mentry = kzalloc(sizeof(*q->mentry), GFP_KERNEL);
		if (!q->mentry) {
			ret = -ENOMEM;
			goto err_unmap;
		}
		q->mentry->buf = q->buf;
		ret = rdma_user_mmap_entry_insert(uctx, &q->mentry->rdma, q->size);
		if (ret) {
			kfree(q->mentry);
			q->mentry = NULL;
			goto err_unmap;
		}
	}
	return 0;

err_unmap:
	hmm_nic_queue_unmap(nd, q, i);
err_free:
	kfree(q->dma);
	vfree(q->buf);
	ida_free(&nd->slot_ida, q->slot);
	q->buf = NULL;
	return ret;
}

/*
 * The device loses the queue first; the buffer itself goes with the last
 * mapping of it (hmm_nic_mmap_free()), since the process may still map it.
 */
void hmm_nic_queue_destroy(struct hmm_nic_dev *nd, struct hmm_nic_queue *q)
{
	if (!q->buf)
		return;
	hmm_nic_queue_unmap(nd, q, q->size >> PAGE_SHIFT);
	kfree(q->dma);
	ida_free(&nd->slot_ida, q->slot);
	if (q->mentry)
		rdma_user_mmap_entry_remove(&q->mentry->rdma);
	else
		vfree(q->buf);
	q->buf = NULL;
}

/* The mmap of struct mminfo's offset: the queue buffer, whole. */
int hmm_nic_mmap(struct ib_ucontext *uctx, struct vm_area_struct *vma)
{
	struct rdma_user_mmap_entry *entry;
	struct hmm_nic_mmap *m;
	int ret;

	entry = rdma_user_mmap_entry_get(uctx, vma);
	if (!entry)
		return -EINVAL;
	m = container_of(entry, struct hmm_nic_mmap, rdma);
	ret = remap_vmalloc_range(vma, m->buf, 0);
	rdma_user_mmap_entry_put(entry);
	return ret;
}

/* Pages the process still maps keep their own references. */
void hmm_nic_mmap_free(struct rdma_user_mmap_entry *entry)
{
	struct hmm_nic_mmap *m = container_of(entry, struct hmm_nic_mmap, rdma);

	vfree(m->buf);
	kfree(m);
}

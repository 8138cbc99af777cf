// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: HMM_GPU_IOC_XFER on pinned user buffers.
 *
 * Both buffers are pinned with pin_user_pages_fast(), described by an
 * sg_table and mapped with dma_map_sgtable(). The transfer is then cut at
 * every DMA segment boundary of either side and at max_xfer, giving one
 * device command per piece. All commands are queued before waiting, so the
 * ring stays full while the buffers are large.
 */
#include <linux/bitops.h>
#include <linux/dma-mapping.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "hmm_gpu.h"
#include "hmm_gpu_uapi.h"

/* One user buffer, pinned and DMA-mapped. */
struct hmm_gpu_buf {
	u64			uaddr;
	u64			len;
	enum dma_data_direction	dir;
	u32			role;		/* HMM_GPU_MAP_* */
	struct page		**pages;
	unsigned int		npages;
	unsigned int		npinned;
	struct sg_table		sgt;
	bool			sgt_alloced;
	bool			mapped;
};

static int hmm_gpu_buf_get(struct hmm_gpu_dev *gdev, struct hmm_gpu_buf *buf)
{
	unsigned long start = buf->uaddr & PAGE_MASK;
	unsigned int gup_flags = buf->dir == DMA_FROM_DEVICE ? FOLL_WRITE : 0;
	int ret;

	if (!access_ok(u64_to_user_ptr(buf->uaddr), buf->len))
		return -EFAULT;

	buf->npages = (offset_in_page(buf->uaddr) + buf->len + PAGE_SIZE - 1) >> PAGE_SHIFT;
	buf->pages = kvmalloc_array(buf->npages, sizeof(*buf->pages), GFP_KERNEL);
	if (!buf->pages)
		return -ENOMEM;

	while (buf->npinned < buf->npages) {
		ret = pin_user_pages_fast(start + ((unsigned long)buf->npinned << PAGE_SHIFT),
					  buf->npages - buf->npinned, gup_flags,
					  buf->pages + buf->npinned);
		if (ret <= 0)
			return ret ? ret : -EFAULT;
		buf->npinned += ret;
	}

	/* No segment longer than the DMA layer maps at once (swiotlb: 256 KiB). */
	ret = sg_alloc_table_from_pages_segment(&buf->sgt, buf->pages, buf->npages,
						offset_in_page(buf->uaddr), buf->len,
						dma_get_max_seg_size(&gdev->pdev->dev),
						GFP_KERNEL);
	if (ret)
		return ret;
	buf->sgt_alloced = true;

	ret = dma_map_sgtable(&gdev->pdev->dev, &buf->sgt, buf->dir, 0);
	if (ret)
		return ret;
	buf->mapped = true;
	return 0;
}

static void hmm_gpu_buf_put(struct hmm_gpu_dev *gdev, struct hmm_gpu_buf *buf)
{
	if (buf->mapped)
		dma_unmap_sgtable(&gdev->pdev->dev, &buf->sgt, buf->dir, 0);
	if (buf->sgt_alloced)
		sg_free_table(&buf->sgt);
	if (buf->npinned) {
		if (buf->dir == DMA_FROM_DEVICE)
			unpin_user_pages_dirty_lock(buf->pages, buf->npinned, true);
		else
			unpin_user_pages(buf->pages, buf->npinned);
	}
	kvfree(buf->pages);
}

/*
 * Tell userspace which DMA segments back its buffer. Returns the number of
 * entries (written or not), or -EFAULT.
 */
static int hmm_gpu_buf_report(struct hmm_gpu_buf *buf, struct hmm_gpu_map __user *umaps,
			      u32 cap, u32 first)
{
	struct hmm_gpu_map map = { .role = buf->role };
	struct scatterlist *sg;
	u64 off = 0;
	u32 n = first;
	int i;

	for_each_sgtable_dma_sg(&buf->sgt, sg, i) {
		map.uaddr = buf->uaddr + off;
		map.dma_addr = sg_dma_address(sg);
		map.len = sg_dma_len(sg);
		if (n < cap && copy_to_user(&umaps[n], &map, sizeof(map)))
			return -EFAULT;
		off += map.len;
		n++;
	}
	if (WARN_ON_ONCE(off != buf->len))
		return -EIO;
	return n - first;
}

/* Walks the DMA segments of one buffer. */
struct hmm_gpu_cursor {
	struct scatterlist	*sg;
	unsigned int		ents;		/* DMA segments left, including sg */
	dma_addr_t		addr;
	u64			left;		/* bytes left in sg */
};

static void hmm_gpu_cursor_init(struct hmm_gpu_cursor *cur, struct sg_table *sgt)
{
	cur->sg = sgt->sgl;
	cur->ents = sgt->nents;
	cur->addr = sg_dma_address(cur->sg);
	cur->left = sg_dma_len(cur->sg);
}

static void hmm_gpu_cursor_advance(struct hmm_gpu_cursor *cur, u64 n)
{
	cur->addr += n;
	cur->left -= n;
	if (!cur->left && --cur->ents) {
		cur->sg = sg_next(cur->sg);
		cur->addr = sg_dma_address(cur->sg);
		cur->left = sg_dma_len(cur->sg);
	}
}

/* Queue the commands of one transfer; stops at the first error. */
static int hmm_gpu_xfer_submit(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
			       const struct hmm_gpu_xfer *xfer,
			       struct hmm_gpu_buf *src, struct hmm_gpu_buf *dst)
{
	struct hmm_gpu_cursor s = {}, d;
	struct hmm_gpu_cmd_desc desc = {};
	u64 off = 0;
	int ret;

	hmm_gpu_cursor_init(&d, &dst->sgt);
	if (src) {
		hmm_gpu_cursor_init(&s, &src->sgt);
		desc.opcode = HMM_GPU_OP_COPY;
	} else {
		desc.opcode = HMM_GPU_OP_FILL;
	}

	while (off < xfer->len) {
		u64 n = min3(d.left, (u64)gdev->max_xfer, xfer->len - off);

		if (src)
			n = min(n, s.left);
		if (WARN_ON_ONCE(!n))
			return -EIO;

		desc.dst = d.addr;
		desc.len = n;
		if (src) {
			desc.src = s.addr;
		} else {
			/* Keep the pattern in phase with the start of the buffer. */
			desc.pattern = ror64(xfer->pattern, 8 * (off & 7));
		}
		ret = hmm_gpu_submit(gdev, batch, &desc);
		if (ret)
			return ret;

		hmm_gpu_cursor_advance(&d, n);
		if (src)
			hmm_gpu_cursor_advance(&s, n);
		off += n;
	}
	return 0;
}

/*
 * Run one validated transfer. Fills the out fields of @xfer, also when
 * returning a device error.
 */
int hmm_gpu_xfer(struct hmm_gpu_dev *gdev, u32 ctx, struct hmm_gpu_xfer *xfer)
{
	struct hmm_gpu_map __user *umaps = u64_to_user_ptr(xfer->maps);
	u32 cap = xfer->maps ? xfer->maps_cap : 0;
	struct hmm_gpu_buf src = {
		.uaddr = xfer->src, .len = xfer->len,
		.dir = DMA_TO_DEVICE, .role = HMM_GPU_MAP_SRC,
	};
	struct hmm_gpu_buf dst = {
		.uaddr = xfer->dst, .len = xfer->len,
		.dir = DMA_FROM_DEVICE, .role = HMM_GPU_MAP_DST,
	};
	bool copy = xfer->op == HMM_GPU_XFER_COPY;
	struct hmm_gpu_batch batch;
	u32 nmaps = 0;
	int ret;

	ret = hmm_gpu_buf_get(gdev, &dst);
	if (ret)
		goto out;
	if (copy) {
		ret = hmm_gpu_buf_get(gdev, &src);
		if (ret)
			goto out;
		ret = hmm_gpu_buf_report(&src, umaps, cap, nmaps);
		if (ret < 0)
			goto out;
		nmaps += ret;
	}
	ret = hmm_gpu_buf_report(&dst, umaps, cap, nmaps);
	if (ret < 0)
		goto out;
	nmaps += ret;
	xfer->maps_out = nmaps;

	hmm_gpu_batch_init(&batch, ctx);
	ret = hmm_gpu_xfer_submit(gdev, &batch, xfer, copy ? &src : NULL, &dst);
	hmm_gpu_batch_wait(gdev, &batch);

	xfer->ncmds = batch.submitted;
	xfer->status = batch.status;
	xfer->bytes = batch.bytes;
	if (batch.err)
		ret = batch.err;
	if (!ret && batch.status)
		ret = batch.status == HMM_GPU_ERR_BAD_LENGTH ? -EINVAL : -EIO;
	if (!ret && batch.bytes != xfer->len) {
		dev_warn_ratelimited(&gdev->pdev->dev,
				     "ctx %u: device moved %llu of %llu bytes\n",
				     ctx, batch.bytes, xfer->len);
		ret = -EIO;
	}
out:
	hmm_gpu_buf_put(gdev, &src);
	hmm_gpu_buf_put(gdev, &dst);
	return ret;
}

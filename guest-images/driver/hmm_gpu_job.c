// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: device jobs on virtual addresses (see hmm_gpu_svm.h): SVM_JOB
 * and the dmirror READ/WRITE, straight between the mirrored range and the
 * caller's pinned buffer.
 */
#include <linux/dma-mapping.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/scatterlist.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_svm.h"

/* Largest READ/WRITE bounce buffer (fallback when the user buffer cannot be pinned). */
#define HMM_GPU_BOUNCE_MAX	(4ul << 20)
/* Most user buffer pages a READ/WRITE pins at once. */
#define HMM_GPU_PIN_MAX		1024
/* ... of which this many without allocating the array */
#define HMM_GPU_PIN_FEW		8

/*
 * READ/WRITE fault the range in from the submitting thread before the job
 * runs (what the first device fault would do, minus its round trip). Off,
 * the device faults and the fault worker services its fault ring: the path
 * a real GPU takes, which hmm-tests then exercises.
 */
static bool hmm_gpu_prefault = true;
module_param_named(prefault, hmm_gpu_prefault, bool, 0644);
MODULE_PARM_DESC(prefault, "Fault READ/WRITE ranges in before the device job runs (default: on); off: the device faults them in");

static int hmm_gpu_svm_status_errno(u32 status)
{
	switch (status) {
	case HMM_GPU_ERR_BAD_LENGTH:
	case HMM_GPU_ERR_BAD_FLAGS:
	case HMM_GPU_ERR_OVERLAP:
	case HMM_GPU_ERR_ALIGN:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* The errno of a finished batch of @op; @ret: what submitting returned. */
static int hmm_gpu_svm_batch_result(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op,
				    struct hmm_gpu_batch *batch, int ret, u32 *status)
{
	struct hmm_gpu_dev *gdev = svm->gdev;

	*status = batch->status;
	if (batch->err)
		return batch->err;
	if (ret)
		return ret;
	if (batch->status == HMM_GPU_ERR_FAULT) {
		spin_lock_irq(&gdev->lock);
		ret = op->err ? op->err : -EFAULT;
		spin_unlock_irq(&gdev->lock);
		return ret;
	}
	if (batch->status)
		return hmm_gpu_svm_status_errno(batch->status);
	return 0;
}

/*
 * Run the device jobs for @op: @desc split into max_xfer pieces (FILL and
 * COPY may be split; the others must fit). Waits for them; faults are
 * serviced meanwhile. Returns 0 or an errno, *status the device status.
 */
static int hmm_gpu_svm_exec(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op,
			    const struct hmm_gpu_cmd_desc *desc, u32 *status)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct hmm_gpu_cmd_desc d = *desc;
	struct hmm_gpu_batch batch;
	u64 off = 0;
	int ret = 0;

	hmm_gpu_batch_init(&batch, svm->ctx);
	batch.priv = op;
	while (off < desc->len) {
		d.len = min_t(u64, desc->len - off, gdev->max_xfer);
		d.dst = desc->dst + off;
		if (desc->opcode == HMM_GPU_OP_COPY_VA)
			d.src = desc->src + off;
		else if (desc->opcode == HMM_GPU_OP_FILL_VA)
			d.pattern = ror64(desc->pattern, 8 * (off & 7));
		ret = hmm_gpu_submit(gdev, &batch, &d);
		if (ret)
			break;
		off += d.len;
	}
	hmm_gpu_batch_wait(gdev, &batch);
	return hmm_gpu_svm_batch_result(svm, op, &batch, ret, status);
}

static void *hmm_gpu_bounce_alloc(struct hmm_gpu_dev *gdev, u64 len, size_t *size,
				  dma_addr_t *dma)
{
	size_t sz = min_t(u64, PAGE_ALIGN(len), HMM_GPU_BOUNCE_MAX);
	void *buf;

	sz = min_t(size_t, sz, gdev->max_xfer & PAGE_MASK);
	for (; sz >= PAGE_SIZE; sz = PAGE_ALIGN(sz / 2)) {
		buf = dma_alloc_coherent(&gdev->pdev->dev, sz, dma, GFP_KERNEL | __GFP_NOWARN);
		if (buf) {
			*size = sz;
			return buf;
		}
		if (sz == PAGE_SIZE)
			break;
	}
	return NULL;
}

/*
 * READ/WRITE through a DMA bounce buffer: the fallback when the user buffer
 * cannot be pinned (the copy to or from user space then reports EFAULT).
 */
static int hmm_gpu_svm_rw_bounce(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op, bool write,
				 u64 va, void __user *ubuf, u64 len)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	size_t want = min3(PAGE_ALIGN(len), (u64)HMM_GPU_BOUNCE_MAX,
			   (u64)(gdev->max_xfer & PAGE_MASK));
	bool cached;
	u64 off = 0;
	size_t size;
	dma_addr_t dma;
	u32 status;
	void *buf;
	int ret = 0;

	/*
	 * Reuse the context's bounce buffer: allocating (and zeroing) up to
	 * HMM_GPU_BOUNCE_MAX of coherent memory per call costs more than the
	 * fault round it serves. A concurrent caller gets its own.
	 */
	cached = mutex_trylock(&svm->bounce_lock);
	if (cached && svm->bounce && svm->bounce_size < want) {
		dma_free_coherent(&gdev->pdev->dev, svm->bounce_size, svm->bounce,
				  svm->bounce_dma);
		svm->bounce = NULL;
	}
	if (cached && svm->bounce) {
		buf = svm->bounce;
		size = svm->bounce_size;
		dma = svm->bounce_dma;
	} else {
		buf = hmm_gpu_bounce_alloc(gdev, len, &size, &dma);
		if (!buf) {
			if (cached)
				mutex_unlock(&svm->bounce_lock);
			return -ENOMEM;
		}
		if (cached) {
			svm->bounce = buf;
			svm->bounce_size = size;
			svm->bounce_dma = dma;
		}
	}
	while (off < len) {
		struct hmm_gpu_cmd_desc desc = {};
		u64 n = min_t(u64, len - off, size);

		if (write) {
			if (copy_from_user(buf, ubuf + off, n)) {
				ret = -EFAULT;
				break;
			}
			desc.opcode = HMM_GPU_OP_WRITE_VA;
			desc.src = dma;
			desc.dst = va + off;
		} else {
			desc.opcode = HMM_GPU_OP_READ_VA;
			desc.src = va + off;
			desc.dst = dma;
		}
		desc.len = n;
		ret = hmm_gpu_svm_exec(svm, op, &desc, &status);
		if (ret)
			break;
		if (!write && copy_to_user(ubuf + off, buf, n)) {
			ret = -EFAULT;
			break;
		}
		off += n;
	}
	if (cached)
		mutex_unlock(&svm->bounce_lock);
	else
		dma_free_coherent(&gdev->pdev->dev, size, buf, dma);
	return ret;
}

/*
 * READ/WRITE of [va, va + len) to or from the user pages of @ubuf, which
 * @sgt maps for DMA: one job per mapped segment (split at max_xfer), all in
 * one batch, the device moving the data straight between the two.
 */
static int hmm_gpu_svm_rw_sgt(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op, bool write,
			      u64 va, struct sg_table *sgt)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct hmm_gpu_batch batch;
	struct scatterlist *sg;
	unsigned int i;
	u32 status;
	int ret = 0;

	hmm_gpu_batch_init(&batch, svm->ctx);
	batch.priv = op;
	for_each_sgtable_dma_sg(sgt, sg, i) {
		u64 bus = sg_dma_address(sg);
		u64 left = sg_dma_len(sg);

		while (left && !ret) {
			struct hmm_gpu_cmd_desc desc = {
				.opcode = write ? HMM_GPU_OP_WRITE_VA : HMM_GPU_OP_READ_VA,
				.len = min_t(u64, left, gdev->max_xfer),
			};

			desc.src = write ? bus : va;
			desc.dst = write ? va : bus;
			ret = hmm_gpu_submit(gdev, &batch, &desc);
			bus += desc.len;
			va += desc.len;
			left -= desc.len;
		}
		if (ret)
			break;
	}
	hmm_gpu_batch_wait(gdev, &batch);
	return hmm_gpu_svm_batch_result(svm, op, &batch, ret, &status);
}

/*
 * One piece of a zero-copy READ/WRITE: pin the user pages of
 * [@uaddr, @uaddr + @len), fault [@va, @va + @len) in (ahead up to @end)
 * unless the device maps it already, map the pages for DMA and run the jobs.
 * Returns -EAGAIN if the pages cannot be pinned or mapped (nothing was done
 * on the device).
 */
static int hmm_gpu_svm_rw_pinned(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op, bool write,
				 u64 va, u64 end, unsigned long uaddr, u64 len,
				 struct page **pages)
{
	struct device *dev = &svm->gdev->pdev->dev;
	enum dma_data_direction dir = write ? DMA_TO_DEVICE : DMA_FROM_DEVICE;
	unsigned int offset = offset_in_page(uaddr);
	unsigned int npages = DIV_ROUND_UP(offset + len, PAGE_SIZE);
	unsigned int max_seg = min_t(u64, svm->gdev->max_xfer, SZ_1G) & PAGE_MASK;
	struct sg_table sgt;
	int ret, pinned;

	/* The device writes the user pages for a READ. */
	pinned = pin_user_pages_fast(uaddr & PAGE_MASK, npages, write ? 0 : FOLL_WRITE, pages);
	if (pinned != npages) {
		if (pinned > 0)
			unpin_user_pages(pages, pinned);
		return -EAGAIN;
	}
	if (READ_ONCE(hmm_gpu_prefault) && !hmm_gpu_svm_mapped(svm, va, va + len, write)) {
		ret = hmm_gpu_svm_prefault(svm, op, va, end, write);
		if (ret)
			goto unpin;
	}
	ret = -EAGAIN;
	if (sg_alloc_table_from_pages_segment(&sgt, pages, npages, offset, len, max_seg,
					      GFP_KERNEL))
		goto unpin;
	if (dma_map_sgtable(dev, &sgt, dir, 0))
		goto free;
	ret = hmm_gpu_svm_rw_sgt(svm, op, write, va, &sgt);
	dma_unmap_sgtable(dev, &sgt, dir, 0);
free:
	sg_free_table(&sgt);
unpin:
	/* A READ's pages were written by the device. */
	unpin_user_pages_dirty_lock(pages, npages, !write);
	return ret;
}

/*
 * The device reads [va, va + len) into @ubuf (or writes @ubuf's bytes there).
 * Shared by SVM_JOB and the dmirror interface. Only [va, va + len) is
 * mirrored; @ubuf's pages are pinned and the device DMAs to or from them
 * directly (a bounce buffer if they cannot be pinned).
 */
int hmm_gpu_svm_rw(struct hmm_gpu_svm *svm, bool write, u64 va, void __user *ubuf,
		   u64 len, u64 *faults, u64 *pages)
{
	struct hmm_gpu_op op = {
		.svm = svm,
		.rng = { { va, va + len } },
		.nrng = 1,
	};
	unsigned long uaddr = (unsigned long)ubuf;
	unsigned long pin = min_t(u64, HMM_GPU_PIN_MAX,
				  DIV_ROUND_UP(offset_in_page(uaddr) + len, PAGE_SIZE));
	struct page *few[HMM_GPU_PIN_FEW], **upages = few;
	u64 off = 0;
	int ret = 0;

	/* A short transfer (a dmirror call on a page or two) needs no allocation. */
	if (pin > ARRAY_SIZE(few))
		upages = kvmalloc_array(pin, sizeof(*upages), GFP_KERNEL);
	while (off < len) {
		u64 n = min_t(u64, len - off, pin * PAGE_SIZE - offset_in_page(uaddr + off));

		ret = upages ? hmm_gpu_svm_rw_pinned(svm, &op, write, va + off, va + len,
						     uaddr + off, n, upages) : -EAGAIN;
		if (ret == -EAGAIN) {
			ret = hmm_gpu_svm_rw_bounce(svm, &op, write, va + off,
						    ubuf + off, len - off);
			break;
		}
		if (ret)
			break;
		off += n;
	}
	if (upages != few)
		kvfree(upages);
	*faults = op.faults;
	*pages = op.pages;
	return ret;
}

int hmm_gpu_svm_job(struct hmm_gpu_svm *svm, struct hmm_gpu_svm_job *job)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct hmm_gpu_op op = { .svm = svm, .nrng = 1 };
	struct hmm_gpu_cmd_desc desc = {};
	dma_addr_t res_dma;
	u64 *res;
	int ret;

	if (job->flags || job->rsvd0 || job->rsvd[0] || job->rsvd[1])
		return -EINVAL;
	if (!job->len || job->len > HMM_GPU_XFER_MAX_LEN)
		return -EINVAL;
	if (hmm_gpu_range_bad(svm, job->va, job->len))
		return -EFAULT;

	switch (job->op) {
	case HMM_GPU_SVM_READ:
	case HMM_GPU_SVM_WRITE:
		return hmm_gpu_svm_rw(svm, job->op == HMM_GPU_SVM_WRITE, job->va,
				      u64_to_user_ptr(job->ptr), job->len,
				      &job->faults, &job->pages);
	case HMM_GPU_SVM_FILL:
		desc.opcode = HMM_GPU_OP_FILL_VA;
		desc.dst = job->va;
		desc.len = job->len;
		desc.pattern = job->value;
		op.rng[0] = (struct hmm_gpu_range){ job->va, job->va + job->len };
		break;
	case HMM_GPU_SVM_COPY:
		if (hmm_gpu_range_bad(svm, job->va2, job->len))
			return -EFAULT;
		if (job->va < job->va2 + job->len && job->va2 < job->va + job->len)
			return -EINVAL;
		desc.opcode = HMM_GPU_OP_COPY_VA;
		desc.src = job->va2;
		desc.dst = job->va;
		desc.len = job->len;
		op.rng[0] = (struct hmm_gpu_range){ job->va, job->va + job->len };
		op.rng[1] = (struct hmm_gpu_range){ job->va2, job->va2 + job->len };
		op.nrng = 2;
		break;
	case HMM_GPU_SVM_ATOMIC_ADD:
	case HMM_GPU_SVM_CMPXCHG:
		if (job->len != 8 || !IS_ALIGNED(job->va, 8))
			return -EINVAL;
		/*
		 * Device atomics on system memory take the page exclusively
		 * (best effort: if that fails here, e.g. read-only, the atomic
		 * fault tries again or fails the job); pages in this device's
		 * VRAM need nothing. Memory that can never be exclusive (6.12:
		 * anything but private anonymous pages) cannot take a device
		 * atomic without racing the CPU: refuse, as nouveau does.
		 */
		if (!hmm_gpu_svm_atomic_mapped(svm, job->va & PAGE_MASK) &&
		    hmm_gpu_svm_dev_check(svm, job->va & PAGE_MASK, 1) == -ENOENT &&
		    hmm_gpu_svm_exclusive(svm, job->va & PAGE_MASK, 1) == -EOPNOTSUPP)
			return -EOPNOTSUPP;
		res = dma_alloc_coherent(&gdev->pdev->dev, PAGE_SIZE, &res_dma, GFP_KERNEL);
		if (!res)
			return -ENOMEM;
		desc.opcode = job->op == HMM_GPU_SVM_ATOMIC_ADD ?
			      HMM_GPU_OP_ATOMIC_ADD : HMM_GPU_OP_ATOMIC_CMPXCHG;
		desc.dst = job->va;
		desc.src = res_dma;
		desc.len = 8;
		desc.pattern = job->value;
		desc.arg2 = job->op == HMM_GPU_SVM_CMPXCHG ? job->compare : 0;
		op.rng[0] = (struct hmm_gpu_range){ job->va, job->va + 8 };
		ret = hmm_gpu_svm_exec(svm, &op, &desc, &job->status);
		job->result = le64_to_cpu((__force __le64)READ_ONCE(*res));
		dma_free_coherent(&gdev->pdev->dev, PAGE_SIZE, res, res_dma);
		goto out;
	default:
		return -EINVAL;
	}
	ret = hmm_gpu_svm_exec(svm, &op, &desc, &job->status);
out:
	job->faults = op.faults;
	job->pages = op.pages;
	return ret;
}

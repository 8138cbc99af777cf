// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: the device MMU (ABI 1.1): context table, fault queue, fault
 * interrupt and worker, TLB invalidation.
 *
 * The context table and the fault queue live in coherent DMA memory for the
 * lifetime of the PCI binding. Fault records are drained under gdev->lock
 * (which also covers fq_head, reset by hmm_gpu_hw_init() after a device
 * reset) into a worker-private array and handed to hmm_gpu_svm.c.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include "hmm_gpu.h"
#include "hmm_gpu_trace.h"

static void hmm_gpu_fault_work(struct work_struct *work);

int hmm_gpu_mmu_alloc(struct hmm_gpu_dev *gdev)
{
	struct device *dev = &gdev->pdev->dev;

	INIT_WORK(&gdev->fault_work, hmm_gpu_fault_work);
	gdev->nctx = HMM_GPU_NUM_CTX;
	gdev->ctx_table = dmam_alloc_coherent(dev, gdev->nctx * sizeof(*gdev->ctx_table),
					      &gdev->ctx_table_dma, GFP_KERNEL);
	gdev->fq = dmam_alloc_coherent(dev, HMM_GPU_FAULTQ_ENTRIES * sizeof(*gdev->fq),
				       &gdev->fq_dma, GFP_KERNEL);
	gdev->faults = kcalloc(HMM_GPU_FAULTQ_ENTRIES, sizeof(*gdev->faults), GFP_KERNEL);
	gdev->fault_pfns = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*gdev->fault_pfns), GFP_KERNEL);
	gdev->fault_wq = alloc_ordered_workqueue("%s-fault", WQ_MEM_RECLAIM, gdev->name);
	if (!gdev->ctx_table || !gdev->fq || !gdev->faults || !gdev->fault_pfns ||
	    !gdev->fault_wq) {
		hmm_gpu_mmu_free(gdev);
		return -ENOMEM;
	}
	return 0;
}

/* The coherent memory is managed; this frees the rest. */
void hmm_gpu_mmu_free(struct hmm_gpu_dev *gdev)
{
	if (gdev->fault_wq)
		destroy_workqueue(gdev->fault_wq);
	gdev->fault_wq = NULL;
	kfree(gdev->faults);
	gdev->faults = NULL;
	kfree(gdev->fault_pfns);
	gdev->fault_pfns = NULL;
}

/*
 * Program the context table and the fault queue and enable the MMU. Called
 * from hmm_gpu_hw_init(), with the device freshly reset.
 */
void hmm_gpu_mmu_hw_init(struct hmm_gpu_dev *gdev)
{
	memset(gdev->fq, 0, HMM_GPU_FAULTQ_ENTRIES * sizeof(*gdev->fq));
	gdev->fq_head = 0;

	hmm_gpu_write64(gdev, HMM_GPU_REG_CTX_BASE_LO, gdev->ctx_table_dma);
	hmm_gpu_write(gdev, HMM_GPU_REG_CTX_COUNT, gdev->nctx);
	hmm_gpu_write64(gdev, HMM_GPU_REG_FAULTQ_BASE_LO, gdev->fq_dma);
	hmm_gpu_write(gdev, HMM_GPU_REG_FAULTQ_SIZE, HMM_GPU_FAULTQ_ENTRIES);
	hmm_gpu_write(gdev, HMM_GPU_REG_VEC_FAULT, HMM_GPU_VEC_FAULT_DEFAULT);
	hmm_gpu_write(gdev, HMM_GPU_REG_FAULTQ_CTRL, HMM_GPU_QCTRL_ENABLE);
	hmm_gpu_write(gdev, HMM_GPU_REG_MMU_CTRL, HMM_GPU_MMU_ENABLE);
}

/* Point context @ctx at a page table (@root 0: invalid). */
void hmm_gpu_ctx_set(struct hmm_gpu_dev *gdev, u32 ctx, dma_addr_t root)
{
	struct hmm_gpu_ctx_desc *desc = &gdev->ctx_table[ctx];

	WRITE_ONCE(desc->pt_root, (__force u64)cpu_to_le64(root));
	WRITE_ONCE(desc->flags, (__force u32)cpu_to_le32(root ? HMM_GPU_CTX_VALID : 0));
	/* Coherent memory: ordered before the next doorbell by writel(). */
	wmb();
}

/* MSI-X: each fault record posted is a message; the worker reads the ring. */
irqreturn_t hmm_gpu_fault_irq(int irq, void *data)
{
	struct hmm_gpu_dev *gdev = data;

	spin_lock(&gdev->lock);
	gdev->stats.irq_fault++;
	if (!gdev->fault_irq_time)
		gdev->fault_irq_time = ktime_get();
	spin_unlock(&gdev->lock);
	queue_work(gdev->fault_wq, &gdev->fault_work);
	return IRQ_HANDLED;
}

/* Copy the posted fault records out of the ring; returns how many. */
static unsigned int hmm_gpu_fault_drain(struct hmm_gpu_dev *gdev)
{
	unsigned int n = 0;
	u32 tail;

	spin_lock_irq(&gdev->lock);
	if (gdev->fault_irq_time) {
		gdev->stats.fault_wait_ns += ktime_to_ns(ktime_sub(ktime_get(),
								   gdev->fault_irq_time));
		gdev->fault_irq_time = 0;
	}
	if (gdev->resetting || gdev->dead || gdev->broken)
		goto out;
	tail = hmm_gpu_read(gdev, HMM_GPU_REG_FAULTQ_TAIL);
	if (tail >= HMM_GPU_FAULTQ_ENTRIES)
		goto out;
	/* Read the records only after the tail that publishes them. */
	dma_rmb();
	while (gdev->fq_head != tail && n < HMM_GPU_FAULTQ_ENTRIES) {
		const struct hmm_gpu_fault_rec *rec = &gdev->fq[gdev->fq_head];
		struct hmm_gpu_fault *f = &gdev->faults[n++];

		memset(f, 0, sizeof(*f));
		f->va = le64_to_cpu((__force __le64)rec->va);
		f->cmd_id = le64_to_cpu((__force __le64)rec->cmd_id);
		f->ctx = le32_to_cpu((__force __le32)rec->ctx);
		f->token = le16_to_cpu((__force __le16)rec->token);
		f->access = rec->access;
		f->reason = rec->reason;
		trace_hmm_gpu_fault_begin(gdev->pdev, f->token, f->ctx, f->va, f->access);
		gdev->fq_head = (gdev->fq_head + 1) % HMM_GPU_FAULTQ_ENTRIES;
	}
	if (n) {
		hmm_gpu_write(gdev, HMM_GPU_REG_FAULTQ_HEAD, gdev->fq_head);
		gdev->stats.fault_recs += n;
		gdev->stats.fault_rounds++;
	}
out:
	spin_unlock_irq(&gdev->lock);
	return n;
}

static void hmm_gpu_fault_work(struct work_struct *work)
{
	struct hmm_gpu_dev *gdev = container_of(work, struct hmm_gpu_dev, fault_work);
	unsigned int n;

	spin_lock_irq(&gdev->lock);
	gdev->fault_task = current;
	spin_unlock_irq(&gdev->lock);
	while ((n = hmm_gpu_fault_drain(gdev))) {
		ktime_t t0 = ktime_get();
		u64 ns;

		hmm_gpu_svm_handle_faults(gdev, n);
		ns = ktime_to_ns(ktime_sub(ktime_get(), t0));
		spin_lock_irq(&gdev->lock);
		gdev->stats.fault_service_ns += ns;
		gdev->stats.fault_service_max_ns = max(gdev->stats.fault_service_max_ns, ns);
		spin_unlock_irq(&gdev->lock);
		/* Time line points where the faults are, 10 ms apart at most. */
		hmm_gpu_clock_sync_periodic(gdev);
		/* A device that faults again at once must not hog the CPU. */
		cond_resched();
	}
	spin_lock_irq(&gdev->lock);
	gdev->fault_task = NULL;
	spin_unlock_irq(&gdev->lock);
}

/*
 * Queue a TLB_INVALIDATE of [va, va + len) in @ctx into @batch. It is the
 * fence for every command queued behind it in the ring: the device fetches
 * in ring order and invalidates at fetch, so no walk after it finds an
 * entry cleared before it. The caller has already removed or downgraded
 * the entries (in coherent memory, ordered before the command here).
 */
int hmm_gpu_tlb_queue(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch, u32 ctx,
		      u64 va, u64 len)
{
	struct hmm_gpu_cmd_desc desc = {
		.opcode = HMM_GPU_OP_TLB_INVALIDATE,
		.dst = va,
		.len = len,
		.urgent = true,
		.has_ctx = true,
		.ctx = ctx,
	};

	if (len > gdev->max_xfer) {
		desc.dst = 0;
		desc.len = ~0ull;
	}
	/*
	 * The cleared entries (coherent memory) must be visible to the device
	 * before it can execute the invalidate, or a walk after the fence could
	 * still find them. dma_wmb() orders them before the command entry; the
	 * doorbell's writel() orders both before the device is told.
	 */
	dma_wmb();
	return hmm_gpu_submit(gdev, batch, &desc);
}

/*
 * After hmm_gpu_batch_wait(): did the first @nfences commands of @batch
 * (TLB invalidations) complete? If the device refused one, it is reset,
 * which empties its TLB and stops its DMA. Either way the caller may then
 * dma_unmap what the invalidated entries mapped; true only if the fences
 * completed.
 */
bool hmm_gpu_fences_done(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
			 unsigned int nfences)
{
	if (batch->err || batch->submitted < nfences)
		return false;	/* reset, removed or never queued: nothing cached */
	if (batch->first_fail >= nfences)
		return true;
	dev_err_ratelimited(&gdev->pdev->dev, "ctx %u: TLB invalidate failed: %u, resetting\n",
			    batch->ctx, batch->status);
	hmm_gpu_reset(gdev, "TLB invalidate failed");
	return false;
}

/*
 * Drop the device's cached translations of [va, va + len) in @ctx and wait
 * for the command's completion, the fence after which no DMA uses them.
 * The caller has already removed or downgraded the entries in the page
 * table and may dma_unmap what they mapped once this returns, whatever the
 * outcome: timeouts and fatal errors reset the device (which empties its
 * TLB and stops its DMA), a removed device was reset for good, and if the
 * device refuses the command it is reset here. Returns 0 if the fence
 * completed, else an error.
 */
int hmm_gpu_tlb_fence(struct hmm_gpu_dev *gdev, u32 ctx, u64 va, u64 len)
{
	struct hmm_gpu_batch batch;
	int ret;

	hmm_gpu_batch_init(&batch, ctx);
	ret = hmm_gpu_tlb_queue(gdev, &batch, ctx, va, len);
	hmm_gpu_batch_wait(gdev, &batch);
	if (ret)
		return ret;
	return hmm_gpu_fences_done(gdev, &batch, 1) ? 0 : batch.err ? batch.err : -EIO;
}

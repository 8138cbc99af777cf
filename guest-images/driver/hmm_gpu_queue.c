// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: command and completion rings, interrupts, timeouts and reset.
 *
 * The driver keeps at most HMM_GPU_QUEUE_DEPTH commands in flight (submitted
 * and not yet completed). Each one owns a tag; the tag is the low half of
 * the command's cmd_id and indexes the slot table, so a completion finds its
 * submitter without a search. Bounding the commands in flight by the ring
 * size minus one (and minus the completions consumed but not yet reported
 * through CPLQ_HEAD, see HMM_GPU_CQ_HEAD_BATCH) means neither ring can
 * overflow, so the driver never has to read CMDQ_HEAD: a free tag is a free
 * slot in both rings.
 */
#include <linux/bitops.h>
#include <linux/dma-mapping.h>
#include <linux/iopoll.h>
#include <linux/module.h>
#include <linux/sched/debug.h>
#include <linux/sched/task.h>
#include <linux/string.h>

#include "hmm_gpu.h"

static const char *const hmm_gpu_err_names[] = {
	[HMM_GPU_ERR_NONE]		= "none",
	[HMM_GPU_ERR_BAD_OPCODE]	= "bad opcode",
	[HMM_GPU_ERR_BAD_LENGTH]	= "bad length",
	[HMM_GPU_ERR_BAD_FLAGS]		= "bad flags",
	[HMM_GPU_ERR_DMA_READ]		= "DMA read",
	[HMM_GPU_ERR_DMA_WRITE]		= "DMA write",
	[HMM_GPU_ERR_OVERLAP]		= "overlap",
	[HMM_GPU_ERR_FAULT]		= "fault cancelled",
	[HMM_GPU_ERR_BAD_CTX]		= "bad context",
	[HMM_GPU_ERR_BAD_PTE]		= "bad PTE",
	[HMM_GPU_ERR_PTW]		= "page walk",
	[HMM_GPU_ERR_ALIGN]		= "alignment",
	[HMM_GPU_ERR_CMDQ_FETCH]	= "command fetch",
	[HMM_GPU_ERR_CPLQ_WRITE]	= "completion write",
	[HMM_GPU_ERR_QUEUE_CONFIG]	= "queue config",
	[HMM_GPU_ERR_DOORBELL]		= "doorbell",
	[HMM_GPU_ERR_BAD_VECTOR]	= "bad vector",
	[HMM_GPU_ERR_BAD_REGISTER]	= "bad register",
	[HMM_GPU_ERR_FAULTQ_WRITE]	= "fault record write",
	[HMM_GPU_ERR_BAD_TOKEN]		= "bad fault token",
};

static const char *hmm_gpu_err_name(u32 err)
{
	if (err < ARRAY_SIZE(hmm_gpu_err_names) && hmm_gpu_err_names[err])
		return hmm_gpu_err_names[err];
	return "unknown";
}

/* The ring entries are little-endian; the ABI header declares plain ints. */
static inline u64 hmm_gpu_le64(u64 v)
{
	return le64_to_cpu((__force __le64)v);
}

static inline u32 hmm_gpu_le32(u32 v)
{
	return le32_to_cpu((__force __le32)v);
}

static inline u16 hmm_gpu_le16(u16 v)
{
	return le16_to_cpu((__force __le16)v);
}

int hmm_gpu_queue_alloc(struct hmm_gpu_dev *gdev)
{
	struct device *dev = &gdev->pdev->dev;

	gdev->sq = dmam_alloc_coherent(dev, HMM_GPU_QUEUE_ENTRIES * sizeof(*gdev->sq),
				       &gdev->sq_dma, GFP_KERNEL);
	gdev->cq = dmam_alloc_coherent(dev, HMM_GPU_QUEUE_ENTRIES * sizeof(*gdev->cq),
				       &gdev->cq_dma, GFP_KERNEL);
	if (!gdev->sq || !gdev->cq)
		return -ENOMEM;
	return 0;
}

/* Forget the ring contents; the device must be reset or not yet enabled. */
static void hmm_gpu_ring_clear(struct hmm_gpu_dev *gdev)
{
	memset(gdev->sq, 0, HMM_GPU_QUEUE_ENTRIES * sizeof(*gdev->sq));
	memset(gdev->cq, 0, HMM_GPU_QUEUE_ENTRIES * sizeof(*gdev->cq));
	gdev->sq_tail = 0;
	gdev->db_tail = 0;
	gdev->cq_head = 0;
	gdev->cq_head_hw = 0;
	gdev->cq_phase = 1;
}

/*
 * Stop the device: it drops its queues, stops DMA and clears its registers.
 * Process context only.
 */
void hmm_gpu_hw_reset(struct hmm_gpu_dev *gdev)
{
	u32 status;

	/* Not between the halves of a clock sync: a reset clears the latch. */
	spin_lock_irq(&gdev->sync_lock);
	hmm_gpu_write(gdev, HMM_GPU_REG_RESET, HMM_GPU_RESET_MAGIC);
	spin_unlock_irq(&gdev->sync_lock);
	if (readl_poll_timeout(gdev->mmio + HMM_GPU_REG_STATUS, status,
			       status == U32_MAX || (status & HMM_GPU_STATUS_READY),
			       100, 100 * USEC_PER_MSEC))
		dev_dbg(&gdev->pdev->dev, "not READY after reset (status %#x)\n", status);
}

/*
 * Program and enable freshly cleared rings. Called with the rings idle: at
 * probe, or under gdev->lock after a reset.
 */
int hmm_gpu_hw_init(struct hmm_gpu_dev *gdev)
{
	u32 status, err;

	hmm_gpu_ring_clear(gdev);

	hmm_gpu_write64(gdev, HMM_GPU_REG_CMDQ_BASE_LO, gdev->sq_dma);
	hmm_gpu_write(gdev, HMM_GPU_REG_CMDQ_SIZE, HMM_GPU_QUEUE_ENTRIES);
	hmm_gpu_write64(gdev, HMM_GPU_REG_CPLQ_BASE_LO, gdev->cq_dma);
	hmm_gpu_write(gdev, HMM_GPU_REG_CPLQ_SIZE, HMM_GPU_QUEUE_ENTRIES);

	hmm_gpu_write(gdev, HMM_GPU_REG_VEC_CPL, HMM_GPU_VEC_CPL_DEFAULT);
	hmm_gpu_write(gdev, HMM_GPU_REG_VEC_ERR, HMM_GPU_VEC_ERR_DEFAULT);
	hmm_gpu_write(gdev, HMM_GPU_REG_INTR_STATUS,
		      HMM_GPU_INTR_CPL | HMM_GPU_INTR_ERROR | HMM_GPU_INTR_FAULT);
	hmm_gpu_write(gdev, HMM_GPU_REG_INTR_MASK,
		      HMM_GPU_INTR_CPL | HMM_GPU_INTR_ERROR | HMM_GPU_INTR_FAULT);

	/* Context table and fault queue before any command can run. */
	hmm_gpu_mmu_hw_init(gdev);

	/*
	 * Completions first, so the engine never runs without a place to post.
	 * Enabling a queue zeroes its head and tail and restarts the phase at 1.
	 */
	hmm_gpu_write(gdev, HMM_GPU_REG_CPLQ_CTRL, HMM_GPU_QCTRL_ENABLE);
	hmm_gpu_write(gdev, HMM_GPU_REG_CMDQ_CTRL, HMM_GPU_QCTRL_ENABLE);

	status = hmm_gpu_read(gdev, HMM_GPU_REG_STATUS);
	if (status == U32_MAX)
		return -ENODEV;
	if (status & HMM_GPU_STATUS_FATAL) {
		err = hmm_gpu_read(gdev, HMM_GPU_REG_ERROR);
		dev_err(&gdev->pdev->dev, "queue setup failed: error %u (%s)\n",
			err, hmm_gpu_err_name(err));
		return -EIO;
	}
	return 0;
}

/* Retire the command in @tag. Called with gdev->lock held. */
static void hmm_gpu_retire(struct hmm_gpu_dev *gdev, unsigned int tag,
			   u32 status, u64 bytes, int err)
{
	struct hmm_gpu_slot *slot = &gdev->slots[tag];
	struct hmm_gpu_batch *batch = slot->batch;

	slot->batch = NULL;
	clear_bit(tag, gdev->tags);
	gdev->inflight--;

	batch->bytes += bytes;
	gdev->stats.bytes += bytes;
	if (err && !batch->err)
		batch->err = err;
	if (status && slot->index < batch->first_fail) {
		batch->first_fail = slot->index;
		batch->status = status;
	}
	if (status || err)
		gdev->stats.failed++;
	else
		gdev->stats.completed++;
	if (!err)
		batch->completed++;
	if (--batch->pending == 0)
		complete(&batch->done);
}

/*
 * Consume the completion entries the device has posted. Called with
 * gdev->lock held; @write_head is false while the device is being reset.
 * Returns the number of entries consumed.
 */
static unsigned int hmm_gpu_process_cpl(struct hmm_gpu_dev *gdev, bool write_head)
{
	unsigned int n = 0;

	for (;;) {
		struct hmm_gpu_cpl *cpl = &gdev->cq[gdev->cq_head];
		unsigned int tag;
		u64 cmd_id;
		u32 status;

		if ((hmm_gpu_le16(READ_ONCE(cpl->phase)) & 1) != gdev->cq_phase)
			break;
		/* Read the entry only after its phase says it is complete. */
		dma_rmb();
		cmd_id = hmm_gpu_le64(cpl->cmd_id);
		status = hmm_gpu_le32(cpl->status);

		tag = cmd_id & HMM_GPU_TAG_MASK;
		if (tag < HMM_GPU_QUEUE_DEPTH && gdev->slots[tag].batch &&
		    gdev->slots[tag].cmd_id == cmd_id) {
			hmm_gpu_retire(gdev, tag, status,
				       hmm_gpu_le64(cpl->bytes), 0);
		} else {
			gdev->stats.spurious_cpl++;
			dev_warn_ratelimited(&gdev->pdev->dev,
					     "completion for unknown command %#llx (status %u)\n",
					     cmd_id, status);
		}

		if (++gdev->cq_head == HMM_GPU_QUEUE_ENTRIES) {
			gdev->cq_head = 0;
			gdev->cq_phase ^= 1;
		}
		n++;
	}

	if (n) {
		if (write_head && (gdev->cq_head - gdev->cq_head_hw) % HMM_GPU_QUEUE_ENTRIES >=
				  HMM_GPU_CQ_HEAD_BATCH) {
			hmm_gpu_write(gdev, HMM_GPU_REG_CPLQ_HEAD, gdev->cq_head);
			gdev->cq_head_hw = gdev->cq_head;
		}
		/* Slots freed: only a submitter waiting for one needs a wakeup. */
		if (wq_has_sleeper(&gdev->tag_wq))
			wake_up(&gdev->tag_wq);
	}
	return n;
}

/*
 * MSI-X only (probe asks for nothing else): every completion the device
 * signals is a message of its own, so there is no INTR_STATUS to read or
 * acknowledge, only the ring, which the phase bits make self-describing.
 */
irqreturn_t hmm_gpu_cpl_irq(int irq, void *data)
{
	struct hmm_gpu_dev *gdev = data;

	spin_lock(&gdev->lock);
	gdev->stats.irq_cpl++;
	if (!gdev->resetting)
		hmm_gpu_process_cpl(gdev, true);
	spin_unlock(&gdev->lock);
	return IRQ_HANDLED;
}

irqreturn_t hmm_gpu_err_irq(int irq, void *data)
{
	struct hmm_gpu_dev *gdev = data;
	u32 intr, err, status;
	u64 addr;

	intr = hmm_gpu_read(gdev, HMM_GPU_REG_INTR_STATUS);
	if (intr == U32_MAX)
		return IRQ_NONE;
	if (!(intr & HMM_GPU_INTR_ERROR))
		return IRQ_NONE;
	hmm_gpu_write(gdev, HMM_GPU_REG_INTR_STATUS, HMM_GPU_INTR_ERROR);

	err = hmm_gpu_read(gdev, HMM_GPU_REG_ERROR);
	addr = hmm_gpu_read(gdev, HMM_GPU_REG_ERROR_ADDR_LO);
	addr |= (u64)hmm_gpu_read(gdev, HMM_GPU_REG_ERROR_ADDR_HI) << 32;
	status = hmm_gpu_read(gdev, HMM_GPU_REG_STATUS);

	spin_lock(&gdev->lock);
	gdev->stats.irq_err++;
	gdev->stats.dev_errors++;
	gdev->last_error = err;
	gdev->last_error_addr = addr;
	if (status & HMM_GPU_STATUS_FATAL) {
		gdev->stats.fatal++;
		gdev->fatal_error = err;
	}
	spin_unlock(&gdev->lock);

	if (status & HMM_GPU_STATUS_FATAL) {
		dev_err_ratelimited(&gdev->pdev->dev,
				    "fatal device error %u (%s) at %#llx, resetting\n",
				    err, hmm_gpu_err_name(err), addr);
		schedule_work(&gdev->reset_work);
	} else if (err == HMM_GPU_ERR_FAULT) {
		/* A fault the driver cancelled: the job's caller gets the errno. */
		dev_dbg(&gdev->pdev->dev, "job failed: fault at %#llx cancelled\n", addr);
	} else if (err == HMM_GPU_ERR_BAD_TOKEN) {
		/* A stale record: its job was replayed and faulted anew meanwhile. */
		dev_dbg(&gdev->pdev->dev, "cancel of stale fault token %#llx\n", addr);
	} else {
		dev_err_ratelimited(&gdev->pdev->dev,
				    "device error %u (%s) at %#llx\n",
				    err, hmm_gpu_err_name(err), addr);
	}
	return IRQ_HANDLED;
}

/*
 * Reset the device and rebuild its rings. Commands still in flight are
 * failed with -EIO (their batch keeps an earlier error such as -ETIMEDOUT).
 * Process context; may sleep.
 */
void hmm_gpu_reset(struct hmm_gpu_dev *gdev, const char *why)
{
	unsigned int tag, failed = 0;
	int ret;

	mutex_lock(&gdev->reset_lock);
	mutex_lock(&gdev->db_mutex);
	spin_lock_irq(&gdev->lock);
	if (gdev->dead) {
		spin_unlock_irq(&gdev->lock);
		mutex_unlock(&gdev->db_mutex);
		mutex_unlock(&gdev->reset_lock);
		return;
	}
	gdev->resetting = true;
	spin_unlock_irq(&gdev->lock);

	/* After this the device neither touches memory nor posts completions. */
	hmm_gpu_hw_reset(gdev);

	spin_lock_irq(&gdev->lock);
	/* Harvest what completed before the reset, fail the rest. */
	hmm_gpu_process_cpl(gdev, false);
	for_each_set_bit(tag, gdev->tags, HMM_GPU_QUEUE_DEPTH) {
		struct hmm_gpu_batch *batch = gdev->slots[tag].batch;
		u32 status = gdev->fatal_error ? gdev->fatal_error : HMM_GPU_ERR_NONE;

		if (!batch->status && status) {
			batch->status = status;
			batch->first_fail = gdev->slots[tag].index;
		}
		hmm_gpu_retire(gdev, tag, HMM_GPU_ERR_NONE, 0, -EIO);
		failed++;
	}
	gdev->fatal_error = 0;
	gdev->stats.resets++;
	ret = hmm_gpu_hw_init(gdev);
	gdev->broken = ret != 0;
	gdev->resetting = false;
	spin_unlock_irq(&gdev->lock);
	mutex_unlock(&gdev->db_mutex);
	wake_up_all(&gdev->tag_wq);
	mutex_unlock(&gdev->reset_lock);

	if (ret)
		dev_err(&gdev->pdev->dev, "reset (%s) failed: %d, device disabled\n", why, ret);
	else
		dev_warn(&gdev->pdev->dev, "reset (%s): %u command(s) failed\n", why, failed);
}

void hmm_gpu_reset_work(struct work_struct *work)
{
	struct hmm_gpu_dev *gdev = container_of(work, struct hmm_gpu_dev, reset_work);

	hmm_gpu_reset(gdev, "fatal error");
}

/*
 * Where the device and the driver stand, before a reset wipes it: which
 * side holds a command that stopped completing (fetched or not, stalled on
 * a fault, its record drained or not, the fault worker queued or not).
 */
static void hmm_gpu_dump_state(struct hmm_gpu_dev *gdev)
{
	u32 status = hmm_gpu_read(gdev, HMM_GPU_REG_STATUS);
	u32 cmdq_head = hmm_gpu_read(gdev, HMM_GPU_REG_CMDQ_HEAD);
	u32 cmdq_tail = hmm_gpu_read(gdev, HMM_GPU_REG_CMDQ_TAIL);
	u32 cplq_head = hmm_gpu_read(gdev, HMM_GPU_REG_CPLQ_HEAD);
	u32 cplq_tail = hmm_gpu_read(gdev, HMM_GPU_REG_CPLQ_TAIL);
	u32 fq_head = hmm_gpu_read(gdev, HMM_GPU_REG_FAULTQ_HEAD);
	u32 fq_tail = hmm_gpu_read(gdev, HMM_GPU_REG_FAULTQ_TAIL);
	u32 stalled = hmm_gpu_read(gdev, HMM_GPU_REG_STALLED);
	unsigned int busy = work_busy(&gdev->fault_work);
	struct task_struct *worker;

	spin_lock_irq(&gdev->lock);
	dev_err(&gdev->pdev->dev,
		"device: status %#x cmdq %u..%u cplq %u..%u faultq %u..%u stalled %u; driver: sq_tail %u db_tail %u cq_head %u fq_head %u inflight %u fault work%s%s, irqs %llu, records %llu, replays %llu\n",
		status, cmdq_head, cmdq_tail, cplq_head, cplq_tail, fq_head, fq_tail, stalled,
		gdev->sq_tail, gdev->db_tail, gdev->cq_head, gdev->fq_head, gdev->inflight,
		busy & WORK_BUSY_PENDING ? " pending" : "",
		busy & WORK_BUSY_RUNNING ? " running" : busy ? "" : " idle",
		gdev->stats.irq_fault, gdev->stats.fault_recs, gdev->stats.replays);
	worker = gdev->fault_task;
	if (worker)
		get_task_struct(worker);
	spin_unlock_irq(&gdev->lock);
	/* A fault worker that cannot finish stalls every faulting job. */
	if (worker) {
		sched_show_task(worker);
		put_task_struct(worker);
	}
}

/* The batch's commands stopped completing: reset the device to get them back. */
static void hmm_gpu_timeout(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch)
{
	spin_lock_irq(&gdev->lock);
	if (!batch->err)
		batch->err = -ETIMEDOUT;
	gdev->stats.timeouts++;
	spin_unlock_irq(&gdev->lock);

	dev_err(&gdev->pdev->dev, "ctx %u: no completion for %u s\n",
		batch->ctx, HMM_GPU_CMD_TIMEOUT / HZ);
	hmm_gpu_dump_state(gdev);
	hmm_gpu_reset(gdev, "timeout");
}

void hmm_gpu_batch_init(struct hmm_gpu_batch *batch, u32 ctx)
{
	*batch = (struct hmm_gpu_batch){
		.pending = 1,		/* dropped by hmm_gpu_batch_wait() */
		.first_fail = U32_MAX,
		.ctx = ctx,
	};
	init_completion(&batch->done);
}

static bool hmm_gpu_can_submit(struct hmm_gpu_dev *gdev, bool urgent)
{
	unsigned int depth = HMM_GPU_QUEUE_DEPTH - (urgent ? 0 : HMM_GPU_URGENT_TAGS);

	return !gdev->resetting && !gdev->broken && gdev->inflight < depth;
}

static bool hmm_gpu_submit_wake(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
				bool urgent)
{
	bool wake;

	spin_lock_irq(&gdev->lock);
	wake = gdev->dead || batch->err || hmm_gpu_can_submit(gdev, urgent);
	spin_unlock_irq(&gdev->lock);
	return wake;
}

/*
 * Tell the device about the commands queued so far: the CMDQ_TAIL doorbell.
 * The device runs short jobs inside that write (hw/misc/hmm-gpu-engine.c,
 * hmm_gpu_run_now()), so it is written with interrupts enabled and no
 * spinlock held; db_mutex keeps the TAIL values in ring order and out of a
 * reset's way. The completions the write produced are reaped at once, so
 * their waiters need not wait for the interrupt.
 */
void hmm_gpu_ring(struct hmm_gpu_dev *gdev)
{
	bool ring;
	u32 tail;

	lockdep_assert_irqs_enabled();
	mutex_lock(&gdev->db_mutex);
	spin_lock_irq(&gdev->lock);
	tail = gdev->sq_tail;
	ring = tail != gdev->db_tail && !gdev->resetting && !gdev->dead && !gdev->broken;
	if (ring)
		gdev->db_tail = tail;
	spin_unlock_irq(&gdev->lock);
	if (ring) {
		/* writel() orders the entries in coherent memory before the doorbell. */
		hmm_gpu_write(gdev, HMM_GPU_REG_CMDQ_TAIL, tail);
		spin_lock_irq(&gdev->lock);
		if (!gdev->resetting)
			hmm_gpu_process_cpl(gdev, true);
		spin_unlock_irq(&gdev->lock);
	}
	mutex_unlock(&gdev->db_mutex);
}

/*
 * FAULT_REPLAY: the stalled jobs walk again, inside the write (like a
 * doorbell: interrupts on, no spinlock), and what completes there is
 * reaped at once.
 */
void hmm_gpu_replay(struct hmm_gpu_dev *gdev)
{
	lockdep_assert_irqs_enabled();
	spin_lock_irq(&gdev->lock);
	gdev->stats.replays++;
	spin_unlock_irq(&gdev->lock);
	hmm_gpu_write(gdev, HMM_GPU_REG_FAULT_REPLAY, 1);
	spin_lock_irq(&gdev->lock);
	if (!gdev->resetting)
		hmm_gpu_process_cpl(gdev, true);
	spin_unlock_irq(&gdev->lock);
}

/*
 * Queue one command of @batch, waiting for a free slot if the ring is full.
 * The doorbell rings in hmm_gpu_batch_wait() (or here, before waiting for a
 * slot), once for all the commands queued meanwhile. On error nothing was
 * queued; -ETIMEDOUT means the device was reset.
 */
int hmm_gpu_submit(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
		   const struct hmm_gpu_cmd_desc *desc)
{
	struct hmm_gpu_cmd *cmd;
	struct hmm_gpu_slot *slot;
	unsigned int tag;
	long left;
	int ret;

	spin_lock_irq(&gdev->lock);
	for (;;) {
		if (gdev->dead) {
			ret = -ENODEV;
			goto unlock;
		}
		if (batch->err) {
			ret = batch->err;
			goto unlock;
		}
		if (gdev->broken) {
			ret = -EIO;
			goto unlock;
		}
		if (hmm_gpu_can_submit(gdev, desc->urgent))
			break;
		spin_unlock_irq(&gdev->lock);
		/* Our own queued commands may be what holds the slots. */
		hmm_gpu_ring(gdev);
		left = wait_event_killable_timeout(gdev->tag_wq,
						   hmm_gpu_submit_wake(gdev, batch, desc->urgent),
						   HMM_GPU_CMD_TIMEOUT);
		if (left < 0)
			return -EINTR;
		if (!left && !hmm_gpu_submit_wake(gdev, batch, desc->urgent)) {
			hmm_gpu_timeout(gdev, batch);
			return -ETIMEDOUT;
		}
		spin_lock_irq(&gdev->lock);
	}

	tag = find_first_zero_bit(gdev->tags, HMM_GPU_QUEUE_DEPTH);
	if (WARN_ON_ONCE(tag >= HMM_GPU_QUEUE_DEPTH)) {
		ret = -EIO;
		goto unlock;
	}
	set_bit(tag, gdev->tags);
	slot = &gdev->slots[tag];
	slot->batch = batch;
	slot->cmd_id = (++gdev->seq << HMM_GPU_TAG_BITS) | tag;
	slot->index = batch->submitted;

	cmd = &gdev->sq[gdev->sq_tail];
	/*
	 * Every field, reserved ones included, stored once (no memset first:
	 * under TCG a rep stosb costs a loop iteration per byte).
	 */
	*cmd = (struct hmm_gpu_cmd){
		.opcode = desc->opcode,
		/*
		 * The doorbell and replay writers reap the completion ring
		 * after their write (hmm_gpu_ring(), hmm_gpu_replay()): an
		 * interrupt is only needed for what completes later (1.3
		 * devices; 1.2 interrupt for everything).
		 */
		.flags = gdev->irq_late ? HMM_GPU_CMD_F_IRQ_LATE : HMM_GPU_CMD_F_IRQ,
		.ctx = (__force u32)cpu_to_le32(desc->has_ctx ? desc->ctx : batch->ctx),
		.cmd_id = (__force u64)cpu_to_le64(slot->cmd_id),
		.src = (__force u64)cpu_to_le64(desc->src),
		.dst = (__force u64)cpu_to_le64(desc->dst),
		.len = (__force u64)cpu_to_le64(desc->len),
		.pattern = (__force u64)cpu_to_le64(desc->pattern),
		.arg2 = (__force u64)cpu_to_le64(desc->arg2),
	};
	gdev->sq_tail = (gdev->sq_tail + 1) % HMM_GPU_QUEUE_ENTRIES;

	batch->pending++;
	batch->submitted++;
	gdev->inflight++;
	gdev->stats.submitted++;
	ret = 0;
unlock:
	spin_unlock_irq(&gdev->lock);
	return ret;
}

/*
 * Most a batch may take in all, fault service included (0: no limit). Each
 * serviced fault counts as progress, so a job that faults forever (a fault
 * and an invalidation chasing each other, a device that keeps faulting)
 * never trips the no-progress timeout; this ends it.
 */
static unsigned int hmm_gpu_job_timeout_ms = 60000;
module_param_named(job_timeout_ms, hmm_gpu_job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms, "Cancel a device job still running after this many ms, faults serviced included (default 60000, 0: never)");

/*
 * Stop @batch's jobs: from now on the fault worker cancels their faults
 * instead of servicing them, and the batch ends with @err. Jobs that do not
 * fault run to their end.
 */
static void hmm_gpu_batch_abort(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch, int err)
{
	spin_lock_irq(&gdev->lock);
	if (!batch->abort)
		batch->abort = err;
	spin_unlock_irq(&gdev->lock);
}

/*
 * Wait until every command of @batch has completed or been failed. A fatal
 * signal or the job deadline (job_timeout_ms) aborts the batch; the wait
 * then goes on, uninterruptibly, until the device lets go of the batch's
 * buffers, which cancelled jobs do at once. A batch whose commands make no
 * progress for HMM_GPU_CMD_TIMEOUT gets -ETIMEDOUT and the device is reset,
 * so on return the device no longer touches the batch's buffers either way.
 */
void hmm_gpu_batch_wait(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch)
{
	unsigned int ms = READ_ONCE(hmm_gpu_job_timeout_ms);
	unsigned long deadline, last;
	unsigned int seen, now, found;
	bool killable = true, done;

	hmm_gpu_ring(gdev);
	spin_lock_irq(&gdev->lock);
	/*
	 * Short commands completed in the doorbell write: nothing to wait for,
	 * and nobody else waits on this batch (no complete() needed).
	 */
	done = --batch->pending == 0;
	spin_unlock_irq(&gdev->lock);
	if (done)
		return;

	deadline = jiffies + msecs_to_jiffies(ms);
	last = jiffies;
	/* Faults serviced for a stalled job count as progress too. */
	seen = READ_ONCE(batch->completed) + READ_ONCE(batch->progress);
	for (;;) {
		long tmo = HMM_GPU_CMD_TIMEOUT, left;

		if (ms && !READ_ONCE(batch->abort))
			tmo = clamp_t(long, (long)(deadline - jiffies), 1, tmo);
		if (killable)
			left = wait_for_completion_killable_timeout(&batch->done, tmo);
		else
			left = wait_for_completion_timeout(&batch->done, tmo);
		if (left > 0)
			return;
		if (left < 0) {
			/* The signal stays pending: wait on, not interruptibly. */
			killable = false;
			hmm_gpu_batch_abort(gdev, batch, -EINTR);
			continue;
		}
		now = READ_ONCE(batch->completed) + READ_ONCE(batch->progress);
		if (now != seen) {
			seen = now;
			last = jiffies;
		}
		if (ms && !READ_ONCE(batch->abort) && time_after_eq(jiffies, deadline)) {
			dev_warn_ratelimited(&gdev->pdev->dev,
					     "ctx %u: job still running after %u ms, cancelling it\n",
					     batch->ctx, ms);
			hmm_gpu_batch_abort(gdev, batch, -ETIMEDOUT);
			continue;
		}
		if (time_before(jiffies, last + HMM_GPU_CMD_TIMEOUT))
			continue;

		/* Poll once, in case an interrupt went missing. */
		spin_lock_irq(&gdev->lock);
		found = gdev->resetting ? 0 : hmm_gpu_process_cpl(gdev, true);
		spin_unlock_irq(&gdev->lock);
		if (found)
			dev_warn_ratelimited(&gdev->pdev->dev,
					     "%u completion(s) found without an interrupt\n",
					     found);
		if (completion_done(&batch->done))
			return;
		if (READ_ONCE(batch->completed) + READ_ONCE(batch->progress) != seen)
			continue;
		hmm_gpu_timeout(gdev, batch);
	}
}

/* Quiesce the device for good (remove). No ioctl can be running. */
void hmm_gpu_shutdown(struct hmm_gpu_dev *gdev)
{
	unsigned int tag;

	mutex_lock(&gdev->reset_lock);
	mutex_lock(&gdev->db_mutex);
	hmm_gpu_hw_reset(gdev);
	spin_lock_irq(&gdev->lock);
	for_each_set_bit(tag, gdev->tags, HMM_GPU_QUEUE_DEPTH)
		hmm_gpu_retire(gdev, tag, HMM_GPU_ERR_NONE, 0, -ENODEV);
	spin_unlock_irq(&gdev->lock);
	mutex_unlock(&gdev->db_mutex);
	mutex_unlock(&gdev->reset_lock);
	wake_up_all(&gdev->tag_wq);
}

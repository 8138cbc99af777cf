/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: driver-internal definitions.
 */
#ifndef HMM_GPU_H
#define HMM_GPU_H

#include <linux/bitmap.h>
#include <linux/completion.h>
#include <linux/device.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "hmm_gpu_regs.h"
#include "hmm_gpu_uapi.h"

#define HMM_GPU_DRV_NAME	"hmm_gpu"

/* Ring entries for both the command and the completion queue. */
#define HMM_GPU_QUEUE_ENTRIES	256
/*
 * CPLQ_HEAD is written once HMM_GPU_CQ_HEAD_BATCH entries were consumed, not
 * after every reap: each MMIO write is a costly exit under TCG. The device
 * counts completions the driver consumed but did not report yet as ring
 * space in use, so the commands in flight stay below the ring size minus
 * that lag (and the slot that tells full from empty): the device can then
 * always fetch what the driver queued.
 */
#define HMM_GPU_CQ_HEAD_BATCH	64
#define HMM_GPU_QUEUE_DEPTH	(HMM_GPU_QUEUE_ENTRIES - HMM_GPU_CQ_HEAD_BATCH - 1)

/* No completion for this long means the device is hung (TCG is slow). */
#define HMM_GPU_CMD_TIMEOUT	(10 * HZ)

/* cmd_id = sequence number << 16 | tag; the tag indexes gdev->slots. */
#define HMM_GPU_TAG_BITS	16
#define HMM_GPU_TAG_MASK	((1u << HMM_GPU_TAG_BITS) - 1)

/*
 * Tags only urgent commands (TLB invalidations) may use: jobs stalled on
 * faults must never keep the fence that unblocks a notifier out of the ring.
 */
#define HMM_GPU_URGENT_TAGS	8

/* Device contexts the driver uses (the device allows HMM_GPU_MAX_CTX). */
#define HMM_GPU_NUM_CTX		256
/* Fault queue entries (power of two). */
#define HMM_GPU_FAULTQ_ENTRIES	256

/* Most VRAM chunks (2 MiB each) the driver registers per device. */
#define HMM_GPU_MAX_CHUNKS	4096

struct hmm_gpu_batch;
struct hmm_gpu_svm;
struct hmm_gpu_chunk;
struct hmm_gpu_block;

/* Device memory (hmm_gpu_dmem.c). */
struct hmm_gpu_dmem {
	u64			vram_size;
	unsigned int		max_chunks;	/* 0: no device memory */
	bool			thp;		/* 2 MiB device folios (6.19+) */
	/* lock (IRQ-safe, page_free) covers the fields below up to stats. */
	spinlock_t		lock;
	struct hmm_gpu_chunk	*chunks;	/* max_chunks of them */
	unsigned int		nchunks;	/* registered (in use or free) */
	struct list_head	partial;	/* chunks with some pages free */
	struct list_head	empty;		/* chunks with every page free */
	unsigned long		nfree;		/* free pages, all chunks */
	u64			lru_clock;
	bool			closing;
	struct hmm_gpu_vram_stats stats;
	struct hmm_gpu_block	**blocks;	/* registered on first use */
	struct mutex		evict_lock;	/* chunk/block registration, eviction */
	struct dma_pool		*copy_pool;	/* copy lists, one per migration */
	struct hmm_gpu_copy_ent	*small;		/* short copy lists: slots */
	dma_addr_t		small_dma;
	unsigned long		small_busy;	/* slots in use */
	void			*zero;		/* coherent zero page */
	dma_addr_t		zero_dma;
};

/* One command the device has been given and not yet completed. */
struct hmm_gpu_slot {
	struct hmm_gpu_batch	*batch;		/* NULL when the tag is free */
	u64			cmd_id;
	u32			index;		/* command number within the batch */
};

/*
 * A group of commands one caller submits and waits for together. Every field
 * but "done" is protected by hmm_gpu_dev.lock.
 */
struct hmm_gpu_batch {
	struct completion	done;		/* pending dropped to zero */
	unsigned int		pending;	/* submitted, not completed (+1 bias) */
	unsigned int		submitted;
	unsigned int		completed;
	u32			ctx;
	u32			status;		/* error of the first failing command */
	u32			first_fail;	/* its index, U32_MAX if none */
	int			err;		/* errno for a batch-wide failure */
	int			abort;		/* aborted (signal, deadline): faults cancelled */
	u64			bytes;		/* bytes the completions reported */
	unsigned int		progress;	/* faults serviced for the batch */
	void			*priv;		/* submitter's (struct hmm_gpu_op) */
	/* A TLB invalidation the batch's MIGRATE carries (1.3), if inv_len. */
	u32			inv_ctx;
	u64			inv_va;
	u64			inv_len;
};

struct hmm_gpu_stats {
	u64	submitted;
	u64	completed;
	u64	failed;
	u64	bytes;
	u64	irq_cpl;
	u64	irq_err;
	u64	dev_errors;
	u64	fatal;
	u64	timeouts;
	u64	resets;
	u64	spurious_cpl;
	u64	irq_fault;
	u64	fault_recs;
	u64	fault_rounds;
	u64	replays;
	u64	cancels;
	/* Fault path timing: sums over fault_rounds (ns). */
	u64	fault_wait_ns;		/* fault interrupt -> worker drains */
	u64	fault_service_ns;	/* drained -> REPLAY/CANCEL written */
	u64	fault_service_max_ns;
};

struct hmm_gpu_dev {
	struct pci_dev		*pdev;
	void __iomem		*mmio;
	struct kref		ref;		/* the PCI binding and each open file */
	int			id;		/* N in /dev/hmm_gpuN */
	char			name[20];
	char			irq_name[HMM_GPU_NUM_VECTORS][32];
	struct miscdevice	misc;
	struct dentry		*debugfs;

	u32			hw_version;
	u32			caps;
	bool			irq_late;	/* 1.3: HMM_GPU_CMD_F_IRQ_LATE ... */
	bool			migrate_inv;	/* ... and MIGRATE's own TLB invalidation */
	bool			dma_bounces;	/* swiotlb: no SVM (hmm_gpu_dma_probe()) */
	u32			max_xfer;
	atomic_t		next_ctx;

	/* Rings (coherent DMA memory). */
	struct hmm_gpu_cmd	*sq;
	dma_addr_t		sq_dma;
	struct hmm_gpu_cpl	*cq;
	dma_addr_t		cq_dma;

	/*
	 * lock protects the ring indices, the tag table, every batch's counters
	 * and stats; it is taken from the completion interrupt.
	 */
	spinlock_t		lock;
	u32			sq_tail;
	u32			db_tail;	/* last CMDQ_TAIL written */
	u32			cq_head;
	u32			cq_head_hw;	/* last CPLQ_HEAD written */
	u16			cq_phase;
	unsigned int		inflight;
	u64			seq;
	bool			resetting;	/* rings being rebuilt: no submission */
	bool			dead;		/* removed: no submission */
	bool			broken;		/* re-initialisation failed */
	struct hmm_gpu_slot	slots[HMM_GPU_QUEUE_DEPTH];
	DECLARE_BITMAP(tags, HMM_GPU_QUEUE_DEPTH);
	wait_queue_head_t	tag_wq;		/* a tag was freed or a reset ended */
	struct hmm_gpu_stats	stats;
	u32			last_error;
	u64			last_error_addr;
	u32			fatal_error;	/* ERROR register when FATAL was seen */

	struct mutex		reset_lock;	/* serialises hmm_gpu_reset() */
	struct mutex		db_mutex;	/* doorbell writes (hmm_gpu_ring()) */
	struct work_struct	reset_work;	/* reset after a fatal error */

	/*
	 * Held for read by every ioctl; remove() takes it for write to set
	 * "closing" (no ioctl starts after it, so none can put pages back in
	 * VRAM while remove() empties it) and later "dead".
	 */
	struct rw_semaphore	remove_sem;
	bool			closing;

	/* Device MMU (hmm_gpu_mmu.c): context table and fault queue. */
	struct hmm_gpu_ctx_desc	*ctx_table;
	dma_addr_t		ctx_table_dma;
	u32			nctx;
	struct ida		ctx_ida;
	struct hmm_gpu_fault_rec *fq;
	dma_addr_t		fq_dma;
	u32			fq_head;	/* under lock */
	struct task_struct	*fault_task;	/* under lock: the fault worker, while it runs */
	struct workqueue_struct	*fault_wq;
	struct work_struct	fault_work;
	ktime_t			fault_irq_time;	/* under lock; 0: none pending */
	/* Fault worker private: drained records and a pfn window. */
	struct hmm_gpu_fault	*faults;
	unsigned long		*fault_pfns;

	/* /dev/hmm_dmirrorN (hmm_gpu_dmirror.c), first two devices only. */
	struct miscdevice	dmirror;
	char			dmirror_name[24];
	bool			dmirror_registered;

	struct hmm_gpu_dmem	dmem;
	/*
	 * Clock sync (hmm_gpu_clock.c). sync_lock keeps a LO/HI pair whole:
	 * another sync or a RESET (which clears the device's latch) in
	 * between would make the device record a wrong value.
	 */
	spinlock_t		sync_lock;
	u32			syncs;		/* under sync_lock */
	u64			sync_last_ns;	/* under sync_lock; read without */
	/* Every SVM context of the device (hmm_gpu_svm_zap_migrating()). */
	struct rw_semaphore	svms_sem;
	struct list_head	svms;
};

static inline u32 hmm_gpu_read(struct hmm_gpu_dev *gdev, u32 reg)
{
	return readl(gdev->mmio + reg);
}

static inline void hmm_gpu_write(struct hmm_gpu_dev *gdev, u32 reg, u32 val)
{
	writel(val, gdev->mmio + reg);
}

static inline void hmm_gpu_write64(struct hmm_gpu_dev *gdev, u32 reg_lo, u64 val)
{
	/* The device latches a 64-bit value when its HI half is written. */
	hmm_gpu_write(gdev, reg_lo, lower_32_bits(val));
	hmm_gpu_write(gdev, reg_lo + 4, upper_32_bits(val));
}

/* A command as the submitter describes it (CPU byte order). */
struct hmm_gpu_cmd_desc {
	u8	opcode;
	u64	src;
	u64	dst;
	u64	len;
	u64	pattern;
	u64	arg2;
	bool	urgent;		/* may use the reserved tags */
	bool	has_ctx;	/* ctx below, not the batch's */
	u32	ctx;
};

/* hmm_gpu_main.c */
void hmm_gpu_put(struct hmm_gpu_dev *gdev);

/* hmm_gpu_clock.c */
extern const struct attribute_group *hmm_gpu_dev_groups[];
int hmm_gpu_clock_sync(struct hmm_gpu_dev *gdev);
void hmm_gpu_clock_sync_periodic(struct hmm_gpu_dev *gdev);

/* hmm_gpu_queue.c */
int hmm_gpu_queue_alloc(struct hmm_gpu_dev *gdev);
int hmm_gpu_hw_init(struct hmm_gpu_dev *gdev);
void hmm_gpu_hw_reset(struct hmm_gpu_dev *gdev);
void hmm_gpu_reset(struct hmm_gpu_dev *gdev, const char *why);
void hmm_gpu_reset_work(struct work_struct *work);
irqreturn_t hmm_gpu_cpl_irq(int irq, void *data);
irqreturn_t hmm_gpu_err_irq(int irq, void *data);
void hmm_gpu_batch_init(struct hmm_gpu_batch *batch, u32 ctx);
void hmm_gpu_ring(struct hmm_gpu_dev *gdev);
void hmm_gpu_replay(struct hmm_gpu_dev *gdev);
int hmm_gpu_submit(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
		   const struct hmm_gpu_cmd_desc *desc);
void hmm_gpu_batch_wait(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch);
void hmm_gpu_shutdown(struct hmm_gpu_dev *gdev);

/* A fault record as the fault worker sees it (CPU byte order). */
struct hmm_gpu_fault {
	u64			va;
	u64			cmd_id;
	u32			ctx;
	u16			token;
	u8			access;		/* enum hmm_gpu_access */
	u8			reason;
	/* Filled by the worker. */
	struct hmm_gpu_svm	*svm;		/* referenced; NULL: unknown job */
	u64			ahead_end;	/* fault ahead up to here */
	int			err;
	bool			gone;		/* the job is not stalled any more */
};

/* hmm_gpu_mmu.c */
int hmm_gpu_mmu_alloc(struct hmm_gpu_dev *gdev);
void hmm_gpu_mmu_free(struct hmm_gpu_dev *gdev);
void hmm_gpu_mmu_hw_init(struct hmm_gpu_dev *gdev);
irqreturn_t hmm_gpu_fault_irq(int irq, void *data);
int hmm_gpu_tlb_fence(struct hmm_gpu_dev *gdev, u32 ctx, u64 va, u64 len);
int hmm_gpu_tlb_queue(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch, u32 ctx,
		      u64 va, u64 len);
bool hmm_gpu_fences_done(struct hmm_gpu_dev *gdev, struct hmm_gpu_batch *batch,
			 unsigned int nfences);
void hmm_gpu_ctx_set(struct hmm_gpu_dev *gdev, u32 ctx, dma_addr_t root);

/* hmm_gpu_svm.c */
struct hmm_gpu_svm_bind;
struct hmm_gpu_svm_job;
struct hmm_gpu_svm_stats;
struct hmm_gpu_svm *hmm_gpu_svm_create(struct hmm_gpu_dev *gdev, struct mm_struct *mm);
void hmm_gpu_svm_destroy(struct hmm_gpu_svm *svm);
void __hmm_gpu_svm_destroy(struct hmm_gpu_svm *svm);
u32 hmm_gpu_svm_ctx(struct hmm_gpu_svm *svm);
struct mm_struct *hmm_gpu_svm_mm(struct hmm_gpu_svm *svm);
int hmm_gpu_svm_job(struct hmm_gpu_svm *svm, struct hmm_gpu_svm_job *job);
void hmm_gpu_svm_stats(struct hmm_gpu_svm *svm, struct hmm_gpu_svm_stats *st);
void hmm_gpu_svm_handle_faults(struct hmm_gpu_dev *gdev, unsigned int n);
int hmm_gpu_svm_rw(struct hmm_gpu_svm *svm, bool write, u64 va, void __user *ubuf,
		   u64 len, u64 *faults, u64 *pages);
int hmm_gpu_svm_snapshot(struct hmm_gpu_svm *svm, u64 va, u8 __user *uprot,
			 u64 npages, u64 *done);

void hmm_gpu_svm_fail_next_alloc(struct hmm_gpu_svm *svm);
int hmm_gpu_svm_migrate(struct hmm_gpu_svm *svm, u64 va, u64 len, bool to_dev,
			u64 *pages);
int hmm_gpu_svm_dev_check(struct hmm_gpu_svm *svm, u64 va, u64 npages);
struct migrate_vma;
unsigned int hmm_gpu_svm_zap_migrating(struct hmm_gpu_dev *gdev, struct mm_struct *mm,
				       const struct migrate_vma *args, struct hmm_gpu_batch *batch,
				       bool *unmap);
void hmm_gpu_svm_unmap_migrating(struct hmm_gpu_dev *gdev, struct mm_struct *mm,
				 const struct migrate_vma *args, struct hmm_gpu_batch *batch,
				 unsigned int nfences, bool unmap);
int hmm_gpu_svm_exclusive(struct hmm_gpu_svm *svm, u64 va, u64 npages);
int hmm_gpu_svm_check_exclusive(struct hmm_gpu_svm *svm, u64 va, u64 npages);

/* hmm_gpu_dmem.c */
struct vm_area_struct;
int hmm_gpu_dmem_init(struct hmm_gpu_dev *gdev);
void hmm_gpu_dmem_fini(struct hmm_gpu_dev *gdev);
bool hmm_gpu_dmem_page_local(struct hmm_gpu_dev *gdev, struct page *page);
u64 hmm_gpu_dmem_vram_offset(struct page *page);

/*
 * Device memory set aside for one migration to VRAM, before
 * migrate_vma_setup() locks the pages (eviction must not meet them): base
 * pages, or a whole chunk that becomes one 2 MiB folio if the migration
 * collects a THP (or a hole) and base pages otherwise.
 */
struct hmm_gpu_res {
	struct page		**pages;	/* pages[0..n): base pages, not initialised */
	unsigned long		n;
	struct hmm_gpu_chunk	*chunk;		/* or a whole chunk */
};

long hmm_gpu_dmem_reserve(struct hmm_gpu_dev *gdev, struct hmm_gpu_res *res, unsigned long n,
			  bool huge);
void hmm_gpu_dmem_unreserve(struct hmm_gpu_dev *gdev, struct hmm_gpu_res *res);
long hmm_gpu_dmem_copy_to_dev(struct hmm_gpu_dev *gdev, struct vm_area_struct *vma,
			      const unsigned long *src, unsigned long *dst,
			      unsigned long npages, struct hmm_gpu_res *res,
			      struct hmm_gpu_batch *batch);
long hmm_gpu_dmem_copy_to_sys(struct hmm_gpu_dev *gdev, struct vm_area_struct *vma,
			      unsigned long addr, const unsigned long *src,
			      unsigned long *dst, unsigned long npages, bool huge,
			      struct hmm_gpu_batch *batch);
void hmm_gpu_dmem_touch(struct hmm_gpu_dev *gdev, const unsigned long *dst,
			unsigned long npages);
int hmm_gpu_dmem_evict_all(struct hmm_gpu_dev *gdev);
void hmm_gpu_dmem_stats(struct hmm_gpu_dev *gdev, struct hmm_gpu_vram_stats *st);

/* hmm_gpu_dmirror.c */
extern bool hmm_gpu_dmirror_enable;
void hmm_gpu_dmirror_register(struct hmm_gpu_dev *gdev);
void hmm_gpu_dmirror_unregister(struct hmm_gpu_dev *gdev);

/* hmm_gpu_xfer.c */
struct hmm_gpu_xfer;
int hmm_gpu_xfer(struct hmm_gpu_dev *gdev, u32 ctx, struct hmm_gpu_xfer *xfer);

#endif /* HMM_GPU_H */

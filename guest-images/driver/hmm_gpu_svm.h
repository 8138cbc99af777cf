/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * hmm_gpu: shared virtual memory, the parts the SVM files share.
 *
 * A struct hmm_gpu_svm is one device context mirroring one mm: its page
 * table (hmm_gpu_pt.c) is filled on device faults (hmm_gpu_fault.c) with
 * hmm_range_fault() and kept coherent with the CPU by an
 * mmu_interval_notifier over the whole user address space (hmm_gpu_svm.c).
 * hmm_gpu_job.c runs device jobs on virtual addresses, hmm_gpu_migrate.c
 * moves pages to VRAM and back.
 *
 * Locking, outermost first:
 *   mmap_lock (read, around hmm_range_fault(); the notifier may be called
 *   with it held) -> svm->lock (page table, dead, stats; held across the
 *   TLB_INVALIDATE fence in the notifier) -> gdev->lock (rings, slots, ops).
 * Nothing allocates memory with svm->lock held: page tables are allocated
 * before it is taken (hmm_gpu_pt_prepare()) and looked up again under it,
 * since an invalidation of a table's whole span (munmap) frees it.
 *
 * Every leaf has a shadow entry: the page it maps and its DMA mapping.
 * Zapping clears the leaf and the page but keeps the mapping until the TLB
 * fence completed; then it is unmapped, exactly once (hmm_gpu_pt.c).
 */
#ifndef HMM_GPU_SVM_H
#define HMM_GPU_SVM_H

#include <linux/kref.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>

#include "hmm_gpu.h"

#define HMM_GPU_PT_SPAN(level)	(1ull << HMM_GPU_PT_SHIFT(level))

struct hmm_gpu_pt {
	__le64			*cpu;
	dma_addr_t		dma;
	unsigned int		level;
	unsigned int		nr;		/* entries in use: tables, leaves */
	unsigned int		unmap;		/* leaves cleared, still DMA mapped */
	struct hmm_gpu_pt	**child;	/* level > 0 */
	/* Levels 0 and 1: the page a leaf maps (2 MiB: the head), its mapping. */
	struct page		**page;
	dma_addr_t		*map;		/* 0: none (VRAM, or unmapped) */
	struct list_head	detached;	/* in hmm_gpu_zap.detached */
	/* level 0: mapped for exclusive (atomic) access, test_hmm's ATOMIC tag */
	DECLARE_BITMAP(excl, HMM_GPU_PT_ENTRIES);
};

/* What hmm_gpu_pt_clear() took away, for the fence and hmm_gpu_pt_release(). */
struct hmm_gpu_zap {
	u64			start;		/* span of the cleared leaves */
	u64			end;
	unsigned long		pages;		/* pages whose translation went */
	unsigned long		unmap;		/* cleared leaves with a DMA mapping */
	struct list_head	detached;	/* emptied tables, freed after the fence */
	bool			reclaim;	/* detach tables the clear empties */
};

struct hmm_gpu_svm {
	struct hmm_gpu_dev		*gdev;
	struct list_head		node;	/* in gdev->svms */
	struct kref			ref;	/* the owner, fault worker users */
	struct mmu_interval_notifier	notifier;
	struct mm_struct		*mm;	/* grabbed */
	u32				ctx;
	u64				va_end;	/* mirrored: [0, va_end) */
	struct mutex			lock;
	bool				dead;
	struct hmm_gpu_pt		*root;
	/* Emptied level-0 tables kept for reuse (a few: mmap/munmap churn). */
	struct list_head		pt_cache;
	unsigned int			pt_cached;
	struct hmm_gpu_svm_stats	stats;
	unsigned long			flags;	/* HMM_GPU_SVM_* bits */
	/* READ/WRITE bounce buffer kept between calls (coherent DMA memory). */
	struct mutex			bounce_lock;
	void				*bounce;
	dma_addr_t			bounce_dma;
	size_t				bounce_size;
};

/* The next 2 MiB migration uses base pages (dmirror FLAGS: FAIL_ALLOC). */
#define HMM_GPU_SVM_FAIL_ALLOC	0

struct hmm_gpu_range {
	u64	start;
	u64	end;
};

/* One SVM operation (one or more device jobs), found from a fault's cmd_id. */
struct hmm_gpu_op {
	struct hmm_gpu_svm	*svm;
	struct hmm_gpu_range	rng[2];
	unsigned int		nrng;
	/* Under gdev->lock. */
	u64			faults;
	u64			pages;
	u64			round;
	int			err;
};

static inline unsigned int hmm_gpu_pt_index(u64 va, unsigned int level)
{
	return (va >> HMM_GPU_PT_SHIFT(level)) & (HMM_GPU_PT_ENTRIES - 1);
}

static inline bool hmm_gpu_range_bad(struct hmm_gpu_svm *svm, u64 va, u64 len)
{
	return va + len < va || va + len > svm->va_end;
}

/* hmm_gpu_pt.c */
struct hmm_gpu_pt *hmm_gpu_pt_alloc(struct hmm_gpu_dev *gdev, unsigned int level);
void hmm_gpu_pt_free(struct hmm_gpu_dev *gdev, struct hmm_gpu_pt *pt);
void hmm_gpu_pt_cache_free(struct hmm_gpu_svm *svm);
int hmm_gpu_pt_prepare(struct hmm_gpu_svm *svm, u64 va, unsigned int level);
struct hmm_gpu_pt *hmm_gpu_pt_find(struct hmm_gpu_svm *svm, u64 va, unsigned int level);
void hmm_gpu_zap_init(struct hmm_gpu_zap *z, bool reclaim);
void hmm_gpu_pt_clear(struct hmm_gpu_svm *svm, u64 start, u64 end, struct hmm_gpu_zap *z);
void hmm_gpu_pt_clear_page(struct hmm_gpu_svm *svm, u64 va, struct hmm_gpu_zap *z);
void hmm_gpu_pt_release(struct hmm_gpu_svm *svm, struct hmm_gpu_zap *z);
unsigned long hmm_gpu_pt_count_tables(const struct hmm_gpu_pt *pt);
unsigned long hmm_gpu_pt_count(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt, u64 base,
			       u64 start, u64 end);
unsigned long hmm_gpu_svm_zap(struct hmm_gpu_svm *svm, u64 start, u64 end, bool reclaim);
long hmm_gpu_svm_write_ptes(struct hmm_gpu_svm *svm, u64 start, u64 end,
			    const unsigned long *pfns, u64 *fresh);
bool hmm_gpu_pt_set_vram_huge(struct hmm_gpu_svm *svm, u64 va, struct page *head, bool write,
			      struct hmm_gpu_zap *z);
bool hmm_gpu_pt_set_vram(struct hmm_gpu_svm *svm, u64 va, struct page *page, bool write,
			 struct hmm_gpu_zap *z);
int hmm_gpu_pt_set_exclusive(struct hmm_gpu_svm *svm, u64 va, struct page *page);
bool hmm_gpu_svm_excl_keeps(struct hmm_gpu_svm *svm, u64 va, struct page *page);
bool hmm_gpu_svm_atomic_mapped(struct hmm_gpu_svm *svm, u64 va);
bool hmm_gpu_svm_excl_mapped(struct hmm_gpu_svm *svm, u64 va);
bool hmm_gpu_svm_mapped(struct hmm_gpu_svm *svm, u64 start, u64 end, bool write);

/*
 * A notifier over just the range one fault is servicing (nouveau's
 * svm_notifier): its sequence moves only for invalidations that overlap
 * the range, where the context's notifier moves for any in the address
 * space, so a storm of unrelated invalidations cannot starve the fault.
 */
struct hmm_gpu_range_notifier {
	struct mmu_interval_notifier	notifier;
	struct hmm_gpu_svm		*svm;
	u64				start, end;	/* what it watches */
};

/* hmm_gpu_svm.c */
void hmm_gpu_race_window(void);
void hmm_gpu_svm_put(struct hmm_gpu_svm *svm);
int hmm_gpu_range_notifier_insert(struct hmm_gpu_svm *svm, struct hmm_gpu_range_notifier *rn,
				  u64 start, u64 end);
void hmm_gpu_range_notifier_remove(struct hmm_gpu_range_notifier *rn);
struct hmm_range;
int hmm_gpu_svm_range_fault(struct hmm_gpu_svm *svm, struct hmm_range *range);
int hmm_gpu_svm_range_fault_once(struct hmm_gpu_svm *svm, struct hmm_range *range);
int hmm_gpu_svm_range_peek(struct hmm_gpu_svm *svm, u64 va, u64 n, unsigned long *pfns);

/* hmm_gpu_fault.c */
int hmm_gpu_fault_errno(int err);
int hmm_gpu_svm_prefault(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op,
			 u64 va, u64 end, bool write);

#endif /* HMM_GPU_SVM_H */

// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: shared virtual memory. A struct hmm_gpu_svm is one device context
 * mirroring one mm: its page table is filled on device faults with
 * hmm_range_fault() and kept coherent with the CPU by an
 * mmu_interval_notifier over the whole user address space.
 *
 * Locking, outermost first:
 *   mmap_lock (read, around hmm_range_fault(); the notifier may be called
 *   with it held) -> svm->lock (page table, dead, stats; held across the
 *   TLB_INVALIDATE fence in the notifier) -> gdev->lock (rings, slots, ops).
 * Nothing allocates memory with svm->lock held: page tables are allocated
 * before it is taken and are only freed when the context is destroyed.
 *
 * Every PTE of a level-0 table has a shadow entry: the page it maps and its
 * DMA mapping. Zapping clears the PTE and the page but keeps the mapping
 * until the TLB fence completed; then it is unmapped, exactly once.
 */
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/pgtable.h>
#include <linux/rmap.h>
#include <linux/scatterlist.h>
#include <linux/sched/mm.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/uaccess.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_dmirror_abi.h"
#include "hmm_gpu_uapi.h"

/* Fault ahead at most this far past the faulting page, per fault round. */
#define HMM_GPU_FAULT_AHEAD_MAX	(64ull << 20)
/* Largest READ/WRITE bounce buffer (fallback when the user buffer cannot be pinned). */
#define HMM_GPU_BOUNCE_MAX	(4ul << 20)
/* Most user buffer pages a READ/WRITE pins at once. */
#define HMM_GPU_PIN_MAX		1024
#define HMM_GPU_PT_SPAN(level)	(1ull << HMM_GPU_PT_SHIFT(level))

/*
 * READ/WRITE fault the range in from the submitting thread before the job
 * runs (what the first device fault would do, minus its round trip). Off,
 * the device faults and the fault worker services its fault ring: the path
 * a real GPU takes, which hmm-tests then exercises.
 */
static bool hmm_gpu_prefault = true;
module_param_named(prefault, hmm_gpu_prefault, bool, 0644);
MODULE_PARM_DESC(prefault, "Fault READ/WRITE ranges in before the device job runs (default: on); off: the device faults them in");

struct hmm_gpu_pt {
	__le64			*cpu;
	dma_addr_t		dma;
	unsigned int		level;
	struct hmm_gpu_pt	**child;	/* level > 0 */
	struct page		**page;		/* level 0: page each PTE maps */
	dma_addr_t		*map;		/* level 0: its mapping, 0: none */
	/* level 0: mapped for exclusive (atomic) access, test_hmm's ATOMIC tag */
	DECLARE_BITMAP(excl, HMM_GPU_PT_ENTRIES);
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
	struct hmm_gpu_svm_stats	stats;
	/* READ/WRITE bounce buffer kept between calls (coherent DMA memory). */
	struct mutex			bounce_lock;
	void				*bounce;
	dma_addr_t			bounce_dma;
	size_t				bounce_size;
};

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

u32 hmm_gpu_svm_ctx(struct hmm_gpu_svm *svm)
{
	return svm->ctx;
}

struct mm_struct *hmm_gpu_svm_mm(struct hmm_gpu_svm *svm)
{
	return svm->mm;
}

static unsigned int hmm_gpu_pt_index(u64 va, unsigned int level)
{
	return (va >> HMM_GPU_PT_SHIFT(level)) & (HMM_GPU_PT_ENTRIES - 1);
}

static void hmm_gpu_pt_free(struct hmm_gpu_dev *gdev, struct hmm_gpu_pt *pt)
{
	unsigned int i;

	if (!pt)
		return;
	if (pt->child)
		for (i = 0; i < HMM_GPU_PT_ENTRIES; i++)
			hmm_gpu_pt_free(gdev, pt->child[i]);
	if (pt->cpu)
		dma_free_coherent(&gdev->pdev->dev, PAGE_SIZE, pt->cpu, pt->dma);
	kfree(pt->child);
	kfree(pt->page);
	kfree(pt->map);
	kfree(pt);
}

static struct hmm_gpu_pt *hmm_gpu_pt_alloc(struct hmm_gpu_dev *gdev, unsigned int level)
{
	struct hmm_gpu_pt *pt;

	pt = kzalloc(sizeof(*pt), GFP_KERNEL);
	if (!pt)
		return NULL;
	pt->level = level;
	pt->cpu = dma_alloc_coherent(&gdev->pdev->dev, PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (level) {
		pt->child = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->child), GFP_KERNEL);
	} else {
		pt->page = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->page), GFP_KERNEL);
		pt->map = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->map), GFP_KERNEL);
	}
	if (!pt->cpu || (level && !pt->child) || (!level && (!pt->page || !pt->map))) {
		hmm_gpu_pt_free(gdev, pt);
		return NULL;
	}
	return pt;
}

/*
 * The level-0 table covering @va, allocating the missing tables with
 * svm->lock dropped. The table stays valid until the context is destroyed.
 */
static struct hmm_gpu_pt *hmm_gpu_pt_get(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt, *new = NULL;
	unsigned int level, idx;

	mutex_lock(&svm->lock);
	for (;;) {
		if (svm->dead) {
			pt = ERR_PTR(-ENODEV);
			break;
		}
		pt = svm->root;
		for (level = HMM_GPU_PT_LEVELS - 1; level > 0; level--) {
			idx = hmm_gpu_pt_index(va, level);
			if (!pt->child[idx])
				break;
			pt = pt->child[idx];
		}
		if (!level)
			break;
		if (new && new->level == level - 1) {
			pt->child[idx] = new;
			/* The zeroed table before the entry a device walk follows to it. */
			dma_wmb();
			WRITE_ONCE(pt->cpu[idx], cpu_to_le64(new->dma | HMM_GPU_PTE_VALID));
			new = NULL;
			continue;
		}
		mutex_unlock(&svm->lock);
		hmm_gpu_pt_free(svm->gdev, new);
		new = hmm_gpu_pt_alloc(svm->gdev, level - 1);
		mutex_lock(&svm->lock);
		if (!new) {
			pt = ERR_PTR(-ENOMEM);
			break;
		}
	}
	mutex_unlock(&svm->lock);
	hmm_gpu_pt_free(svm->gdev, new);
	return pt;
}

/* The level-0 table covering @va, NULL if there is none. svm->lock held. */
static struct hmm_gpu_pt *hmm_gpu_pt_find(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt = svm->root;
	unsigned int level;

	for (level = HMM_GPU_PT_LEVELS - 1; level > 0 && pt; level--)
		pt = pt->child[hmm_gpu_pt_index(va, level)];
	return pt;
}

/*
 * Whether the device may update the page at @va atomically now: mapped with
 * PTE_ATOMIC (held exclusively, or in this device's VRAM).
 */
static bool hmm_gpu_svm_atomic_mapped(struct hmm_gpu_svm *svm, u64 va)
{
	struct hmm_gpu_pt *pt;
	bool ret = false;

	mutex_lock(&svm->lock);
	pt = svm->dead ? NULL : hmm_gpu_pt_find(svm, va);
	if (pt && pt->page[hmm_gpu_pt_index(va, 0)])
		ret = le64_to_cpu(READ_ONCE(pt->cpu[hmm_gpu_pt_index(va, 0)])) &
		      HMM_GPU_PTE_ATOMIC;
	mutex_unlock(&svm->lock);
	return ret;
}

enum hmm_gpu_pt_op {
	HMM_GPU_PT_COUNT,	/* count mapped PTEs */
	HMM_GPU_PT_ZAP,		/* clear PTEs, keep their DMA mappings */
	HMM_GPU_PT_UNMAP,	/* unmap the mappings of cleared PTEs */
};

/* Apply @op to the level-0 entries of [start, end). svm->lock held. */
static unsigned long hmm_gpu_pt_walk(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				     u64 base, u64 start, u64 end, enum hmm_gpu_pt_op op)
{
	u64 span = HMM_GPU_PT_SPAN(pt->level);
	u64 lo = max(start, base);
	u64 hi = min(end, base + span * HMM_GPU_PT_ENTRIES);
	unsigned long n = 0;
	unsigned int i, first, last;

	if (lo >= hi)
		return 0;
	first = (lo - base) >> HMM_GPU_PT_SHIFT(pt->level);
	last = (hi - 1 - base) >> HMM_GPU_PT_SHIFT(pt->level);
	for (i = first; i <= last; i++) {
		if (pt->level) {
			if (pt->child[i])
				n += hmm_gpu_pt_walk(svm, pt->child[i], base + i * span,
						     start, end, op);
			continue;
		}
		switch (op) {
		case HMM_GPU_PT_COUNT:
			n += !!pt->page[i];
			break;
		case HMM_GPU_PT_ZAP:
			if (pt->page[i]) {
				WRITE_ONCE(pt->cpu[i], 0);
				pt->page[i] = NULL;
				clear_bit(i, pt->excl);
				n++;
			}
			break;
		case HMM_GPU_PT_UNMAP:
			if (pt->map[i] && !pt->page[i]) {
				dma_unmap_page(&svm->gdev->pdev->dev, pt->map[i], PAGE_SIZE,
					       DMA_BIDIRECTIONAL);
				pt->map[i] = 0;
				n++;
			}
			break;
		}
	}
	return n;
}

/*
 * Remove the device's translations of [start, end). svm->lock held. The
 * order is what makes it safe:
 *
 *  1. clear the PTEs, so a walk from now on faults;
 *  2. TLB_INVALIDATE the range and wait for its completion: a walk the
 *     device did before step 1 may have cached the old translation, and only
 *     the completed fence guarantees no later DMA uses it (fenced in the
 *     other order, such a walk could re-cache it after the fence);
 *  3. only then dma_unmap the pages.
 *
 * hmm_gpu_tlb_fence() resets the device if the fence cannot be had, so step
 * 3 never runs while a stale translation may be in use.
 */
static unsigned long hmm_gpu_svm_zap(struct hmm_gpu_svm *svm, u64 start, u64 end)
{
	unsigned long n;

	n = hmm_gpu_pt_walk(svm, svm->root, 0, start, end, HMM_GPU_PT_ZAP);
	if (!n)
		return 0;
	if (!hmm_gpu_tlb_fence(svm->gdev, svm->ctx, start, end - start))
		svm->stats.tlb_invalidates++;
	hmm_gpu_pt_walk(svm, svm->root, 0, start, end, HMM_GPU_PT_UNMAP);
	return n;
}

static bool hmm_gpu_svm_invalidate(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	struct hmm_gpu_svm *svm = container_of(mni, struct hmm_gpu_svm, notifier);
	u64 start = range->start & PAGE_MASK;
	u64 end = min_t(u64, PAGE_ALIGN(range->end), svm->va_end);

	/* Our own migrations and exclusive grabs update the table themselves. */
	if ((range->event == MMU_NOTIFY_MIGRATE || range->event == MMU_NOTIFY_EXCLUSIVE) &&
	    range->owner == svm->gdev)
		return true;

	if (mmu_notifier_range_blockable(range)) {
		mutex_lock(&svm->lock);
	} else if (!mutex_trylock(&svm->lock)) {
		return false;
	} else if (start < end && !svm->dead &&
		   hmm_gpu_pt_walk(svm, svm->root, 0, start, end, HMM_GPU_PT_COUNT)) {
		/* The fence needs a sleep: let the caller retry blocking. */
		mutex_unlock(&svm->lock);
		return false;
	}

	mmu_interval_set_seq(mni, cur_seq);
	if (start < end && !svm->dead && hmm_gpu_svm_zap(svm, start, end))
		svm->stats.invalidations++;
	mutex_unlock(&svm->lock);
	return true;
}

static const struct mmu_interval_notifier_ops hmm_gpu_svm_mni_ops = {
	.invalidate = hmm_gpu_svm_invalidate,
};

static void hmm_gpu_svm_free(struct kref *ref)
{
	struct hmm_gpu_svm *svm = container_of(ref, struct hmm_gpu_svm, ref);

	mmdrop(svm->mm);
	kfree(svm);
}

static void hmm_gpu_svm_put(struct hmm_gpu_svm *svm)
{
	kref_put(&svm->ref, hmm_gpu_svm_free);
}

struct hmm_gpu_svm *hmm_gpu_svm_create(struct hmm_gpu_dev *gdev, struct mm_struct *mm)
{
	struct hmm_gpu_svm *svm;
	int ret;

	if (!mm)
		return ERR_PTR(-EINVAL);
	svm = kzalloc(sizeof(*svm), GFP_KERNEL);
	if (!svm)
		return ERR_PTR(-ENOMEM);
	kref_init(&svm->ref);
	mutex_init(&svm->lock);
	mutex_init(&svm->bounce_lock);
	svm->gdev = gdev;
	svm->va_end = min_t(u64, TASK_SIZE, 1ull << HMM_GPU_VA_BITS) & PAGE_MASK;

	ret = ida_alloc_range(&gdev->ctx_ida, 1, gdev->nctx - 1, GFP_KERNEL);
	if (ret < 0)
		goto err_free;
	svm->ctx = ret;

	svm->root = hmm_gpu_pt_alloc(gdev, HMM_GPU_PT_LEVELS - 1);
	if (!svm->root) {
		ret = -ENOMEM;
		goto err_ida;
	}

	mmgrab(mm);
	svm->mm = mm;
	ret = mmu_interval_notifier_insert(&svm->notifier, mm, 0, svm->va_end,
					   &hmm_gpu_svm_mni_ops);
	if (ret)
		goto err_mm;

	hmm_gpu_ctx_set(gdev, svm->ctx, svm->root->dma);
	mutex_lock(&gdev->svms_lock);
	list_add_tail(&svm->node, &gdev->svms);
	mutex_unlock(&gdev->svms_lock);
	return svm;

err_mm:
	mmdrop(mm);
	hmm_gpu_pt_free(gdev, svm->root);
err_ida:
	ida_free(&gdev->ctx_ida, svm->ctx);
err_free:
	kfree(svm);
	return ERR_PTR(ret);
}

/*
 * Unbind: tear the context down. No job of it may be running. The
 * translations go (PTEs cleared, context invalid, whole-context fence, then
 * dma_unmap) and the tables are freed while the notifier is still
 * registered, so no page is freed by the CPU while it is still mapped for
 * the device; "dead" keeps the fault worker from mapping anything anew.
 */
void hmm_gpu_svm_destroy(struct hmm_gpu_svm *svm)
{
	struct hmm_gpu_dev *gdev = svm->gdev;

	mutex_lock(&gdev->svms_lock);
	list_del(&svm->node);
	mutex_unlock(&gdev->svms_lock);

	down_read(&gdev->remove_sem);
	mutex_lock(&svm->lock);
	svm->dead = true;
	hmm_gpu_pt_walk(svm, svm->root, 0, 0, svm->va_end, HMM_GPU_PT_ZAP);
	/* remove() reset the device for good: it no longer walks or caches. */
	if (!gdev->dead) {
		hmm_gpu_ctx_set(gdev, svm->ctx, 0);
		hmm_gpu_tlb_fence(gdev, svm->ctx, 0, ~0ull);
	}
	hmm_gpu_pt_walk(svm, svm->root, 0, 0, svm->va_end, HMM_GPU_PT_UNMAP);
	/* After the fence: no walk can reach the tables any more. */
	hmm_gpu_pt_free(gdev, svm->root);
	svm->root = NULL;
	mutex_unlock(&svm->lock);
	up_read(&gdev->remove_sem);

	mmu_interval_notifier_remove(&svm->notifier);
	if (svm->bounce)
		dma_free_coherent(&gdev->pdev->dev, svm->bounce_size, svm->bounce,
				  svm->bounce_dma);
	svm->bounce = NULL;
	ida_free(&gdev->ctx_ida, svm->ctx);
	hmm_gpu_svm_put(svm);
}

void hmm_gpu_svm_stats(struct hmm_gpu_svm *svm, struct hmm_gpu_svm_stats *st)
{
	mutex_lock(&svm->lock);
	*st = svm->stats;
	mutex_unlock(&svm->lock);
}

/*
 * Write the PTEs of [start, end) from @pfns (hmm_range_fault() output).
 * svm->lock held, the range is within table @pt. Returns the PTEs written.
 */
static long hmm_gpu_svm_write_ptes(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				   u64 start, u64 end, const unsigned long *pfns)
{
	struct device *dev = &svm->gdev->pdev->dev;
	long n = 0;
	u64 va;

	for (va = start; va < end; va += PAGE_SIZE, pfns++) {
		unsigned int idx = hmm_gpu_pt_index(va, 0);
		struct page *page;
		dma_addr_t dma;
		u64 pte;

		if (!(*pfns & HMM_PFN_VALID))
			break;
		page = hmm_pfn_to_page(*pfns);
		if (is_device_private_page(page)) {
			/* Only ours come back from hmm_range_fault(). */
			if (!hmm_gpu_dmem_page_local(svm->gdev, page))
				break;
			if (pt->page[idx] && pt->page[idx] != page)
				hmm_gpu_svm_zap(svm, va, va + PAGE_SIZE);
			pt->page[idx] = page;
			pte = hmm_gpu_dmem_vram_offset(page) | HMM_GPU_PTE_VALID |
			      HMM_GPU_PTE_READ | HMM_GPU_PTE_VRAM;
			if (*pfns & HMM_PFN_WRITE)
				pte |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
			WRITE_ONCE(pt->cpu[idx], cpu_to_le64(pte));
			n++;
			continue;
		}

		/*
		 * A different page, or fewer permissions, cannot happen without
		 * an invalidation; be safe anyway: a remap or a downgrade needs
		 * the same clear -> fence -> unmap as any other removal.
		 */
		if (pt->page[idx] &&
		    (pt->page[idx] != page ||
		     (le64_to_cpu(pt->cpu[idx]) & HMM_GPU_PTE_ATOMIC) ||
		     ((le64_to_cpu(pt->cpu[idx]) & HMM_GPU_PTE_WRITE) &&
		      !(*pfns & HMM_PFN_WRITE)))) {
			WARN_ONCE(pt->page[idx] != page,
				  "hmm_gpu: ctx %u: PTE %#llx changed without invalidation\n",
				  svm->ctx, va);
			hmm_gpu_svm_zap(svm, va, va + PAGE_SIZE);
		}
		if (pt->page[idx]) {
			dma = pt->map[idx];
		} else {
			dma = dma_map_page(dev, page, 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
			if (dma_mapping_error(dev, dma))
				break;
			pt->page[idx] = page;
			pt->map[idx] = dma;
		}

		pte = (dma & HMM_GPU_PTE_ADDR_MASK) | HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ;
		/*
		 * Policy: never PTE_ATOMIC on system memory the CPU can still
		 * access, or the device's read-modify-write races the CPU's
		 * atomics. Only pages this device holds exclusively
		 * (hmm_gpu_svm_exclusive()) and pages in its VRAM get it; an
		 * atomic access here faults and takes the page exclusive.
		 */
		if (*pfns & HMM_PFN_WRITE)
			pte |= HMM_GPU_PTE_WRITE;
		WRITE_ONCE(pt->cpu[idx], cpu_to_le64(pte));
		n++;
	}
	return n;
}

/*
 * The mirroring protocol: hmm_range_fault() under mmu_interval_read_begin(),
 * then svm->lock and mmu_interval_read_retry(), again while the range was
 * invalidated meanwhile, for at most HMM_RANGE_DEFAULT_TIMEOUT. On success
 * svm->lock is held and range->hmm_pfns stay valid until it is dropped.
 * The caller holds a reference on svm->mm.
 */
static int hmm_gpu_svm_range_fault(struct hmm_gpu_svm *svm, struct hmm_range *range)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	int ret;

	for (;;) {
		if (time_after(jiffies, timeout))
			return -EBUSY;
		range->notifier_seq = mmu_interval_read_begin(range->notifier);
		mmap_read_lock(svm->mm);
		ret = hmm_range_fault(range);
		mmap_read_unlock(svm->mm);
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		mutex_lock(&svm->lock);
		if (!mmu_interval_read_retry(range->notifier, range->notifier_seq))
			return 0;
		mutex_unlock(&svm->lock);
	}
}

/*
 * Fault in and map [start, end), which lies within one level-0 table.
 * Returns the pages mapped or an error of hmm_range_fault().
 */
static long hmm_gpu_svm_map_window(struct hmm_gpu_svm *svm, u64 start, u64 end,
				   bool write, unsigned long *pfns)
{
	struct hmm_range range = {
		.notifier	= &svm->notifier,
		.start		= start,
		.end		= end,
		.hmm_pfns	= pfns,
		.default_flags	= HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = svm->gdev,
	};
	struct hmm_gpu_pt *pt;
	long ret;

	pt = hmm_gpu_pt_get(svm, start);
	if (IS_ERR(pt))
		return PTR_ERR(pt);
	if (!mmget_not_zero(svm->mm))
		return -EFAULT;

	ret = hmm_gpu_svm_range_fault(svm, &range);
	if (ret)
		goto out;
	if (svm->dead) {
		mutex_unlock(&svm->lock);
		ret = -ENODEV;
		goto out;
	}
	ret = hmm_gpu_svm_write_ptes(svm, pt, start, end, pfns);
	svm->stats.pages_mapped += ret;
	mutex_unlock(&svm->lock);
	if (!ret)
		ret = -EFAULT;
out:
	mmput(svm->mm);
	return ret;
}

/*
 * Service one fault: map the faulting page, then fault ahead up to
 * f->ahead_end in windows that end on 2 MiB boundaries, stopping quietly at
 * the first window that fails. *@end is where the mapped range ends.
 */
static int hmm_gpu_svm_service(struct hmm_gpu_svm *svm, struct hmm_gpu_fault *f,
			       unsigned long *pfns, u64 *pages, u64 *end)
{
	bool write = f->access != HMM_GPU_ACCESS_READ;
	bool atomic = f->access == HMM_GPU_ACCESS_ATOMIC;
	u64 va = f->va & PAGE_MASK;
	unsigned long first = 0;
	long n;

	*end = va;
	/* Already exclusive or in VRAM (mapped by another record): replay. */
	if (atomic && hmm_gpu_svm_atomic_mapped(svm, va)) {
		*end = va + PAGE_SIZE;
		return 0;
	}
	while (va < f->ahead_end) {
		u64 wend = min(f->ahead_end, ALIGN(va + 1, HMM_GPU_PT_SPAN(1)));

		n = hmm_gpu_svm_map_window(svm, va, wend, write, pfns);
		if (n < 0 && va == *end && *end == (f->va & PAGE_MASK) &&
		    wend - va > PAGE_SIZE)
			n = hmm_gpu_svm_map_window(svm, va, va + PAGE_SIZE, write, pfns);
		if (n < 0) {
			if (va == (f->va & PAGE_MASK))
				return n;
			break;
		}
		if (va == (f->va & PAGE_MASK))
			first = pfns[0];
		*pages += n;
		va += n * PAGE_SIZE;
		*end = va;
		if (va < wend)
			break;
	}
	/*
	 * An atomic access to system memory: the page is mapped without
	 * PTE_ATOMIC; take it exclusive (the CPU entry becomes a device
	 * exclusive one, ours gets PTE_ATOMIC) and let the replay retry.
	 */
	if (atomic && !is_device_private_page(hmm_pfn_to_page(first)))
		return hmm_gpu_svm_exclusive(svm, f->va & PAGE_MASK, 1);
	return 0;
}

/* The op of a job in flight, from its cmd_id. gdev->lock held. */
static struct hmm_gpu_op *hmm_gpu_fault_op(struct hmm_gpu_dev *gdev, u64 cmd_id,
					   struct hmm_gpu_batch **batchp)
{
	unsigned int tag = cmd_id & HMM_GPU_TAG_MASK;
	struct hmm_gpu_slot *slot;

	if (batchp)
		*batchp = NULL;
	if (tag >= HMM_GPU_QUEUE_DEPTH)
		return NULL;
	slot = &gdev->slots[tag];
	if (!slot->batch || slot->cmd_id != cmd_id)
		return NULL;
	if (batchp)
		*batchp = slot->batch;
	return slot->batch->priv;
}

static int hmm_gpu_fault_cmp(const void *a, const void *b)
{
	const struct hmm_gpu_fault *x = a, *y = b;

	if (x->ctx != y->ctx)
		return x->ctx < y->ctx ? -1 : 1;
	if (x->va != y->va)
		return x->va < y->va ? -1 : 1;
	return (int)x->access - (int)y->access;
}

static int hmm_gpu_fault_errno(int err)
{
	return err == -EPERM || err == -ENOMEM ? err : -EFAULT;
}

/* Handle @n drained fault records in gdev->faults. Fault worker only. */
void hmm_gpu_svm_handle_faults(struct hmm_gpu_dev *gdev, unsigned int n)
{
	struct hmm_gpu_fault *faults = gdev->faults;
	struct hmm_gpu_svm *done_svm = NULL;
	u64 done_start = 0, done_end = 0;
	bool done_write = false, replay = false;
	unsigned int i, j;
	u64 round;

	/*
	 * A job replayed by an earlier round may have faulted again before
	 * that round's record was drained: only its latest token is live.
	 */
	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++)
			if (faults[j].cmd_id == faults[i].cmd_id) {
				faults[i].gone = true;
				break;
			}

	/* Find each record's job, context and fault-ahead range. */
	spin_lock_irq(&gdev->lock);
	round = gdev->stats.fault_rounds;
	for (i = 0; i < n; i++) {
		struct hmm_gpu_fault *f = &faults[i];
		struct hmm_gpu_batch *batch;
		struct hmm_gpu_op *op;

		if (f->gone)
			continue;
		op = hmm_gpu_fault_op(gdev, f->cmd_id, &batch);
		if (!op) {
			/* Completed meanwhile (cancelled, reset): nothing to do. */
			f->gone = !batch;
			continue;
		}
		batch->progress++;
		if (op->svm->ctx != f->ctx)
			continue;
		f->svm = op->svm;
		kref_get(&f->svm->ref);
		f->ahead_end = (f->va & PAGE_MASK) + PAGE_SIZE;
		for (j = 0; j < op->nrng; j++) {
			if (f->va >= (op->rng[j].start & PAGE_MASK) && f->va < op->rng[j].end) {
				f->ahead_end = min(PAGE_ALIGN(op->rng[j].end),
						   (f->va & PAGE_MASK) + HMM_GPU_FAULT_AHEAD_MAX);
				break;
			}
		}
		if (op->round != round) {
			op->round = round;
			op->faults++;
		}
	}
	spin_unlock_irq(&gdev->lock);

	sort(faults, n, sizeof(*faults), hmm_gpu_fault_cmp, NULL);

	for (i = 0; i < n; i++) {
		struct hmm_gpu_fault *f = &faults[i];
		bool write = f->access != HMM_GPU_ACCESS_READ;
		struct hmm_gpu_op *op;
		u64 pages = 0, end;

		if (f->gone)
			continue;
		if (!f->svm) {
			f->err = -EFAULT;
			continue;
		}
		mutex_lock(&f->svm->lock);
		f->svm->stats.faults++;
		if (f->svm != done_svm)
			f->svm->stats.fault_batches++;
		mutex_unlock(&f->svm->lock);

		/*
		 * Covered by the fault ahead of an earlier record? Atomic
		 * accesses are not: fault ahead never grants PTE_ATOMIC on
		 * system memory.
		 */
		if (f->svm == done_svm && f->va >= done_start && f->va < done_end &&
		    (done_write || !write) && f->access != HMM_GPU_ACCESS_ATOMIC)
			continue;

		f->err = hmm_gpu_svm_service(f->svm, f, gdev->fault_pfns, &pages, &end);
		if (f->err) {
			f->err = hmm_gpu_fault_errno(f->err);
			done_svm = NULL;
		} else {
			done_svm = f->svm;
			done_start = f->va & PAGE_MASK;
			done_end = end;
			done_write = write;
		}
		spin_lock_irq(&gdev->lock);
		op = hmm_gpu_fault_op(gdev, f->cmd_id, NULL);
		if (op)
			op->pages += pages;
		spin_unlock_irq(&gdev->lock);
	}

	/* Fail the jobs whose faults cannot be resolved, then let the rest retry. */
	for (i = 0; i < n; i++) {
		struct hmm_gpu_fault *f = &faults[i];
		struct hmm_gpu_op *op;

		if (f->gone)
			continue;
		if (!f->err) {
			replay = true;
			continue;
		}
		spin_lock_irq(&gdev->lock);
		op = hmm_gpu_fault_op(gdev, f->cmd_id, NULL);
		if (op && !op->err)
			op->err = f->err;
		if (op || !f->svm) {
			gdev->stats.cancels++;
			hmm_gpu_write(gdev, HMM_GPU_REG_FAULT_CANCEL, f->token);
		}
		spin_unlock_irq(&gdev->lock);
		if (f->svm) {
			mutex_lock(&f->svm->lock);
			f->svm->stats.cancels++;
			mutex_unlock(&f->svm->lock);
		}
	}
	if (replay) {
		spin_lock_irq(&gdev->lock);
		gdev->stats.replays++;
		hmm_gpu_write(gdev, HMM_GPU_REG_FAULT_REPLAY, 1);
		spin_unlock_irq(&gdev->lock);
	}

	for (i = 0; i < n; i++) {
		struct hmm_gpu_svm *svm = faults[i].svm;

		if (!svm)
			continue;
		if (replay && (i == 0 || faults[i - 1].svm != svm)) {
			mutex_lock(&svm->lock);
			svm->stats.replays++;
			mutex_unlock(&svm->lock);
		}
		faults[i].svm = NULL;
		hmm_gpu_svm_put(svm);
	}
}

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

/*
 * Does the device page table map every page of [start, end) for @write
 * (else read) access? A hint only: an invalidation may clear it any time.
 */
static bool hmm_gpu_svm_mapped(struct hmm_gpu_svm *svm, u64 start, u64 end, bool write)
{
	u64 need = HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ | (write ? HMM_GPU_PTE_WRITE : 0);
	struct hmm_gpu_pt *pt = NULL;
	bool ok = true;
	unsigned int level;
	u64 va;

	mutex_lock(&svm->lock);
	for (va = start & PAGE_MASK; ok && va < end; va += PAGE_SIZE) {
		if (!pt || !hmm_gpu_pt_index(va, 0)) {
			pt = svm->root;
			for (level = HMM_GPU_PT_LEVELS - 1; pt && level > 0; level--)
				pt = pt->child[hmm_gpu_pt_index(va, level)];
			if (!pt || svm->dead) {
				ok = false;
				break;
			}
		}
		ok = (le64_to_cpu(READ_ONCE(pt->cpu[hmm_gpu_pt_index(va, 0)])) & need) == need;
	}
	mutex_unlock(&svm->lock);
	return ok;
}

/*
 * Fault [va, end) in for the device from the submitting thread, before the
 * job runs: what the fault worker would do for the job's first fault, minus
 * the fault interrupt, the worker wakeup and the replay. Counts as one fault
 * round of @op. Returns 0 (even if the fault ahead stopped early: the device
 * faults on the rest as usual) or the errno the job would have failed with.
 */
static int hmm_gpu_svm_prefault(struct hmm_gpu_svm *svm, struct hmm_gpu_op *op,
				u64 va, u64 end, bool write)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct hmm_gpu_fault f = {
		.va = va,
		.ctx = svm->ctx,
		.access = write ? HMM_GPU_ACCESS_WRITE : HMM_GPU_ACCESS_READ,
		.ahead_end = min(PAGE_ALIGN(end), (va & PAGE_MASK) + HMM_GPU_FAULT_AHEAD_MAX),
	};
	unsigned long *pfns;
	u64 pages = 0, mapped_end;
	int err;

	pfns = kmalloc_array(HMM_GPU_PT_ENTRIES, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return 0;	/* the device faults instead */
	err = hmm_gpu_svm_service(svm, &f, pfns, &pages, &mapped_end);
	kfree(pfns);

	mutex_lock(&svm->lock);
	svm->stats.faults++;
	svm->stats.fault_batches++;
	if (err)
		svm->stats.cancels++;
	mutex_unlock(&svm->lock);

	spin_lock_irq(&gdev->lock);
	op->faults++;
	op->round = U64_MAX;	/* a device fault after this is another round */
	op->pages += pages;
	spin_unlock_irq(&gdev->lock);
	return err ? hmm_gpu_fault_errno(err) : 0;
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
	struct page **upages;
	u64 off = 0;
	int ret = 0;

	upages = kvmalloc_array(HMM_GPU_PIN_MAX, sizeof(*upages), GFP_KERNEL);
	while (off < len) {
		u64 n = min_t(u64, len - off,
			      HMM_GPU_PIN_MAX * PAGE_SIZE - offset_in_page(uaddr + off));

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
	kvfree(upages);
	*faults = op.faults;
	*pages = op.pages;
	return ret;
}

static bool hmm_gpu_range_bad(struct hmm_gpu_svm *svm, u64 va, u64 len)
{
	return va + len < va || va + len > svm->va_end;
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

/* The snapshot byte of one hmm_range_fault() entry. */
static u8 hmm_gpu_snapshot_prot(struct hmm_gpu_svm *svm, unsigned long hpfn)
{
	unsigned int shift;
	struct page *page;
	u8 prot;

	if (hpfn & HMM_PFN_ERROR)
		return HMM_GPU_DMIRROR_PROT_ERROR;
	if (!(hpfn & HMM_PFN_VALID))
		return HMM_GPU_DMIRROR_PROT_NONE;

	page = hmm_pfn_to_page(hpfn);
	if (is_device_private_page(page))
		prot = hmm_gpu_page_pgmap(page)->owner == svm->gdev ?
		       HMM_GPU_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
		       HMM_GPU_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (is_zero_pfn(page_to_pfn(page)))
		prot = HMM_GPU_DMIRROR_PROT_ZERO;
	else
		prot = HMM_GPU_DMIRROR_PROT_NONE;
	prot |= hpfn & HMM_PFN_WRITE ? HMM_GPU_DMIRROR_PROT_WRITE : HMM_GPU_DMIRROR_PROT_READ;

	shift = hmm_pfn_to_map_order(hpfn) + PAGE_SHIFT;
	if (shift == PMD_SHIFT)
		prot |= HMM_GPU_DMIRROR_PROT_PMD;
	else if (shift == PUD_SHIFT)
		prot |= HMM_GPU_DMIRROR_PROT_PUD;
	return prot;
}

/*
 * Report what the CPU page table holds for [va, va + npages pages) without
 * faulting anything in: one HMM_GPU_DMIRROR_PROT_* byte per page.
 */
int hmm_gpu_svm_snapshot(struct hmm_gpu_svm *svm, u64 va, u8 __user *uprot,
			 u64 npages, u64 *done)
{
	const unsigned long chunk = PAGE_SIZE / sizeof(unsigned long);
	unsigned long *pfns;
	u8 *prot;
	int ret = 0;
	u64 off;

	*done = 0;
	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	pfns = kmalloc_array(chunk, sizeof(*pfns), GFP_KERNEL);
	prot = kmalloc(chunk, GFP_KERNEL);
	if (!pfns || !prot) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (!mmget_not_zero(svm->mm)) {
		ret = -EINVAL;
		goto out_free;
	}

	for (off = 0; off < npages; ) {
		u64 n = min_t(u64, npages - off, chunk);
		struct hmm_range range = {
			.notifier	= &svm->notifier,
			.start		= va + (off << PAGE_SHIFT),
			.end		= va + ((off + n) << PAGE_SHIFT),
			.hmm_pfns	= pfns,
			.dev_private_owner = svm->gdev,
		};
		u64 i;

		ret = hmm_gpu_svm_range_fault(svm, &range);
		if (ret)
			goto out_mm;
		for (i = 0; i < n; i++)
			prot[i] = hmm_gpu_snapshot_prot(svm, pfns[i]);
		mutex_unlock(&svm->lock);

		if (copy_to_user(uprot + off, prot, n)) {
			ret = -EFAULT;
			goto out_mm;
		}
		off += n;
		*done = off;
	}
out_mm:
	mmput(svm->mm);
out_free:
	kfree(prot);
	kfree(pfns);
	return ret;
}

/* Apply @op to the runs of pages @args selected for migration. svm->lock held. */
static unsigned long hmm_gpu_svm_walk_migrating(struct hmm_gpu_svm *svm,
						const struct migrate_vma *args,
						enum hmm_gpu_pt_op op)
{
	unsigned long i = 0, j, n = 0;

	while (i < args->npages) {
		u64 start, end;

		if (!(args->src[i] & MIGRATE_PFN_MIGRATE)) {
			i++;
			continue;
		}
		for (j = i + 1; j < args->npages && (args->src[j] & MIGRATE_PFN_MIGRATE); j++)
			;
		start = args->start + (i << PAGE_SHIFT);
		end = min_t(u64, args->start + (j << PAGE_SHIFT), svm->va_end);
		if (start < end)
			n += hmm_gpu_pt_walk(svm, svm->root, 0, start, end, op);
		i = j;
	}
	return n;
}

/*
 * Drop the translations of the pages a migration of this driver selected,
 * in every context of @gdev that mirrors @mm: the notifier skips our own
 * MMU_NOTIFY_MIGRATE events, so nothing else zaps them before the data
 * moves. Pages that stay where they are (already in VRAM, or not
 * collected) keep theirs. One TLB fence covers the window.
 */
void hmm_gpu_svm_zap_migrating(struct hmm_gpu_dev *gdev, struct mm_struct *mm,
			       const struct migrate_vma *args)
{
	struct hmm_gpu_svm *svm;

	mutex_lock(&gdev->svms_lock);
	list_for_each_entry(svm, &gdev->svms, node) {
		if (svm->mm != mm)
			continue;
		mutex_lock(&svm->lock);
		if (!svm->dead && hmm_gpu_svm_walk_migrating(svm, args, HMM_GPU_PT_ZAP)) {
			if (!hmm_gpu_tlb_fence(gdev, svm->ctx, args->start,
					       args->end - args->start))
				svm->stats.tlb_invalidates++;
			hmm_gpu_svm_walk_migrating(svm, args, HMM_GPU_PT_UNMAP);
			svm->stats.invalidations++;
		}
		mutex_unlock(&svm->lock);
	}
	mutex_unlock(&gdev->svms_lock);
}

/*
 * Map the device pages a migration to VRAM just filled: PTE_VRAM leaves,
 * unless the range was invalidated since @seq (the device then faults).
 */
static void hmm_gpu_svm_map_migrated(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				     const struct migrate_vma *args, unsigned long seq)
{
	unsigned long i;

	mutex_lock(&svm->lock);
	if (svm->dead || mmu_interval_read_retry(&svm->notifier, seq))
		goto out;
	for (i = 0; i < args->npages; i++) {
		u64 va = args->start + (i << PAGE_SHIFT);
		unsigned int idx = hmm_gpu_pt_index(va, 0);
		struct page *page = migrate_pfn_to_page(args->dst[i]);
		u64 pte;

		if (!page || !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (pt->page[idx])
			hmm_gpu_svm_zap(svm, va, va + PAGE_SIZE);
		pte = hmm_gpu_dmem_vram_offset(page) | HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ |
		      HMM_GPU_PTE_VRAM;
		if (args->dst[i] & MIGRATE_PFN_WRITE)
			pte |= HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC;
		pt->page[idx] = page;
		WRITE_ONCE(pt->cpu[idx], cpu_to_le64(pte));
		svm->stats.pages_mapped++;
	}
out:
	mutex_unlock(&svm->lock);
}

/*
 * Migrate [start, end) (one VMA, one level-0 table, at most
 * HMM_GPU_MIGRATE_MAX_PAGES) to VRAM. mmap_lock held for read. Returns the
 * pages migrated or an error.
 */
static long hmm_gpu_svm_window_to_dev(struct hmm_gpu_svm *svm, struct vm_area_struct *vma,
				      u64 start, u64 end, unsigned long *src,
				      unsigned long *dst, struct page **res)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct migrate_vma args = {
		.vma		= vma,
		.start		= start,
		.end		= end,
		.src		= src,
		.dst		= dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_SYSTEM,
	};
	unsigned long nres, i, seq;
	struct hmm_gpu_pt *pt;
	long ret;

	pt = hmm_gpu_pt_get(svm, start);
	if (IS_ERR(pt))
		return PTR_ERR(pt);
	ret = hmm_gpu_dmem_reserve(gdev, res, npages);
	if (ret < 0)
		return ret;
	nres = ret;

	seq = mmu_interval_read_begin(&svm->notifier);
	ret = migrate_vma_setup(&args);
	if (ret)
		goto out;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		goto out;
	}
	/* No device DMA to the old pages from now on (our event was skipped). */
	hmm_gpu_svm_zap_migrating(gdev, vma->vm_mm, &args);
	ret = hmm_gpu_dmem_copy_to_dev(gdev, vma, src, dst, npages, res, &nres);
	if (ret < 0)
		memset(dst, 0, npages * sizeof(*dst));
	migrate_vma_pages(&args);
	if (ret >= 0) {
		hmm_gpu_svm_map_migrated(svm, pt, &args, seq);
		hmm_gpu_dmem_touch(gdev, dst, npages);
		ret = 0;
		for (i = 0; i < npages; i++)
			if ((src[i] & MIGRATE_PFN_MIGRATE) && dst[i])
				ret++;
	}
	migrate_vma_finalize(&args);
out:
	hmm_gpu_dmem_unreserve(gdev, res, nres);
	return ret;
}

/* Migrate [start, end) (one VMA, <= HMM_GPU_MIGRATE_MAX_PAGES) back to RAM. */
static long hmm_gpu_svm_window_to_sys(struct hmm_gpu_svm *svm, struct vm_area_struct *vma,
				      u64 start, u64 end, unsigned long *src,
				      unsigned long *dst)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct migrate_vma args = {
		.vma		= vma,
		.start		= start,
		.end		= end,
		.src		= src,
		.dst		= dst,
		.pgmap_owner	= gdev,
		.flags		= MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
	};
	unsigned long i;
	long ret;

	ret = migrate_vma_setup(&args);
	if (ret)
		return ret;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		return 0;
	}
	hmm_gpu_svm_zap_migrating(gdev, vma->vm_mm, &args);
	ret = hmm_gpu_dmem_copy_to_sys(gdev, vma, start, src, dst, npages);
	if (ret < 0)
		memset(dst, 0, npages * sizeof(*dst));
	migrate_vma_pages(&args);
	if (ret >= 0) {
		ret = 0;
		for (i = 0; i < npages; i++)
			if ((src[i] & MIGRATE_PFN_VALID) && (src[i] & MIGRATE_PFN_MIGRATE))
				ret++;
	}
	migrate_vma_finalize(&args);
	return ret;
}

/*
 * Migrate the pages of [va, va + len) to VRAM or back, VMA by VMA, in
 * windows of at most HMM_GPU_MIGRATE_MAX_PAGES that do not cross a level-0
 * table. Like test_hmm: -EINVAL if a page of the range has no readable VMA.
 * *pages: the pages migrated.
 */
int hmm_gpu_svm_migrate(struct hmm_gpu_svm *svm, u64 va, u64 len, bool to_dev, u64 *pages)
{
	struct hmm_gpu_dev *gdev = svm->gdev;
	struct mm_struct *mm = svm->mm;
	unsigned long *src, *dst;
	struct page **res;
	u64 addr, end = va + len, next;
	long n;
	int ret = 0;

	*pages = 0;
	if (!PAGE_ALIGNED(va) || !PAGE_ALIGNED(len) || hmm_gpu_range_bad(svm, va, len))
		return -EINVAL;
	if (to_dev && !gdev->dmem.max_chunks)
		return -EOPNOTSUPP;
	src = kcalloc(HMM_GPU_MIGRATE_MAX_PAGES, sizeof(*src), GFP_KERNEL);
	dst = kcalloc(HMM_GPU_MIGRATE_MAX_PAGES, sizeof(*dst), GFP_KERNEL);
	res = kcalloc(HMM_GPU_MIGRATE_MAX_PAGES, sizeof(*res), GFP_KERNEL);
	if (!src || !dst || !res) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (!mmget_not_zero(mm)) {
		ret = -EINVAL;
		goto out_free;
	}
	mmap_read_lock(mm);
	for (addr = va; addr < end; addr = next) {
		struct vm_area_struct *vma = vma_lookup(mm, addr);

		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;
			break;
		}
		next = min3(end, (u64)vma->vm_end,
			    ALIGN(addr + 1, HMM_GPU_PT_SPAN(1)));
		next = min_t(u64, next, addr + HMM_GPU_MIGRATE_MAX_PAGES * PAGE_SIZE);
		if (!to_dev && !gdev->dmem.max_chunks)
			break;
		if (to_dev)
			n = hmm_gpu_svm_window_to_dev(svm, vma, addr, next, src, dst, res);
		else
			n = hmm_gpu_svm_window_to_sys(svm, vma, addr, next, src, dst);
		if (n < 0) {
			ret = n;
			break;
		}
		*pages += n;
	}
	mmap_read_unlock(mm);
	mmput(mm);
out_free:
	kfree(res);
	kfree(dst);
	kfree(src);
	return ret;
}

/*
 * Whether every page of [va, va + npages pages) is in this device's VRAM
 * (test_hmm's MIGRATE_TO_DEV reads back only pages in its device memory):
 * 0, -ENOENT or an error.
 */
int hmm_gpu_svm_dev_check(struct hmm_gpu_svm *svm, u64 va, u64 npages)
{
	const unsigned long chunk = PAGE_SIZE / sizeof(unsigned long);
	unsigned long *pfns;
	int ret = 0;
	u64 off;

	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	pfns = kmalloc_array(chunk, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return -ENOMEM;
	if (!mmget_not_zero(svm->mm)) {
		kfree(pfns);
		return -EINVAL;
	}
	for (off = 0; off < npages && !ret; ) {
		u64 n = min_t(u64, npages - off, chunk);
		struct hmm_range range = {
			.notifier	= &svm->notifier,
			.start		= va + (off << PAGE_SHIFT),
			.end		= va + ((off + n) << PAGE_SHIFT),
			.hmm_pfns	= pfns,
			.dev_private_owner = svm->gdev,
		};
		u64 i;

		ret = hmm_gpu_svm_range_fault(svm, &range);
		if (ret)
			break;
		for (i = 0; i < n; i++)
			if (!(pfns[i] & HMM_PFN_VALID) ||
			    !hmm_gpu_dmem_page_local(svm->gdev, hmm_pfn_to_page(pfns[i])))
				ret = -ENOENT;
		mutex_unlock(&svm->lock);
		off += n;
	}
	mmput(svm->mm);
	kfree(pfns);
	return ret;
}

/*
 * Whether [start, end) can be made device-exclusive at all: only anonymous
 * folios can (not shared or hugetlb mappings). mmap_lock held.
 */
static bool hmm_gpu_svm_excl_vma_ok(struct mm_struct *mm, u64 start, u64 end)
{
	struct vm_area_struct *vma;

	for (; start < end; start = vma->vm_end) {
		vma = vma_lookup(mm, start);
		if (!vma || (vma->vm_flags & (VM_SHARED | VM_HUGETLB | VM_IO | VM_PFNMAP)))
			return false;
	}
	return true;
}

/*
 * Take [addr, next) (within table @pt, at most 64 pages) exclusive and map
 * it with PTE_ATOMIC, under the notifier's read_begin/read_retry protocol:
 * an invalidation between make_device_exclusive_range() and svm->lock (the
 * entries may already be back to normal PTEs) means another round.
 */
static int hmm_gpu_svm_exclusive_chunk(struct hmm_gpu_svm *svm, struct hmm_gpu_pt *pt,
				       u64 addr, u64 next)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	unsigned long i, n = (next - addr) >> PAGE_SHIFT, seq;
	struct device *dev = &svm->gdev->pdev->dev;
	struct mm_struct *mm = svm->mm;
	struct page *pages[64];
	bool again;
	int got, ret;

	for (;;) {
		if (time_after(jiffies, timeout))
			return -EBUSY;
		/*
		 * Fault the range in first: a stale exclusive entry (ours, from
		 * a round that had to retry) restored by the GUP of
		 * make_device_exclusive_range() would invalidate the read
		 * section every round.
		 */
		mmap_read_lock(mm);
		got = hmm_gpu_svm_excl_vma_ok(mm, addr, next) ?
		      hmm_gpu_fault_in(mm, addr, n, FOLL_WRITE) : -EOPNOTSUPP;
		mmap_read_unlock(mm);
		if (got < 0)
			return got;
		seq = mmu_interval_read_begin(&svm->notifier);
		mmap_read_lock(mm);
		if (!hmm_gpu_svm_excl_vma_ok(mm, addr, next)) {
			mmap_read_unlock(mm);
			return -EOPNOTSUPP;
		}
		got = hmm_gpu_make_exclusive(mm, addr, next, pages, svm->gdev);
		mmap_read_unlock(mm);
		if (got < 0)
			return got;
		ret = (unsigned long)got == n ? 0 : -EBUSY;
		/* A page that could not be locked or made exclusive: retry. */
		again = false;
		for (i = 0; !ret && i < n; i++)
			again |= !pages[i];

		mutex_lock(&svm->lock);
		if (svm->dead)
			ret = -ENODEV;
		else if (!ret && !again && mmu_interval_read_retry(&svm->notifier, seq))
			again = true;
		for (i = 0; !ret && !again && i < n; i++) {
			u64 a = addr + (i << PAGE_SHIFT);
			unsigned int idx = hmm_gpu_pt_index(a, 0);
			dma_addr_t dma;

			if (pt->page[idx] && pt->page[idx] != pages[i])
				hmm_gpu_svm_zap(svm, a, a + PAGE_SIZE);
			if (!pt->page[idx]) {
				dma = dma_map_page(dev, pages[i], 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
				if (dma_mapping_error(dev, dma)) {
					ret = -ENOMEM;
					break;
				}
				pt->page[idx] = pages[i];
				pt->map[idx] = dma;
			}
			WRITE_ONCE(pt->cpu[idx],
				   cpu_to_le64((pt->map[idx] & HMM_GPU_PTE_ADDR_MASK) |
					       HMM_GPU_PTE_VALID | HMM_GPU_PTE_READ |
					       HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC));
			set_bit(idx, pt->excl);
		}
		mutex_unlock(&svm->lock);

		/* Unlocked, a CPU touch may restore the entries: the notifier zaps ours. */
		for (i = 0; i < (unsigned long)got; i++) {
			if (pages[i])
				hmm_gpu_exclusive_put(pages[i]);
		}
		if (ret || !again)
			return ret;
		cond_resched();
	}
}

/*
 * Map [va, va + npages pages) for exclusive device access: the CPU PTEs
 * become device-exclusive entries (make_device_exclusive_range(), owner:
 * this device, so the notifier skips the event) and the device PTEs get
 * PTE_ATOMIC. A CPU touch restores the PTE and the notifier zaps ours
 * (clear, TLB fence) before the CPU goes on.
 */
int hmm_gpu_svm_exclusive(struct hmm_gpu_svm *svm, u64 va, u64 npages)
{
	u64 addr, end = va + (npages << PAGE_SHIFT), next;
	int ret = 0;

	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	if (!mmget_not_zero(svm->mm))
		return -EINVAL;
	for (addr = va; addr < end && !ret; addr = next) {
		struct hmm_gpu_pt *pt;

		next = min3(end, (u64)(addr + 64 * PAGE_SIZE),
			    (u64)ALIGN(addr + 1, HMM_GPU_PT_SPAN(1)));
		pt = hmm_gpu_pt_get(svm, addr);
		if (IS_ERR(pt))
			ret = PTR_ERR(pt);
		else
			ret = hmm_gpu_svm_exclusive_chunk(svm, pt, addr, next);
	}
	mmput(svm->mm);
	return ret;
}

/* test_hmm's CHECK_EXCLUSIVE: -EPERM if a page is still mapped exclusively. */
int hmm_gpu_svm_check_exclusive(struct hmm_gpu_svm *svm, u64 va, u64 npages)
{
	u64 a, end = va + (npages << PAGE_SHIFT);
	int ret = 0;

	if (hmm_gpu_range_bad(svm, va, npages << PAGE_SHIFT))
		return -EINVAL;
	mutex_lock(&svm->lock);
	for (a = va; a < end && !ret && !svm->dead; a += PAGE_SIZE) {
		struct hmm_gpu_pt *pt = hmm_gpu_pt_find(svm, a);

		if (pt && pt->page[hmm_gpu_pt_index(a, 0)] &&
		    test_bit(hmm_gpu_pt_index(a, 0), pt->excl))
			ret = -EPERM;
	}
	mutex_unlock(&svm->lock);
	return ret;
}

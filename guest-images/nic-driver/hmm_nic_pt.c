// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_nic: the device-MMU page table of one context (the shared layout of
 * hmm_gpu_regs.h: 4 levels of 512 entries, 4 KiB leaves at level 0).
 *
 * Tables are added by hmm_nic_pt_prepare() under root->lock, with
 * GFP_KERNEL, before the caller takes the lock that guards the leaves (an
 * ODP umem's umem_mutex, which the invalidate path takes under reclaim, so
 * nothing may allocate while holding it). Tables are only freed with the
 * context: clearing a range clears leaves, never detaches a table, so a
 * walk the device is doing never reads a freed table.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include "hmm_nic.h"

/* What one level-0 table maps. */
#define HMM_NIC_PT_L0_SPAN	BIT_ULL(HMM_GPU_PT_SHIFT(1))

static unsigned int hmm_nic_pt_index(u64 va, unsigned int level)
{
	return (va >> HMM_GPU_PT_SHIFT(level)) & (HMM_GPU_PT_ENTRIES - 1);
}

static void hmm_nic_pt_free(struct hmm_nic_dev *nd, struct hmm_nic_pt *pt)
{
	unsigned int i;

	if (!pt)
		return;
	if (pt->child)
		for (i = 0; i < HMM_GPU_PT_ENTRIES; i++)
			hmm_nic_pt_free(nd, pt->child[i]);
	if (pt->cpu)
		dma_free_coherent(&nd->pdev->dev, PAGE_SIZE, pt->cpu, pt->dma);
	kfree(pt->child);
	kfree(pt);
}

static struct hmm_nic_pt *hmm_nic_pt_alloc(struct hmm_nic_dev *nd, unsigned int level)
{
	struct hmm_nic_pt *pt = kzalloc(sizeof(*pt), GFP_KERNEL);

	if (!pt)
		return NULL;
	pt->cpu = dma_alloc_coherent(&nd->pdev->dev, PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (level)
		pt->child = kcalloc(HMM_GPU_PT_ENTRIES, sizeof(*pt->child), GFP_KERNEL);
	if (!pt->cpu || (level && !pt->child)) {
		hmm_nic_pt_free(nd, pt);
		return NULL;
	}
	return pt;
}

int hmm_nic_pt_init(struct hmm_nic_dev *nd, struct hmm_nic_ptroot *root)
{
	mutex_init(&root->lock);
	root->top = hmm_nic_pt_alloc(nd, HMM_GPU_PT_LEVELS - 1);
	return root->top ? 0 : -ENOMEM;
}

void hmm_nic_pt_destroy(struct hmm_nic_dev *nd, struct hmm_nic_ptroot *root)
{
	hmm_nic_pt_free(nd, root->top);
	root->top = NULL;
}

/* Make sure every table down to level 0 exists for [start, end). */
int hmm_nic_pt_prepare(struct hmm_nic_dev *nd, struct hmm_nic_ptroot *root,
		       u64 start, u64 end)
{
	u64 va = start & ~(u64)(PAGE_SIZE - 1);
	int ret = 0;

	mutex_lock(&root->lock);
	while (va < end) {
		struct hmm_nic_pt *pt = root->top;
		unsigned int level;

		for (level = HMM_GPU_PT_LEVELS - 1; level > 0; level--) {
			unsigned int i = hmm_nic_pt_index(va, level);

			if (!pt->child[i]) {
				struct hmm_nic_pt *new = hmm_nic_pt_alloc(nd, level - 1);

				if (!new) {
					ret = -ENOMEM;
					goto out;
				}
				/* The zeroed table before the entry that leads to it. */
				dma_wmb();
				WRITE_ONCE(pt->child[i], new);
				WRITE_ONCE(pt->cpu[i], cpu_to_le64(new->dma | HMM_GPU_PTE_VALID));
			}
			pt = pt->child[i];
		}
		va = (va | (HMM_NIC_PT_L0_SPAN - 1)) + 1;
	}
out:
	mutex_unlock(&root->lock);
	return ret;
}

/* The level-0 table covering @va; NULL if none was prepared. */
static struct hmm_nic_pt *hmm_nic_pt_leaf_table(struct hmm_nic_ptroot *root, u64 va)
{
	struct hmm_nic_pt *pt = root->top;
	unsigned int level;

	for (level = HMM_GPU_PT_LEVELS - 1; level > 0 && pt; level--)
		pt = READ_ONCE(pt->child[hmm_nic_pt_index(va, level)]);
	return pt;
}

/* Map the 4 KiB page at @va to bus address @addr with HMM_GPU_PTE_* @perm. */
int hmm_nic_pt_set(struct hmm_nic_ptroot *root, u64 va, dma_addr_t addr, u64 perm)
{
	struct hmm_nic_pt *pt = hmm_nic_pt_leaf_table(root, va);
	u64 pte = (addr & HMM_GPU_PTE_ADDR_MASK) | perm | HMM_GPU_PTE_VALID;

	if (WARN_ON_ONCE(!pt))
		return -ENOENT;
	WRITE_ONCE(pt->cpu[hmm_nic_pt_index(va, 0)], cpu_to_le64(pte));
	return 0;
}

/*
 * Clear the leaves of [start, end). The caller fences (INV_GO) before it
 * lets go of what they mapped.
 */
void hmm_nic_pt_clear(struct hmm_nic_ptroot *root, u64 start, u64 end)
{
	u64 va = start & ~(u64)(PAGE_SIZE - 1);

	while (va < end) {
		struct hmm_nic_pt *pt = hmm_nic_pt_leaf_table(root, va);
		u64 next = (va | (HMM_NIC_PT_L0_SPAN - 1)) + 1;

		if (pt) {
			for (; va < end && va < next; va += PAGE_SIZE)
				WRITE_ONCE(pt->cpu[hmm_nic_pt_index(va, 0)], 0);
		}
		va = next;
	}
}

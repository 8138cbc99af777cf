// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: test_hmm's "dmirror" interface on real(istic) hardware.
 *
 * The first two hmm-gpu devices also appear as /dev/hmm_dmirror0 and
 * /dev/hmm_dmirror1 with the ioctl ABI of lib/test_hmm.c (see
 * hmm_gpu_dmirror_abi.h), so tools/testing/selftests/mm/hmm-tests runs
 * against the device. Each open file is a device context bound to the
 * opener's mm. READ and WRITE are device jobs through the device MMU: the
 * data is moved by the device, faults are resolved by hmm_gpu_svm.c.
 *
 * test_hmm.ko creates the same nodes: the two must not be loaded together.
 */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "hmm_gpu.h"
#include "hmm_gpu_dmirror_abi.h"

#define HMM_GPU_DMIRROR_DEVICES	2
/* Largest range one READ/WRITE/SNAPSHOT may cover. */
#define HMM_GPU_DMIRROR_MAX_PAGES	((1ull << 30) >> PAGE_SHIFT)

bool hmm_gpu_dmirror_enable = true;
module_param_named(dmirror, hmm_gpu_dmirror_enable, bool, 0444);
MODULE_PARM_DESC(dmirror, "Offer /dev/hmm_dmirror0-1 (test_hmm's ABI) on the first two devices (default: on)");

struct hmm_gpu_dmirror_file {
	struct hmm_gpu_dev	*gdev;
	struct hmm_gpu_svm	*svm;
};

static int hmm_gpu_dmirror_open(struct inode *inode, struct file *file)
{
	struct hmm_gpu_dev *gdev = container_of(file->private_data, struct hmm_gpu_dev,
						dmirror);
	struct hmm_gpu_dmirror_file *df;
	struct hmm_gpu_svm *svm;

	df = kzalloc(sizeof(*df), GFP_KERNEL);
	if (!df)
		return -ENOMEM;
	/* misc_open() holds misc_mtx, so remove() cannot have dropped gdev. */
	kref_get(&gdev->ref);
	df->gdev = gdev;

	down_read(&gdev->remove_sem);
	svm = gdev->closing ? ERR_PTR(-ENODEV) : hmm_gpu_svm_create(gdev, current->mm);
	up_read(&gdev->remove_sem);
	if (IS_ERR(svm)) {
		hmm_gpu_put(gdev);
		kfree(df);
		return PTR_ERR(svm);
	}
	df->svm = svm;
	file->private_data = df;
	return 0;
}

static int hmm_gpu_dmirror_release(struct inode *inode, struct file *file)
{
	struct hmm_gpu_dmirror_file *df = file->private_data;

	hmm_gpu_svm_destroy(df->svm);
	hmm_gpu_put(df->gdev);
	kfree(df);
	return 0;
}

static long hmm_gpu_dmirror_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct hmm_gpu_dmirror_file *df = file->private_data;
	struct hmm_gpu_dev *gdev = df->gdev;
	void __user *uarg = (void __user *)arg;
	struct hmm_gpu_dmirror_cmd c;
	u64 pages;
	long ret;

	switch (cmd) {
	case HMM_GPU_DMIRROR_READ:
	case HMM_GPU_DMIRROR_WRITE:
	case HMM_GPU_DMIRROR_SNAPSHOT:
	case HMM_GPU_DMIRROR_MIGRATE_TO_DEV:
	case HMM_GPU_DMIRROR_MIGRATE_TO_SYS:
	case HMM_GPU_DMIRROR_EXCLUSIVE:
	case HMM_GPU_DMIRROR_CHECK_EXCLUSIVE:
	case HMM_GPU_DMIRROR_RELEASE:
		break;
	case HMM_GPU_DMIRROR_FLAGS:
		/*
		 * FAIL_ALLOC: the next 2 MiB migration (either way) falls back
		 * to base pages, as if the 2 MiB allocation had failed.
		 */
		if (copy_from_user(&c, uarg, sizeof(c)))
			return -EFAULT;
		if (c.npages & ~HMM_GPU_DMIRROR_FLAG_FAIL_ALLOC)
			return -EINVAL;
		if (c.npages & HMM_GPU_DMIRROR_FLAG_FAIL_ALLOC)
			hmm_gpu_svm_fail_next_alloc(df->svm);
		return 0;
	default:
		return -EINVAL;
	}

	if (copy_from_user(&c, uarg, sizeof(c)))
		return -EFAULT;
	if (!c.npages || c.npages > HMM_GPU_DMIRROR_MAX_PAGES || !PAGE_ALIGNED(c.addr))
		return -EINVAL;
	c.cpages = 0;
	c.faults = 0;

	down_read(&gdev->remove_sem);
	if (gdev->closing) {
		ret = -ENODEV;
		goto out;
	}
	/* A mirror serves the mm that opened it (a forked child opens its own). */
	if (current->mm != hmm_gpu_svm_mm(df->svm)) {
		ret = -EINVAL;
		goto out;
	}

	switch (cmd) {
	case HMM_GPU_DMIRROR_READ:
	case HMM_GPU_DMIRROR_WRITE:
		ret = hmm_gpu_svm_rw(df->svm, cmd == HMM_GPU_DMIRROR_WRITE, c.addr,
				     u64_to_user_ptr(c.ptr), c.npages << PAGE_SHIFT,
				     &c.faults, &pages);
		if (!ret)
			c.cpages = c.npages;
		break;
	case HMM_GPU_DMIRROR_MIGRATE_TO_DEV:
		/*
		 * test_hmm returns what its device then reads, and -ENOENT if
		 * a page did not end up in its memory.
		 */
		ret = hmm_gpu_svm_migrate(df->svm, c.addr, c.npages << PAGE_SHIFT, true,
					  &pages);
		/* Some pages were not moved now: are they in VRAM already? */
		if (!ret && pages != c.npages)
			ret = hmm_gpu_svm_dev_check(df->svm, c.addr, c.npages);
		if (!ret)
			ret = hmm_gpu_svm_rw(df->svm, false, c.addr, u64_to_user_ptr(c.ptr),
					     c.npages << PAGE_SHIFT, &c.faults, &pages);
		if (!ret)
			c.cpages = c.npages;
		c.faults = 0;
		break;
	case HMM_GPU_DMIRROR_MIGRATE_TO_SYS:
		ret = hmm_gpu_svm_migrate(df->svm, c.addr, c.npages << PAGE_SHIFT, false,
					  &c.cpages);
		break;
	case HMM_GPU_DMIRROR_EXCLUSIVE:
		ret = hmm_gpu_svm_exclusive(df->svm, c.addr, c.npages);
		if (!ret)
			ret = hmm_gpu_svm_rw(df->svm, false, c.addr, u64_to_user_ptr(c.ptr),
					     c.npages << PAGE_SHIFT, &c.faults, &pages);
		if (!ret)
			c.cpages = c.npages;
		c.faults = 0;
		break;
	case HMM_GPU_DMIRROR_CHECK_EXCLUSIVE:
		ret = hmm_gpu_svm_check_exclusive(df->svm, c.addr, c.npages);
		break;
	case HMM_GPU_DMIRROR_RELEASE:
		ret = hmm_gpu_dmem_evict_all(gdev);
		break;
	default:
		ret = hmm_gpu_svm_snapshot(df->svm, c.addr, u64_to_user_ptr(c.ptr),
					   c.npages, &c.cpages);
		break;
	}
out:
	up_read(&gdev->remove_sem);
	if (ret)
		return ret;
	if (copy_to_user(uarg, &c, sizeof(c)))
		return -EFAULT;
	return 0;
}

/*
 * Like test_hmm: back the mapping with freshly allocated pages inserted as
 * normal pages of a mixed map, so hmm_range_fault() sees ordinary memory.
 */
static int hmm_gpu_dmirror_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long addr;
	int ret;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);

		if (!page)
			return -ENOMEM;
		ret = vm_insert_page(vma, addr, page);
		/* The mapping holds its own reference. */
		put_page(page);
		if (ret)
			return ret;
	}
	return 0;
}

static const struct file_operations hmm_gpu_dmirror_fops = {
	.owner		= THIS_MODULE,
	.open		= hmm_gpu_dmirror_open,
	.release	= hmm_gpu_dmirror_release,
	.unlocked_ioctl	= hmm_gpu_dmirror_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.mmap		= hmm_gpu_dmirror_mmap,
	.llseek		= noop_llseek,
};

void hmm_gpu_dmirror_register(struct hmm_gpu_dev *gdev)
{
	int ret;

	if (!hmm_gpu_dmirror_enable || gdev->id >= HMM_GPU_DMIRROR_DEVICES)
		return;
	snprintf(gdev->dmirror_name, sizeof(gdev->dmirror_name), "hmm_dmirror%d", gdev->id);
	gdev->dmirror.minor = MISC_DYNAMIC_MINOR;
	gdev->dmirror.name = gdev->dmirror_name;
	gdev->dmirror.fops = &hmm_gpu_dmirror_fops;
	gdev->dmirror.parent = &gdev->pdev->dev;
	ret = misc_register(&gdev->dmirror);
	if (ret) {
		/* test_hmm.ko loaded? The device works without the node. */
		dev_warn(&gdev->pdev->dev, "cannot register /dev/%s: %d\n",
			 gdev->dmirror_name, ret);
		return;
	}
	gdev->dmirror_registered = true;
}

void hmm_gpu_dmirror_unregister(struct hmm_gpu_dev *gdev)
{
	if (gdev->dmirror_registered)
		misc_deregister(&gdev->dmirror);
	gdev->dmirror_registered = false;
}

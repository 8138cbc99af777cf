// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: driver for the hmmlab "hmm-gpu" PCI device, a DMA engine emulated
 * by QEMU (see qemu-devices/include/hmm_gpu_regs.h for the device ABI).
 *
 * This file holds the PCI glue: probe/remove, interrupts, the /dev/hmm_gpuN
 * character device and debugfs. hmm_gpu_queue.c drives the rings,
 * hmm_gpu_xfer.c implements HMM_GPU_IOC_XFER, hmm_gpu_mmu.c the device MMU,
 * hmm_gpu_svm.c shared virtual memory (HMM_GPU_IOC_SVM_*) and
 * hmm_gpu_dmirror.c test_hmm's /dev/hmm_dmirrorN interface.
 */
#include <linux/debugfs.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "hmm_gpu.h"
#include "hmm_gpu_compat.h"
#include "hmm_gpu_uapi.h"

#define CREATE_TRACE_POINTS
#include "hmm_gpu_trace.h"

static DEFINE_IDA(hmm_gpu_ida);
static struct dentry *hmm_gpu_debugfs_root;

/* One open file of /dev/hmm_gpuN. */
struct hmm_gpu_file {
	struct hmm_gpu_dev	*gdev;
	u32			ctx;
	struct mutex		bind_lock;	/* protects svm */
	struct hmm_gpu_svm	*svm;		/* after SVM_BIND */
};

static void hmm_gpu_release_dev(struct kref *ref)
{
	struct hmm_gpu_dev *gdev = container_of(ref, struct hmm_gpu_dev, ref);

	ida_destroy(&gdev->ctx_ida);
	pci_dev_put(gdev->pdev);
	kfree(gdev);
}

void hmm_gpu_put(struct hmm_gpu_dev *gdev)
{
	kref_put(&gdev->ref, hmm_gpu_release_dev);
}

static int hmm_gpu_open(struct inode *inode, struct file *file)
{
	struct hmm_gpu_dev *gdev = container_of(file->private_data,
						struct hmm_gpu_dev, misc);
	struct hmm_gpu_file *hf;

	hf = kzalloc(sizeof(*hf), GFP_KERNEL);
	if (!hf)
		return -ENOMEM;
	/* misc_open() holds misc_mtx, so remove() cannot have dropped gdev. */
	kref_get(&gdev->ref);
	hf->gdev = gdev;
	hf->ctx = atomic_inc_return(&gdev->next_ctx);
	mutex_init(&hf->bind_lock);
	file->private_data = hf;
	return nonseekable_open(inode, file);
}

static int hmm_gpu_release(struct inode *inode, struct file *file)
{
	struct hmm_gpu_file *hf = file->private_data;

	if (hf->svm)
		hmm_gpu_svm_destroy(hf->svm);
	hmm_gpu_put(hf->gdev);
	kfree(hf);
	return 0;
}

static int hmm_gpu_ioctl_info(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_dev *gdev = hf->gdev;
	struct pci_dev *pdev = gdev->pdev;
	struct hmm_gpu_info info;

	memset(&info, 0, sizeof(info));
	info.uapi_version = HMM_GPU_UAPI_VERSION;
	info.hw_version = gdev->hw_version;
	info.caps = gdev->caps;
	info.max_xfer = gdev->max_xfer;
	info.max_len = HMM_GPU_XFER_MAX_LEN;
	info.queue_entries = HMM_GPU_QUEUE_ENTRIES;
	mutex_lock(&hf->bind_lock);
	info.ctx = hf->svm ? hmm_gpu_svm_ctx(hf->svm) : hf->ctx;
	mutex_unlock(&hf->bind_lock);
	info.domain = pci_domain_nr(pdev->bus);
	info.bus = pdev->bus->number;
	info.dev = PCI_SLOT(pdev->devfn);
	info.fn = PCI_FUNC(pdev->devfn);
	strscpy(info.bdf, pci_name(pdev), sizeof(info.bdf));
	if (gdev->dmem.max_chunks)
		info.features |= HMM_GPU_FEATURE_VRAM;
	if (hmm_gpu_has_device_private())
		info.features |= HMM_GPU_FEATURE_EXCLUSIVE;

	if (copy_to_user(uarg, &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

static int hmm_gpu_ioctl_xfer(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_xfer xfer;
	int ret;

	if (copy_from_user(&xfer, uarg, sizeof(xfer)))
		return -EFAULT;
	if (xfer.op != HMM_GPU_XFER_COPY && xfer.op != HMM_GPU_XFER_FILL)
		return -EINVAL;
	if (xfer.flags || xfer.rsvd0 || xfer.rsvd[0] || xfer.rsvd[1])
		return -EINVAL;
	if (!xfer.len || xfer.len > HMM_GPU_XFER_MAX_LEN)
		return -EINVAL;
	/*
	 * Whether an overlapping COPY reaches the device as overlapping bus
	 * ranges depends on the IOMMU; refuse it up front either way.
	 */
	if (xfer.op == HMM_GPU_XFER_COPY &&
	    xfer.src < xfer.dst + xfer.len && xfer.dst < xfer.src + xfer.len)
		return -EINVAL;

	xfer.maps_out = 0;
	xfer.ncmds = 0;
	xfer.status = 0;
	xfer.bytes = 0;
	xfer.ctx = hf->ctx;

	ret = hmm_gpu_xfer(hf->gdev, hf->ctx, &xfer);

	if (copy_to_user(uarg, &xfer, sizeof(xfer)) && !ret)
		ret = -EFAULT;
	return ret;
}

static int hmm_gpu_ioctl_svm_bind(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_svm_bind bind;
	struct hmm_gpu_svm *svm;
	int ret = 0;

	if (copy_from_user(&bind, uarg, sizeof(bind)))
		return -EFAULT;
	if (bind.flags || bind.rsvd[0] || bind.rsvd[1])
		return -EINVAL;

	mutex_lock(&hf->bind_lock);
	if (hf->svm) {
		ret = -EBUSY;
		goto out;
	}
	svm = hmm_gpu_svm_create(hf->gdev, current->mm);
	if (IS_ERR(svm)) {
		ret = PTR_ERR(svm);
		goto out;
	}
	bind.ctx = hmm_gpu_svm_ctx(svm);
	if (copy_to_user(uarg, &bind, sizeof(bind))) {
		/* hmm_gpu_ioctl() holds remove_sem: a second down_read could deadlock */
		__hmm_gpu_svm_destroy(svm);
		ret = -EFAULT;
		goto out;
	}
	hf->svm = svm;
out:
	mutex_unlock(&hf->bind_lock);
	return ret;
}

/* The bound context, if the caller's mm is the one it mirrors. */
static int hmm_gpu_file_svm(struct hmm_gpu_file *hf, struct hmm_gpu_svm **svmp)
{
	struct hmm_gpu_svm *svm;

	mutex_lock(&hf->bind_lock);
	svm = hf->svm;
	mutex_unlock(&hf->bind_lock);
	if (!svm)
		return -ENOTCONN;
	if (hmm_gpu_svm_mm(svm) != current->mm)
		return -EINVAL;
	*svmp = svm;
	return 0;
}

static int hmm_gpu_ioctl_svm_job(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_svm_job job;
	struct hmm_gpu_svm *svm;
	int ret;

	ret = hmm_gpu_file_svm(hf, &svm);
	if (ret)
		return ret;
	if (copy_from_user(&job, uarg, sizeof(job)))
		return -EFAULT;
	job.result = 0;
	job.faults = 0;
	job.pages = 0;
	job.status = 0;

	ret = hmm_gpu_svm_job(svm, &job);

	if (copy_to_user(uarg, &job, sizeof(job)) && !ret)
		ret = -EFAULT;
	return ret;
}

static int hmm_gpu_ioctl_svm_stats(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_svm_stats st;
	struct hmm_gpu_svm *svm;

	mutex_lock(&hf->bind_lock);
	svm = hf->svm;
	mutex_unlock(&hf->bind_lock);
	if (!svm)
		return -ENOTCONN;
	hmm_gpu_svm_stats(svm, &st);
	if (copy_to_user(uarg, &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

static int hmm_gpu_ioctl_svm_migrate(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_svm_migrate m;
	struct hmm_gpu_svm *svm;
	int ret;

	ret = hmm_gpu_file_svm(hf, &svm);
	if (ret)
		return ret;
	if (copy_from_user(&m, uarg, sizeof(m)))
		return -EFAULT;
	if (m.flags || m.rsvd[0] || m.rsvd[1] || !m.len)
		return -EINVAL;
	if (m.dir != HMM_GPU_MIGRATE_TO_DEV && m.dir != HMM_GPU_MIGRATE_TO_SYS)
		return -EINVAL;
	ret = hmm_gpu_svm_migrate(svm, m.va, m.len, m.dir == HMM_GPU_MIGRATE_TO_DEV, &m.pages);
	if (copy_to_user(uarg, &m, sizeof(m)) && !ret)
		ret = -EFAULT;
	return ret;
}

static int hmm_gpu_ioctl_vram_stats(struct hmm_gpu_file *hf, void __user *uarg)
{
	struct hmm_gpu_vram_stats st;

	hmm_gpu_dmem_stats(hf->gdev, &st);
	if (copy_to_user(uarg, &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

static long hmm_gpu_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct hmm_gpu_file *hf = file->private_data;
	struct hmm_gpu_dev *gdev = hf->gdev;
	void __user *uarg = (void __user *)arg;
	long ret;

	down_read(&gdev->remove_sem);
	if (gdev->closing) {
		ret = -ENODEV;
		goto out;
	}

	switch (cmd) {
	case HMM_GPU_IOC_INFO:
		ret = hmm_gpu_ioctl_info(hf, uarg);
		break;
	case HMM_GPU_IOC_XFER:
		ret = hmm_gpu_ioctl_xfer(hf, uarg);
		break;
	case HMM_GPU_IOC_SVM_BIND:
		ret = hmm_gpu_ioctl_svm_bind(hf, uarg);
		break;
	case HMM_GPU_IOC_SVM_JOB:
		ret = hmm_gpu_ioctl_svm_job(hf, uarg);
		break;
	case HMM_GPU_IOC_SVM_STATS:
		ret = hmm_gpu_ioctl_svm_stats(hf, uarg);
		break;
	case HMM_GPU_IOC_SVM_MIGRATE:
		ret = hmm_gpu_ioctl_svm_migrate(hf, uarg);
		break;
	case HMM_GPU_IOC_VRAM_STATS:
		ret = hmm_gpu_ioctl_vram_stats(hf, uarg);
		break;
	default:
		ret = -ENOTTY;
		break;
	}
out:
	up_read(&gdev->remove_sem);
	return ret;
}

static const struct file_operations hmm_gpu_fops = {
	.owner		= THIS_MODULE,
	.open		= hmm_gpu_open,
	.release	= hmm_gpu_release,
	.unlocked_ioctl	= hmm_gpu_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

static int hmm_gpu_stats_show(struct seq_file *s, void *unused)
{
	struct hmm_gpu_dev *gdev = s->private;
	struct hmm_gpu_stats st;
	unsigned int inflight;
	u32 sq_tail, cq_head;
	u64 last_addr;
	u32 last_err;

	spin_lock_irq(&gdev->lock);
	st = gdev->stats;
	inflight = gdev->inflight;
	sq_tail = gdev->sq_tail;
	cq_head = gdev->cq_head;
	last_err = gdev->last_error;
	last_addr = gdev->last_error_addr;
	spin_unlock_irq(&gdev->lock);

	seq_printf(s, "submitted: %llu\n", st.submitted);
	seq_printf(s, "completed: %llu\n", st.completed);
	seq_printf(s, "failed: %llu\n", st.failed);
	seq_printf(s, "bytes: %llu\n", st.bytes);
	seq_printf(s, "inflight: %u\n", inflight);
	seq_printf(s, "irq_cpl: %llu\n", st.irq_cpl);
	seq_printf(s, "irq_err: %llu\n", st.irq_err);
	seq_printf(s, "dev_errors: %llu\n", st.dev_errors);
	seq_printf(s, "fatal: %llu\n", st.fatal);
	seq_printf(s, "timeouts: %llu\n", st.timeouts);
	seq_printf(s, "resets: %llu\n", st.resets);
	seq_printf(s, "spurious_cpl: %llu\n", st.spurious_cpl);
	seq_printf(s, "irq_fault: %llu\n", st.irq_fault);
	seq_printf(s, "fault_recs: %llu\n", st.fault_recs);
	seq_printf(s, "fault_rounds: %llu\n", st.fault_rounds);
	seq_printf(s, "replays: %llu\n", st.replays);
	seq_printf(s, "cancels: %llu\n", st.cancels);
	seq_printf(s, "fault_wait_ns: %llu\n", st.fault_wait_ns);
	seq_printf(s, "fault_service_ns: %llu\n", st.fault_service_ns);
	seq_printf(s, "fault_service_max_ns: %llu\n", st.fault_service_max_ns);
	seq_printf(s, "last_error: %u\n", last_err);
	seq_printf(s, "last_error_addr: %#llx\n", last_addr);
	seq_printf(s, "sq_tail: %u\n", sq_tail);
	seq_printf(s, "cq_head: %u\n", cq_head);
	seq_printf(s, "hw_status: %#x\n", hmm_gpu_read(gdev, HMM_GPU_REG_STATUS));
	seq_printf(s, "hw_cmdq_head: %u\n", hmm_gpu_read(gdev, HMM_GPU_REG_CMDQ_HEAD));
	seq_printf(s, "hw_cplq_tail: %u\n", hmm_gpu_read(gdev, HMM_GPU_REG_CPLQ_TAIL));
	seq_printf(s, "hw_faultq_tail: %u\n", hmm_gpu_read(gdev, HMM_GPU_REG_FAULTQ_TAIL));
	seq_printf(s, "hw_stalled: %u\n", hmm_gpu_read(gdev, HMM_GPU_REG_STALLED));
	if (gdev->dmem.max_chunks) {
		struct hmm_gpu_vram_stats vs;

		hmm_gpu_dmem_stats(gdev, &vs);
		seq_printf(s, "vram_used: %llu\n", vs.vram_used);
		seq_printf(s, "vram_chunks: %llu\n", vs.chunks);
		seq_printf(s, "vram_pages_to_dev: %llu\n", vs.pages_to_dev);
		seq_printf(s, "vram_pages_to_sys: %llu\n", vs.pages_to_sys);
		seq_printf(s, "vram_thp_to_dev: %llu\n", vs.thp_to_dev);
		seq_printf(s, "vram_thp_to_sys: %llu\n", vs.thp_to_sys);
		seq_printf(s, "vram_cpu_faults: %llu\n", vs.cpu_faults);
		seq_printf(s, "vram_evictions: %llu\n", vs.evictions);
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(hmm_gpu_stats);

/*
 * Fault injection for testing the recovery paths, by writing to "inject":
 *   fatal - ring the doorbell out of range: the device halts (STATUS_FATAL,
 *           ERR_DOORBELL) and the driver resets it, failing commands in flight
 *   hang  - disable the completion queue behind the driver's back: commands
 *           stop completing until the timeout resets the device
 */
static ssize_t hmm_gpu_inject_write(struct file *file, const char __user *ubuf,
				    size_t len, loff_t *ppos)
{
	struct hmm_gpu_dev *gdev = file->private_data;
	char buf[16] = {};
	ssize_t ret;
	char *what;

	ret = simple_write_to_buffer(buf, sizeof(buf) - 1, ppos, ubuf, len);
	if (ret < 0)
		return ret;
	what = strim(buf);

	spin_lock_irq(&gdev->lock);
	if (!strcmp(what, "fatal"))
		hmm_gpu_write(gdev, HMM_GPU_REG_CMDQ_TAIL, HMM_GPU_QUEUE_ENTRIES);
	else if (!strcmp(what, "hang"))
		hmm_gpu_write(gdev, HMM_GPU_REG_CPLQ_CTRL, 0);
	else
		ret = -EINVAL;
	spin_unlock_irq(&gdev->lock);
	if (ret > 0)
		dev_warn(&gdev->pdev->dev, "injected fault: %s\n", what);
	return ret;
}

static const struct file_operations hmm_gpu_inject_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.write	= hmm_gpu_inject_write,
};

static int hmm_gpu_setup_irqs(struct hmm_gpu_dev *gdev)
{
	struct pci_dev *pdev = gdev->pdev;
	int ret;

	ret = pci_alloc_irq_vectors(pdev, HMM_GPU_NUM_VECTORS, HMM_GPU_NUM_VECTORS,
				    PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(&pdev->dev, "cannot allocate %d MSI-X vectors: %d\n",
			HMM_GPU_NUM_VECTORS, ret);
		return ret;
	}

	snprintf(gdev->irq_name[HMM_GPU_VEC_CPL_DEFAULT], sizeof(gdev->irq_name[0]),
		 "%s-cpl", gdev->name);
	snprintf(gdev->irq_name[HMM_GPU_VEC_ERR_DEFAULT], sizeof(gdev->irq_name[0]),
		 "%s-err", gdev->name);
	snprintf(gdev->irq_name[HMM_GPU_VEC_FAULT_DEFAULT], sizeof(gdev->irq_name[0]),
		 "%s-fault", gdev->name);

	ret = request_irq(pci_irq_vector(pdev, HMM_GPU_VEC_CPL_DEFAULT), hmm_gpu_cpl_irq, 0,
			  gdev->irq_name[HMM_GPU_VEC_CPL_DEFAULT], gdev);
	if (ret)
		goto err_vectors;
	ret = request_irq(pci_irq_vector(pdev, HMM_GPU_VEC_ERR_DEFAULT), hmm_gpu_err_irq, 0,
			  gdev->irq_name[HMM_GPU_VEC_ERR_DEFAULT], gdev);
	if (ret)
		goto err_cpl;
	ret = request_irq(pci_irq_vector(pdev, HMM_GPU_VEC_FAULT_DEFAULT), hmm_gpu_fault_irq, 0,
			  gdev->irq_name[HMM_GPU_VEC_FAULT_DEFAULT], gdev);
	if (ret)
		goto err_err;
	return 0;

err_err:
	free_irq(pci_irq_vector(pdev, HMM_GPU_VEC_ERR_DEFAULT), gdev);
err_cpl:
	free_irq(pci_irq_vector(pdev, HMM_GPU_VEC_CPL_DEFAULT), gdev);
err_vectors:
	pci_free_irq_vectors(pdev);
	return ret;
}

static void hmm_gpu_free_irqs(struct hmm_gpu_dev *gdev)
{
	struct pci_dev *pdev = gdev->pdev;

	free_irq(pci_irq_vector(pdev, HMM_GPU_VEC_FAULT_DEFAULT), gdev);
	free_irq(pci_irq_vector(pdev, HMM_GPU_VEC_ERR_DEFAULT), gdev);
	free_irq(pci_irq_vector(pdev, HMM_GPU_VEC_CPL_DEFAULT), gdev);
	pci_free_irq_vectors(pdev);
}

/* Identify the device and read its limits. */
static int hmm_gpu_check_hw(struct hmm_gpu_dev *gdev)
{
	struct device *dev = &gdev->pdev->dev;
	u32 id, nvec, max_xfer;

	id = hmm_gpu_read(gdev, HMM_GPU_REG_ID);
	if (id != HMM_GPU_ID_MAGIC) {
		dev_err(dev, "bad ID register %#x (want %#x)\n", id, HMM_GPU_ID_MAGIC);
		return -ENODEV;
	}
	gdev->hw_version = hmm_gpu_read(gdev, HMM_GPU_REG_VERSION);
	if (gdev->hw_version >> 16 != HMM_GPU_VERSION_MAJOR) {
		dev_err(dev, "unsupported device version %u.%u (driver speaks %u.x)\n",
			gdev->hw_version >> 16, gdev->hw_version & 0xffff,
			HMM_GPU_VERSION_MAJOR);
		return -ENODEV;
	}
	gdev->irq_late = (gdev->hw_version & 0xffff) >= 3;
	gdev->migrate_inv = gdev->irq_late;
	gdev->caps = hmm_gpu_read(gdev, HMM_GPU_REG_CAPS);
	if (!(gdev->caps & HMM_GPU_CAP_DMA_ENGINE)) {
		dev_err(dev, "no DMA engine (caps %#x)\n", gdev->caps);
		return -ENODEV;
	}
	if (!(gdev->caps & HMM_GPU_CAP_MMU)) {
		dev_err(dev, "device %u.%u has no MMU (caps %#x): shared virtual memory needs ABI 1.1\n",
			gdev->hw_version >> 16, gdev->hw_version & 0xffff, gdev->caps);
		return -ENODEV;
	}
	nvec = hmm_gpu_read(gdev, HMM_GPU_REG_NUM_VECTORS);
	if (nvec < HMM_GPU_NUM_VECTORS) {
		dev_err(dev, "device has %u MSI-X vectors, need %u\n",
			nvec, HMM_GPU_NUM_VECTORS);
		return -ENODEV;
	}
	max_xfer = hmm_gpu_read(gdev, HMM_GPU_REG_MAX_XFER);
	gdev->max_xfer = min_t(u32, max_xfer, HMM_GPU_MAX_XFER);
	if (!gdev->max_xfer) {
		dev_err(dev, "device reports MAX_XFER 0\n");
		return -ENODEV;
	}
	return 0;
}

/*
 * Shared virtual memory keeps a streaming DMA mapping for as long as the
 * device translates a page, with no dma_sync_*() in between: it needs DMA
 * that reaches the pages themselves. Where the DMA layer bounces through
 * swiotlb (swiotlb=force, or a DMA mask below the memory), the device would
 * read and write a bounce copy and the CPU would never see its writes: SVM
 * is refused then (jobs on DMA buffers and VRAM migration still work, they
 * map, copy and unmap). Probed with one mapping; each SVM mapping is checked
 * again (hmm_gpu_pt.c), for a mask that bounces only high pages.
 */
static void hmm_gpu_dma_probe(struct hmm_gpu_dev *gdev)
{
	struct device *dev = &gdev->pdev->dev;
	struct page *page = alloc_page(GFP_KERNEL);
	dma_addr_t map;

	if (!page)
		return;
	map = dma_map_page(dev, page, 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
	if (!dma_mapping_error(dev, map)) {
		gdev->dma_bounces = hmm_gpu_dma_bounced(dev, map);
		dma_unmap_page(dev, map, PAGE_SIZE, DMA_BIDIRECTIONAL);
	}
	__free_page(page);
	if (gdev->dma_bounces)
		dev_warn(dev, "streaming DMA is bounced (swiotlb): shared virtual memory refused, the device would work on bounce copies\n");
}

static int hmm_gpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct hmm_gpu_dev *gdev;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;

	gdev = kzalloc(sizeof(*gdev), GFP_KERNEL);
	if (!gdev)
		return -ENOMEM;
	gdev->pdev = pci_dev_get(pdev);
	kref_init(&gdev->ref);
	ida_init(&gdev->ctx_ida);
	spin_lock_init(&gdev->lock);
	spin_lock_init(&gdev->sync_lock);
	init_waitqueue_head(&gdev->tag_wq);
	mutex_init(&gdev->reset_lock);
	mutex_init(&gdev->db_mutex);
	INIT_WORK(&gdev->reset_work, hmm_gpu_reset_work);
	init_rwsem(&gdev->remove_sem);
	init_rwsem(&gdev->svms_sem);
	INIT_LIST_HEAD(&gdev->svms);

	gdev->id = ida_alloc(&hmm_gpu_ida, GFP_KERNEL);
	if (gdev->id < 0) {
		ret = gdev->id;
		goto err_free;
	}
	snprintf(gdev->name, sizeof(gdev->name), HMM_GPU_DRV_NAME "%d", gdev->id);

	if (pci_resource_len(pdev, HMM_GPU_BAR_MMIO) < HMM_GPU_MMIO_SIZE) {
		dev_err(dev, "BAR%d too small\n", HMM_GPU_BAR_MMIO);
		ret = -ENODEV;
		goto err_ida;
	}
	gdev->mmio = hmm_gpu_iomap_bar(pdev, HMM_GPU_BAR_MMIO, HMM_GPU_DRV_NAME);
	if (IS_ERR(gdev->mmio)) {
		ret = PTR_ERR(gdev->mmio);
		dev_err(dev, "cannot map BAR%d: %d\n", HMM_GPU_BAR_MMIO, ret);
		goto err_ida;
	}

	ret = hmm_gpu_check_hw(gdev);
	if (ret)
		goto err_ida;

	pci_set_master(pdev);
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(32));
	if (ret) {
		dev_err(dev, "no usable DMA mask\n");
		goto err_ida;
	}
	dma_set_max_seg_size(dev, min_t(size_t, gdev->max_xfer,
					rounddown(dma_max_mapping_size(dev), PAGE_SIZE)));
	hmm_gpu_dma_probe(gdev);

	/* Start from a known state, whatever firmware or a previous driver did. */
	hmm_gpu_hw_reset(gdev);

	ret = hmm_gpu_queue_alloc(gdev);
	if (ret)
		goto err_ida;
	ret = hmm_gpu_mmu_alloc(gdev);
	if (ret)
		goto err_ida;
	ret = hmm_gpu_dmem_init(gdev);
	if (ret)
		goto err_mmu;

	ret = hmm_gpu_setup_irqs(gdev);
	if (ret)
		goto err_mmu;

	spin_lock_irq(&gdev->lock);
	ret = hmm_gpu_hw_init(gdev);
	spin_unlock_irq(&gdev->lock);
	if (ret)
		goto err_reset;
	/* The first point of the guest/device time line (old devices: none). */
	hmm_gpu_clock_sync(gdev);

	gdev->debugfs = debugfs_create_dir(pci_name(pdev), hmm_gpu_debugfs_root);
	debugfs_create_file("stats", 0444, gdev->debugfs, gdev, &hmm_gpu_stats_fops);
	debugfs_create_file("inject", 0200, gdev->debugfs, gdev, &hmm_gpu_inject_fops);

	pci_set_drvdata(pdev, gdev);

	gdev->misc.minor = MISC_DYNAMIC_MINOR;
	gdev->misc.name = gdev->name;
	gdev->misc.fops = &hmm_gpu_fops;
	gdev->misc.parent = dev;
	ret = misc_register(&gdev->misc);
	if (ret) {
		dev_err(dev, "cannot register /dev/%s: %d\n", gdev->name, ret);
		goto err_debugfs;
	}

	hmm_gpu_dmirror_register(gdev);

	dev_info(dev, "hmm-gpu %u.%u, max_xfer %u, %d-bit DMA, %u contexts, VRAM %llu MiB, /dev/%s%s%s\n",
		 gdev->hw_version >> 16, gdev->hw_version & 0xffff, gdev->max_xfer,
		 dma_get_mask(dev) == DMA_BIT_MASK(64) ? 64 : 32, gdev->nctx,
		 gdev->dmem.max_chunks ? gdev->dmem.vram_size >> 20 : 0, gdev->name,
		 gdev->dmirror_registered ? ", /dev/" : "",
		 gdev->dmirror_registered ? gdev->dmirror_name : "");
	return 0;

err_debugfs:
	debugfs_remove_recursive(gdev->debugfs);
err_reset:
	hmm_gpu_hw_reset(gdev);
	hmm_gpu_free_irqs(gdev);
err_mmu:
	hmm_gpu_dmem_fini(gdev);
	hmm_gpu_mmu_free(gdev);
err_ida:
	ida_free(&hmm_gpu_ida, gdev->id);
err_free:
	ida_destroy(&gdev->ctx_ida);
	pci_dev_put(pdev);
	kfree(gdev);
	return ret;
}

static void hmm_gpu_remove(struct pci_dev *pdev)
{
	struct hmm_gpu_dev *gdev = pci_get_drvdata(pdev);

	/* No new opens; open files see -ENODEV once the running ioctls end. */
	hmm_gpu_dmirror_unregister(gdev);
	misc_deregister(&gdev->misc);
	down_write(&gdev->remove_sem);
	gdev->closing = true;
	up_write(&gdev->remove_sem);
	/*
	 * VRAM back to system memory while the device still runs, now that no
	 * ioctl can migrate anything into it any more (CPU faults and the
	 * fault worker only take pages out).
	 */
	hmm_gpu_dmem_fini(gdev);
	down_write(&gdev->remove_sem);
	spin_lock_irq(&gdev->lock);
	gdev->dead = true;
	spin_unlock_irq(&gdev->lock);
	up_write(&gdev->remove_sem);

	debugfs_remove_recursive(gdev->debugfs);
	hmm_gpu_free_irqs(gdev);
	cancel_work_sync(&gdev->reset_work);
	hmm_gpu_shutdown(gdev);
	/* Stalled jobs failed: the fault worker ends. */
	hmm_gpu_mmu_free(gdev);
	ida_free(&hmm_gpu_ida, gdev->id);
	/* The rings and BAR mapping are managed and go away after this. */
	hmm_gpu_put(gdev);
}

static const struct pci_device_id hmm_gpu_ids[] = {
	{ PCI_DEVICE(HMM_GPU_PCI_VENDOR_ID, HMM_GPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, hmm_gpu_ids);

static struct pci_driver hmm_gpu_driver = {
	.name		= HMM_GPU_DRV_NAME,
	.id_table	= hmm_gpu_ids,
	.probe		= hmm_gpu_probe,
	.remove		= hmm_gpu_remove,
	.dev_groups	= hmm_gpu_dev_groups,
};

static int __init hmm_gpu_init(void)
{
	int ret;

	hmm_gpu_debugfs_root = debugfs_create_dir(HMM_GPU_DRV_NAME, NULL);
	ret = pci_register_driver(&hmm_gpu_driver);
	if (ret)
		debugfs_remove_recursive(hmm_gpu_debugfs_root);
	return ret;
}

static void __exit hmm_gpu_exit(void)
{
	pci_unregister_driver(&hmm_gpu_driver);
	debugfs_remove_recursive(hmm_gpu_debugfs_root);
}

module_init(hmm_gpu_init);
module_exit(hmm_gpu_exit);

MODULE_DESCRIPTION("hmmlab hmm-gpu PCI DMA engine driver");
MODULE_AUTHOR("hmmlab");
MODULE_LICENSE("GPL");

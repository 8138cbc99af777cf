// SPDX-License-Identifier: GPL-2.0-only
/*
 * hmm_gpu: clock sync (ABI 1.4, CAP_CLOCK_SYNC). The driver writes its trace
 * clock, ktime_get_mono_fast_ns() (ftrace's "mono" clock), to
 * CLOCK_SYNC_LO/HI; the device records the value with its own (virtual)
 * time in the DMA trace. Pairs of the two let a tool put the driver's
 * tracepoints and the device's records on one time line.
 *
 * Syncs: at probe, on every write to the PCI device's sysfs attribute
 * clock_sync (reading it gives the count), and from the fault worker at most
 * every HMM_GPU_SYNC_PERIOD_NS, so a long run has points throughout.
 */
#include <linux/device.h>
#include <linux/pci.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/timekeeping.h>

#include "hmm_gpu.h"
#include "hmm_gpu_trace.h"

#define HMM_GPU_SYNC_PERIOD_NS	(10 * NSEC_PER_MSEC)

/*
 * One sync: the clock, the LO/HI pair, the clock again. The device stamps
 * the HI write, which lies between the two reads: rtt_ns bounds how far the
 * pair can be off. Interrupts are off so that nothing stretches that window
 * (an MMIO write is a trap into QEMU, completed when writel() returns).
 */
int hmm_gpu_clock_sync(struct hmm_gpu_dev *gdev)
{
	unsigned long flags;
	u64 t0, t1;
	u32 seq;

	if (!(gdev->caps & HMM_GPU_CAP_CLOCK_SYNC))
		return -EOPNOTSUPP;
	spin_lock_irqsave(&gdev->sync_lock, flags);
	t0 = ktime_get_mono_fast_ns();
	hmm_gpu_write(gdev, HMM_GPU_REG_CLOCK_SYNC_LO, lower_32_bits(t0));
	hmm_gpu_write(gdev, HMM_GPU_REG_CLOCK_SYNC_HI, upper_32_bits(t0));
	t1 = ktime_get_mono_fast_ns();
	seq = ++gdev->syncs;
	WRITE_ONCE(gdev->sync_last_ns, t0);
	spin_unlock_irqrestore(&gdev->sync_lock, flags);
	trace_hmm_gpu_clock_sync(gdev->pdev, t0, t1 - t0, seq);
	return 0;
}

/* From the fault worker: a sync if the last one is HMM_GPU_SYNC_PERIOD_NS old. */
void hmm_gpu_clock_sync_periodic(struct hmm_gpu_dev *gdev)
{
	if (ktime_get_mono_fast_ns() - READ_ONCE(gdev->sync_last_ns) >= HMM_GPU_SYNC_PERIOD_NS)
		hmm_gpu_clock_sync(gdev);
}

static ssize_t clock_sync_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct hmm_gpu_dev *gdev = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%u\n", READ_ONCE(gdev->syncs));
}

/* Whatever is written: the harness marks the start and end of its scenarios. */
static ssize_t clock_sync_store(struct device *dev, struct device_attribute *attr,
				const char *buf, size_t count)
{
	struct hmm_gpu_dev *gdev = dev_get_drvdata(dev);
	int ret = hmm_gpu_clock_sync(gdev);

	return ret ? ret : count;
}
static DEVICE_ATTR_RW(clock_sync);

static struct attribute *hmm_gpu_attrs[] = {
	&dev_attr_clock_sync.attr,
	NULL,
};

static const struct attribute_group hmm_gpu_attr_group = {
	.attrs = hmm_gpu_attrs,
};

/* The PCI device's attributes: the driver core adds them after probe. */
const struct attribute_group *hmm_gpu_dev_groups[] = {
	&hmm_gpu_attr_group,
	NULL,
};

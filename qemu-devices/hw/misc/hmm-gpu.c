/*
 * hmm-gpu: an emulated PCIe "GPU" DMA engine for exercising Linux HMM drivers
 *
 * The guest driver fills a command ring in its memory, rings a doorbell, and
 * reaps completions from a completion ring. The engine moves data (COPY,
 * FILL) between bus addresses with pci_dma_*, so everything goes through the
 * bus-master address space (vIOMMU, Bus Master Enable) like a real device.
 *
 * ABI 1.1 adds a device MMU: VA jobs are translated through per-context
 * 4-level page tables in guest memory (cached in a small TLB). A missing or
 * insufficient translation stalls only that job and posts a record to a
 * fault ring; the driver fixes the tables and replays, or cancels the job.
 * So jobs run concurrently: the engine keeps a set of in-flight jobs and
 * advances them round-robin, one page-sized step at a time.
 *
 * ABI 1.2 adds VRAM: device memory of property vram-size bytes that no BAR
 * exposes (host memory allocated lazily, so untouched VRAM costs nothing).
 * Only the device moves data in and out of it: the MIGRATE copy engine
 * copies lists of 4 KiB pages between system memory (DMA) and VRAM
 * (memcpy), and page-table leaves with PTE_VRAM point VA jobs at VRAM
 * offsets, which they access directly without system-memory DMA.
 *
 * ABI 1.4 adds CLOCK_SYNC: the driver writes its trace clock into a register
 * pair and the device records it in the DMA trace with the virtual time of
 * the write, so guest and device events can be put on one time line.
 *
 * This file is the register front end and the QOM device; the engine is in
 * hmm-gpu-engine.c. What a second device needs too (rings, interrupts and
 * error reporting, DMA accounting and the DMA trace stream, the device MMU
 * with its TLB and fault ring) is the hmm-common library. The register and
 * ring layout is in include/hw/misc/hmm_gpu_regs.h; the prose version is
 * docs/device-abi.md in the hmmlab repository.
 *
 * Guest mistakes never crash or assert: they are reported through
 * REG_ERROR / INTR_ERROR, LOG_GUEST_ERROR, trace events and the
 * "guest-errors" QOM counter.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qapi/error.h"
#include "hw/pci/pcie.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "hw/registerfields.h"
#include "migration/vmstate.h"
#include "hmm-gpu.h"
#include "hmm-common/dma.h"
#include "trace.h"

/* BAR0 registers of hmm-gpu's own (the shared ones: hmm-common/regs.h) */
REG32(CMDQ_BASE_LO, HMM_GPU_REG_CMDQ_BASE_LO)
REG32(CMDQ_BASE_HI, HMM_GPU_REG_CMDQ_BASE_HI)
REG32(CMDQ_SIZE, HMM_GPU_REG_CMDQ_SIZE)
REG32(CMDQ_HEAD, HMM_GPU_REG_CMDQ_HEAD)
REG32(CMDQ_TAIL, HMM_GPU_REG_CMDQ_TAIL)
REG32(CMDQ_CTRL, HMM_GPU_REG_CMDQ_CTRL)
REG32(CPLQ_BASE_LO, HMM_GPU_REG_CPLQ_BASE_LO)
REG32(CPLQ_BASE_HI, HMM_GPU_REG_CPLQ_BASE_HI)
REG32(CPLQ_SIZE, HMM_GPU_REG_CPLQ_SIZE)
REG32(CPLQ_HEAD, HMM_GPU_REG_CPLQ_HEAD)
REG32(CPLQ_TAIL, HMM_GPU_REG_CPLQ_TAIL)
REG32(CPLQ_CTRL, HMM_GPU_REG_CPLQ_CTRL)
REG32(VRAM_SIZE_LO, HMM_GPU_REG_VRAM_SIZE_LO)
REG32(VRAM_SIZE_HI, HMM_GPU_REG_VRAM_SIZE_HI)
REG32(CLOCK_SYNC_LO, HMM_GPU_REG_CLOCK_SYNC_LO)
REG32(CLOCK_SYNC_HI, HMM_GPU_REG_CLOCK_SYNC_HI)

/* the ABI header and the library agree on the shared registers */
QEMU_BUILD_BUG_ON(HMM_GPU_REG_ID != HMM_REG_ID ||
                  HMM_GPU_REG_VERSION != HMM_REG_VERSION ||
                  HMM_GPU_REG_CAPS != HMM_REG_CAPS ||
                  HMM_GPU_REG_RESET != HMM_REG_RESET ||
                  HMM_GPU_REG_STATUS != HMM_REG_STATUS ||
                  HMM_GPU_REG_ERROR != HMM_REG_ERROR ||
                  HMM_GPU_REG_ERROR_ADDR_LO != HMM_REG_ERROR_ADDR_LO ||
                  HMM_GPU_REG_ERROR_ADDR_HI != HMM_REG_ERROR_ADDR_HI ||
                  HMM_GPU_REG_INTR_STATUS != HMM_REG_INTR_STATUS ||
                  HMM_GPU_REG_INTR_MASK != HMM_REG_INTR_MASK ||
                  HMM_GPU_REG_VEC_CPL != HMM_REG_VEC_MAIN ||
                  HMM_GPU_REG_VEC_ERR != HMM_REG_VEC_ERR ||
                  HMM_GPU_REG_MAX_XFER != HMM_REG_MAX_XFER ||
                  HMM_GPU_REG_NUM_VECTORS != HMM_REG_NUM_VECTORS ||
                  HMM_GPU_REG_SCRATCH != HMM_REG_SCRATCH);
QEMU_BUILD_BUG_ON(HMM_GPU_REG_CTX_BASE_LO != HMM_REG_CTX_BASE_LO ||
                  HMM_GPU_REG_CTX_BASE_HI != HMM_REG_CTX_BASE_HI ||
                  HMM_GPU_REG_CTX_COUNT != HMM_REG_CTX_COUNT ||
                  HMM_GPU_REG_MMU_CTRL != HMM_REG_MMU_CTRL ||
                  HMM_GPU_REG_TLB_ENTRIES != HMM_REG_TLB_ENTRIES ||
                  HMM_GPU_REG_FAULTQ_BASE_LO != HMM_REG_FAULTQ_BASE_LO ||
                  HMM_GPU_REG_FAULTQ_BASE_HI != HMM_REG_FAULTQ_BASE_HI ||
                  HMM_GPU_REG_FAULTQ_SIZE != HMM_REG_FAULTQ_SIZE ||
                  HMM_GPU_REG_FAULTQ_HEAD != HMM_REG_FAULTQ_HEAD ||
                  HMM_GPU_REG_FAULTQ_TAIL != HMM_REG_FAULTQ_TAIL ||
                  HMM_GPU_REG_FAULTQ_CTRL != HMM_REG_FAULTQ_CTRL ||
                  HMM_GPU_REG_FAULT_REPLAY != HMM_REG_FAULT_REPLAY ||
                  HMM_GPU_REG_FAULT_CANCEL != HMM_REG_FAULT_CANCEL ||
                  HMM_GPU_REG_VEC_FAULT != HMM_REG_VEC_FAULT ||
                  HMM_GPU_REG_STALLED != HMM_REG_STALLED);
QEMU_BUILD_BUG_ON(HMM_GPU_QCTRL_ENABLE != HMM_GPU_MMU_ENABLE);

#define HMM_GPU_INTR_ALL        (HMM_GPU_INTR_CPL | HMM_GPU_INTR_ERROR | \
                                 HMM_GPU_INTR_FAULT)

const char *hmm_gpu_err_name(uint32_t err)
{
    switch (err) {
    case HMM_GPU_ERR_NONE:          return "none";
    case HMM_GPU_ERR_BAD_OPCODE:    return "bad-opcode";
    case HMM_GPU_ERR_BAD_LENGTH:    return "bad-length";
    case HMM_GPU_ERR_BAD_FLAGS:     return "bad-flags";
    case HMM_GPU_ERR_DMA_READ:      return "dma-read";
    case HMM_GPU_ERR_DMA_WRITE:     return "dma-write";
    case HMM_GPU_ERR_OVERLAP:       return "overlap";
    case HMM_GPU_ERR_FAULT:         return "fault";
    case HMM_GPU_ERR_BAD_CTX:       return "bad-ctx";
    case HMM_GPU_ERR_BAD_PTE:       return "bad-pte";
    case HMM_GPU_ERR_PTW:           return "ptw";
    case HMM_GPU_ERR_ALIGN:         return "align";
    case HMM_GPU_ERR_BAD_VRAM:      return "bad-vram";
    case HMM_GPU_ERR_CMDQ_FETCH:    return "cmdq-fetch";
    case HMM_GPU_ERR_CPLQ_WRITE:    return "cplq-write";
    case HMM_GPU_ERR_QUEUE_CONFIG:  return "queue-config";
    case HMM_GPU_ERR_DOORBELL:      return "doorbell";
    case HMM_GPU_ERR_BAD_VECTOR:    return "bad-vector";
    case HMM_GPU_ERR_BAD_REGISTER:  return "bad-register";
    case HMM_GPU_ERR_FAULTQ_WRITE:  return "faultq-write";
    case HMM_GPU_ERR_BAD_TOKEN:     return "bad-token";
    default:                        return "?";
    }
}

static const char *hmm_gpu_kind_name(uint8_t kind)
{
    switch (kind) {
    case HMM_GPU_TRACE_CMD_FETCH:   return "cmd-fetch";
    case HMM_GPU_TRACE_CPL_WRITE:   return "cpl-write";
    case HMM_GPU_TRACE_CTX_FETCH:   return "ctx-fetch";
    case HMM_GPU_TRACE_PTW:         return "ptw";
    case HMM_GPU_TRACE_FAULT_WRITE: return "fault-write";
    case HMM_GPU_TRACE_COPY_LIST:   return "copy-list";
    case HMM_GPU_TRACE_VRAM:        return "vram";
    default:                        return "data";
    }
}

static const HmmCoreInfo hmm_gpu_core_info = {
    .name = TYPE_HMM_GPU,
    .err_name = hmm_gpu_err_name,
    .kind_name = hmm_gpu_kind_name,
    .nvectors = HMM_GPU_NUM_VECTORS,
    .intr_error = HMM_GPU_INTR_ERROR,
    .vec_err_default = HMM_GPU_VEC_ERR_DEFAULT,
    .err_bad_register = HMM_GPU_ERR_BAD_REGISTER,
    .err_bad_vector = HMM_GPU_ERR_BAD_VECTOR,
};

/* every ring: 64-byte aligned, a power of two of 2..4096 entries */
static const HmmRingLimits hmm_gpu_ring_limits = {
    .align = 64,
    .min_entries = HMM_GPU_QUEUE_MIN_ENTRIES,
    .max_entries = HMM_GPU_QUEUE_MAX_ENTRIES,
};

static const HmmMmuConfig hmm_gpu_mmu_config = {
    .max_ctx = HMM_GPU_MAX_CTX,
    .ctx_align = 64,
    .tlb_size = HMM_GPU_TLB_SIZE,
    .faultq = {
        .align = 64,
        .min_entries = HMM_GPU_QUEUE_MIN_ENTRIES,
        .max_entries = HMM_GPU_QUEUE_MAX_ENTRIES,
    },
};

static const HmmRegsInfo hmm_gpu_regs_info = {
    .id = HMM_GPU_ID_MAGIC,
    .version = HMM_GPU_VERSION_MAJOR << 16 | HMM_GPU_VERSION_MINOR,
    .caps = HMM_GPU_CAP_DMA_ENGINE | HMM_GPU_CAP_MMU | HMM_GPU_CAP_VRAM |
            HMM_GPU_CAP_CLOCK_SYNC,
    .max_xfer = HMM_GPU_MAX_XFER,
    .num_vectors = HMM_GPU_NUM_VECTORS,
    .tlb_entries = HMM_GPU_TLB_SIZE,
    .reset_magic = HMM_GPU_RESET_MAGIC,
    .intr_all = HMM_GPU_INTR_ALL,
    .enable = HMM_GPU_MMU_ENABLE,
    .vec_main_default = HMM_GPU_VEC_CPL_DEFAULT,
    .vec_fault_default = HMM_GPU_VEC_FAULT_DEFAULT,
    .err_busy = 0,                          /* a bad register access */
};

/* ---- reset ------------------------------------------------------------- */

static void hmm_gpu_soft_reset(HmmGpuState *s, const char *why)
{
    trace_hmm_gpu_reset(why);
    hmm_dmatrace_flush(&s->core.trace);
    qemu_bh_cancel(s->bh);
    /* stalled and in-flight jobs vanish without completions */
    hmm_gpu_free_jobs(s);
    hmm_mmu_reset(&s->mmu);
    hmm_ring_reset(&s->cmdq);
    hmm_ring_reset(&s->cplq);
    s->status = HMM_GPU_STATUS_READY;
    s->clock_sync_lo = 0;
    hmm_regs_reset(&s->regs);
    hmm_core_reset(&s->core);
}

static void hmm_gpu_device_reset(DeviceState *dev)
{
    hmm_gpu_soft_reset(HMM_GPU(dev), "device");
}

/* ---- registers --------------------------------------------------------- */

static uint64_t hmm_gpu_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    HmmGpuState *s = opaque;
    uint32_t val = 0;

    if (size != 4 || (addr & 3)) {
        hmm_reg_error(&s->core, addr, 0, size,
                      "bad register read size/alignment");
        return 0;
    }
    if (hmm_regs_read(&s->regs, addr, &val)) {
        trace_hmm_gpu_mmio_read(addr, val);
        return val;
    }

    switch (addr) {
    case A_CMDQ_BASE_LO:
        val = extract64(s->cmdq.base, 0, 32);
        break;
    case A_CMDQ_BASE_HI:
        val = extract64(s->cmdq.base, 32, 32);
        break;
    case A_CMDQ_SIZE:
        val = s->cmdq.size;
        break;
    case A_CMDQ_HEAD:
        val = s->cmdq.head;
        break;
    case A_CMDQ_TAIL:
        val = s->cmdq.tail;
        break;
    case A_CMDQ_CTRL:
        val = s->cmdq.enabled ? HMM_GPU_QCTRL_ENABLE : 0;
        break;
    case A_CPLQ_BASE_LO:
        val = extract64(s->cplq.base, 0, 32);
        break;
    case A_CPLQ_BASE_HI:
        val = extract64(s->cplq.base, 32, 32);
        break;
    case A_CPLQ_SIZE:
        val = s->cplq.size;
        break;
    case A_CPLQ_HEAD:
        val = s->cplq.head;
        break;
    case A_CPLQ_TAIL:
        val = s->cplq.tail;
        break;
    case A_CPLQ_CTRL:
        val = s->cplq.enabled ? HMM_GPU_QCTRL_ENABLE : 0;
        break;
    case A_VRAM_SIZE_LO:
        val = extract64(s->vram_size, 0, 32);
        break;
    case A_VRAM_SIZE_HI:
        val = extract64(s->vram_size, 32, 32);
        break;
    case A_CLOCK_SYNC_LO:
    case A_CLOCK_SYNC_HI:
        val = 0;                                /* write-only */
        break;
    default:
        hmm_reg_error(&s->core, addr, 0, size, "read of undefined register");
        return 0;
    }
    trace_hmm_gpu_mmio_read(addr, val);
    return val;
}

/* Enabling a ring with a bad base or size is fatal; the ring stays off. */
static bool hmm_gpu_ring_enable(HmmGpuState *s, HmmRing *r, uint32_t val,
                                const char *what)
{
    switch (hmm_ring_set_enabled(r, val & HMM_GPU_QCTRL_ENABLE)) {
    case HMM_WRITE_OK:
        return true;
    case HMM_WRITE_BAD_CONFIG:
        hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, r->base, what);
        return false;
    default:
        return false;
    }
}

static void hmm_gpu_write_cmdq_ctrl(HmmGpuState *s, uint32_t val)
{
    if (hmm_gpu_ring_enable(s, &s->cmdq, val,
                            "command queue enabled with bad base/size")) {
        /* starting the ring over drops the in-flight jobs */
        hmm_gpu_free_jobs(s);
        hmm_gpu_update_busy(s);
    }
}

static void hmm_gpu_write_cplq_ctrl(HmmGpuState *s, uint32_t val)
{
    if (hmm_gpu_ring_enable(s, &s->cplq, val,
                            "completion queue enabled with bad base/size")) {
        hmm_gpu_kick(s);
    }
}

/* BASE_LO, BASE_HI or SIZE of ring @r, whose BASE_LO is at @base_lo */
static void hmm_gpu_write_ring_config(HmmGpuState *s, HmmRing *r,
                                      hwaddr base_lo, hwaddr addr,
                                      uint32_t val, const char *busy)
{
    if (hmm_ring_write_config(r, addr - base_lo, val) == HMM_WRITE_BUSY) {
        hmm_reg_error(&s->core, addr, val, 4, busy);
    }
}

/* the rings' registers follow one layout */
QEMU_BUILD_BUG_ON(A_CMDQ_BASE_HI != A_CMDQ_BASE_LO + 4 ||
                  A_CMDQ_SIZE != A_CMDQ_BASE_LO + 8 ||
                  A_CPLQ_BASE_HI != A_CPLQ_BASE_LO + 4 ||
                  A_CPLQ_SIZE != A_CPLQ_BASE_LO + 8);

/*
 * HEAD of a ring the device produces (the driver consumed up to there), or
 * TAIL of one it consumes (the doorbell): ignored while the ring is
 * disabled, fatal if out of range. True if taken.
 */
static bool hmm_gpu_write_ring_index(HmmGpuState *s, HmmWrite res,
                                     hwaddr addr, uint32_t val,
                                     const char *disabled,
                                     const char *bad_index)
{
    switch (res) {
    case HMM_WRITE_DISABLED:
        hmm_reg_error(&s->core, addr, val, 4, disabled);
        return false;
    case HMM_WRITE_BAD_INDEX:
        hmm_gpu_fatal(s, HMM_GPU_ERR_DOORBELL, val, bad_index);
        return false;
    default:
        return true;
    }
}

/*
 * CLOCK_SYNC_HI: the guest's trace clock, @guest_ns, at (about) this
 * virtual time. The record's timestamp is the virtual clock of this write
 * (the write starts a run of its own), which is the pair a tool maps guest
 * time onto device time with.
 */
static void hmm_gpu_clock_sync(HmmGpuState *s, uint64_t guest_ns)
{
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_QUEUE,
        .kind = HMM_GPU_TRACE_EV_CLOCK_SYNC,
        .dir = HMM_GPU_DIR_NONE,
        .va = guest_ns,
        .aux = ++s->cnt_clock_syncs,
        .res = MEMTX_OK,
    };

    trace_hmm_gpu_clock_sync(guest_ns, r.aux);
    hmm_dma_note(&s->core, &r);
}

/* What a write to a shared register asks of hmm-gpu. */
static void hmm_gpu_shared_write(HmmGpuState *s, HmmRegWrite what,
                                 hwaddr addr, uint32_t val)
{
    switch (what) {
    case HMM_REG_DO_RESET:
        hmm_gpu_soft_reset(s, "register");
        break;
    case HMM_REG_MMU_BAD_CONFIG:
        hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, s->mmu.ctx_base,
                      "MMU enabled with bad context table base/count");
        break;
    case HMM_REG_FAULTQ_BAD_CONFIG:
        hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, s->mmu.faults.ring.base,
                      "fault queue enabled with bad base/size");
        break;
    case HMM_REG_FAULTQ_DISABLED:
        hmm_gpu_fail_unposted(s);
        break;
    case HMM_REG_FAULTQ_CONSUMED:
        hmm_gpu_kick(s);                        /* held records may fit now */
        break;
    case HMM_REG_FAULTQ_BAD_HEAD:
        hmm_gpu_fatal(s, HMM_GPU_ERR_DOORBELL, val, "FAULTQ_HEAD out of range");
        break;
    case HMM_REG_DO_REPLAY:
        hmm_gpu_fault_replay(s);
        break;
    case HMM_REG_DO_CANCEL:
        hmm_gpu_fault_cancel(s, val);
        break;
    case HMM_REG_NOT_SHARED:
    case HMM_REG_DONE:
        break;
    }
}

static void hmm_gpu_mmio_write_reg(HmmGpuState *s, hwaddr addr, uint64_t val,
                                   unsigned size)
{
    HmmRegWrite what;

    if (size != 4 || (addr & 3)) {
        hmm_reg_error(&s->core, addr, val, size,
                      "bad register write size/alignment");
        return;
    }
    trace_hmm_gpu_mmio_write(addr, val);

    what = hmm_regs_write(&s->regs, addr, val);
    if (what != HMM_REG_NOT_SHARED) {
        hmm_gpu_shared_write(s, what, addr, val);
        return;
    }

    switch (addr) {
    case A_CMDQ_HEAD:
    case A_CPLQ_TAIL:
    case A_VRAM_SIZE_LO:
    case A_VRAM_SIZE_HI:
        hmm_reg_error(&s->core, addr, val, size,
                      "write to read-only register");
        break;
    case A_CMDQ_BASE_LO:
    case A_CMDQ_BASE_HI:
    case A_CMDQ_SIZE:
        hmm_gpu_write_ring_config(s, &s->cmdq, A_CMDQ_BASE_LO, addr, val,
                                  "command queue reconfigured while enabled");
        break;
    case A_CPLQ_BASE_LO:
    case A_CPLQ_BASE_HI:
    case A_CPLQ_SIZE:
        hmm_gpu_write_ring_config(s, &s->cplq, A_CPLQ_BASE_LO, addr, val,
                                  "completion queue reconfigured while "
                                  "enabled");
        break;
    case A_CLOCK_SYNC_LO:
        s->clock_sync_lo = val;
        break;
    case A_CLOCK_SYNC_HI:
        hmm_gpu_clock_sync(s, deposit64(s->clock_sync_lo, 32, 32, val));
        s->clock_sync_lo = 0;                   /* one value per LO/HI pair */
        break;
    case A_CMDQ_CTRL:
        hmm_gpu_write_cmdq_ctrl(s, val);
        break;
    case A_CPLQ_CTRL:
        hmm_gpu_write_cplq_ctrl(s, val);
        break;
    case A_CMDQ_TAIL:
        if (hmm_gpu_write_ring_index(s, hmm_ring_write_tail(&s->cmdq, val),
                addr, val, "doorbell while command queue disabled",
                "CMDQ_TAIL doorbell out of range")) {
            hmm_gpu_run_now(s);
        }
        break;
    case A_CPLQ_HEAD:
        if (hmm_gpu_write_ring_index(s, hmm_ring_write_head(&s->cplq, val),
                addr, val, "CPLQ_HEAD write while completion queue disabled",
                "CPLQ_HEAD out of range")) {
            hmm_gpu_kick(s);                    /* may unblock a full ring */
        }
        break;
    default:
        hmm_reg_error(&s->core, addr, val, size,
                      "write to undefined register");
        break;
    }
}

static void hmm_gpu_mmio_write(void *opaque, hwaddr addr, uint64_t val,
                               unsigned size)
{
    HmmGpuState *s = opaque;

    hmm_gpu_mmio_write_reg(s, addr, val, size);
    /* events (replay, cancel) recorded by the write */
    hmm_dmatrace_run_end(&s->core.trace);
}

static const MemoryRegionOps hmm_gpu_mmio_ops = {
    .read = hmm_gpu_mmio_read,
    .write = hmm_gpu_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /*
     * Accept every size and alignment so that bad accesses reach us and are
     * reported as guest errors instead of being dropped by the memory core.
     */
    .valid = {
        .min_access_size = 1,
        .max_access_size = 8,
        .unaligned = true,
    },
    .impl = {
        .min_access_size = 1,
        .max_access_size = 8,
        .unaligned = true,
    },
};

/* ---- QOM ---------------------------------------------------------------- */

static void hmm_gpu_realize(PCIDevice *pdev, Error **errp)
{
    HmmGpuState *s = HMM_GPU(pdev);
    uint8_t *pci_conf = pdev->config;

    if (s->vram_size < HMM_GPU_VRAM_ALIGN || s->vram_size > HMM_GPU_VRAM_MAX ||
        (s->vram_size & (HMM_GPU_VRAM_ALIGN - 1))) {
        error_setg(errp, "hmm-gpu: vram-size %" PRIu64 " is invalid: it must "
                   "be a multiple of 2 MiB between 2 MiB and 4 GiB",
                   s->vram_size);
        return;
    }
    /*
     * VRAM is host memory no BAR maps. Anonymous mmap: pages cost nothing
     * until the device first writes them. Reset keeps the contents.
     */
    s->vram = qemu_anon_ram_alloc(s->vram_size, NULL, false, false);
    if (!s->vram) {
        error_setg(errp, "hmm-gpu: cannot allocate %" PRIu64 " bytes of VRAM",
                   s->vram_size);
        return;
    }

    pci_config_set_interrupt_pin(pci_conf, 1);

    /* a PCIe endpoint on q35, a conventional device on a pc machine's bus */
    if (pci_bus_is_express(pci_get_bus(pdev))) {
        if (pcie_endpoint_cap_init(pdev, 0x80) < 0) {
            error_setg(errp, "hmm-gpu: cannot add the PCIe capability");
            goto fail;
        }
    } else {
        pdev->cap_present &= ~QEMU_PCI_CAP_EXPRESS;
    }

    memory_region_init_io(&s->mmio, OBJECT(s), &hmm_gpu_mmio_ops, s,
                          "hmm-gpu-mmio", HMM_GPU_MMIO_SIZE);
    pci_register_bar(pdev, HMM_GPU_BAR_MMIO, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);

    if (!hmm_core_realize(&s->core, HMM_GPU_BAR_MSIX, errp)) {
        goto fail;
    }
    hmm_mmu_realize(&s->mmu, s->vram_size);
    s->bounce = g_malloc0(HMM_GPU_CHUNK);
    /* guarded: DMA that lands on our own BAR fails instead of re-entering */
    s->bh = qemu_bh_new_guarded(hmm_gpu_bh, s,
                                &DEVICE(pdev)->mem_reentrancy_guard);
    hmm_gpu_soft_reset(s, "realize");
    hmm_dmatrace_start(&s->core.trace, pdev->devfn);
    return;

fail:
    qemu_anon_ram_free(s->vram, s->vram_size);
    s->vram = NULL;
}

static void hmm_gpu_exit(PCIDevice *pdev)
{
    HmmGpuState *s = HMM_GPU(pdev);

    /* deleting a BH also cancels it; nothing else runs device code */
    qemu_bh_delete(s->bh);
    s->bh = NULL;
    hmm_gpu_free_jobs(s);
    hmm_dmatrace_stop(&s->core.trace);
    g_free(s->bounce);
    s->bounce = NULL;
    qemu_anon_ram_free(s->vram, s->vram_size);
    s->vram = NULL;
    hmm_mmu_unrealize(&s->mmu);
    hmm_core_unrealize(&s->core);
}

static void hmm_gpu_instance_init(Object *obj)
{
    HmmGpuState *s = HMM_GPU(obj);

    QTAILQ_INIT(&s->runnable);
    QTAILQ_INIT(&s->done);

    /*
     * Hybrid PCI/PCIe device: the PCI core leaves QEMU_PCI_CAP_EXPRESS to us
     * (4 KiB config space); realize drops it again on a conventional bus.
     */
    PCI_DEVICE(obj)->cap_present |= QEMU_PCI_CAP_EXPRESS;

    /* also adds the common QOM counters */
    hmm_core_init(&s->core, PCI_DEVICE(obj), &hmm_gpu_core_info);
    hmm_mmu_init(&s->mmu, &s->core, &hmm_gpu_mmu_config);
    hmm_regs_init(&s->regs, &hmm_gpu_regs_info, &s->core, &s->mmu, &s->status);
    hmm_ring_init(&s->cmdq, "cmdq", sizeof(struct hmm_gpu_cmd),
                  &hmm_gpu_ring_limits);
    hmm_ring_init(&s->cplq, "cplq", sizeof(struct hmm_gpu_cpl),
                  &hmm_gpu_ring_limits);

    /* host-side statistics for the harness (qom-get), not guest visible */
    object_property_add_uint64_ptr(obj, "cmds-completed",
                                   &s->cnt_cmds_completed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "cmds-failed",
                                   &s->cnt_cmds_failed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "va-jobs-completed",
                                   &s->cnt_va_jobs_completed,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "migrate-pages-to-vram",
                                   &s->cnt_migrate_to_vram,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "migrate-pages-from-vram",
                                   &s->cnt_migrate_from_vram,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "vram-bytes-read",
                                   &s->cnt_vram_read_bytes,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "vram-bytes-written",
                                   &s->cnt_vram_write_bytes,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "clock-syncs", &s->cnt_clock_syncs,
                                   OBJ_PROP_FLAG_READ);
}

/* Ring state lives in guest memory and in-flight DMA; not worth migrating. */
static const VMStateDescription vmstate_hmm_gpu = {
    .name = TYPE_HMM_GPU,
    .unmigratable = 1,
};

static const Property hmm_gpu_props[] = {
    DEFINE_PROP_CHR("dmatrace", HmmGpuState, core.trace.chr),
    DEFINE_PROP_UINT32("dmatrace-flush-ms", HmmGpuState, core.trace.flush_ms,
                       10),
    DEFINE_PROP_UINT32("dmatrace-queue", HmmGpuState, core.trace.queue_max,
                       HMM_DMATRACE_QUEUE),
    DEFINE_PROP_SIZE("vram-size", HmmGpuState, vram_size,
                     HMM_GPU_VRAM_DEFAULT),
};

static void hmm_gpu_class_init(ObjectClass *oc, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(oc);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(oc);

    k->realize = hmm_gpu_realize;
    k->exit = hmm_gpu_exit;
    k->vendor_id = HMM_GPU_PCI_VENDOR_ID;
    k->device_id = HMM_GPU_PCI_DEVICE_ID;
    k->revision = HMM_GPU_PCI_REVISION;
    k->class_id = PCI_CLASS_OTHERS;
    dc->desc = "hmmlab emulated GPU DMA engine for HMM driver testing";
    dc->vmsd = &vmstate_hmm_gpu;
    device_class_set_legacy_reset(dc, hmm_gpu_device_reset);
    device_class_set_props(dc, hmm_gpu_props);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo hmm_gpu_info = {
    .name = TYPE_HMM_GPU,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(HmmGpuState),
    .instance_init = hmm_gpu_instance_init,
    .class_init = hmm_gpu_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_PCIE_DEVICE },
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void hmm_gpu_register_types(void)
{
    type_register_static(&hmm_gpu_info);
}

type_init(hmm_gpu_register_types)

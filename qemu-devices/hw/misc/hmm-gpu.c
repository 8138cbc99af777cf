/*
 * hmm-gpu: an emulated PCIe "GPU" DMA engine for exercising Linux HMM drivers
 *
 * The guest driver fills a command ring in its memory, rings a doorbell, and
 * reaps completions from a completion ring. The engine moves data (COPY,
 * FILL) between bus addresses with pci_dma_*, so everything goes through the
 * bus-master address space (vIOMMU, Bus Master Enable) like a real device.
 * The register and ring layout is in include/hw/misc/hmm_gpu_regs.h; the
 * prose version is docs/device-abi.md in the hmmlab repository.
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
#include "qemu/bitops.h"
#include "qemu/host-utils.h"
#include "qemu/log.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "chardev/char-fe.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/pcie.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "migration/vmstate.h"
#include "qom/object.h"
#include "trace.h"
#include "hw/misc/hmm_gpu_regs.h"

#define TYPE_HMM_GPU "hmm-gpu"
OBJECT_DECLARE_SIMPLE_TYPE(HmmGpuState, HMM_GPU)

/* Data moves through a bounce buffer of this size, one DMA per chunk. */
#define HMM_GPU_CHUNK           (64 * KiB)
/*
 * Work done per bottom-half run before yielding to the main loop, so a large
 * batch never stalls vCPUs, QMP or qtest: at most this many commands and
 * this many data bytes, then the BH reschedules itself.
 */
#define HMM_GPU_BH_CMDS         16
#define HMM_GPU_BH_BYTES        (1 * MiB)

#define HMM_GPU_CMD_SIZE        sizeof(struct hmm_gpu_cmd)
#define HMM_GPU_CPL_SIZE        sizeof(struct hmm_gpu_cpl)
#define HMM_GPU_RING_ALIGN      64

struct HmmGpuState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    CharBackend dmatrace;
    uint8_t *bounce;

    /* registers */
    uint32_t status;
    uint32_t error;
    uint64_t error_addr;
    uint32_t intr_status;
    uint32_t intr_mask;
    uint32_t vec_cpl;
    uint32_t vec_err;
    uint32_t scratch;

    uint64_t cmdq_base;
    uint32_t cmdq_size;
    uint32_t cmdq_head;
    uint32_t cmdq_tail;
    uint32_t cmdq_ctrl;

    uint64_t cplq_base;
    uint32_t cplq_size;
    uint32_t cplq_head;
    uint32_t cplq_tail;
    uint32_t cplq_ctrl;
    uint16_t cpl_phase;

    /*
     * The command being executed. A COPY/FILL may span several BH runs, so
     * its progress lives here rather than on the stack.
     */
    bool cur_valid;
    bool cur_done;          /* executed, completion not yet posted */
    struct hmm_gpu_cmd cur;
    uint64_t cur_bytes;     /* bytes transferred so far */
    uint32_t cur_status;    /* enum hmm_gpu_err */

    /* read-only QOM counters, cumulative over resets */
    uint64_t cnt_cmds_completed;
    uint64_t cnt_cmds_failed;
    uint64_t cnt_dma_read_bytes;
    uint64_t cnt_dma_write_bytes;
    uint64_t cnt_dma_errors;
    uint64_t cnt_irqs_raised;
    uint64_t cnt_guest_errors;
};

static const char *hmm_gpu_err_name(uint32_t err)
{
    switch (err) {
    case HMM_GPU_ERR_NONE:          return "none";
    case HMM_GPU_ERR_BAD_OPCODE:    return "bad-opcode";
    case HMM_GPU_ERR_BAD_LENGTH:    return "bad-length";
    case HMM_GPU_ERR_BAD_FLAGS:     return "bad-flags";
    case HMM_GPU_ERR_DMA_READ:      return "dma-read";
    case HMM_GPU_ERR_DMA_WRITE:     return "dma-write";
    case HMM_GPU_ERR_OVERLAP:       return "overlap";
    case HMM_GPU_ERR_CMDQ_FETCH:    return "cmdq-fetch";
    case HMM_GPU_ERR_CPLQ_WRITE:    return "cplq-write";
    case HMM_GPU_ERR_QUEUE_CONFIG:  return "queue-config";
    case HMM_GPU_ERR_DOORBELL:      return "doorbell";
    case HMM_GPU_ERR_BAD_VECTOR:    return "bad-vector";
    case HMM_GPU_ERR_BAD_REGISTER:  return "bad-register";
    default:                        return "?";
    }
}

static const char *hmm_gpu_kind_name(uint8_t kind)
{
    switch (kind) {
    case HMM_GPU_TRACE_CMD_FETCH:   return "cmd-fetch";
    case HMM_GPU_TRACE_CPL_WRITE:   return "cpl-write";
    default:                        return "data";
    }
}

/* ---- interrupts ------------------------------------------------------- */

/* INTx fallback for guests that do not enable MSI-X: level = pending causes */
static void hmm_gpu_update_intx(HmmGpuState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    if (msix_enabled(pdev)) {
        pci_set_irq(pdev, 0);
        return;
    }
    pci_set_irq(pdev, !!(s->intr_status & s->intr_mask));
}

/*
 * Latch @cause in INTR_STATUS (always, so a polling driver sees it) and
 * signal it on @vector if the cause is enabled in INTR_MASK. @vector was
 * bounds-checked when the guest wrote it; check again because msix_notify
 * asserts on an out-of-range vector.
 */
static void hmm_gpu_raise(HmmGpuState *s, uint32_t cause, uint32_t vector,
                          bool notify)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    s->intr_status |= cause;
    if ((s->intr_mask & cause) && notify) {
        if (!msix_enabled(pdev)) {
            trace_hmm_gpu_irq(UINT32_MAX, cause);
            s->cnt_irqs_raised++;
        } else if (vector < HMM_GPU_NUM_VECTORS) {
            trace_hmm_gpu_irq(vector, cause);
            s->cnt_irqs_raised++;
            msix_notify(pdev, vector);
        }
    }
    hmm_gpu_update_intx(s);
}

/*
 * Report an error through REG_ERROR/ERROR_ADDR and INTR_ERROR on VEC_ERR.
 * Every error the device sees comes from guest input (a register value, a
 * ring entry, an address the driver handed us), so each one is also logged
 * as a guest error and counted.
 */
static void hmm_gpu_set_error(HmmGpuState *s, uint32_t err, uint64_t addr,
                              const char *what)
{
    s->error = err;
    s->error_addr = addr;
    s->cnt_guest_errors++;
    trace_hmm_gpu_error(hmm_gpu_err_name(err), addr, what);
    qemu_log_mask(LOG_GUEST_ERROR, "hmm-gpu: %s (error %u %s, addr 0x%" PRIx64
                  ")\n", what, err, hmm_gpu_err_name(err), addr);
    hmm_gpu_raise(s, HMM_GPU_INTR_ERROR, s->vec_err, true);
}

/* Queue-level error: the rings cannot be trusted, halt until RESET. */
static void hmm_gpu_fatal(HmmGpuState *s, uint32_t err, uint64_t addr,
                          const char *what)
{
    s->status |= HMM_GPU_STATUS_FATAL;
    s->status &= ~HMM_GPU_STATUS_BUSY;
    s->cur_valid = false;
    qemu_bh_cancel(s->bh);
    trace_hmm_gpu_fatal(hmm_gpu_err_name(err), addr);
    hmm_gpu_set_error(s, err, addr, what);
}

/* ---- DMA with accounting and the host-side trace stream --------------- */

static void hmm_gpu_trace_dma(HmmGpuState *s, uint8_t engine, uint8_t kind,
                              uint8_t dir, uint64_t addr, uint64_t len,
                              MemTxResult res, uint64_t cmd_id, uint32_t ctx)
{
    struct hmm_gpu_trace_rec rec;

    trace_hmm_gpu_dma(hmm_gpu_kind_name(kind), dir ? "write" : "read", addr,
                      len, cmd_id, res);
    if (res != MEMTX_OK) {
        s->cnt_dma_errors++;
    } else if (dir == HMM_GPU_DIR_READ) {
        s->cnt_dma_read_bytes += len;
    } else {
        s->cnt_dma_write_bytes += len;
    }

    if (!qemu_chr_fe_backend_connected(&s->dmatrace)) {
        return;
    }
    memset(&rec, 0, sizeof(rec));
    rec.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
    rec.addr = cpu_to_le64(addr);
    rec.len = cpu_to_le64(len);
    rec.cmd_id = cpu_to_le64(cmd_id);
    rec.ctx = cpu_to_le32(ctx);
    rec.engine = engine;
    rec.kind = kind;
    rec.dir = dir;
    rec.result = res;
    /* A slow or closed consumer must not stop the device: ignore errors. */
    qemu_chr_fe_write_all(&s->dmatrace, (const uint8_t *)&rec, sizeof(rec));
}

static void hmm_gpu_trace_header(HmmGpuState *s)
{
    struct hmm_gpu_trace_hdr hdr;

    if (!qemu_chr_fe_backend_connected(&s->dmatrace)) {
        return;
    }
    memset(&hdr, 0, sizeof(hdr));
    hdr.magic = cpu_to_le64(HMM_GPU_TRACE_MAGIC);
    hdr.version = cpu_to_le32(HMM_GPU_TRACE_VERSION);
    hdr.rec_size = cpu_to_le32(sizeof(struct hmm_gpu_trace_rec));
    hdr.devfn = cpu_to_le32(PCI_DEVICE(s)->devfn);
    qemu_chr_fe_write_all(&s->dmatrace, (const uint8_t *)&hdr, sizeof(hdr));
}

static MemTxResult hmm_gpu_data_read(HmmGpuState *s, uint64_t addr,
                                     void *buf, uint64_t len)
{
    MemTxResult res = pci_dma_read(PCI_DEVICE(s), addr, buf, len);

    hmm_gpu_trace_dma(s, HMM_GPU_ENGINE_COPY, HMM_GPU_TRACE_DATA,
                      HMM_GPU_DIR_READ, addr, len, res, s->cur.cmd_id,
                      s->cur.ctx);
    return res;
}

static MemTxResult hmm_gpu_data_write(HmmGpuState *s, uint64_t addr,
                                      const void *buf, uint64_t len)
{
    MemTxResult res = pci_dma_write(PCI_DEVICE(s), addr, buf, len);

    hmm_gpu_trace_dma(s, HMM_GPU_ENGINE_COPY, HMM_GPU_TRACE_DATA,
                      HMM_GPU_DIR_WRITE, addr, len, res, s->cur.cmd_id,
                      s->cur.ctx);
    return res;
}

/* ---- engine ------------------------------------------------------------ */

static bool hmm_gpu_queues_enabled(HmmGpuState *s)
{
    return (s->cmdq_ctrl & HMM_GPU_QCTRL_ENABLE) &&
           (s->cplq_ctrl & HMM_GPU_QCTRL_ENABLE);
}

static bool hmm_gpu_cplq_full(HmmGpuState *s)
{
    return ((s->cplq_tail + 1) & (s->cplq_size - 1)) == s->cplq_head;
}

static void hmm_gpu_update_busy(HmmGpuState *s)
{
    if (!(s->status & HMM_GPU_STATUS_FATAL) &&
        (s->cur_valid || ((s->cmdq_ctrl & HMM_GPU_QCTRL_ENABLE) &&
                          s->cmdq_head != s->cmdq_tail))) {
        s->status |= HMM_GPU_STATUS_BUSY;
    } else {
        s->status &= ~HMM_GPU_STATUS_BUSY;
    }
}

static void hmm_gpu_kick(HmmGpuState *s)
{
    hmm_gpu_update_busy(s);
    if (!(s->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s)) {
        qemu_bh_schedule(s->bh);
    }
}

/* Checks that need no DMA; returns the completion status. */
static uint32_t hmm_gpu_validate(HmmGpuState *s, uint64_t *bad_addr)
{
    const struct hmm_gpu_cmd *c = &s->cur;

    if (c->opcode != HMM_GPU_OP_NOP && c->opcode != HMM_GPU_OP_COPY &&
        c->opcode != HMM_GPU_OP_FILL) {
        return HMM_GPU_ERR_BAD_OPCODE;
    }
    if (c->flags & ~HMM_GPU_CMD_F_MASK) {
        return HMM_GPU_ERR_BAD_FLAGS;
    }
    if (c->opcode == HMM_GPU_OP_NOP) {
        return HMM_GPU_ERR_NONE;
    }
    if (c->len == 0 || c->len > HMM_GPU_MAX_XFER) {
        return HMM_GPU_ERR_BAD_LENGTH;
    }
    /* a range that wraps the 64-bit bus address space cannot be reached */
    if (c->opcode == HMM_GPU_OP_COPY && c->src + c->len < c->src) {
        *bad_addr = c->src;
        return HMM_GPU_ERR_DMA_READ;
    }
    if (c->dst + c->len < c->dst) {
        *bad_addr = c->dst;
        return HMM_GPU_ERR_DMA_WRITE;
    }
    /* chunked copying would read bytes it already overwrote */
    if (c->opcode == HMM_GPU_OP_COPY &&
        c->src < c->dst + c->len && c->dst < c->src + c->len) {
        *bad_addr = c->dst;
        return HMM_GPU_ERR_OVERLAP;
    }
    return HMM_GPU_ERR_NONE;
}

/*
 * Move up to @budget bytes of the current command. Returns the bytes moved;
 * sets s->cur_done when the command finished (successfully or not).
 */
static uint64_t hmm_gpu_run_data(HmmGpuState *s, uint64_t budget)
{
    struct hmm_gpu_cmd *c = &s->cur;
    uint64_t moved = 0;

    while (s->cur_bytes < c->len && moved < budget) {
        uint64_t n = MIN(HMM_GPU_CHUNK, c->len - s->cur_bytes);
        uint64_t dst = c->dst + s->cur_bytes;

        if (c->opcode == HMM_GPU_OP_COPY) {
            uint64_t src = c->src + s->cur_bytes;

            if (hmm_gpu_data_read(s, src, s->bounce, n) != MEMTX_OK) {
                s->cur_status = HMM_GPU_ERR_DMA_READ;
                hmm_gpu_set_error(s, s->cur_status, src, "COPY source read");
                break;
            }
        }
        /* FILL: the bounce buffer holds the pattern, see hmm_gpu_fetch */
        if (hmm_gpu_data_write(s, dst, s->bounce, n) != MEMTX_OK) {
            s->cur_status = HMM_GPU_ERR_DMA_WRITE;
            hmm_gpu_set_error(s, s->cur_status, dst, "data write");
            break;
        }
        s->cur_bytes += n;
        moved += n;
    }
    if (s->cur_status != HMM_GPU_ERR_NONE || s->cur_bytes >= c->len) {
        s->cur_done = true;
    }
    return moved;
}

/* Fetch the command at CMDQ_HEAD. Returns false on a fatal error. */
static bool hmm_gpu_fetch(HmmGpuState *s)
{
    uint64_t addr = s->cmdq_base + (uint64_t)s->cmdq_head * HMM_GPU_CMD_SIZE;
    uint64_t bad_addr = addr;
    struct hmm_gpu_cmd *c = &s->cur;
    MemTxResult res;

    res = pci_dma_read(PCI_DEVICE(s), addr, c, sizeof(*c));
    if (res != MEMTX_OK) {
        memset(c, 0, sizeof(*c));
    }
    c->ctx = le32_to_cpu(c->ctx);
    c->rsvd0 = le16_to_cpu(c->rsvd0);
    c->cmd_id = le64_to_cpu(c->cmd_id);
    c->src = le64_to_cpu(c->src);
    c->dst = le64_to_cpu(c->dst);
    c->len = le64_to_cpu(c->len);
    c->pattern = le64_to_cpu(c->pattern);
    hmm_gpu_trace_dma(s, HMM_GPU_ENGINE_QUEUE, HMM_GPU_TRACE_CMD_FETCH,
                      HMM_GPU_DIR_READ, addr, sizeof(*c), res, c->cmd_id,
                      c->ctx);
    if (res != MEMTX_OK) {
        hmm_gpu_fatal(s, HMM_GPU_ERR_CMDQ_FETCH, addr, "command fetch failed");
        return false;
    }
    /* The slot is consumed: the driver may reuse it once HEAD moves on. */
    s->cmdq_head = (s->cmdq_head + 1) & (s->cmdq_size - 1);

    s->cur_valid = true;
    s->cur_done = false;
    s->cur_bytes = 0;
    trace_hmm_gpu_cmd_start(c->cmd_id, c->opcode, c->flags, c->src, c->dst,
                            c->len);
    s->cur_status = hmm_gpu_validate(s, &bad_addr);
    if (s->cur_status != HMM_GPU_ERR_NONE) {
        hmm_gpu_set_error(s, s->cur_status, bad_addr, "invalid command");
        s->cur_done = true;
    } else if (c->opcode == HMM_GPU_OP_NOP) {
        s->cur_done = true;
    } else if (c->opcode == HMM_GPU_OP_FILL) {
        uint64_t pat = cpu_to_le64(c->pattern);
        size_t i;

        /* chunks are multiples of 8 bytes, so one buffer serves them all */
        for (i = 0; i < HMM_GPU_CHUNK; i += sizeof(pat)) {
            memcpy(s->bounce + i, &pat, sizeof(pat));
        }
    }
    return true;
}

/* Post the completion for the current command. Returns false if fatal. */
static bool hmm_gpu_complete(HmmGpuState *s)
{
    uint64_t addr = s->cplq_base + (uint64_t)s->cplq_tail * HMM_GPU_CPL_SIZE;
    struct hmm_gpu_cpl cpl;
    MemTxResult res;

    memset(&cpl, 0, sizeof(cpl));
    cpl.cmd_id = cpu_to_le64(s->cur.cmd_id);
    cpl.status = cpu_to_le32(s->cur_status);
    cpl.opcode = cpu_to_le16(s->cur.opcode);
    cpl.phase = cpu_to_le16(s->cpl_phase);
    cpl.bytes = cpu_to_le64(s->cur_bytes);
    cpl.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));

    res = pci_dma_write(PCI_DEVICE(s), addr, &cpl, sizeof(cpl));
    hmm_gpu_trace_dma(s, HMM_GPU_ENGINE_QUEUE, HMM_GPU_TRACE_CPL_WRITE,
                      HMM_GPU_DIR_WRITE, addr, sizeof(cpl), res,
                      s->cur.cmd_id, s->cur.ctx);
    s->cur_valid = false;
    if (res != MEMTX_OK) {
        s->cnt_cmds_failed++;
        hmm_gpu_fatal(s, HMM_GPU_ERR_CPLQ_WRITE, addr,
                      "completion write failed");
        return false;
    }
    trace_hmm_gpu_cmd_done(s->cur.cmd_id, s->cur_status, s->cur_bytes,
                           s->cplq_tail, s->cpl_phase);
    if (s->cur_status == HMM_GPU_ERR_NONE) {
        s->cnt_cmds_completed++;
    } else {
        s->cnt_cmds_failed++;
    }
    s->cplq_tail = (s->cplq_tail + 1) & (s->cplq_size - 1);
    if (s->cplq_tail == 0) {
        s->cpl_phase ^= 1;
    }
    hmm_gpu_raise(s, HMM_GPU_INTR_CPL, s->vec_cpl,
                  s->cur.flags & HMM_GPU_CMD_F_IRQ);
    return true;
}

/*
 * The engine. Runs in a bottom half, never inside the doorbell write, and
 * does a bounded amount of work per run (see HMM_GPU_BH_*).
 */
static void hmm_gpu_bh(void *opaque)
{
    HmmGpuState *s = opaque;
    uint64_t bytes = 0;
    int cmds = 0;

    while (!(s->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s)) {
        if (cmds >= HMM_GPU_BH_CMDS || bytes >= HMM_GPU_BH_BYTES) {
            qemu_bh_schedule(s->bh);
            break;
        }
        if (!s->cur_valid) {
            if (s->cmdq_head == s->cmdq_tail) {
                break;                          /* idle */
            }
            /* every fetched command must have a completion slot */
            if (hmm_gpu_cplq_full(s)) {
                trace_hmm_gpu_cplq_full(s->cplq_head, s->cplq_tail);
                break;                          /* CPLQ_HEAD write kicks us */
            }
            if (!hmm_gpu_fetch(s)) {
                break;
            }
            cmds++;
        }
        if (!s->cur_done) {
            bytes += hmm_gpu_run_data(s, HMM_GPU_BH_BYTES - bytes);
            if (!s->cur_done) {
                continue;                       /* budget check above */
            }
        }
        /* the driver may have moved CPLQ_HEAD backwards meanwhile */
        if (hmm_gpu_cplq_full(s)) {
            trace_hmm_gpu_cplq_full(s->cplq_head, s->cplq_tail);
            break;
        }
        if (!hmm_gpu_complete(s)) {
            break;
        }
    }
    hmm_gpu_update_busy(s);
}

/* ---- reset ------------------------------------------------------------- */

static void hmm_gpu_soft_reset(HmmGpuState *s, const char *why)
{
    trace_hmm_gpu_reset(why);
    qemu_bh_cancel(s->bh);
    s->status = HMM_GPU_STATUS_READY;
    s->error = HMM_GPU_ERR_NONE;
    s->error_addr = 0;
    s->intr_status = 0;
    s->intr_mask = 0;
    s->vec_cpl = HMM_GPU_VEC_CPL_DEFAULT;
    s->vec_err = HMM_GPU_VEC_ERR_DEFAULT;
    s->scratch = 0;
    s->cmdq_base = 0;
    s->cmdq_size = 0;
    s->cmdq_head = 0;
    s->cmdq_tail = 0;
    s->cmdq_ctrl = 0;
    s->cplq_base = 0;
    s->cplq_size = 0;
    s->cplq_head = 0;
    s->cplq_tail = 0;
    s->cplq_ctrl = 0;
    s->cpl_phase = 1;
    s->cur_valid = false;
    s->cur_done = false;
    s->cur_bytes = 0;
    s->cur_status = HMM_GPU_ERR_NONE;
    memset(&s->cur, 0, sizeof(s->cur));
    hmm_gpu_update_intx(s);
}

static void hmm_gpu_device_reset(DeviceState *dev)
{
    hmm_gpu_soft_reset(HMM_GPU(dev), "device");
}

/* ---- registers --------------------------------------------------------- */

static void hmm_gpu_reg_error(HmmGpuState *s, hwaddr addr, uint64_t val,
                              unsigned size, const char *what)
{
    trace_hmm_gpu_reg_error(what, addr, val, size);
    hmm_gpu_set_error(s, HMM_GPU_ERR_BAD_REGISTER, addr, what);
}

static uint64_t hmm_gpu_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    HmmGpuState *s = opaque;
    uint64_t val = 0;

    if (size != 4 || (addr & 3)) {
        hmm_gpu_reg_error(s, addr, 0, size, "bad register read size/alignment");
        return 0;
    }

    switch (addr) {
    case HMM_GPU_REG_ID:
        val = HMM_GPU_ID_MAGIC;
        break;
    case HMM_GPU_REG_VERSION:
        val = (HMM_GPU_VERSION_MAJOR << 16) | HMM_GPU_VERSION_MINOR;
        break;
    case HMM_GPU_REG_CAPS:
        val = HMM_GPU_CAP_DMA_ENGINE;
        break;
    case HMM_GPU_REG_RESET:
        val = 0;                                /* write-only */
        break;
    case HMM_GPU_REG_STATUS:
        val = s->status;
        break;
    case HMM_GPU_REG_ERROR:
        val = s->error;
        break;
    case HMM_GPU_REG_ERROR_ADDR_LO:
        val = (uint32_t)s->error_addr;
        break;
    case HMM_GPU_REG_ERROR_ADDR_HI:
        val = s->error_addr >> 32;
        break;
    case HMM_GPU_REG_INTR_STATUS:
        val = s->intr_status;
        break;
    case HMM_GPU_REG_INTR_MASK:
        val = s->intr_mask;
        break;
    case HMM_GPU_REG_VEC_CPL:
        val = s->vec_cpl;
        break;
    case HMM_GPU_REG_VEC_ERR:
        val = s->vec_err;
        break;
    case HMM_GPU_REG_MAX_XFER:
        val = HMM_GPU_MAX_XFER;
        break;
    case HMM_GPU_REG_NUM_VECTORS:
        val = HMM_GPU_NUM_VECTORS;
        break;
    case HMM_GPU_REG_SCRATCH:
        val = s->scratch;
        break;
    case HMM_GPU_REG_CMDQ_BASE_LO:
        val = (uint32_t)s->cmdq_base;
        break;
    case HMM_GPU_REG_CMDQ_BASE_HI:
        val = s->cmdq_base >> 32;
        break;
    case HMM_GPU_REG_CMDQ_SIZE:
        val = s->cmdq_size;
        break;
    case HMM_GPU_REG_CMDQ_HEAD:
        val = s->cmdq_head;
        break;
    case HMM_GPU_REG_CMDQ_TAIL:
        val = s->cmdq_tail;
        break;
    case HMM_GPU_REG_CMDQ_CTRL:
        val = s->cmdq_ctrl;
        break;
    case HMM_GPU_REG_CPLQ_BASE_LO:
        val = (uint32_t)s->cplq_base;
        break;
    case HMM_GPU_REG_CPLQ_BASE_HI:
        val = s->cplq_base >> 32;
        break;
    case HMM_GPU_REG_CPLQ_SIZE:
        val = s->cplq_size;
        break;
    case HMM_GPU_REG_CPLQ_HEAD:
        val = s->cplq_head;
        break;
    case HMM_GPU_REG_CPLQ_TAIL:
        val = s->cplq_tail;
        break;
    case HMM_GPU_REG_CPLQ_CTRL:
        val = s->cplq_ctrl;
        break;
    default:
        hmm_gpu_reg_error(s, addr, 0, size, "read of undefined register");
        return 0;
    }
    trace_hmm_gpu_mmio_read(addr, val);
    return val;
}

static bool hmm_gpu_ring_ok(uint64_t base, uint32_t size)
{
    return !(base & (HMM_GPU_RING_ALIGN - 1)) &&
           size >= HMM_GPU_QUEUE_MIN_ENTRIES &&
           size <= HMM_GPU_QUEUE_MAX_ENTRIES && is_power_of_2(size);
}

static void hmm_gpu_write_cmdq_ctrl(HmmGpuState *s, uint32_t val)
{
    val &= HMM_GPU_QCTRL_ENABLE;
    if (val == (s->cmdq_ctrl & HMM_GPU_QCTRL_ENABLE)) {
        return;
    }
    if (val) {
        if (!hmm_gpu_ring_ok(s->cmdq_base, s->cmdq_size)) {
            hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, s->cmdq_base,
                          "command queue enabled with bad base/size");
            return;
        }
        trace_hmm_gpu_queue_enable("cmdq", s->cmdq_base, s->cmdq_size);
    }
    /* enabling or disabling starts the ring over */
    s->cmdq_head = 0;
    s->cmdq_tail = 0;
    s->cmdq_ctrl = val;
    s->cur_valid = false;
    hmm_gpu_update_busy(s);
}

static void hmm_gpu_write_cplq_ctrl(HmmGpuState *s, uint32_t val)
{
    val &= HMM_GPU_QCTRL_ENABLE;
    if (val == (s->cplq_ctrl & HMM_GPU_QCTRL_ENABLE)) {
        return;
    }
    if (val) {
        if (!hmm_gpu_ring_ok(s->cplq_base, s->cplq_size)) {
            hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, s->cplq_base,
                          "completion queue enabled with bad base/size");
            return;
        }
        trace_hmm_gpu_queue_enable("cplq", s->cplq_base, s->cplq_size);
    }
    s->cplq_head = 0;
    s->cplq_tail = 0;
    s->cpl_phase = 1;
    s->cplq_ctrl = val;
    hmm_gpu_kick(s);
}

static void hmm_gpu_write_vector(HmmGpuState *s, hwaddr addr, uint32_t *vec,
                                 uint32_t val)
{
    if (val >= HMM_GPU_NUM_VECTORS) {
        /*
         * Signalled on the old (valid) error vector; msix_notify never
         * sees the bad value.
         */
        trace_hmm_gpu_reg_error("bad MSI-X vector", addr, val, 4);
        hmm_gpu_set_error(s, HMM_GPU_ERR_BAD_VECTOR, val,
                          "MSI-X vector out of range");
        return;
    }
    *vec = val;
}

static void hmm_gpu_mmio_write(void *opaque, hwaddr addr, uint64_t val,
                               unsigned size)
{
    HmmGpuState *s = opaque;
    bool cmdq_on = s->cmdq_ctrl & HMM_GPU_QCTRL_ENABLE;
    bool cplq_on = s->cplq_ctrl & HMM_GPU_QCTRL_ENABLE;

    if (size != 4 || (addr & 3)) {
        hmm_gpu_reg_error(s, addr, val, size,
                          "bad register write size/alignment");
        return;
    }
    trace_hmm_gpu_mmio_write(addr, val);

    switch (addr) {
    case HMM_GPU_REG_ID:
    case HMM_GPU_REG_VERSION:
    case HMM_GPU_REG_CAPS:
    case HMM_GPU_REG_STATUS:
    case HMM_GPU_REG_ERROR:
    case HMM_GPU_REG_ERROR_ADDR_LO:
    case HMM_GPU_REG_ERROR_ADDR_HI:
    case HMM_GPU_REG_MAX_XFER:
    case HMM_GPU_REG_NUM_VECTORS:
    case HMM_GPU_REG_CMDQ_HEAD:
    case HMM_GPU_REG_CPLQ_TAIL:
        hmm_gpu_reg_error(s, addr, val, size, "write to read-only register");
        break;
    case HMM_GPU_REG_RESET:
        if (val != HMM_GPU_RESET_MAGIC) {
            hmm_gpu_reg_error(s, addr, val, size, "bad RESET magic");
            break;
        }
        hmm_gpu_soft_reset(s, "register");
        break;
    case HMM_GPU_REG_INTR_STATUS:
        s->intr_status &= ~val;                  /* RW1C */
        hmm_gpu_update_intx(s);
        break;
    case HMM_GPU_REG_INTR_MASK:
        s->intr_mask = val & (HMM_GPU_INTR_CPL | HMM_GPU_INTR_ERROR);
        hmm_gpu_update_intx(s);
        break;
    case HMM_GPU_REG_VEC_CPL:
        hmm_gpu_write_vector(s, addr, &s->vec_cpl, val);
        break;
    case HMM_GPU_REG_VEC_ERR:
        hmm_gpu_write_vector(s, addr, &s->vec_err, val);
        break;
    case HMM_GPU_REG_SCRATCH:
        s->scratch = val;
        break;
    case HMM_GPU_REG_CMDQ_BASE_LO:
    case HMM_GPU_REG_CMDQ_BASE_HI:
    case HMM_GPU_REG_CMDQ_SIZE:
        if (cmdq_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "command queue reconfigured while enabled");
        } else if (addr == HMM_GPU_REG_CMDQ_BASE_LO) {
            s->cmdq_base = deposit64(s->cmdq_base, 0, 32, val);
        } else if (addr == HMM_GPU_REG_CMDQ_BASE_HI) {
            s->cmdq_base = deposit64(s->cmdq_base, 32, 32, val);
        } else {
            s->cmdq_size = val;
        }
        break;
    case HMM_GPU_REG_CPLQ_BASE_LO:
    case HMM_GPU_REG_CPLQ_BASE_HI:
    case HMM_GPU_REG_CPLQ_SIZE:
        if (cplq_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "completion queue reconfigured while enabled");
        } else if (addr == HMM_GPU_REG_CPLQ_BASE_LO) {
            s->cplq_base = deposit64(s->cplq_base, 0, 32, val);
        } else if (addr == HMM_GPU_REG_CPLQ_BASE_HI) {
            s->cplq_base = deposit64(s->cplq_base, 32, 32, val);
        } else {
            s->cplq_size = val;
        }
        break;
    case HMM_GPU_REG_CMDQ_CTRL:
        hmm_gpu_write_cmdq_ctrl(s, val);
        break;
    case HMM_GPU_REG_CPLQ_CTRL:
        hmm_gpu_write_cplq_ctrl(s, val);
        break;
    case HMM_GPU_REG_CMDQ_TAIL:
        if (!cmdq_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "doorbell while command queue disabled");
        } else if (val >= s->cmdq_size) {
            hmm_gpu_fatal(s, HMM_GPU_ERR_DOORBELL, val,
                          "CMDQ_TAIL doorbell out of range");
        } else {
            s->cmdq_tail = val;
            hmm_gpu_kick(s);
        }
        break;
    case HMM_GPU_REG_CPLQ_HEAD:
        if (!cplq_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "CPLQ_HEAD write while completion queue disabled");
        } else if (val >= s->cplq_size ||
                   ((val - s->cplq_head) & (s->cplq_size - 1)) >
                   ((s->cplq_tail - s->cplq_head) & (s->cplq_size - 1))) {
            /* beyond the ring, or consumes entries not yet produced */
            hmm_gpu_fatal(s, HMM_GPU_ERR_DOORBELL, val,
                          "CPLQ_HEAD out of range");
        } else {
            s->cplq_head = val;
            hmm_gpu_kick(s);                    /* may unblock a full ring */
        }
        break;
    default:
        hmm_gpu_reg_error(s, addr, val, size, "write to undefined register");
        break;
    }
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
    int i;

    pci_config_set_interrupt_pin(pci_conf, 1);

    /* a PCIe endpoint on q35, a conventional device on a pc machine's bus */
    if (pci_bus_is_express(pci_get_bus(pdev))) {
        if (pcie_endpoint_cap_init(pdev, 0x80) < 0) {
            error_setg(errp, "hmm-gpu: cannot add the PCIe capability");
            return;
        }
    } else {
        pdev->cap_present &= ~QEMU_PCI_CAP_EXPRESS;
    }

    memory_region_init_io(&s->mmio, OBJECT(s), &hmm_gpu_mmio_ops, s,
                          "hmm-gpu-mmio", HMM_GPU_MMIO_SIZE);
    pci_register_bar(pdev, HMM_GPU_BAR_MMIO, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);

    if (msix_init_exclusive_bar(pdev, HMM_GPU_NUM_VECTORS, HMM_GPU_BAR_MSIX,
                                errp)) {
        return;
    }
    /* without msix_vector_use, msix_notify silently drops the message */
    for (i = 0; i < HMM_GPU_NUM_VECTORS; i++) {
        msix_vector_use(pdev, i);
    }

    s->bounce = g_malloc0(HMM_GPU_CHUNK);
    /* guarded: DMA that lands on our own BAR fails instead of re-entering */
    s->bh = qemu_bh_new_guarded(hmm_gpu_bh, s,
                                &DEVICE(pdev)->mem_reentrancy_guard);
    hmm_gpu_soft_reset(s, "realize");
    hmm_gpu_trace_header(s);
}

static void hmm_gpu_exit(PCIDevice *pdev)
{
    HmmGpuState *s = HMM_GPU(pdev);

    /* deleting a BH also cancels it; nothing else runs device code */
    qemu_bh_delete(s->bh);
    s->bh = NULL;
    g_free(s->bounce);
    s->bounce = NULL;
    msix_unuse_all_vectors(pdev);
    msix_uninit_exclusive_bar(pdev);
}

static void hmm_gpu_instance_init(Object *obj)
{
    HmmGpuState *s = HMM_GPU(obj);

    /*
     * Hybrid PCI/PCIe device: the PCI core leaves QEMU_PCI_CAP_EXPRESS to us
     * (4 KiB config space); realize drops it again on a conventional bus.
     */
    PCI_DEVICE(obj)->cap_present |= QEMU_PCI_CAP_EXPRESS;

    /* host-side statistics for the harness (qom-get), not guest visible */
    object_property_add_uint64_ptr(obj, "cmds-completed",
                                   &s->cnt_cmds_completed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "cmds-failed",
                                   &s->cnt_cmds_failed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "dma-read-bytes",
                                   &s->cnt_dma_read_bytes, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "dma-write-bytes",
                                   &s->cnt_dma_write_bytes,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "dma-errors",
                                   &s->cnt_dma_errors, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "irqs-raised",
                                   &s->cnt_irqs_raised, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "guest-errors",
                                   &s->cnt_guest_errors, OBJ_PROP_FLAG_READ);
}

/* Ring state lives in guest memory and in-flight DMA; not worth migrating. */
static const VMStateDescription vmstate_hmm_gpu = {
    .name = TYPE_HMM_GPU,
    .unmigratable = 1,
};

static const Property hmm_gpu_props[] = {
    DEFINE_PROP_CHR("dmatrace", HmmGpuState, dmatrace),
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

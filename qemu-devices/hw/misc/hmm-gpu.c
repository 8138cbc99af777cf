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
#include "qemu/queue.h"
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

/*
 * Data moves through a bounce buffer of this size, one DMA per chunk; a VA
 * job's step covers up to this many bytes (one DMA pair per page).
 */
#define HMM_GPU_CHUNK           (64 * KiB)
/*
 * Work done per bottom-half run before yielding to the main loop, so a large
 * batch never stalls vCPUs, QMP or qtest: at most this many command fetches,
 * then job steps for at most HMM_GPU_BH_NS of host time (and at most
 * HMM_GPU_BH_BYTES), then the BH reschedules itself. Long enough to amortise
 * the main-loop round trip, short enough to keep the loop responsive.
 */
#define HMM_GPU_BH_CMDS         64
#define HMM_GPU_BH_NS           (1 * SCALE_MS)
#define HMM_GPU_BH_BYTES        (64 * MiB)
/*
 * dmatrace records are collected here and written in large pieces: when the
 * buffer fills, at the end of every BH run and MMIO write, and on reset and
 * unrealize. So the stream is complete whenever device code is not running.
 */
#define HMM_GPU_TRACE_BUF       (64 * KiB)
/*
 * Fault injection (QOM property inject-dma-fault, settable at run time): a
 * data DMA it applies to goes to its bus address with this bit flipped,
 * where neither guest RAM nor the IOVAs Linux allocates (top-down below
 * 4 GiB first) are. Behind a vIOMMU that is a DMA remapping fault the guest
 * sees; without one, an access to nothing (a DMA error).
 */
#define HMM_GPU_INJECT_ADDR_BIT (1ull << 47)

#define HMM_GPU_CMD_SIZE        sizeof(struct hmm_gpu_cmd)
#define HMM_GPU_CPL_SIZE        sizeof(struct hmm_gpu_cpl)
#define HMM_GPU_FAULT_SIZE      sizeof(struct hmm_gpu_fault_rec)
#define HMM_GPU_CTX_SIZE        sizeof(struct hmm_gpu_ctx_desc)
#define HMM_GPU_RING_ALIGN      64

#define HMM_GPU_PAGE_SHIFT      12
#define HMM_GPU_HUGE_SHIFT      21
#define HMM_GPU_PAGE_MASK       (~((1ull << HMM_GPU_PAGE_SHIFT) - 1))
#define HMM_GPU_VA_LIMIT        (1ull << HMM_GPU_VA_BITS)
#define HMM_GPU_PTE_PERMS       (HMM_GPU_PTE_READ | HMM_GPU_PTE_WRITE | \
                                 HMM_GPU_PTE_ATOMIC)
#define HMM_GPU_PTE_RSVD        (~(HMM_GPU_PTE_ADDR_MASK | HMM_GPU_PTE_VALID | \
                                   HMM_GPU_PTE_PERMS | HMM_GPU_PTE_LEAF | \
                                   HMM_GPU_PTE_VRAM))
#define HMM_GPU_ATOMIC_SIZE     8

#define HMM_GPU_VRAM_DEFAULT    (256 * MiB)
#define HMM_GPU_VRAM_ALIGN      (2 * MiB)
#define HMM_GPU_VRAM_MAX        (4 * GiB)
#define HMM_GPU_COPY_ENT_SIZE   sizeof(struct hmm_gpu_copy_ent)

typedef enum HmmGpuJobState {
    JOB_RUNNABLE,
    JOB_STALLED,            /* waiting for FAULT_REPLAY / FAULT_CANCEL */
    JOB_DONE,               /* finished, completion not yet posted */
} HmmGpuJobState;

/*
 * One fetched command. Jobs live until their completion is written; each
 * holds a completion ring slot from fetch on (see hmm_gpu_can_fetch).
 */
typedef struct HmmGpuJob {
    QTAILQ_ENTRY(HmmGpuJob) link;
    HmmGpuJobState state;
    struct hmm_gpu_cmd cmd;
    uint64_t bytes;         /* bytes transferred so far */
    uint32_t status;        /* enum hmm_gpu_err */
    bool ctx_loaded;
    uint64_t pt_root;
    /* the fault that stalled the job */
    bool rec_pending;       /* record not yet written to the fault ring */
    uint16_t token;
    uint8_t fault_access;
    uint8_t fault_reason;
    uint64_t fault_va;
    /* MIGRATE: the copy list, fetched and checked by the first step */
    struct hmm_gpu_copy_ent *list;
} HmmGpuJob;

typedef QTAILQ_HEAD(, HmmGpuJob) HmmGpuJobList;

typedef struct HmmGpuTlbEntry {
    bool valid;
    uint8_t shift;          /* HMM_GPU_PAGE_SHIFT or HMM_GPU_HUGE_SHIFT */
    uint32_t ctx;
    uint64_t va;            /* page base */
    uint64_t pa;
    uint64_t perms;         /* HMM_GPU_PTE_READ/WRITE/ATOMIC */
    bool vram;              /* pa is a VRAM offset (PTE_VRAM) */
} HmmGpuTlbEntry;

struct HmmGpuState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    CharBackend dmatrace;
    uint8_t *bounce;
    uint8_t *vram;          /* vram_size bytes, anonymous mmap */
    uint64_t vram_size;     /* property vram-size */
    uint8_t *tbuf;          /* pending dmatrace bytes, HMM_GPU_TRACE_BUF */
    size_t tbuf_len;

    /* registers */
    uint32_t status;
    uint32_t error;
    uint64_t error_addr;
    uint32_t intr_status;
    uint32_t intr_mask;
    uint32_t vec_cpl;
    uint32_t vec_err;
    uint32_t vec_fault;
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

    uint64_t ctx_base;
    uint32_t ctx_count;
    uint32_t mmu_ctrl;

    uint64_t faultq_base;
    uint32_t faultq_size;
    uint32_t faultq_head;
    uint32_t faultq_tail;
    uint32_t faultq_ctrl;

    /* in-flight jobs, each on exactly one list */
    HmmGpuJobList runnable;
    HmmGpuJobList stalled;
    HmmGpuJobList done;
    uint32_t njobs;
    uint32_t nstalled;
    uint16_t next_token;
    bool tokens_wrapped;    /* every non-zero token has been issued */

    HmmGpuTlbEntry tlb[HMM_GPU_TLB_SIZE];

    /* read-only QOM counters, cumulative over resets */
    uint64_t cnt_cmds_completed;
    uint64_t cnt_cmds_failed;
    uint64_t cnt_dma_read_bytes;
    uint64_t cnt_dma_write_bytes;
    uint64_t cnt_dma_errors;
    uint64_t cnt_irqs_raised;
    uint64_t cnt_guest_errors;
    uint64_t cnt_faults_raised;
    uint64_t cnt_faults_replayed;
    uint64_t cnt_faults_cancelled;
    uint64_t cnt_stale_cancels;
    uint64_t cnt_tlb_hits;
    uint64_t cnt_tlb_misses;
    uint64_t cnt_tlb_invalidations;
    uint64_t cnt_ptw_reads;
    uint64_t cnt_va_jobs_completed;
    uint64_t cnt_migrate_to_vram;   /* pages */
    uint64_t cnt_migrate_from_vram; /* pages */
    uint64_t cnt_vram_read_bytes;
    uint64_t cnt_vram_write_bytes;

    /* fault injection: the next this many data DMAs go astray */
    uint32_t inject_dma_fault;
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

static bool hmm_gpu_is_va_op(uint8_t op)
{
    return op >= HMM_GPU_OP_READ_VA && op <= HMM_GPU_OP_ATOMIC_CMPXCHG;
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
/* What the guest sees of an error: ERROR, ERROR_ADDR and the interrupt. */
static void hmm_gpu_signal_error(HmmGpuState *s, uint32_t err, uint64_t addr,
                                 const char *what)
{
    s->error = err;
    s->error_addr = addr;
    trace_hmm_gpu_error(hmm_gpu_err_name(err), addr, what);
    hmm_gpu_raise(s, HMM_GPU_INTR_ERROR, s->vec_err, true);
}

static void hmm_gpu_set_error(HmmGpuState *s, uint32_t err, uint64_t addr,
                              const char *what)
{
    s->cnt_guest_errors++;
    qemu_log_mask(LOG_GUEST_ERROR, "hmm-gpu: %s (error %u %s, addr 0x%" PRIx64
                  ")\n", what, err, hmm_gpu_err_name(err), addr);
    hmm_gpu_signal_error(s, err, addr, what);
}

static void hmm_gpu_job_free(HmmGpuJob *j)
{
    g_free(j->list);
    g_free(j);
}

static void hmm_gpu_free_jobs(HmmGpuState *s)
{
    HmmGpuJobList *lists[] = { &s->runnable, &s->stalled, &s->done };
    HmmGpuJob *j, *next;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(lists); i++) {
        QTAILQ_FOREACH_SAFE(j, lists[i], link, next) {
            QTAILQ_REMOVE(lists[i], j, link);
            hmm_gpu_job_free(j);
        }
    }
    s->njobs = 0;
    s->nstalled = 0;
}

/* Queue-level error: the rings cannot be trusted, halt until RESET. */
static void hmm_gpu_fatal(HmmGpuState *s, uint32_t err, uint64_t addr,
                          const char *what)
{
    s->status |= HMM_GPU_STATUS_FATAL;
    s->status &= ~HMM_GPU_STATUS_BUSY;
    hmm_gpu_free_jobs(s);
    qemu_bh_cancel(s->bh);
    trace_hmm_gpu_fatal(hmm_gpu_err_name(err), addr);
    hmm_gpu_set_error(s, err, addr, what);
}

/* ---- DMA with accounting and the host-side trace stream --------------- */

/* Write out the buffered dmatrace bytes, in order. */
static void hmm_gpu_trace_flush(HmmGpuState *s)
{
    if (s->tbuf_len) {
        /* A slow or closed consumer must not stop the device: ignore errors. */
        qemu_chr_fe_write_all(&s->dmatrace, s->tbuf, s->tbuf_len);
        s->tbuf_len = 0;
    }
}

static void hmm_gpu_trace_put(HmmGpuState *s, const void *data, size_t len)
{
    if (s->tbuf_len + len > HMM_GPU_TRACE_BUF) {
        hmm_gpu_trace_flush(s);
    }
    memcpy(s->tbuf + s->tbuf_len, data, len);
    s->tbuf_len += len;
}

static void hmm_gpu_trace_rec(HmmGpuState *s, uint8_t engine, uint8_t kind,
                              uint8_t dir, uint64_t addr, uint64_t len,
                              MemTxResult res, const struct hmm_gpu_cmd *c,
                              uint64_t va, uint64_t aux, uint8_t level)
{
    struct hmm_gpu_trace_rec rec;

    if (kind == HMM_GPU_TRACE_VRAM) {
        /* device-internal: not DMA, counted on its own */
        trace_hmm_gpu_vram(dir ? "write" : "read", addr, len, c->cmd_id, va);
        if (dir == HMM_GPU_DIR_READ) {
            s->cnt_vram_read_bytes += len;
        } else {
            s->cnt_vram_write_bytes += len;
        }
    } else if (dir != HMM_GPU_DIR_NONE) {
        trace_hmm_gpu_dma(hmm_gpu_kind_name(kind),
                          dir ? "write" : "read", addr, len, c->cmd_id, res);
        if (res != MEMTX_OK) {
            s->cnt_dma_errors++;
        } else if (dir == HMM_GPU_DIR_READ) {
            s->cnt_dma_read_bytes += len;
        } else {
            s->cnt_dma_write_bytes += len;
        }
    }

    if (!s->tbuf || !qemu_chr_fe_backend_connected(&s->dmatrace)) {
        return;
    }
    memset(&rec, 0, sizeof(rec));
    rec.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
    rec.addr = cpu_to_le64(addr);
    rec.len = cpu_to_le64(len);
    rec.cmd_id = cpu_to_le64(c->cmd_id);
    rec.va = cpu_to_le64(va);
    rec.aux = cpu_to_le64(aux);
    rec.ctx = cpu_to_le32(c->ctx);
    rec.engine = engine;
    rec.kind = kind;
    rec.dir = dir;
    rec.result = res;
    rec.level = level;
    hmm_gpu_trace_put(s, &rec, sizeof(rec));
}

static void hmm_gpu_trace_event(HmmGpuState *s, uint8_t kind,
                                const struct hmm_gpu_cmd *c, uint64_t va,
                                uint64_t aux)
{
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MMU, kind, HMM_GPU_DIR_NONE, 0, 0,
                      MEMTX_OK, c, va, aux, 0);
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
    hmm_gpu_trace_put(s, &hdr, sizeof(hdr));
    hmm_gpu_trace_flush(s);
}

/* The bus address a data DMA really uses (see HMM_GPU_INJECT_ADDR_BIT). */
static uint64_t hmm_gpu_data_addr(HmmGpuState *s, uint64_t addr)
{
    if (!s->inject_dma_fault) {
        return addr;
    }
    s->inject_dma_fault--;
    trace_hmm_gpu_inject_dma_fault(addr, addr ^ HMM_GPU_INJECT_ADDR_BIT);
    return addr ^ HMM_GPU_INJECT_ADDR_BIT;
}

/* Data DMA of job @j; @va is the virtual address the chunk belongs to. */
static MemTxResult hmm_gpu_data_read(HmmGpuState *s, HmmGpuJob *j,
                                     uint64_t addr, void *buf, uint64_t len,
                                     uint64_t va)
{
    MemTxResult res;

    addr = hmm_gpu_data_addr(s, addr);
    res = pci_dma_read(PCI_DEVICE(s), addr, buf, len);

    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_COPY, HMM_GPU_TRACE_DATA,
                      HMM_GPU_DIR_READ, addr, len, res, &j->cmd, va, 0, 0);
    return res;
}

static MemTxResult hmm_gpu_data_write(HmmGpuState *s, HmmGpuJob *j,
                                      uint64_t addr, const void *buf,
                                      uint64_t len, uint64_t va)
{
    MemTxResult res;

    addr = hmm_gpu_data_addr(s, addr);
    res = pci_dma_write(PCI_DEVICE(s), addr, buf, len);

    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_COPY, HMM_GPU_TRACE_DATA,
                      HMM_GPU_DIR_WRITE, addr, len, res, &j->cmd, va, 0, 0);
    return res;
}

/*
 * A VA job's access to a translated address: VRAM when the leaf had
 * PTE_VRAM (a memcpy and a VRAM trace record; cannot fail, the walk checked
 * the page lies inside VRAM), else system memory through DMA.
 */
static MemTxResult hmm_gpu_mem_read(HmmGpuState *s, HmmGpuJob *j, bool vram,
                                    uint64_t addr, void *buf, uint64_t len,
                                    uint64_t va)
{
    if (!vram) {
        return hmm_gpu_data_read(s, j, addr, buf, len, va);
    }
    memcpy(buf, s->vram + addr, len);
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_COPY, HMM_GPU_TRACE_VRAM,
                      HMM_GPU_DIR_READ, addr, len, MEMTX_OK, &j->cmd, va, 0, 0);
    return MEMTX_OK;
}

static MemTxResult hmm_gpu_mem_write(HmmGpuState *s, HmmGpuJob *j, bool vram,
                                     uint64_t addr, const void *buf,
                                     uint64_t len, uint64_t va)
{
    if (!vram) {
        return hmm_gpu_data_write(s, j, addr, buf, len, va);
    }
    memcpy(s->vram + addr, buf, len);
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_COPY, HMM_GPU_TRACE_VRAM,
                      HMM_GPU_DIR_WRITE, addr, len, MEMTX_OK, &j->cmd, va, 0,
                      0);
    return MEMTX_OK;
}

/* ---- job bookkeeping --------------------------------------------------- */

static HmmGpuJobList *hmm_gpu_job_list(HmmGpuState *s, HmmGpuJob *j)
{
    switch (j->state) {
    case JOB_STALLED:
        return &s->stalled;
    case JOB_DONE:
        return &s->done;
    default:
        return &s->runnable;
    }
}

static void hmm_gpu_job_move(HmmGpuState *s, HmmGpuJob *j,
                             HmmGpuJobState state)
{
    QTAILQ_REMOVE(hmm_gpu_job_list(s, j), j, link);
    if (j->state == JOB_STALLED) {
        s->nstalled--;
    }
    j->state = state;
    if (state == JOB_STALLED) {
        s->nstalled++;
    }
    QTAILQ_INSERT_TAIL(hmm_gpu_job_list(s, j), j, link);
}

/* Finish @j with @err (reported through REG_ERROR unless NONE). */
static void hmm_gpu_job_fail(HmmGpuState *s, HmmGpuJob *j, uint32_t err,
                             uint64_t addr, const char *what)
{
    j->status = err;
    hmm_gpu_set_error(s, err, addr, what);
    hmm_gpu_job_move(s, j, JOB_DONE);
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

/*
 * Every fetched command must have a completion slot, so in-flight jobs count
 * against the free space of the completion ring: stalled jobs can never make
 * the device overrun it.
 */
static bool hmm_gpu_can_fetch(HmmGpuState *s)
{
    uint32_t used = (s->cplq_tail - s->cplq_head) & (s->cplq_size - 1);

    return s->cmdq_head != s->cmdq_tail &&
           used + s->njobs < s->cplq_size - 1;
}

static void hmm_gpu_update_busy(HmmGpuState *s)
{
    if (!(s->status & HMM_GPU_STATUS_FATAL) &&
        (s->njobs || ((s->cmdq_ctrl & HMM_GPU_QCTRL_ENABLE) &&
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

/* ---- MMU: TLB ------------------------------------------------------------ */

static HmmGpuTlbEntry *hmm_gpu_tlb_slot(HmmGpuState *s, uint32_t ctx,
                                        uint64_t va, unsigned shift)
{
    uint64_t h = (va >> shift) * 0x9e3779b97f4a7c15ull ^ ctx ^ shift;

    return &s->tlb[(h ^ (h >> 29)) % HMM_GPU_TLB_SIZE];
}

static HmmGpuTlbEntry *hmm_gpu_tlb_lookup(HmmGpuState *s, uint32_t ctx,
                                          uint64_t va)
{
    static const unsigned shifts[] = { HMM_GPU_PAGE_SHIFT,
                                       HMM_GPU_HUGE_SHIFT };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(shifts); i++) {
        HmmGpuTlbEntry *e = hmm_gpu_tlb_slot(s, ctx, va, shifts[i]);

        if (e->valid && e->ctx == ctx && e->shift == shifts[i] &&
            e->va == (va & ~((1ull << shifts[i]) - 1))) {
            return e;
        }
    }
    return NULL;
}

static void hmm_gpu_tlb_insert(HmmGpuState *s, uint32_t ctx, uint64_t va,
                               unsigned shift, uint64_t pa, uint64_t perms,
                               bool vram)
{
    unsigned other = shift == HMM_GPU_PAGE_SHIFT ? HMM_GPU_HUGE_SHIFT :
                                                   HMM_GPU_PAGE_SHIFT;
    HmmGpuTlbEntry *e = hmm_gpu_tlb_slot(s, ctx, va, other);

    /* the page size changed: drop the other-sized entry for this address */
    if (e->valid && e->ctx == ctx && e->shift == other &&
        e->va == (va & ~((1ull << other) - 1))) {
        e->valid = false;
    }
    e = hmm_gpu_tlb_slot(s, ctx, va, shift);
    e->valid = true;
    e->ctx = ctx;
    e->shift = shift;
    e->va = va & ~((1ull << shift) - 1);
    e->pa = pa;
    e->perms = perms;
    e->vram = vram;
}

/* Drop entries of @ctx overlapping [va, va + len); len ~0: all of @ctx. */
static unsigned hmm_gpu_tlb_invalidate(HmmGpuState *s, uint32_t ctx,
                                       uint64_t va, uint64_t len)
{
    uint64_t last = (len == UINT64_MAX || va + len - 1 < va) ?
                    UINT64_MAX : va + len - 1;
    unsigned i, n = 0;

    for (i = 0; i < HMM_GPU_TLB_SIZE; i++) {
        HmmGpuTlbEntry *e = &s->tlb[i];
        uint64_t e_last = e->va + (1ull << e->shift) - 1;

        if (e->valid && e->ctx == ctx &&
            (len == UINT64_MAX || (e->va <= last && va <= e_last))) {
            e->valid = false;
            n++;
        }
    }
    return n;
}

static void hmm_gpu_tlb_flush(HmmGpuState *s)
{
    memset(s->tlb, 0, sizeof(s->tlb));
}

/* ---- MMU: context fetch, walk, faults ---------------------------------- */

typedef enum HmmGpuXlate {
    XLATE_OK,
    XLATE_STALL,            /* the job stalled on a fault */
    XLATE_FAILED,           /* the job failed (j->status set) */
} HmmGpuXlate;

static uint16_t hmm_gpu_alloc_token(HmmGpuState *s)
{
    HmmGpuJob *j;
    bool busy;

    /* tokens are never 0; skip one still held by a stalled job */
    do {
        s->next_token++;
        if (s->next_token == 0) {
            s->next_token = 1;
            s->tokens_wrapped = true;
        }
        busy = false;
        QTAILQ_FOREACH(j, &s->stalled, link) {
            if (j->token == s->next_token) {
                busy = true;
                break;
            }
        }
    } while (busy);
    return s->next_token;
}

static HmmGpuXlate hmm_gpu_fault(HmmGpuState *s, HmmGpuJob *j, uint64_t va,
                                 uint8_t access, uint8_t reason)
{
    trace_hmm_gpu_fault(j->cmd.cmd_id, j->cmd.ctx, va, access, reason);
    if (!(s->faultq_ctrl & HMM_GPU_QCTRL_ENABLE)) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_FAULT, va,
                         "translation fault with the fault queue disabled");
        return XLATE_FAILED;
    }
    j->fault_va = va & HMM_GPU_PAGE_MASK;
    j->fault_access = access;
    j->fault_reason = reason;
    j->token = hmm_gpu_alloc_token(s);
    /*
     * Posted by the BH after the step: a failing record write is fatal and
     * frees every job, this one included, which the caller still uses.
     */
    j->rec_pending = true;
    hmm_gpu_job_move(s, j, JOB_STALLED);
    return XLATE_STALL;
}

static bool hmm_gpu_faultq_full(HmmGpuState *s)
{
    return ((s->faultq_tail + 1) & (s->faultq_size - 1)) == s->faultq_head;
}

/*
 * Write the records of stalled jobs that have none in the ring yet, oldest
 * first, as far as the ring has room; the rest wait for FAULTQ_HEAD.
 */
static void hmm_gpu_post_faults(HmmGpuState *s)
{
    HmmGpuJob *j;
    bool posted = false;

    if (!(s->faultq_ctrl & HMM_GPU_QCTRL_ENABLE) ||
        (s->status & HMM_GPU_STATUS_FATAL)) {
        return;
    }
    QTAILQ_FOREACH(j, &s->stalled, link) {
        uint64_t addr = s->faultq_base +
                        (uint64_t)s->faultq_tail * HMM_GPU_FAULT_SIZE;
        struct hmm_gpu_fault_rec rec;
        MemTxResult res;

        if (!j->rec_pending) {
            continue;
        }
        if (hmm_gpu_faultq_full(s)) {
            trace_hmm_gpu_faultq_full(s->faultq_head, s->faultq_tail);
            break;
        }
        memset(&rec, 0, sizeof(rec));
        rec.va = cpu_to_le64(j->fault_va);
        rec.cmd_id = cpu_to_le64(j->cmd.cmd_id);
        rec.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
        rec.ctx = cpu_to_le32(j->cmd.ctx);
        rec.token = cpu_to_le16(j->token);
        rec.access = j->fault_access;
        rec.reason = j->fault_reason;
        rec.engine = HMM_GPU_ENGINE_MMU;
        res = pci_dma_write(PCI_DEVICE(s), addr, &rec, sizeof(rec));
        hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MMU, HMM_GPU_TRACE_FAULT_WRITE,
                          HMM_GPU_DIR_WRITE, addr, sizeof(rec), res, &j->cmd,
                          j->fault_va, j->token, 0);
        if (res != MEMTX_OK) {
            hmm_gpu_fatal(s, HMM_GPU_ERR_FAULTQ_WRITE, addr,
                          "fault record write failed");
            return;
        }
        trace_hmm_gpu_fault_post(j->token, j->cmd.cmd_id, j->fault_va,
                                 s->faultq_tail);
        j->rec_pending = false;
        s->faultq_tail = (s->faultq_tail + 1) & (s->faultq_size - 1);
        s->cnt_faults_raised++;
        posted = true;
    }
    if (posted) {
        hmm_gpu_raise(s, HMM_GPU_INTR_FAULT, s->vec_fault, true);
    }
}

/* Load the job's context descriptor (once per job). */
static HmmGpuXlate hmm_gpu_load_ctx(HmmGpuState *s, HmmGpuJob *j)
{
    uint32_t ctx = j->cmd.ctx;
    struct hmm_gpu_ctx_desc d;
    uint64_t addr;
    MemTxResult res;

    if (!(s->mmu_ctrl & HMM_GPU_MMU_ENABLE) || ctx >= s->ctx_count) {
        trace_hmm_gpu_bad_ctx(j->cmd.cmd_id, ctx, s->mmu_ctrl, 0);
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_BAD_CTX, ctx,
                         "VA job with the MMU disabled or ctx out of range");
        return XLATE_FAILED;
    }
    addr = s->ctx_base + (uint64_t)ctx * HMM_GPU_CTX_SIZE;
    res = pci_dma_read(PCI_DEVICE(s), addr, &d, sizeof(d));
    d.pt_root = le64_to_cpu(d.pt_root);
    d.flags = le32_to_cpu(d.flags);
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MMU, HMM_GPU_TRACE_CTX_FETCH,
                      HMM_GPU_DIR_READ, addr, sizeof(d), res, &j->cmd, 0,
                      res == MEMTX_OK ? d.pt_root : 0, 0);
    if (res != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_PTW, addr,
                         "context descriptor read failed");
        return XLATE_FAILED;
    }
    if (!(d.flags & HMM_GPU_CTX_VALID) || (d.flags & ~HMM_GPU_CTX_VALID) ||
        (d.pt_root & ~HMM_GPU_PTE_ADDR_MASK)) {
        trace_hmm_gpu_bad_ctx(j->cmd.cmd_id, ctx, d.flags, d.pt_root);
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_BAD_CTX, ctx,
                         "context invalid, reserved flags or unaligned root");
        return XLATE_FAILED;
    }
    j->pt_root = d.pt_root;
    j->ctx_loaded = true;
    return XLATE_OK;
}

static bool hmm_gpu_perm_ok(uint64_t perms, uint8_t access)
{
    switch (access) {
    case HMM_GPU_ACCESS_READ:
        return perms & HMM_GPU_PTE_READ;
    case HMM_GPU_ACCESS_WRITE:
        return perms & HMM_GPU_PTE_WRITE;
    default:
        return (perms & (HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC)) ==
               (HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC);
    }
}

static HmmGpuXlate hmm_gpu_bad_pte(HmmGpuState *s, HmmGpuJob *j,
                                   uint64_t addr, uint64_t va, int level,
                                   uint64_t pte, const char *why)
{
    trace_hmm_gpu_bad_pte(j->cmd.cmd_id, va, level, addr, pte, why);
    hmm_gpu_job_fail(s, j, HMM_GPU_ERR_BAD_PTE, addr, why);
    return XLATE_FAILED;
}

/*
 * Walk the 4-level table for @va. At most four entry reads, so tables that
 * loop back on themselves just yield a (probably malformed) leaf.
 */
static HmmGpuXlate hmm_gpu_walk(HmmGpuState *s, HmmGpuJob *j, uint64_t va,
                                uint8_t access, HmmGpuTlbEntry *out)
{
    uint64_t table = j->pt_root;
    int level;

    for (level = HMM_GPU_PT_LEVELS - 1; level >= 0; level--) {
        unsigned idx = (va >> HMM_GPU_PT_SHIFT(level)) &
                       (HMM_GPU_PT_ENTRIES - 1);
        uint64_t addr = table + idx * sizeof(uint64_t);
        uint64_t pte = 0;
        MemTxResult res;

        res = pci_dma_read(PCI_DEVICE(s), addr, &pte, sizeof(pte));
        pte = le64_to_cpu(pte);
        s->cnt_ptw_reads++;
        hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MMU, HMM_GPU_TRACE_PTW,
                          HMM_GPU_DIR_READ, addr, sizeof(pte), res, &j->cmd,
                          va, res == MEMTX_OK ? pte : 0, level);
        trace_hmm_gpu_ptw(j->cmd.cmd_id, va, level, addr, pte);
        if (res != MEMTX_OK) {
            trace_hmm_gpu_ptw_error(j->cmd.cmd_id, va, level, addr);
            hmm_gpu_job_fail(s, j, HMM_GPU_ERR_PTW, addr,
                             "page-table entry read failed");
            return XLATE_FAILED;
        }
        if (!(pte & HMM_GPU_PTE_VALID)) {
            return hmm_gpu_fault(s, j, va, access, HMM_GPU_FAULT_NOT_PRESENT);
        }
        if (pte & HMM_GPU_PTE_RSVD) {
            return hmm_gpu_bad_pte(s, j, addr, va, level, pte,
                                   "page-table entry with reserved bits");
        }
        if ((pte & HMM_GPU_PTE_LEAF) && level > 1) {
            return hmm_gpu_bad_pte(s, j, addr, va, level, pte,
                                   "PTE_LEAF above level 1");
        }
        if (level == 0 || (pte & HMM_GPU_PTE_LEAF)) {
            unsigned shift = level ? HMM_GPU_HUGE_SHIFT : HMM_GPU_PAGE_SHIFT;
            uint64_t pa = pte & HMM_GPU_PTE_ADDR_MASK;
            bool vram = pte & HMM_GPU_PTE_VRAM;

            if (pa & ((1ull << shift) - 1)) {
                return hmm_gpu_bad_pte(s, j, addr, va, level, pte,
                                       "2 MiB leaf address not aligned");
            }
            /* vram_size is a multiple of 2 MiB: whole pages or none */
            if (vram && pa >= s->vram_size) {
                return hmm_gpu_bad_pte(s, j, addr, va, level, pte,
                                       "PTE_VRAM leaf beyond vram-size");
            }
            hmm_gpu_tlb_insert(s, j->cmd.ctx, va, shift, pa,
                               pte & HMM_GPU_PTE_PERMS, vram);
            out->shift = shift;
            out->pa = pa;
            out->perms = pte & HMM_GPU_PTE_PERMS;
            out->vram = vram;
            return XLATE_OK;
        }
        if (pte & HMM_GPU_PTE_VRAM) {
            /* tables live in system memory */
            return hmm_gpu_bad_pte(s, j, addr, va, level, pte,
                                   "PTE_VRAM in a table entry");
        }
        table = pte & HMM_GPU_PTE_ADDR_MASK;
    }
    g_assert_not_reached();
}

/*
 * Translate @va for @access. On success *pa is the bus address (a VRAM
 * offset if *vram) and *avail the bytes from @va to the end of its page.
 * A TLB hit without the needed permission re-walks: the driver may have
 * upgraded the PTE (faults are never cached, so only downgrades need
 * TLB_INVALIDATE). VRAM translations are cached like the others.
 */
static HmmGpuXlate hmm_gpu_translate(HmmGpuState *s, HmmGpuJob *j,
                                     uint64_t va, uint8_t access,
                                     uint64_t *pa, uint64_t *avail,
                                     bool *vram)
{
    HmmGpuTlbEntry *e, walked;
    HmmGpuXlate r;

    if (!(s->mmu_ctrl & HMM_GPU_MMU_ENABLE)) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_BAD_CTX, j->cmd.ctx,
                         "VA job with the MMU disabled");
        return XLATE_FAILED;
    }
    if (va >= HMM_GPU_VA_LIMIT) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_FAULT, va,
                         "virtual address beyond VA_BITS");
        return XLATE_FAILED;
    }
    if (!j->ctx_loaded) {
        r = hmm_gpu_load_ctx(s, j);
        if (r != XLATE_OK) {
            return r;
        }
    }
    e = hmm_gpu_tlb_lookup(s, j->cmd.ctx, va);
    if (e && hmm_gpu_perm_ok(e->perms, access)) {
        s->cnt_tlb_hits++;
    } else {
        s->cnt_tlb_misses++;
        trace_hmm_gpu_tlb_miss(j->cmd.cmd_id, j->cmd.ctx, va);
        r = hmm_gpu_walk(s, j, va, access, &walked);
        if (r != XLATE_OK) {
            return r;
        }
        e = &walked;
        if (!hmm_gpu_perm_ok(e->perms, access)) {
            return hmm_gpu_fault(s, j, va, access, HMM_GPU_FAULT_PERMISSION);
        }
    }
    *pa = e->pa + (va & ((1ull << e->shift) - 1));
    *avail = (1ull << e->shift) - (va & ((1ull << e->shift) - 1));
    *vram = e->vram;
    return XLATE_OK;
}

/* ---- engine: command steps --------------------------------------------- */

/* Checks that need no DMA; returns the completion status. */
static uint32_t hmm_gpu_validate(const struct hmm_gpu_cmd *c,
                                 uint64_t *bad_addr)
{
    bool va_src = c->opcode == HMM_GPU_OP_READ_VA ||
                  c->opcode == HMM_GPU_OP_COPY_VA;
    bool has_src = c->opcode == HMM_GPU_OP_COPY ||
                   c->opcode == HMM_GPU_OP_READ_VA ||
                   c->opcode == HMM_GPU_OP_WRITE_VA ||
                   c->opcode == HMM_GPU_OP_COPY_VA;

    if (c->opcode > HMM_GPU_OP_MIGRATE) {
        return HMM_GPU_ERR_BAD_OPCODE;
    }
    if (c->flags & ~HMM_GPU_CMD_F_MASK) {
        return HMM_GPU_ERR_BAD_FLAGS;
    }
    switch (c->opcode) {
    case HMM_GPU_OP_NOP:
        return HMM_GPU_ERR_NONE;
    case HMM_GPU_OP_TLB_INVALIDATE:
        if (c->ctx >= HMM_GPU_MAX_CTX) {
            *bad_addr = c->ctx;
            return HMM_GPU_ERR_BAD_CTX;
        }
        return c->len ? HMM_GPU_ERR_NONE : HMM_GPU_ERR_BAD_LENGTH;
    case HMM_GPU_OP_MIGRATE:
        /* the direction is a mode field: other values are reserved */
        if (c->pattern != HMM_GPU_MIGRATE_TO_VRAM &&
            c->pattern != HMM_GPU_MIGRATE_FROM_VRAM) {
            return HMM_GPU_ERR_BAD_FLAGS;
        }
        if (c->len == 0 || (c->len & (HMM_GPU_PAGE_SIZE - 1)) ||
            c->len / HMM_GPU_PAGE_SIZE > HMM_GPU_MIGRATE_MAX_PAGES) {
            return HMM_GPU_ERR_BAD_LENGTH;
        }
        if (c->src + c->len / HMM_GPU_PAGE_SIZE * HMM_GPU_COPY_ENT_SIZE <
            c->src) {
            *bad_addr = c->src;
            return HMM_GPU_ERR_DMA_READ;
        }
        return HMM_GPU_ERR_NONE;
    case HMM_GPU_OP_ATOMIC_ADD:
    case HMM_GPU_OP_ATOMIC_CMPXCHG:
        if (c->len != 0 && c->len != HMM_GPU_ATOMIC_SIZE) {
            return HMM_GPU_ERR_BAD_LENGTH;
        }
        if (c->dst & (HMM_GPU_ATOMIC_SIZE - 1)) {
            *bad_addr = c->dst;
            return HMM_GPU_ERR_ALIGN;
        }
        return HMM_GPU_ERR_NONE;
    }
    if (c->len == 0 || c->len > HMM_GPU_MAX_XFER) {
        return HMM_GPU_ERR_BAD_LENGTH;
    }
    /* a range that wraps the 64-bit address space cannot be reached */
    if (has_src && c->src + c->len < c->src) {
        *bad_addr = c->src;
        return va_src ? HMM_GPU_ERR_FAULT : HMM_GPU_ERR_DMA_READ;
    }
    if (c->dst + c->len < c->dst) {
        *bad_addr = c->dst;
        return c->opcode == HMM_GPU_OP_READ_VA ||
               !hmm_gpu_is_va_op(c->opcode) ?
               HMM_GPU_ERR_DMA_WRITE : HMM_GPU_ERR_FAULT;
    }
    /* chunked copying would read bytes it already overwrote */
    if ((c->opcode == HMM_GPU_OP_COPY || c->opcode == HMM_GPU_OP_COPY_VA) &&
        c->src < c->dst + c->len && c->dst < c->src + c->len) {
        *bad_addr = c->dst;
        return HMM_GPU_ERR_OVERLAP;
    }
    return HMM_GPU_ERR_NONE;
}

static void hmm_gpu_fill_bounce(HmmGpuState *s, uint64_t pattern, uint64_t n)
{
    uint64_t pat = cpu_to_le64(pattern);
    uint64_t i;

    /* chunks start at multiples of 8 bytes of the job, see the callers */
    for (i = 0; i < n; i += sizeof(pat)) {
        memcpy(s->bounce + i, &pat, MIN(sizeof(pat), n - i));
    }
}

/* COPY / FILL: one chunk between bus addresses. */
static uint64_t hmm_gpu_step_bus(HmmGpuState *s, HmmGpuJob *j)
{
    struct hmm_gpu_cmd *c = &j->cmd;
    uint64_t n = MIN(HMM_GPU_CHUNK, c->len - j->bytes);
    uint64_t dst = c->dst + j->bytes;

    if (c->opcode == HMM_GPU_OP_COPY) {
        uint64_t src = c->src + j->bytes;

        if (hmm_gpu_data_read(s, j, src, s->bounce, n, 0) != MEMTX_OK) {
            hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, src,
                             "COPY source read");
            return n;
        }
    } else {
        hmm_gpu_fill_bounce(s, c->pattern, n);
    }
    if (hmm_gpu_data_write(s, j, dst, s->bounce, n, 0) != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_WRITE, dst, "data write");
        return n;
    }
    j->bytes += n;
    return n;
}

/*
 * READ_VA / WRITE_VA / FILL_VA / COPY_VA: translate, then move the part of
 * the rest of the job (at most @max bytes) that stays inside the translated
 * page(s). Translation and DMA happen in the same step, so a TLB_INVALIDATE
 * (which runs between steps) is a fence for every later DMA.
 */
static uint64_t hmm_gpu_step_va_page(HmmGpuState *s, HmmGpuJob *j,
                                     uint64_t max)
{
    struct hmm_gpu_cmd *c = &j->cmd;
    uint64_t n = MIN(max, c->len - j->bytes);
    uint64_t src = c->src + j->bytes, dst = c->dst + j->bytes;
    uint64_t src_va = 0, dst_va = 0, avail;
    bool src_vram = false, dst_vram = false;

    if (c->opcode == HMM_GPU_OP_READ_VA || c->opcode == HMM_GPU_OP_COPY_VA) {
        src_va = src;
        if (hmm_gpu_translate(s, j, src_va, HMM_GPU_ACCESS_READ, &src,
                              &avail, &src_vram) != XLATE_OK) {
            return 0;
        }
        n = MIN(n, avail);
    }
    if (c->opcode != HMM_GPU_OP_READ_VA) {
        dst_va = dst;
        if (hmm_gpu_translate(s, j, dst_va, HMM_GPU_ACCESS_WRITE, &dst,
                              &avail, &dst_vram) != XLATE_OK) {
            return 0;
        }
        n = MIN(n, avail);
    }
    if (c->opcode == HMM_GPU_OP_FILL_VA) {
        /* a chunk may start at any byte of the job: rotate the pattern */
        uint64_t pat = ror64(c->pattern, 8 * (j->bytes & 7));

        hmm_gpu_fill_bounce(s, pat, n);
    } else if (hmm_gpu_mem_read(s, j, src_vram, src, s->bounce, n,
                                src_va ? src_va : dst_va) != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, src, "VA job read");
        return n;
    }
    if (hmm_gpu_mem_write(s, j, dst_vram, dst, s->bounce, n,
                          dst_va ? dst_va : src_va) != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_WRITE, dst, "VA job write");
        return n;
    }
    j->bytes += n;
    return n;
}

/*
 * One step of a VA job: page after page (each translated, then moved) until
 * HMM_GPU_CHUNK bytes are done, the job is done, or it stalls or fails.
 */
static uint64_t hmm_gpu_step_va(HmmGpuState *s, HmmGpuJob *j)
{
    uint64_t moved = 0;

    while (moved < HMM_GPU_CHUNK && j->state == JOB_RUNNABLE &&
           j->bytes < j->cmd.len) {
        uint64_t n = hmm_gpu_step_va_page(s, j, HMM_GPU_CHUNK - moved);

        if (!n) {
            break;
        }
        moved += n;
    }
    return moved;
}

/*
 * ATOMIC_ADD / ATOMIC_CMPXCHG: read-modify-write of 8 bytes in one engine
 * step, so no other device job runs in between.
 */
static uint64_t hmm_gpu_step_atomic(HmmGpuState *s, HmmGpuJob *j)
{
    struct hmm_gpu_cmd *c = &j->cmd;
    uint64_t pa, avail, old = 0, new;
    bool vram;

    if (hmm_gpu_translate(s, j, c->dst, HMM_GPU_ACCESS_ATOMIC, &pa,
                          &avail, &vram) != XLATE_OK) {
        return 0;
    }
    if (hmm_gpu_mem_read(s, j, vram, pa, &old, sizeof(old), c->dst)
        != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, pa, "atomic read");
        return 0;
    }
    old = le64_to_cpu(old);
    if (c->opcode == HMM_GPU_OP_ATOMIC_ADD) {
        new = cpu_to_le64(old + c->pattern);
    } else {
        new = cpu_to_le64(c->pattern);
    }
    if ((c->opcode == HMM_GPU_OP_ATOMIC_ADD || old == c->arg2) &&
        hmm_gpu_mem_write(s, j, vram, pa, &new, sizeof(new), c->dst)
        != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_WRITE, pa, "atomic write");
        return 0;
    }
    trace_hmm_gpu_atomic(c->cmd_id, c->dst, pa, old);
    if (c->src) {
        uint64_t le_old = cpu_to_le64(old);

        if (hmm_gpu_data_write(s, j, c->src, &le_old, sizeof(le_old), 0)
            != MEMTX_OK) {
            hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_WRITE, c->src,
                             "atomic old-value write");
            return 0;
        }
    }
    j->bytes = HMM_GPU_ATOMIC_SIZE;
    return HMM_GPU_ATOMIC_SIZE;
}

/*
 * MIGRATE, first step: fetch the whole copy list (one DMA, at most 8 KiB)
 * and check every VRAM offset before any page moves, so a bad offset fails
 * the command with nothing copied.
 */
static bool hmm_gpu_migrate_load(HmmGpuState *s, HmmGpuJob *j)
{
    const struct hmm_gpu_cmd *c = &j->cmd;
    bool to_vram = c->pattern == HMM_GPU_MIGRATE_TO_VRAM;
    uint64_t npages = c->len / HMM_GPU_PAGE_SIZE;
    uint64_t size = npages * HMM_GPU_COPY_ENT_SIZE;
    MemTxResult res;
    uint64_t i;

    j->list = g_new(struct hmm_gpu_copy_ent, npages);
    res = pci_dma_read(PCI_DEVICE(s), c->src, j->list, size);
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MIGRATE, HMM_GPU_TRACE_COPY_LIST,
                      HMM_GPU_DIR_READ, c->src, size, res, c, 0, 0, 0);
    if (res != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, c->src,
                         "MIGRATE copy list read failed");
        return false;
    }
    for (i = 0; i < npages; i++) {
        struct hmm_gpu_copy_ent *e = &j->list[i];
        uint64_t off;

        e->src = le64_to_cpu(e->src);
        e->dst = le64_to_cpu(e->dst);
        off = to_vram ? e->dst : e->src;
        if ((off & (HMM_GPU_PAGE_SIZE - 1)) || off >= s->vram_size) {
            trace_hmm_gpu_bad_vram(c->cmd_id, i, off, s->vram_size);
            hmm_gpu_job_fail(s, j, HMM_GPU_ERR_BAD_VRAM, off,
                             "MIGRATE VRAM offset misaligned or beyond "
                             "vram-size");
            return false;
        }
    }
    trace_hmm_gpu_migrate(c->cmd_id, to_vram, npages, c->src);
    return true;
}

/*
 * MIGRATE: up to HMM_GPU_CHUNK bytes of pages per step. The system-memory
 * side of each page is one DMA (a DATA record with engine MIGRATE, aux =
 * VRAM offset), the VRAM side a memcpy. A page whose DMA fails is not
 * counted: the completion's bytes are the pages done before it.
 */
static uint64_t hmm_gpu_step_migrate(HmmGpuState *s, HmmGpuJob *j)
{
    const struct hmm_gpu_cmd *c = &j->cmd;
    bool to_vram = c->pattern == HMM_GPU_MIGRATE_TO_VRAM;
    uint64_t moved = 0;

    if (!j->list && !hmm_gpu_migrate_load(s, j)) {
        return 0;
    }
    while (moved < HMM_GPU_CHUNK && j->bytes < c->len) {
        const struct hmm_gpu_copy_ent *e =
            &j->list[j->bytes / HMM_GPU_PAGE_SIZE];
        uint64_t sys;
        MemTxResult res;

        if (to_vram) {
            /* via the bounce buffer: a failed read leaves VRAM untouched */
            sys = hmm_gpu_data_addr(s, e->src);
            res = pci_dma_read(PCI_DEVICE(s), sys, s->bounce,
                               HMM_GPU_PAGE_SIZE);
            hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MIGRATE, HMM_GPU_TRACE_DATA,
                              HMM_GPU_DIR_READ, sys, HMM_GPU_PAGE_SIZE,
                              res, c, 0, e->dst, 0);
            if (res != MEMTX_OK) {
                hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, e->src,
                                 "MIGRATE system-memory read failed");
                break;
            }
            memcpy(s->vram + e->dst, s->bounce, HMM_GPU_PAGE_SIZE);
            s->cnt_vram_write_bytes += HMM_GPU_PAGE_SIZE;
            s->cnt_migrate_to_vram++;
        } else {
            sys = hmm_gpu_data_addr(s, e->dst);
            res = pci_dma_write(PCI_DEVICE(s), sys, s->vram + e->src,
                                HMM_GPU_PAGE_SIZE);
            hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_MIGRATE, HMM_GPU_TRACE_DATA,
                              HMM_GPU_DIR_WRITE, sys, HMM_GPU_PAGE_SIZE,
                              res, c, 0, e->src, 0);
            if (res != MEMTX_OK) {
                hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_WRITE, e->dst,
                                 "MIGRATE system-memory write failed");
                break;
            }
            s->cnt_vram_read_bytes += HMM_GPU_PAGE_SIZE;
            s->cnt_migrate_from_vram++;
        }
        j->bytes += HMM_GPU_PAGE_SIZE;
        moved += HMM_GPU_PAGE_SIZE;
    }
    return moved;
}

/* Advance runnable job @j by one step; returns the data bytes moved. */
static uint64_t hmm_gpu_step(HmmGpuState *s, HmmGpuJob *j)
{
    uint64_t moved;

    switch (j->cmd.opcode) {
    case HMM_GPU_OP_COPY:
    case HMM_GPU_OP_FILL:
        moved = hmm_gpu_step_bus(s, j);
        break;
    case HMM_GPU_OP_ATOMIC_ADD:
    case HMM_GPU_OP_ATOMIC_CMPXCHG:
        moved = hmm_gpu_step_atomic(s, j);
        break;
    case HMM_GPU_OP_MIGRATE:
        moved = hmm_gpu_step_migrate(s, j);
        break;
    default:
        moved = hmm_gpu_step_va(s, j);
        break;
    }
    if (j->state == JOB_RUNNABLE) {
        if (j->bytes >= j->cmd.len) {
            hmm_gpu_job_move(s, j, JOB_DONE);
        } else {
            /* round robin: to the back of the line */
            hmm_gpu_job_move(s, j, JOB_RUNNABLE);
        }
    }
    return moved;
}

static void hmm_gpu_tlb_inv_cmd(HmmGpuState *s, HmmGpuJob *j)
{
    const struct hmm_gpu_cmd *c = &j->cmd;
    unsigned n = hmm_gpu_tlb_invalidate(s, c->ctx, c->dst, c->len);

    s->cnt_tlb_invalidations++;
    trace_hmm_gpu_tlb_inv(c->cmd_id, c->ctx, c->dst, c->len, n);
    hmm_gpu_trace_event(s, HMM_GPU_TRACE_EV_TLB_INV, c, c->dst, c->len);
}

/* Fetch the command at CMDQ_HEAD into a new job. False on a fatal error. */
static bool hmm_gpu_fetch(HmmGpuState *s)
{
    uint64_t addr = s->cmdq_base + (uint64_t)s->cmdq_head * HMM_GPU_CMD_SIZE;
    uint64_t bad_addr = addr;
    HmmGpuJob *j = g_new0(HmmGpuJob, 1);
    struct hmm_gpu_cmd *c = &j->cmd;
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
    c->arg2 = le64_to_cpu(c->arg2);
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_QUEUE, HMM_GPU_TRACE_CMD_FETCH,
                      HMM_GPU_DIR_READ, addr, sizeof(*c), res, c, 0, 0, 0);
    if (res != MEMTX_OK) {
        g_free(j);
        hmm_gpu_fatal(s, HMM_GPU_ERR_CMDQ_FETCH, addr, "command fetch failed");
        return false;
    }
    /* The slot is consumed: the driver may reuse it once HEAD moves on. */
    s->cmdq_head = (s->cmdq_head + 1) & (s->cmdq_size - 1);

    j->state = JOB_RUNNABLE;
    QTAILQ_INSERT_TAIL(&s->runnable, j, link);
    s->njobs++;
    trace_hmm_gpu_cmd_start(c->cmd_id, c->opcode, c->flags, c->ctx, c->src,
                            c->dst, c->len);
    j->status = hmm_gpu_validate(c, &bad_addr);
    if (j->status != HMM_GPU_ERR_NONE) {
        hmm_gpu_job_fail(s, j, j->status, bad_addr, "invalid command");
    } else if (c->opcode == HMM_GPU_OP_NOP) {
        hmm_gpu_job_move(s, j, JOB_DONE);
    } else if (c->opcode == HMM_GPU_OP_TLB_INVALIDATE) {
        /* runs at once, never queued behind (possibly stalled) jobs */
        hmm_gpu_tlb_inv_cmd(s, j);
        hmm_gpu_job_move(s, j, JOB_DONE);
    }
    return true;
}

/* Post the completion of done job @j and free it. False if fatal. */
static bool hmm_gpu_complete(HmmGpuState *s, HmmGpuJob *j)
{
    uint64_t addr = s->cplq_base + (uint64_t)s->cplq_tail * HMM_GPU_CPL_SIZE;
    struct hmm_gpu_cpl cpl;
    MemTxResult res;

    memset(&cpl, 0, sizeof(cpl));
    cpl.cmd_id = cpu_to_le64(j->cmd.cmd_id);
    cpl.status = cpu_to_le32(j->status);
    cpl.opcode = cpu_to_le16(j->cmd.opcode);
    cpl.phase = cpu_to_le16(s->cpl_phase);
    cpl.bytes = cpu_to_le64(j->bytes);
    cpl.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));

    res = pci_dma_write(PCI_DEVICE(s), addr, &cpl, sizeof(cpl));
    hmm_gpu_trace_rec(s, HMM_GPU_ENGINE_QUEUE, HMM_GPU_TRACE_CPL_WRITE,
                      HMM_GPU_DIR_WRITE, addr, sizeof(cpl), res, &j->cmd,
                      0, 0, 0);
    QTAILQ_REMOVE(&s->done, j, link);
    s->njobs--;
    if (res != MEMTX_OK) {
        s->cnt_cmds_failed++;
        hmm_gpu_job_free(j);
        hmm_gpu_fatal(s, HMM_GPU_ERR_CPLQ_WRITE, addr,
                      "completion write failed");
        return false;
    }
    trace_hmm_gpu_cmd_done(j->cmd.cmd_id, j->status, j->bytes,
                           s->cplq_tail, s->cpl_phase);
    if (j->status == HMM_GPU_ERR_NONE) {
        s->cnt_cmds_completed++;
        if (hmm_gpu_is_va_op(j->cmd.opcode)) {
            s->cnt_va_jobs_completed++;
        }
    } else {
        s->cnt_cmds_failed++;
    }
    s->cplq_tail = (s->cplq_tail + 1) & (s->cplq_size - 1);
    if (s->cplq_tail == 0) {
        s->cpl_phase ^= 1;
    }
    hmm_gpu_raise(s, HMM_GPU_INTR_CPL, s->vec_cpl,
                  j->cmd.flags & HMM_GPU_CMD_F_IRQ);
    hmm_gpu_job_free(j);
    return true;
}

#define HMM_GPU_ALIVE(s) \
    (!((s)->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s))

/*
 * The engine. Runs in a bottom half, never inside an MMIO write, and does a
 * bounded amount of work per run (see HMM_GPU_BH_*): fetch what the
 * completion ring has room for, give every runnable job one step in turn
 * until the byte budget is used, then post completions. Stalled jobs sit on
 * their own list, so they hold up neither fetching nor other jobs.
 */
static void hmm_gpu_bh(void *opaque)
{
    HmmGpuState *s = opaque;
    int64_t deadline = get_clock() + HMM_GPU_BH_NS;
    uint64_t bytes = 0;
    int cmds = 0;
    HmmGpuJob *j;

    hmm_gpu_post_faults(s);
    while (HMM_GPU_ALIVE(s) && cmds < HMM_GPU_BH_CMDS && hmm_gpu_can_fetch(s)) {
        if (!hmm_gpu_fetch(s)) {
            break;
        }
        cmds++;
    }
    while (HMM_GPU_ALIVE(s) && bytes < HMM_GPU_BH_BYTES &&
           !QTAILQ_EMPTY(&s->runnable)) {
        /* a step that stalls or fails moves no data: still count it */
        bytes += MAX(hmm_gpu_step(s, QTAILQ_FIRST(&s->runnable)), 64);
        if (get_clock() >= deadline) {
            break;
        }
    }
    hmm_gpu_post_faults(s);
    while (HMM_GPU_ALIVE(s) && (j = QTAILQ_FIRST(&s->done))) {
        /* the driver may have moved CPLQ_HEAD backwards meanwhile */
        if (hmm_gpu_cplq_full(s)) {
            trace_hmm_gpu_cplq_full(s->cplq_head, s->cplq_tail);
            break;
        }
        if (!hmm_gpu_complete(s, j)) {
            break;
        }
    }
    if (HMM_GPU_ALIVE(s) &&
        (!QTAILQ_EMPTY(&s->runnable) || hmm_gpu_can_fetch(s) ||
         (!QTAILQ_EMPTY(&s->done) && !hmm_gpu_cplq_full(s)))) {
        qemu_bh_schedule(s->bh);
    }
    hmm_gpu_update_busy(s);
    hmm_gpu_trace_flush(s);
}

/*
 * A doorbell or a replay: run the engine at once, inside the MMIO write (as
 * e1000 transmits from its TDT write), rather than when the main loop gets
 * round to the bottom half. Under TCG on a busy host that wait was most of
 * every small command's latency (a CPU fault on a VRAM page is one MIGRATE
 * round trip). The engine budget bounds the time spent here; the rest
 * continues in the bottom half. The BQL serialises this with the BH, and the
 * device's reentrancy guard is engaged, so DMA aimed at our own BAR still
 * fails like it does from the BH.
 */
static void hmm_gpu_run_now(HmmGpuState *s)
{
    hmm_gpu_update_busy(s);
    if (!(s->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s)) {
        hmm_gpu_bh(s);
    }
}

/* ---- faults: replay and cancel (register side) --------------------------- */

static void hmm_gpu_fault_replay(HmmGpuState *s)
{
    static const struct hmm_gpu_cmd none;
    HmmGpuJob *j;
    unsigned n = 0;

    while ((j = QTAILQ_FIRST(&s->stalled))) {
        /* an unposted record is dropped: a re-walk that faults makes anew */
        j->rec_pending = false;
        j->token = 0;
        hmm_gpu_job_move(s, j, JOB_RUNNABLE);
        n++;
    }
    s->cnt_faults_replayed += n;
    trace_hmm_gpu_replay(n);
    hmm_gpu_trace_event(s, HMM_GPU_TRACE_EV_REPLAY, &none, 0, n);
    hmm_gpu_run_now(s);
}

static void hmm_gpu_fault_cancel(HmmGpuState *s, uint32_t token)
{
    HmmGpuJob *j;

    QTAILQ_FOREACH(j, &s->stalled, link) {
        if (!j->rec_pending && j->token && j->token == token) {
            trace_hmm_gpu_cancel(token, j->cmd.cmd_id, j->fault_va);
            hmm_gpu_trace_event(s, HMM_GPU_TRACE_EV_CANCEL, &j->cmd,
                                j->fault_va, token);
            s->cnt_faults_cancelled++;
            /*
             * The driver asked for this outcome: the guest sees ERR_FAULT
             * like any failed command, but it is no driver mistake, so it
             * is neither logged nor counted as a guest error.
             */
            j->status = HMM_GPU_ERR_FAULT;
            hmm_gpu_signal_error(s, HMM_GPU_ERR_FAULT, j->fault_va,
                                 "faulting job cancelled");
            hmm_gpu_job_move(s, j, JOB_DONE);
            hmm_gpu_kick(s);
            return;
        }
    }
    /*
     * A token the device issued whose job is no longer stalled is a stale
     * cancel, not a driver mistake: a record can reach the fault queue after
     * the driver drained it but before its FAULT_REPLAY, which then released
     * that job too. No driver can tell, so the cancel is just dropped.
     */
    if (token && token <= UINT16_MAX &&
        (s->tokens_wrapped || token <= s->next_token)) {
        s->cnt_stale_cancels++;
        trace_hmm_gpu_stale_cancel(token);
        return;
    }
    trace_hmm_gpu_bad_token(token);
    hmm_gpu_set_error(s, HMM_GPU_ERR_BAD_TOKEN, token,
                      "FAULT_CANCEL token was never issued");
}

/*
 * Disabling the fault queue: records not yet written can no longer be, so
 * those jobs fail; jobs whose record the driver has stay stalled.
 */
static void hmm_gpu_fail_unposted(HmmGpuState *s)
{
    HmmGpuJob *j, *next;

    QTAILQ_FOREACH_SAFE(j, &s->stalled, link, next) {
        if (j->rec_pending) {
            j->rec_pending = false;
            hmm_gpu_job_fail(s, j, HMM_GPU_ERR_FAULT, j->fault_va,
                             "fault queue disabled with a fault pending");
        }
    }
    hmm_gpu_kick(s);
}

/* ---- reset ------------------------------------------------------------- */

static void hmm_gpu_soft_reset(HmmGpuState *s, const char *why)
{
    trace_hmm_gpu_reset(why);
    hmm_gpu_trace_flush(s);
    qemu_bh_cancel(s->bh);
    /* stalled and in-flight jobs vanish without completions */
    hmm_gpu_free_jobs(s);
    hmm_gpu_tlb_flush(s);
    s->status = HMM_GPU_STATUS_READY;
    s->error = HMM_GPU_ERR_NONE;
    s->error_addr = 0;
    s->intr_status = 0;
    s->intr_mask = 0;
    s->vec_cpl = HMM_GPU_VEC_CPL_DEFAULT;
    s->vec_err = HMM_GPU_VEC_ERR_DEFAULT;
    s->vec_fault = HMM_GPU_VEC_FAULT_DEFAULT;
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
    s->ctx_base = 0;
    s->ctx_count = 0;
    s->mmu_ctrl = 0;
    s->faultq_base = 0;
    s->faultq_size = 0;
    s->faultq_head = 0;
    s->faultq_tail = 0;
    s->faultq_ctrl = 0;
    s->next_token = 0;
    s->tokens_wrapped = false;
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
        val = HMM_GPU_CAP_DMA_ENGINE | HMM_GPU_CAP_MMU | HMM_GPU_CAP_VRAM;
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
    case HMM_GPU_REG_CTX_BASE_LO:
        val = (uint32_t)s->ctx_base;
        break;
    case HMM_GPU_REG_CTX_BASE_HI:
        val = s->ctx_base >> 32;
        break;
    case HMM_GPU_REG_CTX_COUNT:
        val = s->ctx_count;
        break;
    case HMM_GPU_REG_MMU_CTRL:
        val = s->mmu_ctrl;
        break;
    case HMM_GPU_REG_TLB_ENTRIES:
        val = HMM_GPU_TLB_SIZE;
        break;
    case HMM_GPU_REG_FAULTQ_BASE_LO:
        val = (uint32_t)s->faultq_base;
        break;
    case HMM_GPU_REG_FAULTQ_BASE_HI:
        val = s->faultq_base >> 32;
        break;
    case HMM_GPU_REG_FAULTQ_SIZE:
        val = s->faultq_size;
        break;
    case HMM_GPU_REG_FAULTQ_HEAD:
        val = s->faultq_head;
        break;
    case HMM_GPU_REG_FAULTQ_TAIL:
        val = s->faultq_tail;
        break;
    case HMM_GPU_REG_FAULTQ_CTRL:
        val = s->faultq_ctrl;
        break;
    case HMM_GPU_REG_FAULT_REPLAY:
    case HMM_GPU_REG_FAULT_CANCEL:
        val = 0;                                /* write-only */
        break;
    case HMM_GPU_REG_VEC_FAULT:
        val = s->vec_fault;
        break;
    case HMM_GPU_REG_STALLED:
        val = s->nstalled;
        break;
    case HMM_GPU_REG_VRAM_SIZE_LO:
        val = (uint32_t)s->vram_size;
        break;
    case HMM_GPU_REG_VRAM_SIZE_HI:
        val = s->vram_size >> 32;
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
    /* enabling or disabling starts the ring over, dropping in-flight jobs */
    s->cmdq_head = 0;
    s->cmdq_tail = 0;
    s->cmdq_ctrl = val;
    hmm_gpu_free_jobs(s);
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

static void hmm_gpu_write_faultq_ctrl(HmmGpuState *s, uint32_t val)
{
    val &= HMM_GPU_QCTRL_ENABLE;
    if (val == (s->faultq_ctrl & HMM_GPU_QCTRL_ENABLE)) {
        return;
    }
    if (val) {
        if (!hmm_gpu_ring_ok(s->faultq_base, s->faultq_size)) {
            hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, s->faultq_base,
                          "fault queue enabled with bad base/size");
            return;
        }
        trace_hmm_gpu_queue_enable("faultq", s->faultq_base, s->faultq_size);
    }
    s->faultq_head = 0;
    s->faultq_tail = 0;
    s->faultq_ctrl = val;
    if (!val) {
        hmm_gpu_fail_unposted(s);
    }
}

static void hmm_gpu_write_mmu_ctrl(HmmGpuState *s, uint32_t val)
{
    val &= HMM_GPU_MMU_ENABLE;
    if (val == (s->mmu_ctrl & HMM_GPU_MMU_ENABLE)) {
        return;
    }
    if (val && ((s->ctx_base & (HMM_GPU_RING_ALIGN - 1)) ||
                s->ctx_count == 0 || s->ctx_count > HMM_GPU_MAX_CTX)) {
        hmm_gpu_fatal(s, HMM_GPU_ERR_QUEUE_CONFIG, s->ctx_base,
                      "MMU enabled with bad context table base/count");
        return;
    }
    trace_hmm_gpu_mmu_enable(val, s->ctx_base, s->ctx_count);
    /* the context table may differ next time: start from an empty TLB */
    hmm_gpu_tlb_flush(s);
    s->mmu_ctrl = val;
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

static void hmm_gpu_mmio_write_reg(HmmGpuState *s, hwaddr addr, uint64_t val,
                                   unsigned size)
{
    bool cmdq_on = s->cmdq_ctrl & HMM_GPU_QCTRL_ENABLE;
    bool cplq_on = s->cplq_ctrl & HMM_GPU_QCTRL_ENABLE;
    bool faultq_on = s->faultq_ctrl & HMM_GPU_QCTRL_ENABLE;
    bool mmu_on = s->mmu_ctrl & HMM_GPU_MMU_ENABLE;

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
    case HMM_GPU_REG_TLB_ENTRIES:
    case HMM_GPU_REG_FAULTQ_TAIL:
    case HMM_GPU_REG_STALLED:
    case HMM_GPU_REG_VRAM_SIZE_LO:
    case HMM_GPU_REG_VRAM_SIZE_HI:
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
        s->intr_mask = val & (HMM_GPU_INTR_CPL | HMM_GPU_INTR_ERROR |
                              HMM_GPU_INTR_FAULT);
        hmm_gpu_update_intx(s);
        break;
    case HMM_GPU_REG_VEC_CPL:
        hmm_gpu_write_vector(s, addr, &s->vec_cpl, val);
        break;
    case HMM_GPU_REG_VEC_ERR:
        hmm_gpu_write_vector(s, addr, &s->vec_err, val);
        break;
    case HMM_GPU_REG_VEC_FAULT:
        hmm_gpu_write_vector(s, addr, &s->vec_fault, val);
        break;
    case HMM_GPU_REG_CTX_BASE_LO:
    case HMM_GPU_REG_CTX_BASE_HI:
    case HMM_GPU_REG_CTX_COUNT:
        if (mmu_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "context table reconfigured while MMU enabled");
        } else if (addr == HMM_GPU_REG_CTX_BASE_LO) {
            s->ctx_base = deposit64(s->ctx_base, 0, 32, val);
        } else if (addr == HMM_GPU_REG_CTX_BASE_HI) {
            s->ctx_base = deposit64(s->ctx_base, 32, 32, val);
        } else {
            s->ctx_count = val;
        }
        break;
    case HMM_GPU_REG_MMU_CTRL:
        hmm_gpu_write_mmu_ctrl(s, val);
        break;
    case HMM_GPU_REG_FAULTQ_BASE_LO:
    case HMM_GPU_REG_FAULTQ_BASE_HI:
    case HMM_GPU_REG_FAULTQ_SIZE:
        if (faultq_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "fault queue reconfigured while enabled");
        } else if (addr == HMM_GPU_REG_FAULTQ_BASE_LO) {
            s->faultq_base = deposit64(s->faultq_base, 0, 32, val);
        } else if (addr == HMM_GPU_REG_FAULTQ_BASE_HI) {
            s->faultq_base = deposit64(s->faultq_base, 32, 32, val);
        } else {
            s->faultq_size = val;
        }
        break;
    case HMM_GPU_REG_FAULTQ_CTRL:
        hmm_gpu_write_faultq_ctrl(s, val);
        break;
    case HMM_GPU_REG_FAULTQ_HEAD:
        if (!faultq_on) {
            hmm_gpu_reg_error(s, addr, val, size,
                              "FAULTQ_HEAD write while fault queue disabled");
        } else if (val >= s->faultq_size ||
                   ((val - s->faultq_head) & (s->faultq_size - 1)) >
                   ((s->faultq_tail - s->faultq_head) &
                    (s->faultq_size - 1))) {
            hmm_gpu_fatal(s, HMM_GPU_ERR_DOORBELL, val,
                          "FAULTQ_HEAD out of range");
        } else {
            s->faultq_head = val;
            hmm_gpu_kick(s);                    /* held records may fit now */
        }
        break;
    case HMM_GPU_REG_FAULT_REPLAY:
        hmm_gpu_fault_replay(s);
        break;
    case HMM_GPU_REG_FAULT_CANCEL:
        hmm_gpu_fault_cancel(s, val);
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
            hmm_gpu_run_now(s);
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

static void hmm_gpu_mmio_write(void *opaque, hwaddr addr, uint64_t val,
                               unsigned size)
{
    HmmGpuState *s = opaque;

    hmm_gpu_mmio_write_reg(s, addr, val, size);
    /* events (replay, cancel) recorded by the write */
    hmm_gpu_trace_flush(s);
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

    if (msix_init_exclusive_bar(pdev, HMM_GPU_NUM_VECTORS, HMM_GPU_BAR_MSIX,
                                errp)) {
        goto fail;
    }
    /* without msix_vector_use, msix_notify silently drops the message */
    for (i = 0; i < HMM_GPU_NUM_VECTORS; i++) {
        msix_vector_use(pdev, i);
    }

    s->bounce = g_malloc0(HMM_GPU_CHUNK);
    s->tbuf = g_malloc(HMM_GPU_TRACE_BUF);
    s->tbuf_len = 0;
    /* guarded: DMA that lands on our own BAR fails instead of re-entering */
    s->bh = qemu_bh_new_guarded(hmm_gpu_bh, s,
                                &DEVICE(pdev)->mem_reentrancy_guard);
    hmm_gpu_soft_reset(s, "realize");
    hmm_gpu_trace_header(s);
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
    hmm_gpu_trace_flush(s);
    g_free(s->tbuf);
    s->tbuf = NULL;
    g_free(s->bounce);
    s->bounce = NULL;
    qemu_anon_ram_free(s->vram, s->vram_size);
    s->vram = NULL;
    msix_unuse_all_vectors(pdev);
    msix_uninit_exclusive_bar(pdev);
}

static void hmm_gpu_instance_init(Object *obj)
{
    HmmGpuState *s = HMM_GPU(obj);

    QTAILQ_INIT(&s->runnable);
    QTAILQ_INIT(&s->stalled);
    QTAILQ_INIT(&s->done);

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
    object_property_add_uint64_ptr(obj, "faults-raised",
                                   &s->cnt_faults_raised, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "faults-replayed",
                                   &s->cnt_faults_replayed,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "faults-cancelled",
                                   &s->cnt_faults_cancelled,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "stale-cancels",
                                   &s->cnt_stale_cancels,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "tlb-hits",
                                   &s->cnt_tlb_hits, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "tlb-misses",
                                   &s->cnt_tlb_misses, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "tlb-invalidations",
                                   &s->cnt_tlb_invalidations,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "ptw-reads",
                                   &s->cnt_ptw_reads, OBJ_PROP_FLAG_READ);
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
    /* qom-set N: the next N data DMAs go astray (HMM_GPU_INJECT_ADDR_BIT) */
    object_property_add_uint32_ptr(obj, "inject-dma-fault",
                                   &s->inject_dma_fault,
                                   OBJ_PROP_FLAG_READWRITE);
}

/* Ring state lives in guest memory and in-flight DMA; not worth migrating. */
static const VMStateDescription vmstate_hmm_gpu = {
    .name = TYPE_HMM_GPU,
    .unmigratable = 1,
};

static const Property hmm_gpu_props[] = {
    DEFINE_PROP_CHR("dmatrace", HmmGpuState, dmatrace),
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

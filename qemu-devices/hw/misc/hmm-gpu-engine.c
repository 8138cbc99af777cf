/*
 * hmm-gpu: the engine
 *
 * Fetches commands from the command ring into jobs, advances runnable jobs
 * round-robin one bounded step at a time (COPY/FILL on bus addresses, VA
 * jobs and atomics through the device MMU, MIGRATE between system memory
 * and VRAM), and posts completions. Runs in a bottom half, or straight
 * from a doorbell or replay write (hmm_gpu_run_now), with a bounded amount
 * of work per run.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qemu/host-utils.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "hmm-gpu.h"
#include "hmm-common/dma.h"
#include "trace.h"

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
 * Work done inside a doorbell or replay write: the vCPU that wrote stays in
 * that one instruction meanwhile, so only what a short command needs (a TLB
 * invalidate, a MIGRATE of a few pages, a small VA job); the rest goes on
 * in the bottom half. 50 us is a few hundred cycles of real PCIe latency
 * scaled to TCG, far below anything a guest's latency tracer flags.
 */
#define HMM_GPU_MMIO_NS         (50 * SCALE_US)
#define HMM_GPU_MMIO_BYTES      (256 * KiB)

#define HMM_GPU_ATOMIC_SIZE     8
#define HMM_GPU_COPY_ENT_SIZE   sizeof(struct hmm_gpu_copy_ent)

static bool hmm_gpu_is_va_op(uint8_t op)
{
    return op >= HMM_GPU_OP_READ_VA && op <= HMM_GPU_OP_ATOMIC_CMPXCHG;
}

/* ---- job bookkeeping --------------------------------------------------- */

static void hmm_gpu_job_free(HmmGpuJob *j)
{
    g_free(j->list);
    g_free(j);
}

static HmmGpuJob *hmm_gpu_job_of(HmmMmuJob *mj)
{
    return container_of(mj, HmmGpuJob, mj);
}

void hmm_gpu_free_jobs(HmmGpuState *s)
{
    HmmGpuJobList *lists[] = { &s->runnable, &s->done };
    HmmGpuJob *j, *next;
    HmmMmuJob *mj;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(lists); i++) {
        QTAILQ_FOREACH_SAFE(j, lists[i], link, next) {
            QTAILQ_REMOVE(lists[i], j, link);
            hmm_gpu_job_free(j);
        }
    }
    while ((mj = hmm_fault_unstall(&s->mmu, false))) {
        hmm_gpu_job_free(hmm_gpu_job_of(mj));
    }
    s->njobs = 0;
}

static HmmGpuJobList *hmm_gpu_job_list(HmmGpuState *s, HmmGpuJobState state)
{
    return state == JOB_DONE ? &s->done : &s->runnable;
}

/*
 * Move @j to the back of the list of @state. A stalled job is on the MMU's
 * fault queue instead, which links it when it stalls and unlinks it before
 * handing it back.
 */
static void hmm_gpu_job_move(HmmGpuState *s, HmmGpuJob *j,
                             HmmGpuJobState state)
{
    if (j->state != JOB_STALLED) {
        QTAILQ_REMOVE(hmm_gpu_job_list(s, j->state), j, link);
    }
    j->state = state;
    if (state != JOB_STALLED) {
        QTAILQ_INSERT_TAIL(hmm_gpu_job_list(s, state), j, link);
    }
}

/* Finish @j with @err, reported through ERROR. */
static void hmm_gpu_job_fail(HmmGpuState *s, HmmGpuJob *j, uint32_t err,
                             uint64_t addr, const char *what)
{
    j->status = err;
    hmm_guest_error(&s->core, err, addr, what);
    hmm_gpu_job_move(s, j, JOB_DONE);
}

/* Queue-level error: the rings cannot be trusted, halt until RESET. */
void hmm_gpu_fatal(HmmGpuState *s, uint32_t err, uint64_t addr,
                   const char *what)
{
    s->status |= HMM_GPU_STATUS_FATAL;
    s->status &= ~HMM_GPU_STATUS_BUSY;
    hmm_gpu_free_jobs(s);
    qemu_bh_cancel(s->bh);
    trace_hmm_gpu_fatal(hmm_gpu_err_name(err), addr);
    hmm_guest_error(&s->core, err, addr, what);
}

/* ---- memory access ----------------------------------------------------- */

/*
 * Data DMA of job @j (the system-memory side of COPY/FILL and VA jobs);
 * @va is the virtual address the chunk belongs to.
 */
static HmmDmaRec hmm_gpu_data_rec(HmmGpuState *s, HmmGpuJob *j,
                                  uint64_t addr, uint64_t len, uint64_t va)
{
    return (HmmDmaRec) {
        .engine = HMM_GPU_ENGINE_COPY,
        .kind = HMM_GPU_TRACE_DATA,
        .addr = hmm_dma_data_addr(&s->core, addr),
        .len = len,
        .cmd_id = j->cmd.cmd_id,
        .ctx = j->cmd.ctx,
        .va = va,
    };
}

static MemTxResult hmm_gpu_data_read(HmmGpuState *s, HmmGpuJob *j,
                                     uint64_t addr, void *buf, uint64_t len,
                                     uint64_t va)
{
    HmmDmaRec r = hmm_gpu_data_rec(s, j, addr, len, va);

    return hmm_dma_read(&s->core, &r, buf);
}

static MemTxResult hmm_gpu_data_write(HmmGpuState *s, HmmGpuJob *j,
                                      uint64_t addr, const void *buf,
                                      uint64_t len, uint64_t va)
{
    HmmDmaRec r = hmm_gpu_data_rec(s, j, addr, len, va);

    return hmm_dma_write(&s->core, &r, buf);
}

/* A VA job touched VRAM: not DMA, so traced and counted on its own. */
static void hmm_gpu_vram_note(HmmGpuState *s, HmmGpuJob *j, uint8_t dir,
                              uint64_t off, uint64_t len, uint64_t va)
{
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_COPY,
        .kind = HMM_GPU_TRACE_VRAM,
        .dir = dir,
        .addr = off,
        .len = len,
        .cmd_id = j->cmd.cmd_id,
        .ctx = j->cmd.ctx,
        .va = va,
        .res = MEMTX_OK,
    };

    trace_hmm_gpu_vram(dir ? "write" : "read", off, len, j->cmd.cmd_id, va);
    if (dir == HMM_GPU_DIR_READ) {
        s->cnt_vram_read_bytes += len;
    } else {
        s->cnt_vram_write_bytes += len;
    }
    hmm_dmatrace_record(&s->core.trace, &r);
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
    hmm_gpu_vram_note(s, j, HMM_GPU_DIR_READ, addr, len, va);
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
    hmm_gpu_vram_note(s, j, HMM_GPU_DIR_WRITE, addr, len, va);
    return MEMTX_OK;
}

/* ---- engine state ------------------------------------------------------ */

static bool hmm_gpu_queues_enabled(HmmGpuState *s)
{
    return s->cmdq.enabled && s->cplq.enabled;
}

/*
 * Every fetched command must have a completion slot, so in-flight jobs count
 * against the free space of the completion ring: stalled jobs can never make
 * the device overrun it.
 */
static bool hmm_gpu_can_fetch(HmmGpuState *s)
{
    return !hmm_ring_empty(&s->cmdq) &&
           hmm_ring_used(&s->cplq) + s->njobs < s->cplq.size - 1;
}

void hmm_gpu_update_busy(HmmGpuState *s)
{
    if (!(s->status & HMM_GPU_STATUS_FATAL) &&
        (s->njobs || (s->cmdq.enabled && !hmm_ring_empty(&s->cmdq)))) {
        s->status |= HMM_GPU_STATUS_BUSY;
    } else {
        s->status &= ~HMM_GPU_STATUS_BUSY;
    }
}

void hmm_gpu_kick(HmmGpuState *s)
{
    hmm_gpu_update_busy(s);
    if (!(s->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s)) {
        qemu_bh_schedule(s->bh);
    }
}

/* ---- translation ------------------------------------------------------- */

static uint32_t hmm_gpu_mmu_err(HmmMmuError err)
{
    switch (err) {
    case HMM_MMU_BAD_CTX:
        return HMM_GPU_ERR_BAD_CTX;
    case HMM_MMU_PTW:
        return HMM_GPU_ERR_PTW;
    case HMM_MMU_BAD_PTE:
        return HMM_GPU_ERR_BAD_PTE;
    default:
        return HMM_GPU_ERR_FAULT;
    }
}

/*
 * Translate @va of runnable job @j for @access. False if the job stalled
 * (it is on the fault queue now) or failed (done, with its status set).
 */
static bool hmm_gpu_translate(HmmGpuState *s, HmmGpuJob *j, uint64_t va,
                              uint8_t access, HmmXlateResult *x)
{
    switch (hmm_mmu_translate(&s->mmu, &j->mj, va, access, x)) {
    case HMM_XLATE_OK:
        return true;
    case HMM_XLATE_STALL:
        hmm_gpu_job_move(s, j, JOB_STALLED);
        return false;
    default:
        hmm_gpu_job_fail(s, j, hmm_gpu_mmu_err(x->err), x->err_addr,
                         x->what);
        return false;
    }
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
        if (c->arg2 && c->ctx >= HMM_GPU_MAX_CTX) {
            *bad_addr = c->ctx;
            return HMM_GPU_ERR_BAD_CTX;
        }
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
    uint64_t src_va = 0, dst_va = 0;
    bool src_vram = false, dst_vram = false;
    HmmXlateResult x;

    if (c->opcode == HMM_GPU_OP_READ_VA || c->opcode == HMM_GPU_OP_COPY_VA) {
        src_va = src;
        if (!hmm_gpu_translate(s, j, src_va, HMM_GPU_ACCESS_READ, &x)) {
            return 0;
        }
        src = x.pa;
        src_vram = x.devmem;
        n = MIN(n, x.avail);
    }
    if (c->opcode != HMM_GPU_OP_READ_VA) {
        dst_va = dst;
        if (!hmm_gpu_translate(s, j, dst_va, HMM_GPU_ACCESS_WRITE, &x)) {
            return 0;
        }
        dst = x.pa;
        dst_vram = x.devmem;
        n = MIN(n, x.avail);
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
    uint64_t old = 0, new;
    HmmXlateResult x;

    if (!hmm_gpu_translate(s, j, c->dst, HMM_GPU_ACCESS_ATOMIC, &x)) {
        return 0;
    }
    if (hmm_gpu_mem_read(s, j, x.devmem, x.pa, &old, sizeof(old), c->dst)
        != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, x.pa, "atomic read");
        return 0;
    }
    old = le64_to_cpu(old);
    if (c->opcode == HMM_GPU_OP_ATOMIC_ADD) {
        new = cpu_to_le64(old + c->pattern);
    } else {
        new = cpu_to_le64(c->pattern);
    }
    if ((c->opcode == HMM_GPU_OP_ATOMIC_ADD || old == c->arg2) &&
        hmm_gpu_mem_write(s, j, x.devmem, x.pa, &new, sizeof(new), c->dst)
        != MEMTX_OK) {
        hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_WRITE, x.pa, "atomic write");
        return 0;
    }
    trace_hmm_gpu_atomic(c->cmd_id, c->dst, x.pa, old);
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
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_MIGRATE,
        .kind = HMM_GPU_TRACE_COPY_LIST,
        .addr = c->src,
        .len = npages * HMM_GPU_COPY_ENT_SIZE,
        .cmd_id = c->cmd_id,
        .ctx = c->ctx,
    };
    uint64_t i;

    j->list = g_new(struct hmm_gpu_copy_ent, npages);
    if (hmm_dma_read(&s->core, &r, j->list) != MEMTX_OK) {
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
        HmmDmaRec r = {
            .engine = HMM_GPU_ENGINE_MIGRATE,
            .kind = HMM_GPU_TRACE_DATA,
            .len = HMM_GPU_PAGE_SIZE,
            .cmd_id = c->cmd_id,
            .ctx = c->ctx,
        };

        if (to_vram) {
            /* via the bounce buffer: a failed read leaves VRAM untouched */
            r.addr = hmm_dma_data_addr(&s->core, e->src);
            r.aux = e->dst;
            if (hmm_dma_read(&s->core, &r, s->bounce) != MEMTX_OK) {
                hmm_gpu_job_fail(s, j, HMM_GPU_ERR_DMA_READ, e->src,
                                 "MIGRATE system-memory read failed");
                break;
            }
            memcpy(s->vram + e->dst, s->bounce, HMM_GPU_PAGE_SIZE);
            s->cnt_vram_write_bytes += HMM_GPU_PAGE_SIZE;
            s->cnt_migrate_to_vram++;
        } else {
            r.addr = hmm_dma_data_addr(&s->core, e->dst);
            r.aux = e->src;
            if (hmm_dma_write(&s->core, &r, s->vram + e->src) != MEMTX_OK) {
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

/* Fetch the command at CMDQ_HEAD into a new job. False on a fatal error. */
static bool hmm_gpu_fetch(HmmGpuState *s)
{
    HmmGpuJob *j = g_new0(HmmGpuJob, 1);
    struct hmm_gpu_cmd *c = &j->cmd;
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_QUEUE,
        .kind = HMM_GPU_TRACE_CMD_FETCH,
        .dir = HMM_GPU_DIR_READ,
        .addr = hmm_ring_entry_addr(&s->cmdq, s->cmdq.head),
        .len = sizeof(*c),
    };
    uint64_t bad_addr = r.addr;

    r.res = pci_dma_read(PCI_DEVICE(s), r.addr, c, sizeof(*c));
    if (r.res != MEMTX_OK) {
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
    r.cmd_id = c->cmd_id;
    r.ctx = c->ctx;
    hmm_dma_note(&s->core, &r);
    if (r.res != MEMTX_OK) {
        g_free(j);
        hmm_gpu_fatal(s, HMM_GPU_ERR_CMDQ_FETCH, r.addr,
                      "command fetch failed");
        return false;
    }
    /* The slot is consumed: the driver may reuse it once HEAD moves on. */
    hmm_ring_pop(&s->cmdq);

    hmm_mmu_job_init(&j->mj, c->cmd_id, c->ctx);
    j->state = JOB_RUNNABLE;
    QTAILQ_INSERT_TAIL(&s->runnable, j, link);
    s->njobs++;
    trace_hmm_gpu_cmd_start(c->cmd_id, c->opcode, c->flags, c->ctx, c->src,
                            c->dst, c->len);
    j->status = hmm_gpu_validate(c, &bad_addr);
    /* MIGRATE's own TLB invalidation: at fetch, like TLB_INVALIDATE's */
    if (c->opcode == HMM_GPU_OP_MIGRATE && c->arg2 &&
        c->ctx < HMM_GPU_MAX_CTX) {
        hmm_mmu_invalidate(&s->mmu, c->cmd_id, c->ctx, c->dst, c->arg2);
    }
    if (j->status != HMM_GPU_ERR_NONE) {
        hmm_gpu_job_fail(s, j, j->status, bad_addr, "invalid command");
    } else if (c->opcode == HMM_GPU_OP_NOP) {
        hmm_gpu_job_move(s, j, JOB_DONE);
    } else if (c->opcode == HMM_GPU_OP_TLB_INVALIDATE) {
        /* runs at once, never queued behind (possibly stalled) jobs */
        hmm_mmu_invalidate(&s->mmu, c->cmd_id, c->ctx, c->dst, c->len);
        hmm_gpu_job_move(s, j, JOB_DONE);
    }
    return true;
}

/* Post the completion of done job @j and free it. False if fatal. */
static bool hmm_gpu_complete(HmmGpuState *s, HmmGpuJob *j)
{
    struct hmm_gpu_cpl cpl;
    MemTxResult res;
    bool notify;
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_QUEUE,
        .kind = HMM_GPU_TRACE_CPL_WRITE,
        .addr = hmm_ring_entry_addr(&s->cplq, s->cplq.tail),
        .len = sizeof(cpl),
        .cmd_id = j->cmd.cmd_id,
        .ctx = j->cmd.ctx,
    };

    memset(&cpl, 0, sizeof(cpl));
    cpl.cmd_id = cpu_to_le64(j->cmd.cmd_id);
    cpl.status = cpu_to_le32(j->status);
    cpl.opcode = cpu_to_le16(j->cmd.opcode);
    cpl.phase = cpu_to_le16(s->cplq.phase);
    cpl.bytes = cpu_to_le64(j->bytes);
    cpl.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));

    res = hmm_dma_write(&s->core, &r, &cpl);
    QTAILQ_REMOVE(&s->done, j, link);
    s->njobs--;
    if (res != MEMTX_OK) {
        s->cnt_cmds_failed++;
        hmm_gpu_job_free(j);
        hmm_gpu_fatal(s, HMM_GPU_ERR_CPLQ_WRITE, r.addr,
                      "completion write failed");
        return false;
    }
    trace_hmm_gpu_cmd_done(j->cmd.cmd_id, j->status, j->bytes,
                           s->cplq.tail, s->cplq.phase);
    if (j->status == HMM_GPU_ERR_NONE) {
        s->cnt_cmds_completed++;
        if (hmm_gpu_is_va_op(j->cmd.opcode)) {
            s->cnt_va_jobs_completed++;
        }
    } else {
        s->cnt_cmds_failed++;
    }
    hmm_ring_push(&s->cplq);
    /* F_IRQ_LATE: whoever wrote the doorbell reaps what completes in it */
    notify = (j->cmd.flags & HMM_GPU_CMD_F_IRQ) ||
             ((j->cmd.flags & HMM_GPU_CMD_F_IRQ_LATE) && !s->in_mmio_run);
    hmm_irq_raise(&s->core, HMM_GPU_INTR_CPL, s->regs.vec_main, notify);
    hmm_gpu_job_free(j);
    return true;
}

/* Write pending fault records; a record write that fails is fatal. */
static void hmm_gpu_post_faults(HmmGpuState *s)
{
    unsigned posted;
    uint64_t addr;

    if (s->status & HMM_GPU_STATUS_FATAL) {
        return;
    }
    if (!hmm_fault_post(&s->mmu, &posted, &addr)) {
        hmm_gpu_fatal(s, HMM_GPU_ERR_FAULTQ_WRITE, addr,
                      "fault record write failed");
    } else if (posted) {
        hmm_irq_raise(&s->core, HMM_GPU_INTR_FAULT, s->regs.vec_fault, true);
    }
}

#define HMM_GPU_ALIVE(s) \
    (!((s)->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s))

/*
 * The engine. Runs in a bottom half (or from hmm_gpu_run_now) and does a
 * bounded amount of work per run (see HMM_GPU_BH_*): fetch what the
 * completion ring has room for, give every runnable job one step in turn
 * until the byte budget is used, then post completions. Stalled jobs sit on
 * the fault queue, so they hold up neither fetching nor other jobs.
 */
static void hmm_gpu_engine_run(HmmGpuState *s, int64_t budget_ns,
                               uint64_t budget_bytes)
{
    int64_t deadline = get_clock() + budget_ns;
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
    while (HMM_GPU_ALIVE(s) && bytes < budget_bytes &&
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
        if (hmm_ring_full(&s->cplq)) {
            trace_hmm_gpu_cplq_full(s->cplq.head, s->cplq.tail);
            break;
        }
        if (!hmm_gpu_complete(s, j)) {
            break;
        }
    }
    if (HMM_GPU_ALIVE(s) &&
        (!QTAILQ_EMPTY(&s->runnable) || hmm_gpu_can_fetch(s) ||
         (!QTAILQ_EMPTY(&s->done) && !hmm_ring_full(&s->cplq)))) {
        qemu_bh_schedule(s->bh);
    }
    hmm_gpu_update_busy(s);
    hmm_dmatrace_run_end(&s->core.trace);
}

void hmm_gpu_bh(void *opaque)
{
    hmm_gpu_engine_run(opaque, HMM_GPU_BH_NS, HMM_GPU_BH_BYTES);
}

/*
 * A doorbell or a replay: run the engine at once, inside the MMIO write (as
 * e1000 transmits from its TDT write), rather than when the main loop gets
 * round to the bottom half. Under TCG on a busy host that wait was most of
 * every small command's latency (a CPU fault on a VRAM page is one MIGRATE
 * round trip). The engine budget bounds the time spent here; the rest
 * continues in the bottom half. The BQL serialises this with the BH, and the
 * device's reentrancy guard is engaged, so DMA aimed at our own BAR still
 * fails like it does from the BH. The budget is small (HMM_GPU_MMIO_*):
 * the writing vCPU waits for it.
 */
void hmm_gpu_run_now(HmmGpuState *s)
{
    hmm_gpu_update_busy(s);
    if (!(s->status & HMM_GPU_STATUS_FATAL) && hmm_gpu_queues_enabled(s)) {
        s->in_mmio_run = true;
        hmm_gpu_engine_run(s, HMM_GPU_MMIO_NS, HMM_GPU_MMIO_BYTES);
        s->in_mmio_run = false;
    }
}

/* ---- faults: replay and cancel (register side) ------------------------- */

void hmm_gpu_fault_replay(HmmGpuState *s)
{
    HmmMmuJob *mj;
    unsigned n = 0;

    while ((mj = hmm_fault_unstall(&s->mmu, false))) {
        hmm_gpu_job_move(s, hmm_gpu_job_of(mj), JOB_RUNNABLE);
        n++;
    }
    hmm_fault_replayed(&s->mmu, n);
    hmm_gpu_run_now(s);
}

void hmm_gpu_fault_cancel(HmmGpuState *s, uint32_t token)
{
    HmmMmuJob *mj;
    HmmGpuJob *j;

    switch (hmm_fault_cancel(&s->mmu, token, &mj)) {
    case HMM_FAULT_CANCELLED:
        j = hmm_gpu_job_of(mj);
        /*
         * The driver asked for this outcome: the guest sees ERR_FAULT like
         * any failed command, but it is no driver mistake, so it is
         * neither logged nor counted as a guest error.
         */
        j->status = HMM_GPU_ERR_FAULT;
        hmm_error_signal(&s->core, HMM_GPU_ERR_FAULT, mj->fault_va,
                         "faulting job cancelled");
        hmm_gpu_job_move(s, j, JOB_DONE);
        hmm_gpu_kick(s);
        break;
    case HMM_FAULT_STALE:
        break;
    case HMM_FAULT_BAD_TOKEN:
        hmm_guest_error(&s->core, HMM_GPU_ERR_BAD_TOKEN, token,
                        "FAULT_CANCEL token was never issued");
        break;
    }
}

/*
 * Disabling the fault queue: records not yet written can no longer be, so
 * those jobs fail; jobs whose record the driver has stay stalled.
 */
void hmm_gpu_fail_unposted(HmmGpuState *s)
{
    HmmMmuJob *mj;

    while ((mj = hmm_fault_unstall(&s->mmu, true))) {
        hmm_gpu_job_fail(s, hmm_gpu_job_of(mj), HMM_GPU_ERR_FAULT,
                         mj->fault_va,
                         "fault queue disabled with a fault pending");
    }
    hmm_gpu_kick(s);
}

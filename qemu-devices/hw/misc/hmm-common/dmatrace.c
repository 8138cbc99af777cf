/*
 * hmm-common: the host-side DMA trace stream
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <zstd.h>
#include "qemu/bswap.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "abi.h"
#include "dmatrace.h"
#include "trace.h"

/* Level 1: ~1 GB/s a core on these traces, 25x smaller; 3 gains 5%. */
#define HMM_DMATRACE_ZSTD_LEVEL 1

#define HMM_DMATRACE_REC_SIZE sizeof(struct hmm_gpu_trace_rec)

/* ---- writer thread ------------------------------------------------------ */

/* A skippable frame saying how many records were lost at this point. */
static size_t hmm_dmatrace_drop_marker(uint8_t *out, uint64_t dropped,
                                       uint64_t total)
{
    stl_le_p(out, HMM_DMATRACE_DROP_MAGIC);
    stl_le_p(out + 4, HMM_DMATRACE_DROP_SIZE);
    stq_le_p(out + 8, dropped);
    stq_le_p(out + 16, total);
    return 8 + HMM_DMATRACE_DROP_SIZE;
}

/* Compress one chunk into one frame and write it, marker first. */
static void hmm_dmatrace_write_chunk(HmmDmaTrace *t, ZSTD_CCtx *cctx,
                                     HmmDmaChunk *c, uint8_t *out, size_t cap)
{
    size_t len = 0;
    size_t n;
    int ret;

    if (c->dropped) {
        len = hmm_dmatrace_drop_marker(out, c->dropped, c->dropped_total);
    }
    if (c->len) {
        n = ZSTD_compress2(cctx, out + len, cap - len, c->data, c->len);
        if (ZSTD_isError(n)) {
            /* cannot happen with a bound-sized buffer; still, say so */
            trace_hmm_dmatrace_compress_error(c->len, ZSTD_getErrorName(n));
            ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only);
            return;
        }
        len += n;
    }
    if (!len) {
        return;
    }
    /* The chardev's write lock makes this safe off the main thread. */
    ret = qemu_chr_fe_write_all(&t->chr, out, len);
    if (ret < 0 || (size_t)ret != len) {
        /* A closed consumer must not stop the device: note it, go on. */
        trace_hmm_dmatrace_write_error(len, ret);
    }
}

static void *hmm_dmatrace_writer(void *opaque)
{
    HmmDmaTrace *t = opaque;
    size_t cap = 8 + HMM_DMATRACE_DROP_SIZE +
                 ZSTD_compressBound(HMM_DMATRACE_CHUNK);
    uint8_t *out = g_malloc(cap);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    HmmDmaChunk *c;

    if (!cctx ||
        ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel,
                                            HMM_DMATRACE_ZSTD_LEVEL)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1))) {
        /* only out of memory gets here; records then vanish, say so */
        trace_hmm_dmatrace_compress_error(0, "cannot set up a ZSTD_CCtx");
    }

    qemu_mutex_lock(&t->lock);
    for (;;) {
        while (QSIMPLEQ_EMPTY(&t->queue) && !t->stop) {
            qemu_cond_wait(&t->wake, &t->lock);
        }
        c = QSIMPLEQ_FIRST(&t->queue);
        if (!c) {
            break;              /* stopping, and everything is written */
        }
        QSIMPLEQ_REMOVE_HEAD(&t->queue, next);
        t->queued--;
        t->busy = true;
        qemu_cond_broadcast(&t->idle);  /* room in the queue */
        qemu_mutex_unlock(&t->lock);

        if (cctx) {
            hmm_dmatrace_write_chunk(t, cctx, c, out, cap);
        }
        g_free(c);

        qemu_mutex_lock(&t->lock);
        t->busy = false;
        qemu_cond_broadcast(&t->idle);
    }
    qemu_mutex_unlock(&t->lock);
    ZSTD_freeCCtx(cctx);
    g_free(out);
    return NULL;
}

/* ---- device side (BQL) -------------------------------------------------- */

static HmmDmaChunk *hmm_dmatrace_chunk_new(void)
{
    HmmDmaChunk *c = g_malloc(sizeof(*c) + HMM_DMATRACE_CHUNK);

    c->dropped = 0;
    c->dropped_total = 0;
    c->len = 0;
    return c;
}

/*
 * Queue the chunk being filled. @wait: wait for room, and then until the
 * writer has written everything (completeness); else a full queue drops
 * the chunk and counts its records.
 */
static void hmm_dmatrace_hand_off(HmmDmaTrace *t, bool wait)
{
    HmmDmaChunk *c = t->cur;

    if (!t->active) {
        return;
    }
    if (!c && wait && t->dropped_pending) {
        c = hmm_dmatrace_chunk_new();   /* the marker must get out */
    }
    t->cur = NULL;

    qemu_mutex_lock(&t->lock);
    if (c) {
        while (wait && t->queued >= t->queue_max) {
            qemu_cond_wait(&t->idle, &t->lock);
        }
        if (t->queued >= t->queue_max) {
            uint64_t n = c->len / HMM_DMATRACE_REC_SIZE;

            qemu_mutex_unlock(&t->lock);
            t->dropped += n;
            t->dropped_pending += n;
            trace_hmm_dmatrace_drop(n, t->dropped);
            g_free(c);
            return;
        }
        c->dropped = t->dropped_pending;
        c->dropped_total = t->dropped;
        t->dropped_pending = 0;
        QSIMPLEQ_INSERT_TAIL(&t->queue, c, next);
        t->queued++;
        qemu_cond_signal(&t->wake);
    }
    while (wait && (!QSIMPLEQ_EMPTY(&t->queue) || t->busy)) {
        qemu_cond_wait(&t->idle, &t->lock);
    }
    qemu_mutex_unlock(&t->lock);
}

/* Hand over what is buffered; @wait as for hmm_dmatrace_hand_off(). */
static void hmm_dmatrace_push(HmmDmaTrace *t, bool wait)
{
    t->stamped = false;
    if (t->flush_timer) {
        timer_del(t->flush_timer);
    }
    hmm_dmatrace_hand_off(t, wait);
}

void hmm_dmatrace_flush(HmmDmaTrace *t)
{
    hmm_dmatrace_push(t, true);
}

void hmm_dmatrace_run_end(HmmDmaTrace *t)
{
    t->stamped = false;
    if (!t->cur) {
        return;
    }
    if (!t->flush_ms || !t->flush_timer) {
        hmm_dmatrace_push(t, true);
    } else if (!timer_pending(t->flush_timer)) {
        timer_mod(t->flush_timer,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + t->flush_ms);
    }
}

static void hmm_dmatrace_timer(void *opaque)
{
    hmm_dmatrace_push(opaque, false);
}

/* The VM stopped (shutdown, QMP stop, the end of a run): write it all. */
static void hmm_dmatrace_vm_state(void *opaque, bool running, RunState state)
{
    if (!running) {
        hmm_dmatrace_push(opaque, true);
    }
}

static void hmm_dmatrace_put(HmmDmaTrace *t, const void *data, size_t len)
{
    if (t->cur && t->cur->len + len > HMM_DMATRACE_CHUNK) {
        hmm_dmatrace_hand_off(t, false);
    }
    if (!t->cur) {
        t->cur = hmm_dmatrace_chunk_new();
    }
    memcpy(t->cur->data + t->cur->len, data, len);
    t->cur->len += len;
}

void hmm_dmatrace_record(HmmDmaTrace *t, const HmmDmaRec *r)
{
    struct hmm_gpu_trace_rec rec;

    if (!t->active) {
        return;
    }
    if (!t->stamped) {
        t->stamp = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
        t->stamped = true;
    }
    memset(&rec, 0, sizeof(rec));
    rec.timestamp_ns = cpu_to_le64(t->stamp);
    rec.addr = cpu_to_le64(r->addr);
    rec.len = cpu_to_le64(r->len);
    rec.cmd_id = cpu_to_le64(r->cmd_id);
    rec.va = cpu_to_le64(r->va);
    rec.aux = cpu_to_le64(r->aux);
    rec.ctx = cpu_to_le32(r->ctx);
    rec.engine = r->engine;
    rec.kind = r->kind;
    rec.dir = r->dir;
    rec.result = r->res;
    rec.level = r->level;
    hmm_dmatrace_put(t, &rec, sizeof(rec));
}

void hmm_dmatrace_start(HmmDmaTrace *t, uint32_t devfn)
{
    struct hmm_gpu_trace_hdr hdr;

    t->cur = NULL;
    t->dropped = 0;
    t->dropped_pending = 0;
    if (!qemu_chr_fe_backend_connected(&t->chr)) {
        return;
    }
    /* a queue of none would drop every record: one at least */
    t->queue_max = MAX(t->queue_max, 1);
    qemu_mutex_init(&t->lock);
    qemu_cond_init(&t->wake);
    qemu_cond_init(&t->idle);
    QSIMPLEQ_INIT(&t->queue);
    t->queued = 0;
    t->busy = false;
    t->stop = false;
    qemu_thread_create(&t->thread, "hmm-dmatrace", hmm_dmatrace_writer, t,
                       QEMU_THREAD_JOINABLE);
    t->active = true;
    t->flush_timer = timer_new_ms(QEMU_CLOCK_REALTIME, hmm_dmatrace_timer, t);
    t->vmstate = qemu_add_vm_change_state_handler(hmm_dmatrace_vm_state, t);
    memset(&hdr, 0, sizeof(hdr));
    hdr.magic = cpu_to_le64(HMM_GPU_TRACE_MAGIC);
    hdr.version = cpu_to_le32(HMM_GPU_TRACE_VERSION);
    hdr.rec_size = cpu_to_le32(sizeof(struct hmm_gpu_trace_rec));
    hdr.devfn = cpu_to_le32(devfn);
    hmm_dmatrace_put(t, &hdr, sizeof(hdr));
    hmm_dmatrace_flush(t);
}

void hmm_dmatrace_stop(HmmDmaTrace *t)
{
    if (!t->active) {
        return;
    }
    hmm_dmatrace_flush(t);
    if (t->vmstate) {
        qemu_del_vm_change_state_handler(t->vmstate);
        t->vmstate = NULL;
    }
    if (t->flush_timer) {
        timer_free(t->flush_timer);
        t->flush_timer = NULL;
    }
    qemu_mutex_lock(&t->lock);
    t->stop = true;
    qemu_cond_signal(&t->wake);
    qemu_mutex_unlock(&t->lock);
    qemu_thread_join(&t->thread);
    qemu_cond_destroy(&t->idle);
    qemu_cond_destroy(&t->wake);
    qemu_mutex_destroy(&t->lock);
    t->active = false;
}

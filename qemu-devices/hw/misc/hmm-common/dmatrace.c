/*
 * hmm-common: the host-side DMA trace stream
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "abi.h"
#include "dmatrace.h"

/* Write out the buffered bytes, in order. */
void hmm_dmatrace_flush(HmmDmaTrace *t)
{
    t->stamped = false;
    if (t->flush_timer) {
        timer_del(t->flush_timer);
    }
    if (t->len) {
        /* A slow or closed consumer must not stop the device: ignore errors. */
        qemu_chr_fe_write_all(&t->chr, t->buf, t->len);
        t->len = 0;
    }
}

void hmm_dmatrace_run_end(HmmDmaTrace *t)
{
    t->stamped = false;
    if (!t->len) {
        return;
    }
    if (!t->flush_ms || !t->flush_timer) {
        hmm_dmatrace_flush(t);
    } else if (!timer_pending(t->flush_timer)) {
        timer_mod(t->flush_timer,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + t->flush_ms);
    }
}

static void hmm_dmatrace_timer(void *opaque)
{
    hmm_dmatrace_flush(opaque);
}

/* The VM stopped (shutdown, QMP stop, the end of a run): nothing may wait. */
static void hmm_dmatrace_vm_state(void *opaque, bool running, RunState state)
{
    if (!running) {
        hmm_dmatrace_flush(opaque);
    }
}

static void hmm_dmatrace_put(HmmDmaTrace *t, const void *data, size_t len)
{
    if (t->len + len > HMM_DMATRACE_BUF) {
        hmm_dmatrace_flush(t);
    }
    memcpy(t->buf + t->len, data, len);
    t->len += len;
}

void hmm_dmatrace_record(HmmDmaTrace *t, const HmmDmaRec *r)
{
    struct hmm_gpu_trace_rec rec;

    if (!t->buf || !qemu_chr_fe_backend_connected(&t->chr)) {
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

    t->buf = g_malloc(HMM_DMATRACE_BUF);
    t->len = 0;
    if (!qemu_chr_fe_backend_connected(&t->chr)) {
        return;
    }
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
    hmm_dmatrace_flush(t);
    if (t->vmstate) {
        qemu_del_vm_change_state_handler(t->vmstate);
        t->vmstate = NULL;
    }
    if (t->flush_timer) {
        timer_free(t->flush_timer);
        t->flush_timer = NULL;
    }
    g_free(t->buf);
    t->buf = NULL;
}

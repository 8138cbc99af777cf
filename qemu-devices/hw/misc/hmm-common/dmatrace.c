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
    if (t->len) {
        /* A slow or closed consumer must not stop the device: ignore errors. */
        qemu_chr_fe_write_all(&t->chr, t->buf, t->len);
        t->len = 0;
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
    memset(&rec, 0, sizeof(rec));
    rec.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
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
    g_free(t->buf);
    t->buf = NULL;
}

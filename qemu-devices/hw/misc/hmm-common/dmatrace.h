/*
 * hmm-common: the host-side DMA trace stream
 *
 * A device with a "dmatrace" chardev writes one header, then one record per
 * DMA it issues and per event (struct hmm_gpu_trace_hdr/_rec). Records are
 * collected in a buffer and written in large pieces: when it fills, at
 * most flush_ms (property dmatrace-flush-ms) after the end of a run of
 * device code (a register write, an engine step: hmm_dmatrace_run_end()),
 * and at once on reset, when the VM stops (shutdown, QMP stop, the end of
 * a run) and on unrealize. A write() per doorbell was half the cost of a
 * short command; with flush_ms 0 the stream is complete whenever device
 * code is not running, as tests reading it at once need. The records of
 * one run carry the same timestamp, the virtual time when it began tracing.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_DMATRACE_H
#define HW_MISC_HMM_COMMON_DMATRACE_H

#include "chardev/char-fe.h"
#include "exec/memattrs.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "system/runstate.h"

#define HMM_DMATRACE_BUF        (64 * KiB)

/* One record's contents, host byte order (see struct hmm_gpu_trace_rec). */
typedef struct HmmDmaRec {
    uint8_t engine;         /* enum hmm_gpu_trace_engine */
    uint8_t kind;           /* enum hmm_gpu_trace_kind */
    uint8_t dir;            /* HMM_GPU_DIR_*; the DMA helpers set it */
    uint8_t level;          /* PTW: page-table level */
    uint32_t ctx;
    uint64_t cmd_id;        /* the work item the access belongs to */
    uint64_t addr;
    uint64_t len;
    uint64_t va;
    uint64_t aux;
    MemTxResult res;        /* the DMA helpers set it */
} HmmDmaRec;

typedef struct HmmDmaTrace {
    CharBackend chr;        /* QOM property; no backend: no stream */
    uint8_t *buf;           /* HMM_DMATRACE_BUF bytes while realized */
    size_t len;
    /*
     * The virtual time of this run of device code: read at its first
     * record, forgotten at the flush that ends it. Its records share it
     * (the vCPU that wrote the register, or the main loop, is inside the
     * device meanwhile); a clock read per record was a tenth of a bulk
     * MIGRATE's cost.
     */
    int64_t stamp;
    bool stamped;
    uint32_t flush_ms;      /* QOM property: write at most this late */
    QEMUTimer *flush_timer;
    VMChangeStateEntry *vmstate;
} HmmDmaTrace;

/* Allocate the buffer and write the header (realize). */
void hmm_dmatrace_start(HmmDmaTrace *t, uint32_t devfn);
/* Flush and free the buffer (unrealize). */
void hmm_dmatrace_stop(HmmDmaTrace *t);
void hmm_dmatrace_record(HmmDmaTrace *t, const HmmDmaRec *r);
/* Write out what is buffered, now. */
void hmm_dmatrace_flush(HmmDmaTrace *t);
/* The end of a run of device code: write within flush_ms. */
void hmm_dmatrace_run_end(HmmDmaTrace *t);

#endif

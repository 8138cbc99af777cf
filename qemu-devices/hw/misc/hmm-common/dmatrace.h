/*
 * hmm-common: the host-side DMA trace stream
 *
 * A device with a "dmatrace" chardev writes one header, then one record per
 * DMA it issues and per event (struct hmm_gpu_trace_hdr/_rec). Device code
 * (under the BQL) only appends records to a chunk in memory; a thread of
 * the device compresses each chunk into one zstd frame and writes it, so a
 * slow disk or consumer never stalls a vCPU. The stream on the chardev is a
 * sequence of independent zstd frames: a reader decodes the complete
 * frames while it is being written, and can skip frames (each header has
 * the frame's content size).
 *
 * A chunk is handed to the writer when it fills, at most flush_ms (property
 * dmatrace-flush-ms) after the end of a run of device code (a register
 * write, an engine step: hmm_dmatrace_run_end()), and at once on reset,
 * when the VM stops (shutdown, QMP stop, the end of a run) and on
 * unrealize; those three also wait until the writer has written every
 * queued chunk, so the file is complete when QEMU exits. With flush_ms 0
 * every run's records are written before the run returns, as tests reading
 * the stream at once need. The records of one run carry the same
 * timestamp, the virtual time when it began tracing.
 *
 * At most queue_max chunks (property dmatrace-queue) wait for the writer.
 * When the queue is full a chunk's records are dropped, never silently:
 * the QOM counter "dmatrace-dropped" counts them, and the next chunk
 * written is preceded by a zstd skippable frame (magic
 * HMM_DMATRACE_DROP_MAGIC, 16 bytes of payload: the records lost at that
 * point and the total lost so far, little-endian u64s), which decoders
 * skip and harness/checks/tracefile.py reports.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_DMATRACE_H
#define HW_MISC_HMM_COMMON_DMATRACE_H

#include "chardev/char-fe.h"
#include "exec/memattrs.h"
#include "qemu/queue.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "system/runstate.h"

/* Raw bytes per chunk: one zstd frame each (about 1/25 of it on disk). */
#define HMM_DMATRACE_CHUNK      (256 * KiB)
#define HMM_DMATRACE_QUEUE      64      /* default dmatrace-queue: 16 MiB */
/* zstd skippable frame 0x184D2A5D: records dropped here (see above). */
#define HMM_DMATRACE_DROP_MAGIC 0x184D2A5Du
#define HMM_DMATRACE_DROP_SIZE  16

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

/* Raw stream bytes on their way to the writer thread. */
typedef struct HmmDmaChunk {
    QSIMPLEQ_ENTRY(HmmDmaChunk) next;
    uint64_t dropped;       /* records lost just before this chunk */
    uint64_t dropped_total; /* the counter when they were */
    size_t len;
    uint8_t data[];
} HmmDmaChunk;

typedef struct HmmDmaTrace {
    CharBackend chr;        /* QOM property; no backend: no stream */
    uint32_t flush_ms;      /* QOM property: write at most this late */
    uint32_t queue_max;     /* QOM property: chunks waiting at most */
    uint64_t dropped;       /* QOM counter: records lost, queue full */

    /* device side, under the BQL */
    bool active;            /* realized with a backend: writer running */
    HmmDmaChunk *cur;       /* being filled; NULL: none yet */
    uint64_t dropped_pending; /* lost since the last chunk queued */
    /*
     * The virtual time of this run of device code: read at its first
     * record, forgotten at the flush that ends it. Its records share it
     * (the vCPU that wrote the register, or the main loop, is inside the
     * device meanwhile); a clock read per record was a tenth of a bulk
     * MIGRATE's cost.
     */
    int64_t stamp;
    bool stamped;
    QEMUTimer *flush_timer;
    VMChangeStateEntry *vmstate;

    /* shared with the writer thread, under lock */
    QemuThread thread;
    QemuMutex lock;
    QemuCond wake;          /* to the writer: a chunk queued, or stop */
    QemuCond idle;          /* from the writer: a chunk taken or written */
    QSIMPLEQ_HEAD(, HmmDmaChunk) queue;
    uint32_t queued;
    bool busy;              /* the writer is writing a chunk */
    bool stop;
} HmmDmaTrace;

/* Start the writer and write the header (realize). */
void hmm_dmatrace_start(HmmDmaTrace *t, uint32_t devfn);
/* Write everything, stop the writer (unrealize). */
void hmm_dmatrace_stop(HmmDmaTrace *t);
void hmm_dmatrace_record(HmmDmaTrace *t, const HmmDmaRec *r);
/* Write out what is buffered, now, and wait until it is written. */
void hmm_dmatrace_flush(HmmDmaTrace *t);
/* The end of a run of device code: written within flush_ms. */
void hmm_dmatrace_run_end(HmmDmaTrace *t);

#endif

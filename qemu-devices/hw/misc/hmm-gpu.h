/*
 * hmm-gpu: state shared by the register front end (hmm-gpu.c) and the
 * engine (hmm-gpu-engine.c)
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_GPU_H
#define HW_MISC_HMM_GPU_H

#include "qemu/queue.h"
#include "qemu/units.h"
#include "hw/pci/pci_device.h"
#include "qom/object.h"
#include "hmm-common/core.h"
#include "hmm-common/ring.h"
#include "hmm-common/mmu.h"
#include "hmm-common/regs.h"
#include "hw/misc/hmm_gpu_regs.h"

#define TYPE_HMM_GPU "hmm-gpu"
OBJECT_DECLARE_SIMPLE_TYPE(HmmGpuState, HMM_GPU)

/*
 * Data moves through a bounce buffer of this size, one DMA per chunk; a VA
 * job's step covers up to this many bytes (one DMA pair per page).
 */
#define HMM_GPU_CHUNK           (64 * KiB)

#define HMM_GPU_VRAM_DEFAULT    (256 * MiB)
#define HMM_GPU_VRAM_ALIGN      (2 * MiB)
#define HMM_GPU_VRAM_MAX        (4 * GiB)

typedef enum HmmGpuJobState {
    JOB_RUNNABLE,
    JOB_STALLED,            /* waiting for FAULT_REPLAY / FAULT_CANCEL */
    JOB_DONE,               /* finished, completion not yet posted */
} HmmGpuJobState;

/*
 * One fetched command. Jobs live until their completion is written; each
 * holds a completion ring slot from fetch on (see hmm_gpu_can_fetch). A
 * runnable or done job is on that list of HmmGpuState; a stalled one is on
 * the MMU's fault queue instead (through mj).
 */
typedef struct HmmGpuJob {
    QTAILQ_ENTRY(HmmGpuJob) link;
    HmmGpuJobState state;
    struct hmm_gpu_cmd cmd;
    uint64_t bytes;         /* bytes transferred so far */
    uint32_t status;        /* enum hmm_gpu_err */
    HmmMmuJob mj;           /* VA jobs: context, translation, fault */
    /* MIGRATE: the copy list, fetched and checked by the first step */
    struct hmm_gpu_copy_ent *list;
} HmmGpuJob;

typedef QTAILQ_HEAD(, HmmGpuJob) HmmGpuJobList;

struct HmmGpuState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    uint8_t *bounce;
    uint8_t *vram;          /* vram_size bytes, anonymous mmap */
    uint64_t vram_size;     /* property vram-size */

    HmmCore core;           /* ERROR, INTR_*, VEC_ERR, DMA trace, counters */
    HmmRing cmdq;
    HmmRing cplq;           /* its phase is the completions' */
    HmmMmu mmu;             /* CTX_*, MMU_CTRL, TLB, FAULTQ_*, faults */
    HmmRegs regs;           /* the shared registers: vectors, SCRATCH */

    uint32_t status;
    uint32_t clock_sync_lo; /* CLOCK_SYNC_LO latched until the HI write */

    /* in-flight jobs: runnable, done, or stalled (in mmu) */
    HmmGpuJobList runnable;
    HmmGpuJobList done;
    uint32_t njobs;
    bool in_mmio_run;       /* the engine runs inside a doorbell/replay write */

    /* read-only QOM counters, cumulative over resets */
    uint64_t cnt_cmds_completed;
    uint64_t cnt_cmds_failed;
    uint64_t cnt_va_jobs_completed;
    uint64_t cnt_migrate_to_vram;   /* pages */
    uint64_t cnt_migrate_from_vram; /* pages */
    uint64_t cnt_vram_read_bytes;
    uint64_t cnt_vram_write_bytes;
    uint64_t cnt_clock_syncs;       /* also EV_CLOCK_SYNC's sequence number */
};

/* hmm-gpu.c */
const char *hmm_gpu_err_name(uint32_t err);

/* hmm-gpu-engine.c */
void hmm_gpu_bh(void *opaque);
void hmm_gpu_run_now(HmmGpuState *s);
void hmm_gpu_kick(HmmGpuState *s);
void hmm_gpu_update_busy(HmmGpuState *s);
void hmm_gpu_fatal(HmmGpuState *s, uint32_t err, uint64_t addr,
                   const char *what);
void hmm_gpu_free_jobs(HmmGpuState *s);
void hmm_gpu_fault_replay(HmmGpuState *s);
void hmm_gpu_fault_cancel(HmmGpuState *s, uint32_t token);
void hmm_gpu_fail_unposted(HmmGpuState *s);

#endif

/*
 * hmm-common: a device MMU with replayable faults
 *
 * The guest gives the device a table of contexts (CTX_BASE, CTX_COUNT);
 * each context descriptor points at a 4-level page table in guest memory
 * (see the shared layouts in hmm_gpu_regs.h). A device job names its
 * context and translates its virtual addresses through it:
 *
 * - mmu.c: enabling, the context descriptor fetch (once per job), the
 *   page-table walk and hmm_mmu_translate();
 * - tlb.c: the translation cache, invalidated by ranges or flushed;
 * - fault.c: a missing or insufficient translation stalls the job and
 *   posts a record with a token to the fault ring; the guest fixes its
 *   tables, then replays every stalled job or cancels one by its token.
 *
 * Jobs belong to the device: it embeds an HmmMmuJob in each of its own.
 * A stalled job is on the fault queue's list (the device's own lists do
 * not hold it) until the library hands it back: on replay, cancel, or when
 * the device drops it (hmm_fault_unstall()). Failures are returned with a
 * reason the device turns into its own error code; the library only
 * reports DMA, traces and counts.
 *
 * Leaves with HMM_GPU_PTE_VRAM hold offsets into the device's own memory
 * (devmem_size bytes; 0 for a device without any: such a leaf is then
 * malformed).
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_MMU_H
#define HW_MISC_HMM_COMMON_MMU_H

#include "qemu/queue.h"
#include "core.h"
#include "ring.h"

typedef struct HmmMmuJob {
    uint64_t cmd_id;            /* names the job in traces and fault records */
    uint32_t ctx;
    bool ctx_loaded;
    uint64_t pt_root;

    /* the fault that stalled the job */
    QTAILQ_ENTRY(HmmMmuJob) stall_link;
    bool rec_pending;           /* record not yet written to the fault ring */
    uint16_t token;
    uint8_t fault_access;       /* enum hmm_gpu_access */
    uint8_t fault_reason;       /* enum hmm_gpu_fault_reason */
    uint64_t fault_va;          /* page aligned */
} HmmMmuJob;

typedef struct HmmTlbEntry {
    bool valid;
    bool devmem;                /* pa is a device-memory offset */
    uint8_t shift;              /* page size: 4 KiB or 2 MiB */
    uint32_t ctx;
    uint64_t va;                /* page base */
    uint64_t pa;
    uint64_t perms;             /* HMM_GPU_PTE_READ/WRITE/ATOMIC */
} HmmTlbEntry;

typedef struct HmmTlb {
    HmmTlbEntry *entries;
    uint32_t size;
} HmmTlb;

typedef struct HmmFaultQueue {
    HmmRing ring;                           /* of struct hmm_gpu_fault_rec */
    QTAILQ_HEAD(, HmmMmuJob) stalled;       /* in the order they stalled */
    uint32_t nstalled;
    uint16_t next_token;
    bool tokens_wrapped;                    /* every token has been issued */
} HmmFaultQueue;

typedef struct HmmMmuConfig {
    uint32_t max_ctx;           /* CTX_COUNT limit */
    uint32_t ctx_align;         /* of CTX_BASE, bytes */
    uint32_t tlb_size;          /* entries */
    HmmRingLimits faultq;
} HmmMmuConfig;

typedef struct HmmMmu {
    HmmCore *core;
    const HmmMmuConfig *cfg;
    uint64_t devmem_size;

    /* registers */
    uint64_t ctx_base;
    uint32_t ctx_count;
    bool enabled;

    HmmTlb tlb;
    HmmFaultQueue faults;

    /* read-only QOM counters, cumulative over resets */
    uint64_t cnt_tlb_hits;
    uint64_t cnt_tlb_misses;
    uint64_t cnt_tlb_invalidations;
    uint64_t cnt_ptw_reads;
    uint64_t cnt_faults_raised;
    uint64_t cnt_faults_replayed;
    uint64_t cnt_faults_cancelled;
    uint64_t cnt_stale_cancels;
    uint64_t cnt_injected_faults;

    /* fault injection: the next this many translations fault anyway */
    uint32_t inject_spurious_faults;
} HmmMmu;

typedef enum HmmXlate {
    HMM_XLATE_OK,
    HMM_XLATE_STALL,            /* the job stalled on a fault */
    HMM_XLATE_FAILED,           /* the job must fail: see HmmXlateResult */
} HmmXlate;

/* Why a translation failed. */
typedef enum HmmMmuError {
    HMM_MMU_BAD_CTX,            /* MMU disabled, ctx or its descriptor bad */
    HMM_MMU_PTW,                /* a descriptor or entry read failed */
    HMM_MMU_BAD_PTE,            /* a malformed page-table entry */
    HMM_MMU_FAULT,              /* unreachable VA, or a fault with no queue */
} HmmMmuError;

typedef struct HmmXlateResult {
    /* HMM_XLATE_OK */
    uint64_t pa;                /* bus address, or device-memory offset */
    uint64_t avail;             /* bytes from the VA to its page's end */
    bool devmem;
    /* HMM_XLATE_FAILED */
    HmmMmuError err;
    uint64_t err_addr;          /* for the device's ERROR_ADDR */
    const char *what;
} HmmXlateResult;

typedef enum HmmFaultCancel {
    HMM_FAULT_CANCELLED,        /* the job is handed back to the device */
    HMM_FAULT_STALE,            /* issued, but its job no longer stalls */
    HMM_FAULT_BAD_TOKEN,        /* never issued: a guest error */
} HmmFaultCancel;

/* mmu.c */
void hmm_mmu_init(HmmMmu *m, HmmCore *core, const HmmMmuConfig *cfg);
void hmm_mmu_realize(HmmMmu *m, uint64_t devmem_size);
void hmm_mmu_unrealize(HmmMmu *m);
/* registers to their reset values; stalled jobs must have been dropped */
void hmm_mmu_reset(HmmMmu *m);
HmmWrite hmm_mmu_set_enabled(HmmMmu *m, bool enable);
void hmm_mmu_job_init(HmmMmuJob *j, uint64_t cmd_id, uint32_t ctx);
HmmXlate hmm_mmu_translate(HmmMmu *m, HmmMmuJob *j, uint64_t va,
                           uint8_t access, HmmXlateResult *res);
unsigned hmm_mmu_invalidate(HmmMmu *m, uint64_t cmd_id, uint32_t ctx,
                            uint64_t va, uint64_t len);

/* tlb.c */
void hmm_tlb_init(HmmTlb *t, uint32_t size);
void hmm_tlb_cleanup(HmmTlb *t);
HmmTlbEntry *hmm_tlb_lookup(HmmTlb *t, uint32_t ctx, uint64_t va);
void hmm_tlb_insert(HmmTlb *t, uint64_t va, const HmmTlbEntry *leaf);
unsigned hmm_tlb_invalidate(HmmTlb *t, uint32_t ctx, uint64_t va,
                            uint64_t len);
void hmm_tlb_flush(HmmTlb *t);

/* fault.c */
void hmm_fault_reset(HmmMmu *m);
HmmXlate hmm_fault_stall(HmmMmu *m, HmmMmuJob *j, uint64_t va,
                         uint8_t access, uint8_t reason,
                         HmmXlateResult *res);
bool hmm_fault_post(HmmMmu *m, unsigned *posted, uint64_t *fail_addr);
HmmMmuJob *hmm_fault_unstall(HmmMmu *m, bool unposted_only);
void hmm_fault_withdraw(HmmMmu *m, HmmMmuJob *j);
void hmm_fault_replayed(HmmMmu *m, unsigned njobs);
HmmFaultCancel hmm_fault_cancel(HmmMmu *m, uint32_t token, HmmMmuJob **job);

#endif

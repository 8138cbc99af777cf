/*
 * hmm-common: device MMU: stalled jobs and the fault ring
 *
 * A job that faults stalls with a token; its record (struct
 * hmm_gpu_fault_rec) is written to the fault ring by hmm_fault_post(),
 * which the device calls after the step that stalled it, and as the guest
 * makes room. The guest then replays every stalled job or cancels one by
 * its token.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/timer.h"
#include "abi.h"
#include "dma.h"
#include "mmu.h"
#include "trace.h"

#define HMM_FAULT_PAGE_MASK     (~((1ull << HMM_GPU_PT_SHIFT(0)) - 1))

void hmm_fault_reset(HmmMmu *m)
{
    HmmFaultQueue *fq = &m->faults;

    hmm_ring_reset(&fq->ring);
    fq->next_token = 0;
    fq->tokens_wrapped = false;
}

static uint16_t hmm_fault_alloc_token(HmmFaultQueue *fq)
{
    HmmMmuJob *j;
    bool busy;

    /* tokens are never 0; skip one still held by a stalled job */
    do {
        fq->next_token++;
        if (fq->next_token == 0) {
            fq->next_token = 1;
            fq->tokens_wrapped = true;
        }
        busy = false;
        QTAILQ_FOREACH(j, &fq->stalled, stall_link) {
            if (j->token == fq->next_token) {
                busy = true;
                break;
            }
        }
    } while (busy);
    return fq->next_token;
}

/*
 * @j faulted on @va: stall it (its record is posted later) or, with the
 * fault queue disabled, fail it.
 */
HmmXlate hmm_fault_stall(HmmMmu *m, HmmMmuJob *j, uint64_t va,
                         uint8_t access, uint8_t reason,
                         HmmXlateResult *res)
{
    HmmFaultQueue *fq = &m->faults;

    trace_hmm_fault(j->cmd_id, j->ctx, va, access, reason);
    if (!fq->ring.enabled) {
        res->err = HMM_MMU_FAULT;
        res->err_addr = va;
        res->what = "translation fault with the fault queue disabled";
        return HMM_XLATE_FAILED;
    }
    j->fault_va = va & HMM_FAULT_PAGE_MASK;
    j->fault_access = access;
    j->fault_reason = reason;
    j->token = hmm_fault_alloc_token(fq);
    /*
     * Posted after the step: a failing record write is fatal for the
     * device, which then drops every job, this one included, while the
     * caller still uses it.
     */
    j->rec_pending = true;
    QTAILQ_INSERT_TAIL(&fq->stalled, j, stall_link);
    fq->nstalled++;
    return HMM_XLATE_STALL;
}

/*
 * Write the records of stalled jobs that have none in the ring yet, oldest
 * first, as far as the ring has room; the rest wait for the guest to
 * consume some. *posted tells how many were written. False if a record
 * write failed (at *fail_addr): the device can no longer trust its fault
 * ring.
 */
bool hmm_fault_post(HmmMmu *m, unsigned *posted, uint64_t *fail_addr)
{
    HmmFaultQueue *fq = &m->faults;
    HmmMmuJob *j;

    *posted = 0;
    if (!fq->ring.enabled) {
        return true;
    }
    QTAILQ_FOREACH(j, &fq->stalled, stall_link) {
        struct hmm_gpu_fault_rec rec;
        HmmDmaRec r = {
            .engine = HMM_GPU_ENGINE_MMU,
            .kind = HMM_GPU_TRACE_FAULT_WRITE,
            .addr = hmm_ring_entry_addr(&fq->ring, fq->ring.tail),
            .len = sizeof(rec),
            .cmd_id = j->cmd_id,
            .ctx = j->ctx,
            .va = j->fault_va,
            .aux = j->token,
        };

        if (!j->rec_pending) {
            continue;
        }
        if (hmm_ring_full(&fq->ring)) {
            trace_hmm_faultq_full(fq->ring.head, fq->ring.tail);
            break;
        }
        memset(&rec, 0, sizeof(rec));
        rec.va = cpu_to_le64(j->fault_va);
        rec.cmd_id = cpu_to_le64(j->cmd_id);
        rec.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
        rec.ctx = cpu_to_le32(j->ctx);
        rec.token = cpu_to_le16(j->token);
        rec.access = j->fault_access;
        rec.reason = j->fault_reason;
        rec.engine = HMM_GPU_ENGINE_MMU;
        if (hmm_dma_write(m->core, &r, &rec) != MEMTX_OK) {
            *fail_addr = r.addr;
            return false;
        }
        trace_hmm_fault_post(j->token, j->cmd_id, j->fault_va,
                             fq->ring.tail);
        j->rec_pending = false;
        hmm_ring_push(&fq->ring);
        m->cnt_faults_raised++;
        (*posted)++;
    }
    return true;
}

/*
 * Hand the oldest stalled job (with @unposted_only: the oldest whose
 * record is not in the ring yet) back to the device, its fault forgotten;
 * NULL if there is none. For replays, and for dropping jobs.
 */
HmmMmuJob *hmm_fault_unstall(HmmMmu *m, bool unposted_only)
{
    HmmFaultQueue *fq = &m->faults;
    HmmMmuJob *j;

    QTAILQ_FOREACH(j, &fq->stalled, stall_link) {
        if (!unposted_only || j->rec_pending) {
            QTAILQ_REMOVE(&fq->stalled, j, stall_link);
            fq->nstalled--;
            /* an unposted record is dropped: a re-walk faults anew */
            j->rec_pending = false;
            j->token = 0;
            return j;
        }
    }
    return NULL;
}

/*
 * The device drops stalled job @j itself (not the oldest: e.g. a job whose
 * queue pair went to the error state for another reason, or a translation
 * the device cannot let stall). A record not yet in the ring is forgotten;
 * a posted one's token becomes stale, so a later cancel of it is dropped.
 */
void hmm_fault_withdraw(HmmMmu *m, HmmMmuJob *j)
{
    HmmFaultQueue *fq = &m->faults;

    QTAILQ_REMOVE(&fq->stalled, j, stall_link);
    fq->nstalled--;
    j->rec_pending = false;
    j->token = 0;
}

/* The guest's replay made @njobs stalled jobs runnable again. */
void hmm_fault_replayed(HmmMmu *m, unsigned njobs)
{
    m->cnt_faults_replayed += njobs;
    trace_hmm_replay(njobs);
    hmm_dma_event(m->core, HMM_GPU_TRACE_EV_REPLAY, 0, 0, 0, njobs);
}

/*
 * The guest cancels the job whose fault record carried @token: that job is
 * handed back (*job) for the device to fail it. A token the device issued
 * whose job is no longer stalled is a stale cancel, not a guest mistake: a
 * record can reach the ring after the guest drained it but before its
 * replay, which then released that job too. No guest can tell, so the
 * cancel is just dropped.
 */
HmmFaultCancel hmm_fault_cancel(HmmMmu *m, uint32_t token, HmmMmuJob **job)
{
    HmmFaultQueue *fq = &m->faults;
    HmmMmuJob *j;

    QTAILQ_FOREACH(j, &fq->stalled, stall_link) {
        if (!j->rec_pending && j->token && j->token == token) {
            trace_hmm_cancel(token, j->cmd_id, j->fault_va);
            hmm_dma_event(m->core, HMM_GPU_TRACE_EV_CANCEL, j->cmd_id,
                          j->ctx, j->fault_va, token);
            m->cnt_faults_cancelled++;
            QTAILQ_REMOVE(&fq->stalled, j, stall_link);
            fq->nstalled--;
            *job = j;
            return HMM_FAULT_CANCELLED;
        }
    }
    if (token && token <= UINT16_MAX &&
        (fq->tokens_wrapped || token <= fq->next_token)) {
        m->cnt_stale_cancels++;
        trace_hmm_stale_cancel(token);
        return HMM_FAULT_STALE;
    }
    trace_hmm_bad_token(token);
    return HMM_FAULT_BAD_TOKEN;
}

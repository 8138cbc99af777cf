/*
 * hmm-nic: the queue-pair engine (loopback)
 *
 * A doorbell makes a queue pair runnable; the engine gives runnable queue
 * pairs one step each in turn: a step processes (part of) the send work
 * request at the QP's consumer index, both as the requester and, since a
 * QP's peer is a QP of this device, as the responder. Payload moves through
 * the device MMU: memory region N is context N. A missing translation
 * stalls that QP only (its work request is retried on FAULT_REPLAY, an
 * atomic that already executed is not executed again); a failed check
 * completes the work request with an error and moves the QP to ERR, which
 * flushes the rest of its queues.
 *
 * Runs in a bottom half, or straight from a doorbell or replay write with a
 * small budget (as hmm-gpu does), the rest in the bottom half.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qemu/bswap.h"
#include "qemu/host-utils.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "hmm-nic-engine.h"
#include "hmm-common/dma.h"
#include "trace.h"

/* ---- work requests ------------------------------------------------------- */

/* A malformed send WQE: it completes with w->status, ERR_BAD_WQE. */
static bool nic_wqe_bad(HmmNicState *s, NicWr *w)
{
    w->vendor_err = HMM_NIC_ERR_BAD_WQE;
    hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_WQE,
                    HMM_NIC_FAULT_CMD(w->qp->qpn, w->index, 0),
                    "malformed send WQE (opcode, SGE count or length)");
    return true;
}

/*
 * The rest of a FLUSH or ATOMIC_WRITE WQE (1.5), which has no SGEs:
 * ATOMIC_WRITE's 8 bytes are where the SGEs would be (rxe's
 * dma.atomic_wr). FLUSH's dma.length is a range, not a message: MAX_MSG
 * does not apply.
 */
static bool nic_wqe_no_sge(HmmNicState *s, NicWr *w, uint64_t slot)
{
    uint64_t fail_va, val;

    if (w->num_sge || w->is_inline) {
        w->status = HMM_NIC_WC_LOC_QP_OP_ERR;
        return nic_wqe_bad(s, w);
    }
    if (w->opcode == HMM_NIC_WR_FLUSH) {
        if (!w->flush_type ||
            (w->flush_type & ~(HMM_NIC_FLUSH_GLOBAL |
                               HMM_NIC_FLUSH_PERSISTENT)) ||
            w->flush_level > HMM_NIC_FLUSH_MR) {
            w->status = HMM_NIC_WC_LOC_QP_OP_ERR;
            return nic_wqe_bad(s, w);
        }
        return true;
    }
    if (w->length != HMM_NIC_ATOMIC_SIZE) {
        w->status = HMM_NIC_WC_LOC_LEN_ERR;
        return nic_wqe_bad(s, w);
    }
    /* HMM_NIC_SQ_LOG2_MIN: the 8 bytes are always inside the slot */
    if (!hmm_nic_qdma(s, w->cmd[NIC_SIDE_REQ], slot + HMM_NIC_SWQE_SGE, &val,
                      sizeof(val), false, &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "atomic write value read failed");
        return false;
    }
    w->compare_add = le64_to_cpu(val);
    return true;
}

/*
 * Fetch and check the send WQE at @qp's consumer index. False if it could
 * not be read at all (the QP goes to ERR without a completion for it);
 * else w->status says whether it is well-formed.
 */
static bool nic_wqe_fetch(HmmNicState *s, NicWr *w)
{
    const struct hmm_nic_qp *e = w->e;
    uint64_t slot = hmm_nic_slot_va(e->sq_va, w->index, e->sq_log2_elem);
    uint32_t elem = 1u << e->sq_log2_elem;
    uint8_t head[HMM_NIC_SWQE_SGE];
    struct hmm_nic_dma_info dma;
    uint64_t fail_va, sum = 0;
    uint32_t i;

    if (!hmm_nic_qdma(s, w->cmd[NIC_SIDE_REQ], slot, head, sizeof(head), false,
                      &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "send WQE read failed");
        return false;
    }
    w->wr_id = ldq_le_p(head + offsetof(struct hmm_nic_send_wr, wr_id));
    w->opcode = ldl_le_p(head + offsetof(struct hmm_nic_send_wr, opcode));
    w->send_flags = ldl_le_p(head +
                             offsetof(struct hmm_nic_send_wr, send_flags));
    memcpy(&w->imm, head + offsetof(struct hmm_nic_send_wr, imm_data), 4);
    if (hmm_nic_is_atomic(w->opcode)) {
        w->raddr = ldq_le_p(head + offsetof(struct hmm_nic_send_wr,
                                            wr.atomic.remote_addr));
        w->compare_add = ldq_le_p(head + offsetof(struct hmm_nic_send_wr,
                                                  wr.atomic.compare_add));
        w->swap = ldq_le_p(head + offsetof(struct hmm_nic_send_wr,
                                           wr.atomic.swap));
        w->rkey = ldl_le_p(head + offsetof(struct hmm_nic_send_wr,
                                           wr.atomic.rkey));
    } else if (w->opcode == HMM_NIC_WR_FLUSH) {
        w->raddr = ldq_le_p(head + offsetof(struct hmm_nic_send_wr,
                                            wr.flush.remote_addr));
        w->rkey = ldl_le_p(head + offsetof(struct hmm_nic_send_wr,
                                           wr.flush.rkey));
        w->flush_type = head[offsetof(struct hmm_nic_send_wr, wr.flush.type)];
        w->flush_level = head[offsetof(struct hmm_nic_send_wr,
                                       wr.flush.level)];
    } else {
        w->raddr = ldq_le_p(head + offsetof(struct hmm_nic_send_wr,
                                            wr.rdma.remote_addr));
        w->rkey = ldl_le_p(head + offsetof(struct hmm_nic_send_wr,
                                           wr.rdma.rkey));
    }
    memcpy(&dma, head + HMM_NIC_SWQE_DMA, sizeof(dma));
    w->length = le32_to_cpu(dma.length);
    w->num_sge = le32_to_cpu(dma.num_sge);
    w->is_inline = w->send_flags & HMM_NIC_SEND_INLINE;
    w->status = HMM_NIC_WC_SUCCESS;
    w->vendor_err = HMM_NIC_ERR_NONE;
    trace_hmm_nic_wr_start(w->qp->qpn, w->index, w->wr_id, w->opcode,
                           w->send_flags, w->length);

    if (w->opcode > HMM_NIC_WR_ATOMIC_FETCH_AND_ADD &&
        !hmm_nic_no_sge(w->opcode)) {
        w->status = HMM_NIC_WC_LOC_QP_OP_ERR;
        goto bad;
    }
    if (hmm_nic_no_sge(w->opcode)) {
        return nic_wqe_no_sge(s, w, slot);
    }
    if (w->length > HMM_NIC_MAX_MSG) {
        w->status = HMM_NIC_WC_LOC_LEN_ERR;
        goto bad;
    }
    if (w->is_inline) {
        if (w->opcode != HMM_NIC_WR_SEND &&
            w->opcode != HMM_NIC_WR_SEND_WITH_IMM &&
            w->opcode != HMM_NIC_WR_RDMA_WRITE &&
            w->opcode != HMM_NIC_WR_RDMA_WRITE_WITH_IMM) {
            w->status = HMM_NIC_WC_LOC_QP_OP_ERR;
            goto bad;
        }
        if (w->length > HMM_NIC_MAX_INLINE ||
            HMM_NIC_SWQE_SGE + w->length > elem) {
            w->status = HMM_NIC_WC_LOC_LEN_ERR;
            goto bad;
        }
        if (w->length &&
            !hmm_nic_qdma(s, w->cmd[NIC_SIDE_REQ], slot + HMM_NIC_SWQE_SGE,
                          w->inline_data, w->length, false, &fail_va)) {
            hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                            "inline data read failed");
            return false;
        }
        return true;
    }
    if (w->num_sge > HMM_NIC_MAX_SGE ||
        HMM_NIC_SWQE_SGE + w->num_sge * sizeof(struct hmm_nic_sge) > elem) {
        w->status = HMM_NIC_WC_LOC_QP_OP_ERR;
        goto bad;
    }
    if (w->num_sge &&
        !hmm_nic_qdma(s, w->cmd[NIC_SIDE_REQ], slot + HMM_NIC_SWQE_SGE,
                      w->sge, w->num_sge * sizeof(struct hmm_nic_sge), false,
                      &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "send WQE SGE read failed");
        return false;
    }
    for (i = 0; i < w->num_sge; i++) {
        w->sge[i].addr = le64_to_cpu(w->sge[i].addr);
        w->sge[i].length = le32_to_cpu(w->sge[i].length);
        w->sge[i].lkey = le32_to_cpu(w->sge[i].lkey);
        sum += w->sge[i].length;
    }
    if (sum != w->length ||
        (hmm_nic_is_atomic(w->opcode) &&
         (w->num_sge != 1 || w->length != HMM_NIC_ATOMIC_SIZE))) {
        w->status = HMM_NIC_WC_LOC_LEN_ERR;
        goto bad;
    }
    return true;

bad:
    return nic_wqe_bad(s, w);
}

/* Complete the WR at the SQ's consumer index and consume it. */
static void nic_wr_complete(HmmNicState *s, NicWr *w)
{
    HmmNicQp *qp = w->qp;
    uint64_t fail_va;
    NicWc wc = {
        .wr_id = w->wr_id,
        .status = w->status,
        .opcode = hmm_nic_wc_opcode(w->opcode),
        .vendor_err = w->vendor_err,
        .byte_len = w->length,
        .qp_num = qp->qpn,
    };

    trace_hmm_nic_wr_done(qp->qpn, w->index, w->wr_id, w->status,
                          w->vendor_err);
    qp->atomic_done = false;
    if (w->status != HMM_NIC_WC_SUCCESS ||
        (w->send_flags & HMM_NIC_SEND_SIGNALED) ||
        (w->e->flags & HMM_NIC_QP_SIG_ALL)) {
        hmm_nic_post_cqe(s, w->e->send_cqn, &wc, w->cmd[NIC_SIDE_REQ]);
    }
    if (w->status == HMM_NIC_WC_SUCCESS) {
        s->cnt_wrs_completed++;
    } else {
        s->cnt_wrs_failed++;
    }
    qp->sq_ci = (qp->sq_ci + 1) & w->e->sq_mask;
    if (!hmm_nic_qwrite32(s, w->cmd[NIC_SIDE_REQ],
                          w->e->sq_va + HMM_NIC_QBUF_CONSUMER, qp->sq_ci,
                          &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "send queue consumer index write failed");
        hmm_nic_qp_to_err(s, qp, NULL, HMM_NIC_ERR_QUEUE_READ);
        return;
    }
    if (w->status != HMM_NIC_WC_SUCCESS) {
        hmm_nic_qp_to_err(s, qp, w->e, w->vendor_err);
    }
}

/*
 * Load @qp's entry for the engine. False if the QP has nothing to do (it
 * is left idle; a bad entry also moves it to ERR).
 */
static bool nic_qp_load(HmmNicState *s, HmmNicQp *qp, struct hmm_nic_qp *e)
{
    uint64_t cmd = HMM_NIC_FAULT_CMD(qp->qpn, qp->sq_ci, 0);
    const char *why;
    uint32_t err;

    if (!hmm_nic_qp_read(s, qp->qpn, e, cmd)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_TABLE,
                        s->qp_base + (uint64_t)qp->qpn * sizeof(*e),
                        "QP table entry read failed");
        hmm_nic_qp_to_err(s, qp, NULL, HMM_NIC_ERR_BAD_TABLE);
        return false;
    }
    if (e->state == HMM_NIC_QPS_RESET || e->state == HMM_NIC_QPS_INIT) {
        hmm_nic_qp_forget(s, qp);
        return false;
    }
    if (e->state != HMM_NIC_QPS_RTS && e->state != HMM_NIC_QPS_ERR &&
        !qp->err) {
        return false;
    }
    why = hmm_nic_qp_check(s, e, &err);
    if (why) {
        hmm_guest_error(&s->core, err, qp->qpn, why);
        hmm_nic_qp_to_err(s, qp, NULL, err);
        return false;
    }
    return true;
}

/*
 * One step of runnable @qp (already off the runnable list): part of the WR
 * at its consumer index, then it is back in line, idle, stalled or waiting.
 */
static uint64_t nic_qp_step(HmmNicState *s, HmmNicQp *qp)
{
    struct hmm_nic_qp e;
    uint64_t fail_va, done = 0;
    uint32_t pi;
    NicWr w;
    NicRes r;

    if (!nic_qp_load(s, qp, &e)) {
        return 0;
    }
    if (qp->err || e.state == HMM_NIC_QPS_ERR) {
        /* the driver's own move to ERR is no event: just flush */
        qp->err = true;
        qp->wr_done = 0;
        qp->atomic_done = false;
        hmm_nic_flush(s, qp, &e, true);
        hmm_nic_flush(s, qp, &e, false);
        return 0;
    }
    if (!hmm_nic_qread32(s, HMM_NIC_FAULT_CMD(qp->qpn, qp->sq_ci, 0),
                         e.sq_va + HMM_NIC_QBUF_PRODUCER, &pi, &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "send queue producer index read failed");
        hmm_nic_qp_to_err(s, qp, NULL, HMM_NIC_ERR_QUEUE_READ);
        return 0;
    }
    qp->sq_ci &= e.sq_mask;
    if ((pi & e.sq_mask) == qp->sq_ci) {
        qp->atomic_done = false;
        return 0;
    }

    memset(&w, 0, sizeof(w));
    w.qp = qp;
    w.e = &e;
    w.index = qp->sq_ci;
    w.cmd[NIC_SIDE_REQ] = HMM_NIC_FAULT_CMD(qp->qpn, w.index, 0);
    w.cmd[NIC_SIDE_RESP] = HMM_NIC_FAULT_CMD(qp->qpn, w.index, 1);
    w.src_qpn = qp->qpn;
    if (!nic_wqe_fetch(s, &w)) {
        hmm_nic_qp_to_err(s, qp, NULL, HMM_NIC_ERR_QUEUE_READ);
        return 0;
    }
    /* the context descriptors are read again for every step */
    hmm_mmu_job_init(&qp->xl[NIC_SIDE_REQ].mj, w.cmd[NIC_SIDE_REQ], UINT32_MAX);
    hmm_mmu_job_init(&qp->xl[NIC_SIDE_RESP].mj, w.cmd[NIC_SIDE_RESP],
                     UINT32_MAX);
    done = qp->wr_done;
    if (w.status != HMM_NIC_WC_SUCCESS) {
        r = NIC_FAIL;
    } else if (hmm_nic_remote(s, &e)) {
        r = hmm_nic_remote_step(s, &w, &done);
    } else {
        switch (w.opcode) {
        case HMM_NIC_WR_SEND:
        case HMM_NIC_WR_SEND_WITH_IMM:
            r = hmm_nic_do_send(s, &w, &done);
            break;
        case HMM_NIC_WR_RDMA_WRITE:
        case HMM_NIC_WR_RDMA_WRITE_WITH_IMM:
            r = hmm_nic_do_write(s, &w, &done);
            break;
        case HMM_NIC_WR_RDMA_READ:
            r = hmm_nic_do_read(s, &w, &done);
            break;
        case HMM_NIC_WR_ATOMIC_WRITE:
            r = hmm_nic_do_atomic_write(s, &w, &done);
            break;
        case HMM_NIC_WR_FLUSH:
            r = hmm_nic_do_flush(s, &w, &done);
            break;
        default:
            r = hmm_nic_do_atomic(s, &w, &done);
            break;
        }
    }
    if (!hmm_nic_alive(s)) {
        /* an event or fault queue write failed meanwhile: all dropped */
        return done - qp->wr_done;
    }
    switch (r) {
    case NIC_OK:
    case NIC_FAIL:
        qp->wr_done = 0;
        qp->rnr_naks = 0;
        qp->retries = 0;
        nic_wr_complete(s, &w);
        if (hmm_nic_alive(s) && !qp->err && qp->sched == NIC_QP_IDLE) {
            hmm_nic_qp_make_runnable(s, qp);
        }
        return done;
    case NIC_MORE:
        {
            uint64_t moved = done - qp->wr_done;

            qp->wr_done = done;
            hmm_nic_qp_make_runnable(s, qp);
            return moved;
        }
    case NIC_STALL:
        trace_hmm_nic_wr_stall(qp->qpn, w.index, qp->stalled_side);
        qp->wr_done = hmm_nic_is_atomic(w.opcode) ? 0 : done;
        qp->sched = NIC_QP_STALLED;
        return 0;
    case NIC_RNR:
        trace_hmm_nic_rnr(qp->qpn, qp->rnr_peer, qp->rnr_delay_ns);
        s->cnt_rnr_waits++;
        qp->wr_done = done;
        hmm_nic_rnr_wait(s, qp);
        return 0;
    case NIC_LINK:
        qp->wr_done = done;
        qp->sched = NIC_QP_LINK;
        s->nlink_wait++;
        return 0;
    }
    return 0;
}

/* ---- the engine ---------------------------------------------------------- */

/* Write pending fault records; a record write that fails is fatal. */
static void nic_post_faults(HmmNicState *s)
{
    unsigned posted;
    uint64_t addr;

    if (s->status & HMM_NIC_STATUS_FATAL) {
        return;
    }
    if (!hmm_fault_post(&s->mmu, &posted, &addr)) {
        hmm_nic_fatal(s, HMM_NIC_ERR_FAULTQ_WRITE, addr,
                      "fault record write failed");
    } else if (posted) {
        hmm_irq_raise(&s->core, HMM_NIC_INTR_FAULT, s->regs.vec_fault, true);
    }
}

static void nic_engine_run(HmmNicState *s, int64_t budget_ns,
                           uint64_t budget_bytes)
{
    int64_t deadline = get_clock() + budget_ns;
    uint64_t bytes = 0;
    int steps = 0;
    HmmNicQp *qp;

    hmm_mmu_job_init(&s->ring_job, 0, HMM_NIC_RING_CTX);
    nic_post_faults(s);
    while (hmm_nic_alive(s) && (qp = QTAILQ_FIRST(&s->runnable)) &&
           steps < HMM_NIC_BH_STEPS && bytes < budget_bytes) {
        QTAILQ_REMOVE(&s->runnable, qp, link);
        qp->sched = NIC_QP_IDLE;
        /* a step that moves nothing still counts */
        bytes += MAX(nic_qp_step(s, qp), 64);
        steps++;
        if (get_clock() >= deadline) {
            break;
        }
    }
    nic_post_faults(s);
    if (hmm_nic_alive(s) && !QTAILQ_EMPTY(&s->runnable)) {
        qemu_bh_schedule(s->bh);
    }
    hmm_nic_update_busy(s);
    hmm_dmatrace_run_end(&s->core.trace);
}

void hmm_nic_bh(void *opaque)
{
    nic_engine_run(opaque, HMM_NIC_BH_NS, HMM_NIC_BH_BYTES);
}

/* Inside a doorbell or replay write: a small budget, the rest in the BH. */
static void nic_run_now(HmmNicState *s)
{
    hmm_nic_update_busy(s);
    if (hmm_nic_alive(s) && !QTAILQ_EMPTY(&s->runnable)) {
        nic_engine_run(s, HMM_NIC_MMIO_NS, HMM_NIC_MMIO_BYTES);
    }
}

/* ---- doorbells and commands (register side) ------------------------------ */

/*
 * Read @qpn's entry for a doorbell. False (reported) if the NIC is off, the
 * QPN is out of range or the entry cannot be read.
 */
static bool nic_doorbell_qp(HmmNicState *s, uint32_t qpn, const char *what,
                            struct hmm_nic_qp *e)
{
    trace_hmm_nic_doorbell(what, qpn);
    if (!hmm_nic_alive(s)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QP_STATE, qpn,
                        "doorbell while the NIC is disabled or halted");
        return false;
    }
    if (qpn >= s->qp_count) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_QPN, qpn,
                        "doorbell for a QPN beyond QP_COUNT");
        return false;
    }
    hmm_mmu_job_init(&s->ring_job, 0, HMM_NIC_RING_CTX);
    if (!hmm_nic_qp_read(s, qpn, e, HMM_NIC_FAULT_CMD(qpn, s->qps[qpn].sq_ci,
                                                      0))) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_TABLE,
                        s->qp_base + (uint64_t)qpn * sizeof(*e),
                        "QP table entry read failed");
        return false;
    }
    return true;
}

void hmm_nic_sq_doorbell(HmmNicState *s, uint32_t qpn)
{
    struct hmm_nic_qp e;
    HmmNicQp *qp;

    if (!nic_doorbell_qp(s, qpn, "sq", &e)) {
        return;
    }
    qp = &s->qps[qpn];
    if (e.state == HMM_NIC_QPS_RESET || e.state == HMM_NIC_QPS_INIT) {
        hmm_nic_qp_forget(s, qp);
    }
    if (e.state != HMM_NIC_QPS_RTS && e.state != HMM_NIC_QPS_ERR &&
        !qp->err) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QP_STATE, qpn,
                        "SQ_DOORBELL for a QP not in RTS");
        return;
    }
    hmm_nic_qp_make_runnable(s, qp);
    nic_run_now(s);
}

void hmm_nic_rq_doorbell(HmmNicState *s, uint32_t qpn)
{
    struct hmm_nic_qp e;
    HmmNicQp *qp, *next;

    if (!nic_doorbell_qp(s, qpn, "rq", &e)) {
        return;
    }
    qp = &s->qps[qpn];
    if (e.state == HMM_NIC_QPS_RESET) {
        hmm_nic_qp_forget(s, qp);
        hmm_guest_error(&s->core, HMM_NIC_ERR_QP_STATE, qpn,
                        "RQ_DOORBELL for a QP in RESET");
        return;
    }
    if (e.state == HMM_NIC_QPS_INIT) {
        /* receives posted before RTR: the QP starts over */
        hmm_nic_qp_forget(s, qp);
    }
    if (qp->err || e.state == HMM_NIC_QPS_ERR) {
        /* receives posted to a QP in ERR complete flushed */
        hmm_nic_qp_make_runnable(s, qp);
    }
    /* the end of an RNR wait for every QP sending to this one */
    QTAILQ_FOREACH_SAFE(qp, &s->rnr, link, next) {
        if (qp->rnr_peer == qpn) {
            hmm_nic_qp_wake(s, qp);
        }
    }
    nic_run_now(s);
}

/* CQ_RESET: the CQ starts over, whatever its entry says now. */
void hmm_nic_cq_reset(HmmNicState *s, uint32_t cqn)
{
    trace_hmm_nic_cq_reset(cqn);
    if (cqn >= s->cq_count) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_CQN, cqn,
                        "CQ_RESET for a CQN beyond CQ_COUNT");
        return;
    }
    memset(&s->cqs[cqn], 0, sizeof(s->cqs[cqn]));
}

void hmm_nic_cq_arm(HmmNicState *s, uint32_t val)
{
    uint32_t cqn = val & ~HMM_NIC_CQ_ARM_SOLICITED;
    struct hmm_nic_cq cq;

    trace_hmm_nic_cq_arm(cqn, !!(val & HMM_NIC_CQ_ARM_SOLICITED));
    if (!hmm_nic_alive(s)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_CQN, cqn,
                        "CQ_ARM while the NIC is disabled or halted");
        return;
    }
    if (cqn >= s->cq_count) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_CQN, cqn,
                        "CQ_ARM for a CQN beyond CQ_COUNT");
        return;
    }
    if (!hmm_nic_table_read(s, s->cq_base + (uint64_t)cqn * sizeof(cq), &cq,
                            sizeof(cq), 0)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_TABLE,
                        s->cq_base + (uint64_t)cqn * sizeof(cq),
                        "CQ table entry read failed");
        return;
    }
    if (!(cq.flags & HMM_NIC_CQ_VALID)) {
        memset(&s->cqs[cqn], 0, sizeof(s->cqs[cqn]));
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_CQN, cqn,
                        "CQ_ARM for an invalid CQ");
        return;
    }
    if (s->cqs[cqn].err) {
        return;
    }
    s->cqs[cqn].armed = true;
    s->cqs[cqn].armed_solicited = val & HMM_NIC_CQ_ARM_SOLICITED;
}

static HmmNicQp *nic_qp_of(HmmMmuJob *mj)
{
    return container_of(mj, HmmNicXlate, mj)->qp;
}

/* Was @mj the fault of a request from the linked device? It is over. */
static bool nic_resp_unstalled(HmmNicQp *qp, HmmMmuJob *mj)
{
    if (!qp->resp_stalled || mj != &qp->xl[NIC_SIDE_RESP].mj) {
        return false;
    }
    qp->resp_stalled = false;
    return true;
}

/* ... and it failed: its requester is told, and its retry will be too. */
static void nic_resp_failed(HmmNicState *s, HmmNicQp *qp)
{
    NicLinkMsg req = {
        .src_qpn = qp->resp_src_qpn,
        .dst_qpn = qp->qpn,
        .psn = qp->resp_psn,
    };
    NicLinkMsg resp = { 0 };

    qp->resp_cancelled = true;
    hmm_nic_link_respond(s, &req, HMM_NIC_WC_REM_ACCESS_ERR, &resp, NULL);
}

void hmm_nic_fault_replay(HmmNicState *s)
{
    HmmMmuJob *mj;
    unsigned n = 0;

    while ((mj = hmm_fault_unstall(&s->mmu, false))) {
        HmmNicQp *qp = nic_qp_of(mj);

        n++;
        if (nic_resp_unstalled(qp, mj)) {
            continue;           /* the requester tries again on its own */
        }
        qp->sched = NIC_QP_IDLE;
        hmm_nic_qp_make_runnable(s, qp);
    }
    hmm_fault_replayed(&s->mmu, n);
    nic_run_now(s);
}

/*
 * The WR at @qp's consumer index completes with @status after its fault
 * was cancelled or could not be posted; the QP goes to ERR.
 */
static void nic_fail_stalled(HmmNicState *s, HmmNicQp *qp, uint32_t status,
                             uint32_t err)
{
    struct hmm_nic_qp e;
    NicWr w;

    qp->sched = NIC_QP_IDLE;
    qp->wr_done = 0;
    if (!hmm_nic_alive(s) || !nic_qp_load(s, qp, &e)) {
        return;
    }
    memset(&w, 0, sizeof(w));
    w.qp = qp;
    w.e = &e;
    w.index = qp->sq_ci & e.sq_mask;
    w.cmd[NIC_SIDE_REQ] = HMM_NIC_FAULT_CMD(qp->qpn, w.index, 0);
    w.cmd[NIC_SIDE_RESP] = HMM_NIC_FAULT_CMD(qp->qpn, w.index, 1);
    w.src_qpn = qp->qpn;
    if (!nic_wqe_fetch(s, &w)) {
        hmm_nic_qp_to_err(s, qp, NULL, HMM_NIC_ERR_QUEUE_READ);
        return;
    }
    w.status = status;
    w.vendor_err = err;
    nic_wr_complete(s, &w);
}

void hmm_nic_fault_cancel(HmmNicState *s, uint32_t token)
{
    HmmMmuJob *mj;
    HmmNicQp *qp;

    hmm_mmu_job_init(&s->ring_job, 0, HMM_NIC_RING_CTX);
    switch (hmm_fault_cancel(&s->mmu, token, &mj)) {
    case HMM_FAULT_CANCELLED:
        qp = nic_qp_of(mj);
        /* what the driver asked for: signalled, not counted as a mistake */
        hmm_error_signal(&s->core, HMM_NIC_ERR_FAULT, mj->fault_va,
                         "faulting work request cancelled");
        if (nic_resp_unstalled(qp, mj)) {
            nic_resp_failed(s, qp);
            hmm_nic_kick(s);
            break;
        }
        nic_fail_stalled(s, qp, hmm_nic_access_status(
                             HMM_NIC_FAULT_RESPONDER(mj->cmd_id) ?
                             NIC_SIDE_RESP : NIC_SIDE_REQ),
                         HMM_NIC_ERR_FAULT);
        hmm_nic_kick(s);
        break;
    case HMM_FAULT_STALE:
        break;
    case HMM_FAULT_BAD_TOKEN:
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_TOKEN, token,
                        "FAULT_CANCEL token was never issued");
        break;
    }
    hmm_nic_update_busy(s);
}

/*
 * Disabling the fault queue: records not yet written can no longer be, so
 * those work requests fail; those whose record the driver has stay.
 */
void hmm_nic_fail_unposted(HmmNicState *s)
{
    HmmMmuJob *mj;

    hmm_mmu_job_init(&s->ring_job, 0, HMM_NIC_RING_CTX);
    while ((mj = hmm_fault_unstall(&s->mmu, true))) {
        HmmNicQp *qp = nic_qp_of(mj);

        hmm_guest_error(&s->core, HMM_NIC_ERR_FAULT, mj->fault_va,
                        "fault queue disabled with a fault pending");
        if (nic_resp_unstalled(qp, mj)) {
            nic_resp_failed(s, qp);
            continue;
        }
        nic_fail_stalled(s, qp, hmm_nic_access_status(
                             HMM_NIC_FAULT_RESPONDER(mj->cmd_id) ?
                             NIC_SIDE_RESP : NIC_SIDE_REQ),
                         HMM_NIC_ERR_FAULT);
    }
    hmm_nic_kick(s);
}

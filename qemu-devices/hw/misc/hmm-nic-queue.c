/*
 * hmm-nic: queue pairs' scheduling and error state, queue DMA,
 * completion and event queues
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

void hmm_nic_update_busy(HmmNicState *s)
{
    bool pending = !QTAILQ_EMPTY(&s->runnable) || !QTAILQ_EMPTY(&s->rnr) ||
                   s->nlink_wait || s->mmu.faults.nstalled;

    if (hmm_nic_alive(s) && pending) {
        s->status |= HMM_NIC_STATUS_BUSY;
    } else {
        s->status &= ~HMM_NIC_STATUS_BUSY;
    }
}

void hmm_nic_kick(HmmNicState *s)
{
    hmm_nic_update_busy(s);
    if (hmm_nic_alive(s)) {
        qemu_bh_schedule(s->bh);
    }
}

/* ---- queue-pair scheduling ----------------------------------------------- */

/* Take @qp off whatever list it waits on. */
static void nic_qp_unschedule(HmmNicState *s, HmmNicQp *qp)
{
    switch (qp->sched) {
    case NIC_QP_RUNNABLE:
        QTAILQ_REMOVE(&s->runnable, qp, link);
        break;
    case NIC_QP_RNR:
        QTAILQ_REMOVE(&s->rnr, qp, link);
        break;
    case NIC_QP_STALLED:
        hmm_fault_withdraw(&s->mmu, &qp->xl[qp->stalled_side].mj);
        break;
    case NIC_QP_LINK:
        s->nlink_wait--;
        break;
    case NIC_QP_IDLE:
        break;
    }
    qp->sched = NIC_QP_IDLE;
}

/*
 * New work for an idle @qp (a doorbell, the next WR). A QP that waits (an
 * RNR or retry timer, a response on the link, a fault's replay) goes on
 * waiting: waking it would send its request again, and a request the peer
 * already ran would then run twice.
 */
void hmm_nic_qp_make_runnable(HmmNicState *s, HmmNicQp *qp)
{
    if (qp->sched == NIC_QP_IDLE) {
        qp->sched = NIC_QP_RUNNABLE;
        QTAILQ_INSERT_TAIL(&s->runnable, qp, link);
    }
}

/*
 * What @qp waited for came: its RNR or retry timer, its peer's
 * RQ_DOORBELL, the response on the link (or the link's loss).
 */
void hmm_nic_qp_wake(HmmNicState *s, HmmNicQp *qp)
{
    if (qp->sched == NIC_QP_RNR || qp->sched == NIC_QP_LINK) {
        nic_qp_unschedule(s, qp);
        qp->sched = NIC_QP_IDLE;
    }
    hmm_nic_qp_make_runnable(s, qp);
}

/*
 * @qp found no receive WQE at its peer: it tries again after the peer's
 * min_rnr_timer, or at the peer's RQ_DOORBELL (hmm_nic_qp_wake()).
 */
void hmm_nic_rnr_wait(HmmNicState *s, HmmNicQp *qp)
{
    qp->rnr_deadline = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) +
                       qp->rnr_delay_ns;
    qp->sched = NIC_QP_RNR;
    QTAILQ_INSERT_TAIL(&s->rnr, qp, link);
    timer_mod_anticipate_ns(s->rnr_timer, qp->rnr_deadline);
}

void hmm_nic_rnr_expire(void *opaque)
{
    HmmNicState *s = opaque;
    int64_t now = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
    int64_t next = INT64_MAX;
    HmmNicQp *qp, *tmp;

    QTAILQ_FOREACH_SAFE(qp, &s->rnr, link, tmp) {
        if (qp->rnr_deadline <= now) {
            trace_hmm_nic_rnr_retry(qp->qpn);
            hmm_nic_qp_wake(s, qp);
        } else {
            next = MIN(next, qp->rnr_deadline);
        }
    }
    if (next != INT64_MAX) {
        timer_mod_ns(s->rnr_timer, next);
    }
    hmm_nic_kick(s);
}

/* Back to power-on state: indices 0, not in error, scheduled nowhere. */
void hmm_nic_qp_forget(HmmNicState *s, HmmNicQp *qp)
{
    nic_qp_unschedule(s, qp);
    qp->sq_ci = 0;
    qp->rq_ci = 0;
    qp->err = false;
    qp->rnr_peer = 0;
    qp->rnr_naks = 0;
    qp->retries = 0;
    if (qp->resp_stalled) {
        hmm_fault_withdraw(&s->mmu, &qp->xl[NIC_SIDE_RESP].mj);
    }
    qp->resp_stalled = false;
    qp->resp_cancelled = false;
    qp->link_retry = false;
    qp->link_resp = false;
    qp->link_end = 0;
    g_free(qp->link_buf);
    qp->link_buf = NULL;
    qp->wr_done = 0;
    qp->atomic_done = false;
    qp->atomic_old = 0;
}

void hmm_nic_drop_all(HmmNicState *s)
{
    uint32_t i;

    if (!s->qps) {
        return;
    }
    for (i = 0; i < HMM_NIC_MAX_QP; i++) {
        hmm_nic_qp_forget(s, &s->qps[i]);
    }
    memset(s->cqs, 0, HMM_NIC_MAX_CQ * sizeof(*s->cqs));
    timer_del(s->rnr_timer);
    hmm_mmu_job_init(&s->ring_job, 0, HMM_NIC_RING_CTX);
    hmm_nic_update_busy(s);
}

/* Device-level error: the event or fault queue cannot be trusted. */
void hmm_nic_fatal(HmmNicState *s, uint32_t err, uint64_t addr,
                   const char *what)
{
    s->status |= HMM_NIC_STATUS_FATAL;
    hmm_nic_drop_all(s);
    s->status &= ~HMM_NIC_STATUS_BUSY;
    qemu_bh_cancel(s->bh);
    trace_hmm_nic_fatal(hmm_nic_err_name(err), addr);
    hmm_guest_error(&s->core, err, addr, what);
}

/* ---- DMA ----------------------------------------------------------------- */

/* A read of a table entry (bus address, no translation). */
bool hmm_nic_table_read(HmmNicState *s, uint64_t addr, void *buf,
                        uint64_t len, uint64_t cmd_id)
{
    HmmDmaRec r = {
        .engine = HMM_NIC_ENGINE_QUEUE,
        .kind = HMM_GPU_TRACE_CMD_FETCH,
        .addr = addr,
        .len = len,
        .cmd_id = cmd_id,
    };

    return hmm_dma_read(&s->core, &r, buf) == MEMTX_OK;
}

/*
 * DMA of @len bytes of a queue buffer at @va (context RING_CTX), page by
 * page. The driver keeps the queues mapped: a translation that would fault
 * is not stalled on but fails, like any other failure. False on failure,
 * with the VA that failed in *fail_va.
 */
bool hmm_nic_qdma(HmmNicState *s, uint64_t cmd_id, uint64_t va, void *buf,
                  uint64_t len, bool write, uint64_t *fail_va)
{
    HmmMmuJob *j = &s->ring_job;
    uint8_t *p = buf;

    j->cmd_id = cmd_id;
    while (len) {
        HmmXlateResult x;
        HmmDmaRec r = {
            .engine = HMM_NIC_ENGINE_QUEUE,
            .kind = write ? HMM_GPU_TRACE_CPL_WRITE : HMM_GPU_TRACE_CMD_FETCH,
            .cmd_id = cmd_id,
            .ctx = HMM_NIC_RING_CTX,
            .va = va,
        };
        uint64_t n;

        switch (hmm_mmu_translate(&s->mmu, j, va,
                                  write ? HMM_GPU_ACCESS_WRITE :
                                          HMM_GPU_ACCESS_READ, &x)) {
        case HMM_XLATE_OK:
            break;
        case HMM_XLATE_STALL:
            hmm_fault_withdraw(&s->mmu, j);
            trace_hmm_nic_queue_error(cmd_id, va, "queue page not mapped");
            *fail_va = va;
            return false;
        default:
            trace_hmm_nic_queue_error(cmd_id, va, x.what);
            *fail_va = va;
            return false;
        }
        n = MIN(len, x.avail);
        r.addr = x.pa;
        r.len = n;
        if ((write ? hmm_dma_write(&s->core, &r, p) :
                     hmm_dma_read(&s->core, &r, p)) != MEMTX_OK) {
            trace_hmm_nic_queue_error(cmd_id, va, "queue DMA failed");
            *fail_va = va;
            return false;
        }
        p += n;
        va += n;
        len -= n;
    }
    return true;
}

bool hmm_nic_qread32(HmmNicState *s, uint64_t cmd_id, uint64_t va,
                     uint32_t *val, uint64_t *fail_va)
{
    uint32_t le;

    if (!hmm_nic_qdma(s, cmd_id, va, &le, sizeof(le), false, fail_va)) {
        return false;
    }
    *val = le32_to_cpu(le);
    return true;
}

bool hmm_nic_qwrite32(HmmNicState *s, uint64_t cmd_id, uint64_t va,
                      uint32_t val, uint64_t *fail_va)
{
    uint32_t le = cpu_to_le32(val);

    return hmm_nic_qdma(s, cmd_id, va, &le, sizeof(le), true, fail_va);
}

/* Payload DMA of one side of a work request. */
MemTxResult hmm_nic_data_dma(HmmNicState *s, NicWr *w, int side,
                             uint32_t mr, uint64_t pa, uint64_t va,
                             void *buf, uint64_t len, bool write)
{
    HmmDmaRec r = {
        .engine = side == NIC_SIDE_RESP ? HMM_NIC_ENGINE_RESP :
                                          HMM_NIC_ENGINE_REQ,
        .kind = HMM_GPU_TRACE_DATA,
        .addr = hmm_dma_data_addr(&s->core, pa),
        .len = len,
        .cmd_id = w->cmd[side],
        .ctx = mr,
        .va = va,
    };

    return write ? hmm_dma_write(&s->core, &r, buf) :
                   hmm_dma_read(&s->core, &r, buf);
}

/* ---- tables -------------------------------------------------------------- */

bool hmm_nic_qp_read(HmmNicState *s, uint32_t qpn, struct hmm_nic_qp *e,
                     uint64_t cmd_id)
{
    if (!hmm_nic_table_read(s, s->qp_base + (uint64_t)qpn * sizeof(*e), e,
                            sizeof(*e), cmd_id)) {
        return false;
    }
    e->sq_va = le64_to_cpu(e->sq_va);
    e->rq_va = le64_to_cpu(e->rq_va);
    e->sq_mask = le32_to_cpu(e->sq_mask);
    e->rq_mask = le32_to_cpu(e->rq_mask);
    e->send_cqn = le32_to_cpu(e->send_cqn);
    e->recv_cqn = le32_to_cpu(e->recv_cqn);
    e->dest_qpn = le32_to_cpu(e->dest_qpn);
    e->pdn = le32_to_cpu(e->pdn);
    e->access = le32_to_cpu(e->access);
    e->flags = le32_to_cpu(e->flags);
    return true;
}

/* The parts of a QP entry a QP past RESET needs; NULL if all is well. */
const char *hmm_nic_qp_check(HmmNicState *s, const struct hmm_nic_qp *e,
                             uint32_t *err)
{
    *err = HMM_NIC_ERR_BAD_TABLE;
    if (e->type != HMM_NIC_QPT_RC) {
        return "QP type is not RC";
    }
    if (!hmm_nic_mask_ok(e->sq_mask) || !hmm_nic_mask_ok(e->rq_mask)) {
        return "QP queue mask is not 2^n - 1 (1..4095)";
    }
    if (e->sq_log2_elem < HMM_NIC_SQ_LOG2_MIN ||
        e->sq_log2_elem > HMM_NIC_LOG2_MAX ||
        e->rq_log2_elem < HMM_NIC_RQ_LOG2_MIN ||
        e->rq_log2_elem > HMM_NIC_LOG2_MAX) {
        return "QP WQE size out of range";
    }
    *err = HMM_NIC_ERR_BAD_CQN;
    if (e->send_cqn >= s->cq_count || e->recv_cqn >= s->cq_count) {
        return "QP CQ number beyond CQ_COUNT";
    }
    return NULL;
}

/* ---- events and completions ---------------------------------------------- */

static void nic_event(HmmNicState *s, uint32_t type, uint32_t num,
                      uint32_t err)
{
    struct hmm_nic_eqe eqe;
    HmmDmaRec r = {
        .engine = HMM_NIC_ENGINE_QUEUE,
        .kind = HMM_GPU_TRACE_CPL_WRITE,
        .len = sizeof(eqe),
        .aux = type,
    };

    if (s->status & HMM_NIC_STATUS_FATAL) {
        return;
    }
    if (!s->eq.enabled) {
        s->cnt_events_dropped++;
        trace_hmm_nic_event_dropped(type, num, "event queue disabled");
        return;
    }
    if (hmm_ring_full(&s->eq)) {
        s->cnt_events_dropped++;
        trace_hmm_nic_event_dropped(type, num, "event queue full");
        hmm_guest_error(&s->core, HMM_NIC_ERR_EQ_WRITE, s->eq.head,
                        "event queue full: event lost");
        return;
    }
    memset(&eqe, 0, sizeof(eqe));
    eqe.type = cpu_to_le32(type);
    eqe.num = cpu_to_le32(num);
    eqe.err = cpu_to_le32(err);
    eqe.timestamp_ns = cpu_to_le64(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
    r.addr = hmm_ring_entry_addr(&s->eq, s->eq.tail);
    if (hmm_dma_write(&s->core, &r, &eqe) != MEMTX_OK) {
        hmm_nic_fatal(s, HMM_NIC_ERR_EQ_WRITE, r.addr,
                      "event queue entry write failed");
        return;
    }
    trace_hmm_nic_event(type, num, err, s->eq.tail);
    hmm_ring_push(&s->eq);
    s->cnt_events++;
    hmm_irq_raise(&s->core, HMM_NIC_INTR_EQ, s->regs.vec_main, true);
}

/* A CQ in error drops its completions until the device sees it invalid. */
static void nic_cq_error(HmmNicState *s, uint32_t cqn, uint32_t err,
                         uint64_t addr, const char *what)
{
    s->cqs[cqn].err = true;
    s->cqs[cqn].armed = false;
    hmm_guest_error(&s->core, err, addr, what);
    nic_event(s, HMM_NIC_EV_CQ_ERR, cqn, err);
}

/*
 * Write completion @wc to CQ @cqn. False if it could not be (the CQ is
 * bad, in error, full or unwritable: each reported).
 */
bool hmm_nic_post_cqe(HmmNicState *s, uint32_t cqn, const NicWc *wc,
                      uint64_t cmd_id)
{
    struct hmm_nic_cq cq;
    struct hmm_nic_cqe cqe;
    HmmNicCq *c;
    uint32_t ci;
    uint64_t fail_va;
    uint64_t slot;

    if (cqn >= s->cq_count) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_CQN, cqn,
                        "completion for a CQ beyond CQ_COUNT");
        return false;
    }
    c = &s->cqs[cqn];
    if (!hmm_nic_table_read(s, s->cq_base + (uint64_t)cqn * sizeof(cq), &cq,
                            sizeof(cq), cmd_id)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_TABLE,
                        s->cq_base + (uint64_t)cqn * sizeof(cq),
                        "CQ table entry read failed");
        return false;
    }
    cq.va = le64_to_cpu(cq.va);
    cq.mask = le32_to_cpu(cq.mask);
    if (!(cq.flags & HMM_NIC_CQ_VALID)) {
        memset(c, 0, sizeof(*c));
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_CQN, cqn,
                        "completion for an invalid CQ");
        return false;
    }
    if (c->err) {
        trace_hmm_nic_cqe_dropped(cqn, wc->wr_id, "CQ in error");
        return false;
    }
    if (!hmm_nic_mask_ok(cq.mask) || cq.log2_elem < HMM_NIC_CQ_LOG2_MIN ||
        cq.log2_elem > HMM_NIC_LOG2_MAX) {
        nic_cq_error(s, cqn, HMM_NIC_ERR_BAD_TABLE, cqn,
                     "CQ entry with bad mask or CQE size");
        return false;
    }
    c->pi &= cq.mask;
    if (!hmm_nic_qread32(s, cmd_id, cq.va + HMM_NIC_QBUF_CONSUMER, &ci,
                         &fail_va)) {
        nic_cq_error(s, cqn, HMM_NIC_ERR_QUEUE_READ, fail_va,
                     "CQ consumer index read failed");
        return false;
    }
    if (((c->pi + 1) & cq.mask) == (ci & cq.mask)) {
        trace_hmm_nic_cq_overrun(cqn, c->pi, ci & cq.mask);
        nic_cq_error(s, cqn, HMM_NIC_ERR_CQ_OVERRUN, cqn,
                     "completion for a full CQ");
        return false;
    }
    memset(&cqe, 0, sizeof(cqe));
    cqe.wr_id = cpu_to_le64(wc->wr_id);
    cqe.status = cpu_to_le32(wc->status);
    cqe.opcode = cpu_to_le32(wc->opcode);
    cqe.vendor_err = cpu_to_le32(wc->vendor_err);
    cqe.byte_len = cpu_to_le32(wc->byte_len);
    cqe.imm_data = wc->imm;             /* stays in wire order */
    cqe.qp_num = cpu_to_le32(wc->qp_num);
    cqe.src_qp = cpu_to_le32(wc->src_qp);
    cqe.wc_flags = cpu_to_le32(wc->wc_flags);
    cqe.port_num = 1;
    slot = hmm_nic_slot_va(cq.va, c->pi, cq.log2_elem);
    if (!hmm_nic_qdma(s, cmd_id, slot, &cqe, sizeof(cqe), true, &fail_va)) {
        nic_cq_error(s, cqn, HMM_NIC_ERR_CQ_WRITE, fail_va,
                     "CQE write failed");
        return false;
    }
    trace_hmm_nic_cqe(cqn, c->pi, wc->wr_id, wc->status, wc->opcode);
    c->pi = (c->pi + 1) & cq.mask;
    if (!hmm_nic_qwrite32(s, cmd_id, cq.va + HMM_NIC_QBUF_PRODUCER, c->pi,
                          &fail_va)) {
        nic_cq_error(s, cqn, HMM_NIC_ERR_CQ_WRITE, fail_va,
                     "CQ producer index write failed");
        return false;
    }
    if (c->armed && (!c->armed_solicited || wc->solicited ||
                     wc->status != HMM_NIC_WC_SUCCESS)) {
        c->armed = false;
        nic_event(s, HMM_NIC_EV_CQ, cqn, 0);
    }
    return true;
}

/* ---- the error state and flushing ---------------------------------------- */

void hmm_nic_flush(HmmNicState *s, HmmNicQp *qp,
                   const struct hmm_nic_qp *e, bool sq)
{
    uint64_t qva = sq ? e->sq_va : e->rq_va;
    uint32_t mask = sq ? e->sq_mask : e->rq_mask;
    uint8_t log2 = sq ? e->sq_log2_elem : e->rq_log2_elem;
    uint32_t *ci = sq ? &qp->sq_ci : &qp->rq_ci;
    uint64_t cmd = HMM_NIC_FAULT_CMD(qp->qpn, *ci, 0);
    uint64_t fail_va;
    uint32_t pi, n = 0;

    if (!hmm_nic_qread32(s, cmd, qva + HMM_NIC_QBUF_PRODUCER, &pi, &fail_va)) {
        return;
    }
    pi &= mask;
    *ci &= mask;
    while (*ci != pi && n++ <= mask) {
        struct {
            uint64_t wr_id;
            uint32_t reserved;
            uint32_t opcode;
        } head;
        NicWc wc = {
            .status = HMM_NIC_WC_WR_FLUSH_ERR,
            .qp_num = qp->qpn,
        };

        cmd = HMM_NIC_FAULT_CMD(qp->qpn, *ci, 0);
        if (!hmm_nic_qdma(s, cmd, hmm_nic_slot_va(qva, *ci, log2), &head,
                          sq ? sizeof(head) : sizeof(head.wr_id), false,
                          &fail_va)) {
            break;
        }
        wc.wr_id = le64_to_cpu(head.wr_id);
        wc.opcode = sq ? hmm_nic_wc_opcode(le32_to_cpu(head.opcode)) :
                         HMM_NIC_WC_OP_RECV;
        hmm_nic_post_cqe(s, sq ? e->send_cqn : e->recv_cqn, &wc, cmd);
        s->cnt_wrs_flushed++;
        *ci = (*ci + 1) & mask;
        if (!hmm_nic_qwrite32(s, cmd, qva + HMM_NIC_QBUF_CONSUMER, *ci,
                              &fail_va)) {
            break;
        }
    }
    trace_hmm_nic_flush(qp->qpn, sq, n);
}

/*
 * Move @qp to ERR: it stops, its table entry says so, an event tells the
 * driver, and (with its entry @e, if it could be read) the rest of both its
 * queues completes with WR_FLUSH_ERR.
 */
void hmm_nic_qp_to_err(HmmNicState *s, HmmNicQp *qp,
                       const struct hmm_nic_qp *e, uint32_t err)
{
    uint8_t state = HMM_NIC_QPS_ERR;
    HmmDmaRec r = {
        .engine = HMM_NIC_ENGINE_QUEUE,
        .kind = HMM_GPU_TRACE_CPL_WRITE,
        .addr = s->qp_base + (uint64_t)qp->qpn * sizeof(struct hmm_nic_qp) +
                HMM_NIC_QP_STATE_OFF,
        .len = 1,
        .cmd_id = HMM_NIC_FAULT_CMD(qp->qpn, qp->sq_ci, 0),
    };

    nic_qp_unschedule(s, qp);
    qp->wr_done = 0;
    qp->atomic_done = false;
    if (!qp->err) {
        qp->err = true;
        trace_hmm_nic_qp_err(qp->qpn, err);
        /* failure counted as a DMA error; the device's own state says ERR */
        hmm_dma_write(&s->core, &r, &state);
        nic_event(s, HMM_NIC_EV_QP_FATAL, qp->qpn, err);
    }
    if (e && hmm_nic_alive(s)) {
        hmm_nic_flush(s, qp, e, true);
        hmm_nic_flush(s, qp, e, false);
    }
}

/*
 * hmm-nic: the data path: access checks, translation, payload DMA
 * and the opcodes (requester and responder, loopback)
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

/* ---- access checks and translation --------------------------------------- */

/*
 * Check key @key for an access to [va, va + len) (unless !@range: a FLUSH
 * of the whole MR) by a QP of protection domain @pdn that needs MR access
 * bits @need, describe it in @seg and return the MR's entry in @mr.
 */
static bool nic_lookup_key(HmmNicState *s, uint64_t cmd_id, uint32_t key,
                           uint64_t va, uint64_t len, uint32_t pdn,
                           uint32_t need, bool range, NicSeg *seg,
                           struct hmm_nic_mr *out)
{
    uint32_t idx = HMM_NIC_KEY_INDEX(key);
    struct hmm_nic_mr mr;
    const char *why = NULL;

    if (idx == HMM_NIC_RING_CTX || idx >= s->mmu.ctx_count ||
        idx >= HMM_NIC_MAX_MR) {
        why = "key index is the ring context or beyond CTX_COUNT";
    } else if (!hmm_nic_table_read(s, s->mr_base + (uint64_t)idx * sizeof(mr),
                                   &mr, sizeof(mr), cmd_id)) {
        why = "MR table entry read failed";
    } else {
        mr.va = le64_to_cpu(mr.va);
        mr.length = le64_to_cpu(mr.length);
        mr.key = le32_to_cpu(mr.key);
        mr.access = le32_to_cpu(mr.access);
        mr.flags = le32_to_cpu(mr.flags);
        mr.pdn = le32_to_cpu(mr.pdn);
        if (!(mr.flags & HMM_NIC_MR_VALID)) {
            why = "MR not valid";
        } else if (mr.key != key) {
            why = "key tag does not match the MR";
        } else if (mr.pdn != pdn) {
            why = "MR of another protection domain";
        } else if (range && !(mr.flags & HMM_NIC_MR_IMPLICIT) &&
                   (va < mr.va || len > mr.length ||
                    va - mr.va > mr.length - len)) {
            why = "range outside the MR";
        } else if ((mr.access & need) != need) {
            why = "MR lacks the access";
        }
    }
    if (why) {
        trace_hmm_nic_key_error(cmd_id, key, va, len, why);
        return false;
    }
    seg->mr = idx;
    seg->va = va;
    seg->len = len;
    seg->host = NULL;
    if (out) {
        *out = mr;
    }
    return true;
}

static bool nic_check_key(HmmNicState *s, uint64_t cmd_id, uint32_t key,
                          uint64_t va, uint64_t len, uint32_t pdn,
                          uint32_t need, NicSeg *seg)
{
    return nic_lookup_key(s, cmd_id, key, va, len, pdn, need, true, seg, NULL);
}

/* The requester's SGEs (or inline data) as a scatter list. */
static bool nic_local_sgl(HmmNicState *s, NicWr *w, uint32_t need,
                          uint8_t access, NicSgl *l)
{
    uint32_t i;

    l->n = 0;
    l->side = NIC_SIDE_REQ;
    l->access = access;
    if (w->is_inline) {
        l->seg[0] = (NicSeg) {
            .len = w->length,
            .host = w->inline_data,
        };
        l->n = 1;
        return true;
    }
    for (i = 0; i < w->num_sge; i++) {
        if (!w->sge[i].length) {
            continue;
        }
        if (!nic_check_key(s, w->cmd[NIC_SIDE_REQ], w->sge[i].lkey,
                           w->sge[i].addr, w->sge[i].length, w->e->pdn,
                           need, &l->seg[l->n])) {
            return false;
        }
        l->n++;
    }
    return true;
}

static NicRes nic_fail(NicWr *w, uint32_t status, uint32_t vendor_err)
{
    w->status = status;
    w->vendor_err = vendor_err;
    return NIC_FAIL;
}

/* Translate @va of MR @mr for side @side of work request @w. */
static NicRes nic_xlate(HmmNicState *s, NicWr *w, int side, uint32_t mr,
                        uint64_t va, uint8_t access, HmmXlateResult *x)
{
    HmmMmuJob *j = &w->qp->xl[side].mj;
    uint32_t err;

    if (j->ctx != mr || j->cmd_id != w->cmd[side]) {
        hmm_mmu_job_init(j, w->cmd[side], mr);
    }
    switch (hmm_mmu_translate(&s->mmu, j, va, access, x)) {
    case HMM_XLATE_OK:
        return NIC_OK;
    case HMM_XLATE_STALL:
        if (!w->remote_resp) {
            w->qp->stalled_side = side;
        }
        return NIC_STALL;
    default:
        err = x->err == HMM_MMU_FAULT ? HMM_NIC_ERR_FAULT :
                                        HMM_NIC_ERR_BAD_TABLE;
        hmm_guest_error(&s->core, err, x->err_addr, x->what);
        return nic_fail(w, hmm_nic_access_status(side), err);
    }
}

static NicRes nic_dma_fail(HmmNicState *s, NicWr *w, int side, uint64_t addr)
{
    hmm_guest_error(&s->core, HMM_NIC_ERR_DMA, addr,
                    "payload DMA failed");
    return nic_fail(w, hmm_nic_access_status(side), HMM_NIC_ERR_DMA);
}

static void nic_sgl_seek(const NicSgl *l, uint64_t off, int *i, uint64_t *o)
{
    *i = 0;
    while (*i < l->n && off >= l->seg[*i].len) {
        off -= l->seg[*i].len;
        (*i)++;
    }
    *o = off;
}

/*
 * Move bytes [*done, len) of the message from @src to @dst, at most
 * HMM_NIC_STEP_BYTES of them; *done advances with what moved (so a stall
 * or the budget resumes there).
 */
static NicRes nic_move(HmmNicState *s, NicWr *w, const NicSgl *src,
                       const NicSgl *dst, uint64_t len, uint64_t *done)
{
    uint64_t so, dof, moved = 0;
    int si, di;

    nic_sgl_seek(src, *done, &si, &so);
    nic_sgl_seek(dst, *done, &di, &dof);
    while (*done < len) {
        const NicSeg *a, *b;
        HmmXlateResult x;
        uint64_t n, spa = 0, sva, dva;
        NicRes r;

        if (moved >= HMM_NIC_STEP_BYTES) {
            return NIC_MORE;
        }
        if (!hmm_nic_alive(s)) {
            /* halted meanwhile (an event write failed): no more DMA */
            return NIC_FAIL;
        }
        while (si < src->n && so >= src->seg[si].len) {
            si++;
            so = 0;
        }
        while (di < dst->n && dof >= dst->seg[di].len) {
            di++;
            dof = 0;
        }
        if (si >= src->n || di >= dst->n) {
            /* the callers checked the lengths: nothing left to move */
            break;
        }
        a = &src->seg[si];
        b = &dst->seg[di];
        sva = a->va + so;
        dva = b->va + dof;
        n = MIN(MIN(len - *done, a->len - so),
                MIN(b->len - dof, (uint64_t)HMM_NIC_CHUNK));
        if (!a->host) {
            r = nic_xlate(s, w, src->side, a->mr, sva, src->access, &x);
            if (r != NIC_OK) {
                return r;
            }
            spa = x.pa;
            n = MIN(n, x.avail);
        }
        if (!b->host) {
            r = nic_xlate(s, w, dst->side, b->mr, dva, dst->access, &x);
            if (r != NIC_OK) {
                return r;
            }
            n = MIN(n, x.avail);
        }
        if (a->host) {
            memcpy(s->bounce, a->host + so, n);
        } else if (hmm_nic_data_dma(s, w, src->side, a->mr, spa, sva, s->bounce,
                                    n, false) != MEMTX_OK) {
            return nic_dma_fail(s, w, src->side, spa);
        }
        if (b->host) {
            memcpy(b->host + dof, s->bounce, n);
        } else if (hmm_nic_data_dma(s, w, dst->side, b->mr, x.pa, dva,
                                    s->bounce, n, true) != MEMTX_OK) {
            return nic_dma_fail(s, w, dst->side, x.pa);
        }
        so += n;
        dof += n;
        *done += n;
        moved += n;
    }
    return NIC_OK;
}

/* ---- the responder ------------------------------------------------------- */

/*
 * No peer QP answered (not there, not ready, connected elsewhere): wait the
 * QP's local ACK timeout and send again, retry_cnt times (a NIC_RNR wait
 * that no RQ_DOORBELL ends), then RETRY_EXC_ERR.
 */
static NicRes nic_no_answer(NicWr *w)
{
    uint8_t t = w->e->timeout & 31;

    if (++w->qp->retries > w->e->retry_cnt) {
        return nic_fail(w, HMM_NIC_WC_RETRY_EXC_ERR, 0);
    }
    w->qp->rnr_peer = UINT32_MAX;
    w->qp->rnr_delay_ns = 4096ll << (t ? t : 31);
    return NIC_RNR;
}

/* The peer QP of @w, ready to respond; else a retry or NIC_FAIL. */
static NicRes nic_peer(HmmNicState *s, NicWr *w, HmmNicQp **dqp,
                       struct hmm_nic_qp *de)
{
    uint32_t dest = w->e->dest_qpn;
    uint32_t err;
    const char *why = NULL;

    if (dest >= s->qp_count) {
        why = "destination QP beyond QP_COUNT";
    } else if (!hmm_nic_qp_read(s, dest, de, w->cmd[NIC_SIDE_RESP])) {
        why = "destination QP entry read failed";
    } else if (de->state == HMM_NIC_QPS_RESET ||
               de->state == HMM_NIC_QPS_INIT) {
        hmm_nic_qp_forget(s, &s->qps[dest]);
        why = "destination QP not ready to receive";
    } else if ((de->state != HMM_NIC_QPS_RTR &&
                de->state != HMM_NIC_QPS_RTS) || s->qps[dest].err) {
        why = "destination QP not ready to receive";
    } else if (hmm_nic_qp_check(s, de, &err)) {
        why = "destination QP entry malformed";
    } else if (de->dest_qpn != w->qp->qpn) {
        /* RC: a responder answers its own peer only */
        why = "destination QP is connected to another QP";
    }
    if (why) {
        trace_hmm_nic_peer_error(w->qp->qpn, dest, why);
        return nic_no_answer(w);
    }
    *dqp = &s->qps[dest];
    return NIC_OK;
}

/* The remote range of an RDMA or atomic request, checked at the peer. */
static NicRes nic_remote_seg(HmmNicState *s, NicWr *w,
                             const struct hmm_nic_qp *de, uint32_t need,
                             uint64_t len, NicSgl *l, uint8_t access)
{
    l->n = 0;
    l->side = NIC_SIDE_RESP;
    l->access = access;
    if (!len) {
        return NIC_OK;
    }
    if ((de->access & need) != need) {
        trace_hmm_nic_key_error(w->cmd[NIC_SIDE_RESP], w->rkey, w->raddr, len,
                                "destination QP lacks the remote access");
        return nic_fail(w, HMM_NIC_WC_REM_ACCESS_ERR, 0);
    }
    if (!nic_check_key(s, w->cmd[NIC_SIDE_RESP], w->rkey, w->raddr, len,
                       de->pdn, need, &l->seg[0])) {
        return nic_fail(w, HMM_NIC_WC_REM_ACCESS_ERR, 0);
    }
    l->n = 1;
    return NIC_OK;
}

/*
 * The RNR NAK delay of IB_QP_MIN_RNR_TIMER's encoding (IBTA table 45), in
 * units of 10 us; 0 is the longest. Five bits: the rest are ignored.
 */
static int64_t nic_rnr_delay_ns(uint8_t min_rnr_timer)
{
    static const uint16_t units[32] = {
        65535, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192,
        256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192,
        12288, 16384, 24576, 32768, 49152,
    };

    return (int64_t)units[min_rnr_timer & 31] * 10 * SCALE_US;
}

/*
 * The responder had no receive WQE (or, across the link, a page): NIC_RNR,
 * the QP waits for @min_rnr_timer, or NIC_FAIL when rnr_retry is used up.
 */
static NicRes nic_rnr(NicWr *w, uint8_t min_rnr_timer)
{
    if (w->e->rnr_retry != HMM_NIC_RNR_RETRY_FOREVER &&
        ++w->qp->rnr_naks > w->e->rnr_retry) {
        return nic_fail(w, HMM_NIC_WC_RNR_RETRY_EXC_ERR, 0);
    }
    w->qp->rnr_delay_ns = nic_rnr_delay_ns(min_rnr_timer);
    return NIC_RNR;
}

/*
 * Is there a receive WQE at peer @dqp? NIC_RNR (the QP waits) or NIC_FAIL
 * (rnr_retry 0) if not.
 */
static NicRes nic_recv_ready(HmmNicState *s, NicWr *w, HmmNicQp *dqp,
                             const struct hmm_nic_qp *de)
{
    uint64_t fail_va;
    uint32_t pi;

    if (!hmm_nic_qread32(s, w->cmd[NIC_SIDE_RESP],
                         de->rq_va + HMM_NIC_QBUF_PRODUCER, &pi, &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "receive queue producer index read failed");
        return nic_fail(w, HMM_NIC_WC_REM_OP_ERR, HMM_NIC_ERR_QUEUE_READ);
    }
    dqp->rq_ci &= de->rq_mask;
    if ((pi & de->rq_mask) != dqp->rq_ci) {
        return NIC_OK;
    }
    if (w->remote_resp) {
        return NIC_RNR;         /* the requester's device decides */
    }
    return nic_rnr(w, de->min_rnr_timer);
}

typedef struct NicRecv {
    uint64_t wr_id;
    uint32_t num_sge;
    struct hmm_nic_sge sge[HMM_NIC_MAX_SGE];
} NicRecv;

/* The receive WQE at the peer's consumer index (@sges: with its SGEs). */
static bool nic_recv_fetch(HmmNicState *s, NicWr *w, HmmNicQp *dqp,
                           const struct hmm_nic_qp *de, NicRecv *rv,
                           bool sges, uint32_t *status)
{
    uint64_t slot = hmm_nic_slot_va(de->rq_va, dqp->rq_ci, de->rq_log2_elem);
    uint8_t head[HMM_NIC_RWQE_SGE];
    struct hmm_nic_dma_info dma;
    uint64_t fail_va;
    uint32_t i;

    rv->wr_id = 0;
    rv->num_sge = 0;
    if (!hmm_nic_qdma(s, w->cmd[NIC_SIDE_RESP], slot, head,
                      sges ? sizeof(head) : sizeof(rv->wr_id), false,
                      &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "receive WQE read failed");
        *status = HMM_NIC_WC_LOC_QP_OP_ERR;
        return false;
    }
    rv->wr_id = ldq_le_p(head + HMM_NIC_RWQE_WR_ID);
    rv->num_sge = 0;
    if (!sges) {
        return true;
    }
    memcpy(&dma, head + HMM_NIC_RWQE_DMA, sizeof(dma));
    rv->num_sge = le32_to_cpu(dma.num_sge);
    if (rv->num_sge > HMM_NIC_MAX_SGE ||
        HMM_NIC_RWQE_SGE + rv->num_sge * sizeof(struct hmm_nic_sge) >
        (1u << de->rq_log2_elem)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_WQE, slot,
                        "receive WQE with too many SGEs");
        *status = HMM_NIC_WC_LOC_QP_OP_ERR;
        return false;
    }
    if (rv->num_sge &&
        !hmm_nic_qdma(s, w->cmd[NIC_SIDE_RESP], slot + HMM_NIC_RWQE_SGE,
                      rv->sge, rv->num_sge * sizeof(struct hmm_nic_sge), false,
                      &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "receive WQE SGE read failed");
        *status = HMM_NIC_WC_LOC_QP_OP_ERR;
        return false;
    }
    for (i = 0; i < rv->num_sge; i++) {
        rv->sge[i].addr = le64_to_cpu(rv->sge[i].addr);
        rv->sge[i].length = le32_to_cpu(rv->sge[i].length);
        rv->sge[i].lkey = le32_to_cpu(rv->sge[i].lkey);
    }
    return true;
}

/* The peer consumed its receive WQE: its completion, its consumer index. */
static void nic_recv_complete(HmmNicState *s, NicWr *w, HmmNicQp *dqp,
                              const struct hmm_nic_qp *de, const NicRecv *rv,
                              uint32_t status, uint32_t vendor_err)
{
    uint64_t cmd = w->cmd[NIC_SIDE_RESP];
    uint64_t fail_va;
    bool imm = w->opcode == HMM_NIC_WR_SEND_WITH_IMM ||
               w->opcode == HMM_NIC_WR_RDMA_WRITE_WITH_IMM;
    NicWc wc = {
        .wr_id = rv->wr_id,
        .status = status,
        .opcode = w->opcode == HMM_NIC_WR_RDMA_WRITE_WITH_IMM ?
                  HMM_NIC_WC_OP_RECV_RDMA_WITH_IMM : HMM_NIC_WC_OP_RECV,
        .vendor_err = vendor_err,
        .byte_len = status == HMM_NIC_WC_SUCCESS ? w->length : 0,
        .imm = imm ? w->imm : 0,
        .qp_num = dqp->qpn,
        .src_qp = w->src_qpn,
        .wc_flags = imm ? HMM_NIC_WC_WITH_IMM : 0,
        .solicited = w->send_flags & HMM_NIC_SEND_SOLICITED,
    };

    hmm_nic_post_cqe(s, de->recv_cqn, &wc, cmd);
    dqp->rq_ci = (dqp->rq_ci + 1) & de->rq_mask;
    if (!hmm_nic_qwrite32(s, cmd, de->rq_va + HMM_NIC_QBUF_CONSUMER, dqp->rq_ci,
                          &fail_va)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_READ, fail_va,
                        "receive queue consumer index write failed");
    }
    if (status == HMM_NIC_WC_SUCCESS) {
        s->cnt_wrs_completed++;
    } else {
        s->cnt_wrs_failed++;
        if (dqp != w->qp || w->remote_resp) {
            hmm_nic_qp_to_err(s, dqp, de, vendor_err);
        }
    }
}

/* ---- the opcodes --------------------------------------------------------- */

/* SEND, SEND_WITH_IMM: the requester's data into the peer's receive WQE. */
NicRes hmm_nic_do_send(HmmNicState *s, NicWr *w, uint64_t *done)
{
    struct hmm_nic_qp de;
    HmmNicQp *dqp = NULL;
    NicSgl src, dst;
    NicRecv rv;
    uint64_t room = 0;
    uint32_t i, status;
    NicRes r;

    if (!nic_local_sgl(s, w, 0, HMM_GPU_ACCESS_READ, &src)) {
        return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
    }
    r = nic_peer(s, w, &dqp, &de);
    if (r == NIC_OK) {
        r = nic_recv_ready(s, w, dqp, &de);
    }
    if (r != NIC_OK) {
        if (r == NIC_RNR && dqp) {      /* no receive WQE, not no peer */
            w->qp->rnr_peer = dqp->qpn;
        }
        return r;
    }
    if (!nic_recv_fetch(s, w, dqp, &de, &rv, true, &status)) {
        nic_recv_complete(s, w, dqp, &de, &rv, status, HMM_NIC_ERR_BAD_WQE);
        return nic_fail(w, HMM_NIC_WC_REM_OP_ERR, HMM_NIC_ERR_BAD_WQE);
    }
    dst.n = 0;
    dst.side = NIC_SIDE_RESP;
    dst.access = HMM_GPU_ACCESS_WRITE;
    for (i = 0; i < rv.num_sge; i++) {
        if (!rv.sge[i].length) {
            continue;
        }
        if (!nic_check_key(s, w->cmd[NIC_SIDE_RESP], rv.sge[i].lkey,
                           rv.sge[i].addr, rv.sge[i].length, de.pdn,
                           HMM_NIC_ACCESS_LOCAL_WRITE, &dst.seg[dst.n])) {
            nic_recv_complete(s, w, dqp, &de, &rv, HMM_NIC_WC_LOC_PROT_ERR,
                              0);
            return nic_fail(w, HMM_NIC_WC_REM_OP_ERR, 0);
        }
        room += rv.sge[i].length;
        dst.n++;
    }
    if (room < w->length) {
        trace_hmm_nic_peer_error(w->qp->qpn, dqp->qpn,
                                 "message longer than the receive WQE");
        nic_recv_complete(s, w, dqp, &de, &rv, HMM_NIC_WC_LOC_LEN_ERR, 0);
        return nic_fail(w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
    }
    r = nic_move(s, w, &src, &dst, w->length, done);
    if (r == NIC_OK) {
        nic_recv_complete(s, w, dqp, &de, &rv, HMM_NIC_WC_SUCCESS, 0);
    }
    return r;
}

/* RDMA_WRITE(_WITH_IMM): the requester's data to the peer's MR. */
NicRes hmm_nic_do_write(HmmNicState *s, NicWr *w, uint64_t *done)
{
    bool imm = w->opcode == HMM_NIC_WR_RDMA_WRITE_WITH_IMM;
    struct hmm_nic_qp de;
    HmmNicQp *dqp = NULL;
    NicSgl src, dst;
    NicRecv rv;
    uint32_t status;
    NicRes r;

    if (!nic_local_sgl(s, w, 0, HMM_GPU_ACCESS_READ, &src)) {
        return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
    }
    r = nic_peer(s, w, &dqp, &de);
    if (r == NIC_OK) {
        r = nic_remote_seg(s, w, &de, HMM_NIC_ACCESS_REMOTE_WRITE, w->length,
                           &dst, HMM_GPU_ACCESS_WRITE);
    }
    if (r == NIC_OK && imm) {
        r = nic_recv_ready(s, w, dqp, &de);
        if (r == NIC_RNR) {
            w->qp->rnr_peer = dqp->qpn;
        }
    }
    if (r != NIC_OK) {
        return r;
    }
    r = nic_move(s, w, &src, &dst, w->length, done);
    if (r == NIC_OK && imm) {
        if (!nic_recv_fetch(s, w, dqp, &de, &rv, false, &status)) {
            nic_recv_complete(s, w, dqp, &de, &rv, status,
                              HMM_NIC_ERR_QUEUE_READ);
            return nic_fail(w, HMM_NIC_WC_REM_OP_ERR, HMM_NIC_ERR_QUEUE_READ);
        }
        nic_recv_complete(s, w, dqp, &de, &rv, HMM_NIC_WC_SUCCESS, 0);
    }
    return r;
}

/* RDMA_READ: the peer's MR into the requester's SGEs. */
NicRes hmm_nic_do_read(HmmNicState *s, NicWr *w, uint64_t *done)
{
    struct hmm_nic_qp de;
    HmmNicQp *dqp = NULL;
    NicSgl src, dst;
    NicRes r;

    if (!nic_local_sgl(s, w, HMM_NIC_ACCESS_LOCAL_WRITE, HMM_GPU_ACCESS_WRITE,
                       &dst)) {
        return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
    }
    r = nic_peer(s, w, &dqp, &de);
    if (r == NIC_OK) {
        r = nic_remote_seg(s, w, &de, HMM_NIC_ACCESS_REMOTE_READ, w->length,
                           &src, HMM_GPU_ACCESS_READ);
    }
    if (r != NIC_OK) {
        return r;
    }
    return nic_move(s, w, &src, &dst, w->length, done);
}

/*
 * The responder's 8 bytes of an atomic or ATOMIC_WRITE: naturally aligned
 * (else WC_REM_INV_REQ_ERR, traced as @misaligned), within an MR of the
 * peer entry @de that grants @remote_access, translated for @access.
 */
static NicRes nic_atomic_target(HmmNicState *s, NicWr *w,
                                const struct hmm_nic_qp *de,
                                uint32_t remote_access, uint8_t access,
                                const char *misaligned, NicSgl *rem,
                                HmmXlateResult *x)
{
    NicRes r;

    if (w->raddr & (HMM_NIC_ATOMIC_SIZE - 1)) {
        trace_hmm_nic_key_error(w->cmd[NIC_SIDE_RESP], w->rkey, w->raddr,
                                HMM_NIC_ATOMIC_SIZE, misaligned);
        return nic_fail(w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
    }
    r = nic_remote_seg(s, w, de, remote_access, HMM_NIC_ATOMIC_SIZE, rem,
                       access);
    if (r != NIC_OK) {
        return r;
    }
    return nic_xlate(s, w, NIC_SIDE_RESP, rem->seg[0].mr, w->raddr, access, x);
}

/*
 * CMP_AND_SWP / FETCH_AND_ADD: 8 bytes at the peer, atomic with respect to
 * the device (the BQL serialises everything it does); the old value goes
 * to the requester's SGE. Once executed it is never executed again: a
 * stall writing the old value retries only that write.
 */
NicRes hmm_nic_do_atomic(HmmNicState *s, NicWr *w, uint64_t *done)
{
    HmmNicQp *qp = w->qp;
    struct hmm_nic_qp de;
    HmmNicQp *dqp = NULL;
    NicSgl src, dst, rem;
    HmmXlateResult x;
    uint64_t old_le;
    NicRes r;

    if (!nic_local_sgl(s, w, HMM_NIC_ACCESS_LOCAL_WRITE, HMM_GPU_ACCESS_WRITE,
                       &dst)) {
        return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
    }
    if (!qp->atomic_done) {
        uint64_t old, new;

        r = nic_peer(s, w, &dqp, &de);
        if (r != NIC_OK) {
            return r;
        }
        r = nic_atomic_target(s, w, &de, HMM_NIC_ACCESS_REMOTE_ATOMIC,
                              HMM_GPU_ACCESS_ATOMIC,
                              "atomic not naturally aligned", &rem, &x);
        if (r != NIC_OK) {
            return r;
        }
        /* aligned: the 8 bytes never cross a page */
        if (hmm_nic_data_dma(s, w, NIC_SIDE_RESP, rem.seg[0].mr, x.pa, w->raddr,
                             &old, sizeof(old), false) != MEMTX_OK) {
            return nic_dma_fail(s, w, NIC_SIDE_RESP, x.pa);
        }
        old = le64_to_cpu(old);
        if (w->opcode == HMM_NIC_WR_ATOMIC_FETCH_AND_ADD) {
            new = cpu_to_le64(old + w->compare_add);
        } else {
            new = cpu_to_le64(w->swap);
        }
        if ((w->opcode == HMM_NIC_WR_ATOMIC_FETCH_AND_ADD ||
             old == w->compare_add) &&
            hmm_nic_data_dma(s, w, NIC_SIDE_RESP, rem.seg[0].mr, x.pa, w->raddr,
                             &new, sizeof(new), true) != MEMTX_OK) {
            return nic_dma_fail(s, w, NIC_SIDE_RESP, x.pa);
        }
        trace_hmm_nic_atomic(qp->qpn, w->raddr, x.pa, old);
        qp->atomic_done = true;
        qp->atomic_old = old;
    }
    old_le = cpu_to_le64(qp->atomic_old);
    src.n = 1;
    src.side = NIC_SIDE_REQ;
    src.access = HMM_GPU_ACCESS_READ;
    src.seg[0] = (NicSeg) {
        .len = HMM_NIC_ATOMIC_SIZE,
        .host = (uint8_t *)&old_le,
    };
    *done = 0;
    return nic_move(s, w, &src, &dst, HMM_NIC_ATOMIC_SIZE, done);
}

/*
 * ATOMIC_WRITE at the responder (peer entry @de): the 8 bytes w->compare_add
 * to w->raddr, one 8-byte DMA (IBA oA19-28: REMOTE_WRITE, aligned). Writing
 * the same value again after a fault is the same as writing it once.
 */
static NicRes nic_atomic_write_exec(HmmNicState *s, NicWr *w,
                                    const struct hmm_nic_qp *de)
{
    uint64_t val = cpu_to_le64(w->compare_add);
    HmmXlateResult x;
    NicSgl rem;
    NicRes r;

    r = nic_atomic_target(s, w, de, HMM_NIC_ACCESS_REMOTE_WRITE,
                          HMM_GPU_ACCESS_WRITE,
                          "atomic write not naturally aligned", &rem, &x);
    if (r != NIC_OK) {
        return r;
    }
    /* aligned: the 8 bytes never cross a page */
    if (hmm_nic_data_dma(s, w, NIC_SIDE_RESP, rem.seg[0].mr, x.pa, w->raddr,
                         &val, sizeof(val), true) != MEMTX_OK) {
        return nic_dma_fail(s, w, NIC_SIDE_RESP, x.pa);
    }
    trace_hmm_nic_atomic_write(w->qp->qpn, w->raddr, x.pa, w->compare_add);
    return NIC_OK;
}

/*
 * FLUSH at the responder (peer entry @de). Guest memory has no cache the
 * device could write back: what the device wrote is globally visible (and
 * as persistent as that memory is) once the write completed. The device
 * checks the access and translates every page of the range (the whole MR
 * for FLUSH_MR), as rxe maps an ODP range before it flushes it: a page
 * that is not there faults, and the flush goes on from *done (bytes of the
 * range translated) after the replay. @budget: at most
 * HMM_NIC_FLUSH_STEP_PAGES pages, then NIC_MORE.
 */
static NicRes nic_flush_exec(HmmNicState *s, NicWr *w,
                             const struct hmm_nic_qp *de, uint64_t *done,
                             bool budget)
{
    bool range = w->flush_level == HMM_NIC_FLUSH_RANGE;
    uint32_t need = 0;
    struct hmm_nic_mr mr;
    uint64_t start, len;
    unsigned pages = 0;
    NicSeg seg;

    if (w->flush_type & HMM_NIC_FLUSH_GLOBAL) {
        need |= HMM_NIC_ACCESS_FLUSH_GLOBAL;
    }
    if (w->flush_type & HMM_NIC_FLUSH_PERSISTENT) {
        need |= HMM_NIC_ACCESS_FLUSH_PERSISTENT;
    }
    if ((de->access & need) != need) {
        trace_hmm_nic_key_error(w->cmd[NIC_SIDE_RESP], w->rkey, w->raddr,
                                w->length,
                                "destination QP lacks the flush access");
        return nic_fail(w, HMM_NIC_WC_REM_ACCESS_ERR, 0);
    }
    if (!nic_lookup_key(s, w->cmd[NIC_SIDE_RESP], w->rkey, w->raddr,
                        w->length, de->pdn, need, range, &seg, &mr)) {
        return nic_fail(w, HMM_NIC_WC_REM_ACCESS_ERR, 0);
    }
    if (range) {
        start = w->raddr;
        len = w->length;
    } else if (mr.flags & HMM_NIC_MR_IMPLICIT) {
        /* the address space has no extent to flush page by page */
        start = 0;
        len = 0;
    } else {
        start = mr.va;
        len = mr.length;
    }
    while (*done < len) {
        HmmXlateResult x;
        NicRes r;

        if (budget && pages >= HMM_NIC_FLUSH_STEP_PAGES) {
            return NIC_MORE;
        }
        r = nic_xlate(s, w, NIC_SIDE_RESP, seg.mr, start + *done,
                      HMM_GPU_ACCESS_READ, &x);
        if (r != NIC_OK) {
            return r;
        }
        *done += MIN(x.avail, len - *done);
        pages++;
    }
    trace_hmm_nic_rdma_flush(w->qp->qpn, w->rkey, start, len, w->flush_type,
                             w->flush_level);
    return NIC_OK;
}

/* ATOMIC_WRITE: 8 bytes of the WQE to the peer's MR. */
NicRes hmm_nic_do_atomic_write(HmmNicState *s, NicWr *w, uint64_t *done)
{
    struct hmm_nic_qp de;
    HmmNicQp *dqp = NULL;
    NicRes r;

    r = nic_peer(s, w, &dqp, &de);
    if (r != NIC_OK) {
        return r;
    }
    return nic_atomic_write_exec(s, w, &de);
}

/* FLUSH: a range (or the whole) of the peer's MR, checked and faulted in. */
NicRes hmm_nic_do_flush(HmmNicState *s, NicWr *w, uint64_t *done)
{
    struct hmm_nic_qp de;
    HmmNicQp *dqp = NULL;
    NicRes r;

    r = nic_peer(s, w, &dqp, &de);
    if (r != NIC_OK) {
        return r;
    }
    return nic_flush_exec(s, w, &de, done, true);
}

/* ---- across the link: the requester -------------------------------------- */

/*
 * @n bytes of the device's own at message offset @off, as a scatter list
 * that nic_move() indexes by message offset (the first segment only
 * stands for the bytes before @off and is never touched).
 */
static void nic_host_sgl(NicSgl *l, uint8_t *buf, uint64_t off, uint64_t n)
{
    l->n = 0;
    l->side = NIC_SIDE_REQ;
    l->access = HMM_GPU_ACCESS_READ;
    if (off) {
        l->seg[l->n++] = (NicSeg) { .len = off, .host = buf };
    }
    l->seg[l->n++] = (NicSeg) { .len = n, .host = buf };
}

/* What the response to the last request says; NIC_OK: go on. */
static NicRes nic_remote_answer(HmmNicState *s, NicWr *w, uint64_t *done)
{
    HmmNicQp *qp = w->qp;
    NicSgl src, dst;
    uint64_t old_le;
    NicRes r;

    if (qp->link_status == NIC_LINK_RNR) {
        qp->link_resp = false;
        qp->link_retry = true;          /* the same request again */
        qp->rnr_peer = UINT32_MAX;      /* no RQ_DOORBELL here ends it */
        return nic_rnr(w, qp->link_rnr_timer);
    }
    if (qp->link_status == HMM_NIC_WC_RETRY_EXC_ERR) {
        /* nobody answered there: the same request again, later */
        qp->link_resp = false;
        qp->link_retry = true;
        return nic_no_answer(w);
    }
    if (qp->link_status != HMM_NIC_WC_SUCCESS) {
        qp->link_resp = false;
        return nic_fail(w, qp->link_status, 0);
    }
    switch (w->opcode) {
    case HMM_NIC_WR_RDMA_READ:
        /* the data into the requester's SGEs, which may fault */
        if (!nic_local_sgl(s, w, HMM_NIC_ACCESS_LOCAL_WRITE,
                           HMM_GPU_ACCESS_WRITE, &dst)) {
            qp->link_resp = false;
            return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
        }
        nic_host_sgl(&src, qp->link_buf, *done, qp->link_len);
        r = nic_move(s, w, &src, &dst, *done + qp->link_len, done);
        if (r == NIC_MORE) {
            r = NIC_OK;         /* at most a chunk: the move is done */
        }
        if (r != NIC_OK) {
            if (r == NIC_STALL) {
                *done = qp->link_end - qp->link_len;    /* all of it again */
            } else {
                qp->link_resp = false;
            }
            return r;
        }
        break;
    case HMM_NIC_WR_ATOMIC_CMP_AND_SWP:
    case HMM_NIC_WR_ATOMIC_FETCH_AND_ADD:
        qp->atomic_done = true;
        qp->atomic_old = qp->link_old;
        if (!nic_local_sgl(s, w, HMM_NIC_ACCESS_LOCAL_WRITE,
                           HMM_GPU_ACCESS_WRITE, &dst)) {
            qp->link_resp = false;
            return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
        }
        old_le = cpu_to_le64(qp->atomic_old);
        nic_host_sgl(&src, (uint8_t *)&old_le, 0, HMM_NIC_ATOMIC_SIZE);
        *done = 0;
        r = nic_move(s, w, &src, &dst, HMM_NIC_ATOMIC_SIZE, done);
        if (r != NIC_OK) {
            if (r != NIC_STALL) {
                qp->link_resp = false;
            }
            return r;
        }
        break;
    default:
        *done = qp->link_end;
        break;
    }
    qp->link_resp = false;
    return NIC_OK;
}

/*
 * One step of a WR whose peer QP is on the linked device: use the response
 * that came in, then send the next request (a chunk of the message, or
 * the whole atomic) and wait for its answer (NIC_LINK).
 */
NicRes hmm_nic_remote_step(HmmNicState *s, NicWr *w, uint64_t *done)
{
    bool atomic = hmm_nic_is_atomic(w->opcode);
    /* one request, no payload chunks: atomics, FLUSH, ATOMIC_WRITE */
    bool single = atomic || hmm_nic_no_sge(w->opcode);
    uint64_t total = atomic ? HMM_NIC_ATOMIC_SIZE : w->length;
    HmmNicQp *qp = w->qp;
    NicLinkMsg m = { 0 };
    uint8_t *chunk = NULL;
    NicSgl src, dst;
    uint64_t n = 0, pos;
    NicRes r;

    if (qp->link_resp) {
        r = nic_remote_answer(s, w, done);
        if (r != NIC_OK || *done >= total || single) {
            return r;
        }
    }
    if (!s->link_up || w->e->dest_lid != s->peer_lid) {
        trace_hmm_nic_peer_error(qp->qpn, w->e->dest_qpn,
                                 "no linked device has dest_lid");
        return nic_no_answer(w);
    }
    if (!single) {
        n = MIN(total - *done, (uint64_t)HMM_NIC_LINK_CHUNK);
    }
    if (w->opcode != HMM_NIC_WR_RDMA_READ && !single) {
        /* the chunk's bytes, read now: they may fault */
        if (!nic_local_sgl(s, w, 0, HMM_GPU_ACCESS_READ, &src)) {
            return nic_fail(w, HMM_NIC_WC_LOC_PROT_ERR, 0);
        }
        chunk = g_malloc(MAX(n, 1));
        nic_host_sgl(&dst, chunk, *done, n);
        pos = *done;
        r = nic_move(s, w, &src, &dst, *done + n, &pos);
        if (r != NIC_OK && r != NIC_MORE) {
            g_free(chunk);
            return r;
        }
        if (pos != *done + n) {
            /* a step moves at least a chunk: this would be our bug */
            g_free(chunk);
            return nic_fail(w, HMM_NIC_WC_LOC_QP_OP_ERR, 0);
        }
        m.len = n;
    }
    if (!qp->link_retry) {
        /* a new request (an RNR retry keeps its PSN); PSNs never repeat */
        qp->link_psn = ++s->link_psn_next ?: ++s->link_psn_next;
    }
    qp->link_retry = false;
    qp->link_end = *done + n;
    m.src_qpn = qp->qpn;
    m.dst_qpn = w->e->dest_qpn;
    m.psn = qp->link_psn;
    m.opcode = w->opcode;
    m.offset = *done;
    m.msg_len = total;
    m.raddr = w->raddr;
    m.rkey = w->rkey;
    m.imm = w->imm;
    m.send_flags = w->send_flags;
    m.compare_add = w->compare_add;
    m.swap = w->swap;
    if (w->opcode == HMM_NIC_WR_RDMA_READ) {
        m.len = 0;
        m.msg_len = total;
        m.swap = n;             /* how much of it this request asks for */
    } else if (w->opcode == HMM_NIC_WR_FLUSH) {
        m.swap = w->flush_type | (uint64_t)w->flush_level << 8;
    }
    hmm_nic_link_send(s, &m, chunk);
    g_free(chunk);
    return NIC_LINK;
}

/* ---- across the link: the responder -------------------------------------- */

/*
 * The linked device's request @m for our QP dst_qpn, run against our
 * memory, MRs and receive queue. A page that is not there faults (the
 * record names the responder side) and the requester is told to try
 * again after min_rnr_timer, as mlx5's responder answers an ODP fault
 * with an RNR NAK; if the driver cancels the fault instead, the requester
 * gets REM_ACCESS_ERR.
 */
void hmm_nic_remote_request(HmmNicState *s, const NicLinkMsg *m,
                            uint8_t *payload)
{
    NicLinkMsg resp = { 0 };
    struct hmm_nic_qp de;
    HmmNicQp *dqp;
    NicSgl src, dst;
    NicRecv rv;
    g_autofree uint8_t *data = NULL;
    uint64_t pos, room = 0, n;
    uint32_t i, status = HMM_NIC_WC_SUCCESS, err;
    bool last = m->offset + m->len >= m->msg_len;
    NicWr w;
    NicRes r = NIC_OK;

    if (m->dst_qpn >= s->qp_count ||
        !hmm_nic_qp_read(s, m->dst_qpn, &de,
                         HMM_NIC_FAULT_CMD(m->dst_qpn, 0, 1)) ||
        (de.state != HMM_NIC_QPS_RTR && de.state != HMM_NIC_QPS_RTS) ||
        s->qps[m->dst_qpn].err || hmm_nic_qp_check(s, &de, &err) ||
        de.dest_qpn != m->src_qpn || de.dest_lid != m->src_lid ||
        !hmm_nic_remote(s, &de)) {
        trace_hmm_nic_peer_error(m->src_qpn, m->dst_qpn,
                                 "no QP here is connected to the requester");
        hmm_nic_link_respond(s, m, HMM_NIC_WC_RETRY_EXC_ERR, &resp, NULL);
        return;
    }
    dqp = &s->qps[m->dst_qpn];
    if (dqp->resp_cancelled && dqp->resp_psn == m->psn) {
        dqp->resp_cancelled = false;
        hmm_nic_link_respond(s, m, HMM_NIC_WC_REM_ACCESS_ERR, &resp, NULL);
        return;
    }
    if (dqp->resp_stalled) {
        if (dqp->resp_psn == m->psn) {
            dqp->resp_src_qpn = m->src_qpn;
        }
        /* a fault of an earlier request is pending: later ones wait too */
        resp.rnr_timer = de.min_rnr_timer;
        hmm_nic_link_respond(s, m, NIC_LINK_RNR, &resp, NULL);
        return;
    }

    memset(&w, 0, sizeof(w));
    w.qp = dqp;
    w.e = &de;
    w.remote_resp = true;
    w.index = m->psn & HMM_NIC_MAX_QUEUE_MASK;
    w.cmd[NIC_SIDE_REQ] = HMM_NIC_FAULT_CMD(dqp->qpn, w.index, 1);
    w.cmd[NIC_SIDE_RESP] = w.cmd[NIC_SIDE_REQ];
    w.src_qpn = m->src_qpn;
    w.opcode = m->opcode;
    w.send_flags = m->send_flags;
    w.imm = m->imm;
    w.raddr = m->raddr;
    w.rkey = m->rkey;
    w.compare_add = m->compare_add;
    w.swap = m->swap;
    w.flush_type = m->swap & 0xff;
    w.flush_level = (m->swap >> 8) & 0xff;
    w.length = m->msg_len;
    hmm_mmu_job_init(&dqp->xl[NIC_SIDE_RESP].mj, w.cmd[NIC_SIDE_RESP],
                     UINT32_MAX);
    nic_host_sgl(&src, payload, m->offset, m->len);

    switch (m->opcode) {
    case HMM_NIC_WR_SEND:
    case HMM_NIC_WR_SEND_WITH_IMM:
        r = nic_recv_ready(s, &w, dqp, &de);
        if (r != NIC_OK) {
            break;
        }
        if (!nic_recv_fetch(s, &w, dqp, &de, &rv, true, &status)) {
            nic_recv_complete(s, &w, dqp, &de, &rv, status,
                              HMM_NIC_ERR_BAD_WQE);
            r = nic_fail(&w, HMM_NIC_WC_REM_OP_ERR, HMM_NIC_ERR_BAD_WQE);
            break;
        }
        dst.n = 0;
        dst.side = NIC_SIDE_RESP;
        dst.access = HMM_GPU_ACCESS_WRITE;
        for (i = 0; i < rv.num_sge && r == NIC_OK; i++) {
            if (!rv.sge[i].length) {
                continue;
            }
            if (!nic_check_key(s, w.cmd[NIC_SIDE_RESP], rv.sge[i].lkey,
                               rv.sge[i].addr, rv.sge[i].length, de.pdn,
                               HMM_NIC_ACCESS_LOCAL_WRITE, &dst.seg[dst.n])) {
                nic_recv_complete(s, &w, dqp, &de, &rv,
                                  HMM_NIC_WC_LOC_PROT_ERR, 0);
                r = nic_fail(&w, HMM_NIC_WC_REM_OP_ERR, 0);
                break;
            }
            room += rv.sge[i].length;
            dst.n++;
        }
        if (r != NIC_OK) {
            break;
        }
        if (room < m->msg_len) {
            nic_recv_complete(s, &w, dqp, &de, &rv, HMM_NIC_WC_LOC_LEN_ERR,
                              0);
            r = nic_fail(&w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
            break;
        }
        pos = m->offset;
        r = nic_move(s, &w, &src, &dst, m->offset + m->len, &pos);
        if (r == NIC_OK && last) {
            nic_recv_complete(s, &w, dqp, &de, &rv, HMM_NIC_WC_SUCCESS, 0);
        }
        break;
    case HMM_NIC_WR_RDMA_WRITE:
    case HMM_NIC_WR_RDMA_WRITE_WITH_IMM:
        r = nic_remote_seg(s, &w, &de, HMM_NIC_ACCESS_REMOTE_WRITE,
                           m->msg_len, &dst, HMM_GPU_ACCESS_WRITE);
        if (r == NIC_OK && last &&
            m->opcode == HMM_NIC_WR_RDMA_WRITE_WITH_IMM) {
            r = nic_recv_ready(s, &w, dqp, &de);
        }
        if (r != NIC_OK) {
            break;
        }
        pos = m->offset;
        r = nic_move(s, &w, &src, &dst, m->offset + m->len, &pos);
        if (r == NIC_OK && last &&
            m->opcode == HMM_NIC_WR_RDMA_WRITE_WITH_IMM) {
            if (!nic_recv_fetch(s, &w, dqp, &de, &rv, false, &status)) {
                nic_recv_complete(s, &w, dqp, &de, &rv, status,
                                  HMM_NIC_ERR_QUEUE_READ);
                r = nic_fail(&w, HMM_NIC_WC_REM_OP_ERR, 0);
                break;
            }
            nic_recv_complete(s, &w, dqp, &de, &rv, HMM_NIC_WC_SUCCESS, 0);
        }
        break;
    case HMM_NIC_WR_RDMA_READ:
        n = MIN(m->swap, (uint64_t)HMM_NIC_LINK_CHUNK);
        if (m->offset > m->msg_len || n > m->msg_len - m->offset) {
            r = nic_fail(&w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
            break;
        }
        r = nic_remote_seg(s, &w, &de, HMM_NIC_ACCESS_REMOTE_READ,
                           m->msg_len, &src, HMM_GPU_ACCESS_READ);
        if (r != NIC_OK) {
            break;
        }
        data = g_malloc(MAX(n, 1));
        nic_host_sgl(&dst, data, m->offset, n);
        pos = m->offset;
        r = nic_move(s, &w, &src, &dst, m->offset + n, &pos);
        resp.len = n;
        break;
    case HMM_NIC_WR_ATOMIC_CMP_AND_SWP:
    case HMM_NIC_WR_ATOMIC_FETCH_AND_ADD: {
        HmmXlateResult x;
        uint64_t old, new;

        if (m->raddr & (HMM_NIC_ATOMIC_SIZE - 1)) {
            r = nic_fail(&w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
            break;
        }
        r = nic_remote_seg(s, &w, &de, HMM_NIC_ACCESS_REMOTE_ATOMIC,
                           HMM_NIC_ATOMIC_SIZE, &dst, HMM_GPU_ACCESS_ATOMIC);
        if (r == NIC_OK) {
            r = nic_xlate(s, &w, NIC_SIDE_RESP, dst.seg[0].mr, m->raddr,
                          HMM_GPU_ACCESS_ATOMIC, &x);
        }
        if (r != NIC_OK) {
            break;
        }
        if (hmm_nic_data_dma(s, &w, NIC_SIDE_RESP, dst.seg[0].mr, x.pa,
                             m->raddr, &old, sizeof(old), false) != MEMTX_OK) {
            r = nic_dma_fail(s, &w, NIC_SIDE_RESP, x.pa);
            break;
        }
        old = le64_to_cpu(old);
        new = cpu_to_le64(m->opcode == HMM_NIC_WR_ATOMIC_FETCH_AND_ADD ?
                          old + m->compare_add : m->swap);
        if ((m->opcode == HMM_NIC_WR_ATOMIC_FETCH_AND_ADD ||
             old == m->compare_add) &&
            hmm_nic_data_dma(s, &w, NIC_SIDE_RESP, dst.seg[0].mr, x.pa,
                             m->raddr, &new, sizeof(new), true) != MEMTX_OK) {
            r = nic_dma_fail(s, &w, NIC_SIDE_RESP, x.pa);
            break;
        }
        trace_hmm_nic_atomic(dqp->qpn, m->raddr, x.pa, old);
        resp.compare_add = old;
        break;
    }
    case HMM_NIC_WR_ATOMIC_WRITE:
        if (m->msg_len != HMM_NIC_ATOMIC_SIZE) {
            r = nic_fail(&w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
            break;
        }
        r = nic_atomic_write_exec(s, &w, &de);
        break;
    case HMM_NIC_WR_FLUSH:
        if (!w.flush_type || (w.flush_type & ~(HMM_NIC_FLUSH_GLOBAL |
                                               HMM_NIC_FLUSH_PERSISTENT)) ||
            w.flush_level > HMM_NIC_FLUSH_MR ||
            m->msg_len > UINT32_MAX) {
            r = nic_fail(&w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
            break;
        }
        /* the whole range in one go: a retry after a fault starts over */
        pos = 0;
        r = nic_flush_exec(s, &w, &de, &pos, false);
        break;
    default:
        r = nic_fail(&w, HMM_NIC_WC_REM_INV_REQ_ERR, 0);
        break;
    }

    switch (r) {
    case NIC_OK:
    case NIC_MORE:
        hmm_nic_link_respond(s, m, HMM_NIC_WC_SUCCESS, &resp, data);
        break;
    case NIC_STALL:
        dqp->resp_stalled = true;
        dqp->resp_psn = m->psn;
        dqp->resp_src_qpn = m->src_qpn;
        /* fall through */
    case NIC_RNR:
        resp.len = 0;
        resp.rnr_timer = de.min_rnr_timer;
        hmm_nic_link_respond(s, m, NIC_LINK_RNR, &resp, NULL);
        break;
    default:
        resp.len = 0;
        hmm_nic_link_respond(s, m, w.status, &resp, NULL);
        break;
    }
    if (r == NIC_STALL) {
        hmm_nic_kick(s);    /* the engine posts the fault record */
    } else {
        hmm_nic_update_busy(s);
    }
}

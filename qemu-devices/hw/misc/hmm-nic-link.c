/*
 * hmm-nic: the link to another hmm-nic
 *
 * Two devices, in one QEMU or in two, are linked by a chardev each (a unix
 * socket or 127.0.0.1). The stream carries frames (NicLinkMsg and a
 * payload, hmm-nic-engine.h). A QP whose dest_lid names the peer sends its
 * work requests there a chunk at a time and waits for each response
 * (NIC_QP_LINK); the peer's responder runs them against its own memory,
 * MRs and faults (hmm-nic-xfer.c). Writes never block: what the chardev
 * does not take now waits in link_out for a G_IO_OUT watch, so two devices
 * in one main loop cannot deadlock on each other's full socket.
 *
 * What arrives from the peer is checked like guest input is, but it is
 * not the guest's doing: a malformed frame is reported with error_report()
 * and drops the connection.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/error-report.h"
#include "chardev/char-fe.h"
#include "hmm-nic-engine.h"
#include "trace.h"

#define NIC_LINK_IN_MAX         (sizeof(NicLinkMsg) + HMM_NIC_LINK_CHUNK)

/* ---- frames -------------------------------------------------------------- */

static void nic_link_swab(NicLinkMsg *m)
{
    m->magic = cpu_to_le32(m->magic);
    m->type = cpu_to_le16(m->type);
    m->src_lid = cpu_to_le16(m->src_lid);
    m->src_qpn = cpu_to_le32(m->src_qpn);
    m->dst_qpn = cpu_to_le32(m->dst_qpn);
    m->psn = cpu_to_le32(m->psn);
    m->opcode = cpu_to_le32(m->opcode);
    m->status = cpu_to_le32(m->status);
    m->len = cpu_to_le32(m->len);
    m->offset = cpu_to_le64(m->offset);
    m->msg_len = cpu_to_le64(m->msg_len);
    m->raddr = cpu_to_le64(m->raddr);
    m->compare_add = cpu_to_le64(m->compare_add);
    m->swap = cpu_to_le64(m->swap);
    m->rkey = cpu_to_le32(m->rkey);
    m->imm = cpu_to_le32(m->imm);
    m->send_flags = cpu_to_le32(m->send_flags);
}

static gboolean nic_link_writable(void *do_not_use, GIOCondition cond,
                                  void *opaque);

/* Write what the chardev takes now; a watch writes the rest later. */
static void nic_link_flush(HmmNicState *s)
{
    while (s->link_out->len) {
        int n = qemu_chr_fe_write(&s->link, s->link_out->data,
                                  s->link_out->len);

        if (n <= 0) {
            break;
        }
        g_byte_array_remove_range(s->link_out, 0, n);
    }
    if (s->link_out->len && !s->link_watch) {
        s->link_watch = qemu_chr_fe_add_watch(&s->link, G_IO_OUT | G_IO_HUP,
                                              nic_link_writable, s);
    }
}

static gboolean nic_link_writable(void *do_not_use, GIOCondition cond,
                                  void *opaque)
{
    HmmNicState *s = opaque;

    s->link_watch = 0;
    nic_link_flush(s);
    return G_SOURCE_REMOVE;
}

static void nic_link_put(HmmNicState *s, NicLinkMsg *m, const void *payload)
{
    uint32_t len = m->len;

    trace_hmm_nic_link_send(m->type, m->src_qpn, m->dst_qpn, m->psn,
                            m->opcode, m->offset, len, m->status);
    s->cnt_link_frames_sent++;
    s->cnt_link_bytes_sent += len;
    m->magic = HMM_NIC_LINK_MAGIC;
    m->src_lid = s->lid;
    nic_link_swab(m);
    g_byte_array_append(s->link_out, (const guint8 *)m, sizeof(*m));
    if (len) {
        g_byte_array_append(s->link_out, payload, len);
    }
    nic_link_flush(s);
}

/* A frame to the peer; false (nothing sent) if there is none. */
bool hmm_nic_link_send(HmmNicState *s, NicLinkMsg *m, const void *payload)
{
    if (!s->link_up) {
        return false;
    }
    m->type = NIC_LINK_REQ;
    nic_link_put(s, m, payload);
    return true;
}

/* The response to request @req (host order) with @status. */
void hmm_nic_link_respond(HmmNicState *s, const NicLinkMsg *req,
                          uint32_t status, NicLinkMsg *resp,
                          const void *payload)
{
    resp->type = NIC_LINK_RESP;
    resp->src_qpn = req->dst_qpn;
    resp->dst_qpn = req->src_qpn;
    resp->psn = req->psn;
    resp->opcode = req->opcode;
    resp->offset = req->offset;
    resp->status = status;
    if (s->link_up) {
        nic_link_put(s, resp, payload);
    }
}

/* ---- the requester's side: responses ------------------------------------- */

/*
 * The response to @qp's request: the QP runs again to use it. One that
 * answers no request of the QP's (a stale one, after a reset) is dropped.
 */
static void nic_link_response(HmmNicState *s, const NicLinkMsg *m,
                              const uint8_t *payload)
{
    HmmNicQp *qp;

    if (m->dst_qpn >= HMM_NIC_MAX_QP || !s->qps) {
        trace_hmm_nic_link_error("response for a QPN beyond MAX_QP");
        return;
    }
    qp = &s->qps[m->dst_qpn];
    if (m->psn != qp->link_psn || qp->link_resp ||
        (qp->sched != NIC_QP_LINK && qp->sched != NIC_QP_RNR)) {
        trace_hmm_nic_link_error("stale response dropped");
        return;
    }
    if (qp->sched == NIC_QP_RNR && m->status == NIC_LINK_RNR) {
        return;
    }
    qp->link_resp = true;
    qp->link_status = m->status;
    qp->link_rnr_timer = m->rnr_timer;
    qp->link_old = m->compare_add;
    qp->link_len = 0;
    if (m->len) {
        if (!qp->link_buf) {
            qp->link_buf = g_malloc(HMM_NIC_LINK_CHUNK);
        }
        memcpy(qp->link_buf, payload, m->len);
        qp->link_len = m->len;
    }
    hmm_nic_qp_wake(s, qp);
    hmm_nic_kick(s);
}

/* The link went down: every request out is lost, as on a dead wire. */
static void nic_link_lost(HmmNicState *s)
{
    uint32_t i;

    for (i = 0; s->qps && i < HMM_NIC_MAX_QP; i++) {
        HmmNicQp *qp = &s->qps[i];

        if (qp->sched == NIC_QP_LINK) {
            qp->link_resp = true;
            qp->link_status = HMM_NIC_WC_RETRY_EXC_ERR;
            qp->link_len = 0;
            hmm_nic_qp_wake(s, qp);
        }
    }
    hmm_nic_kick(s);
}

/* ---- the chardev --------------------------------------------------------- */

static void nic_link_protocol_error(HmmNicState *s, const char *why)
{
    error_report("%s: link: %s; disconnecting", TYPE_HMM_NIC, why);
    trace_hmm_nic_link_error(why);
    g_byte_array_set_size(s->link_in, 0);
    qemu_chr_fe_disconnect(&s->link);
}

static void nic_link_dispatch(HmmNicState *s, NicLinkMsg *m, uint8_t *payload)
{
    trace_hmm_nic_link_recv(m->type, m->src_qpn, m->dst_qpn, m->psn,
                            m->opcode, m->offset, m->len, m->status);
    s->cnt_link_frames_received++;
    s->cnt_link_bytes_received += m->len;
    switch (m->type) {
    case NIC_LINK_HELLO:
        s->link_up = true;
        s->peer_lid = m->src_lid;
        trace_hmm_nic_link_state(true, s->peer_lid);
        break;
    case NIC_LINK_REQ:
        if (!hmm_nic_alive(s) || !s->qps) {
            NicLinkMsg resp = { 0 };

            hmm_nic_link_respond(s, m, HMM_NIC_WC_RETRY_EXC_ERR, &resp, NULL);
            break;
        }
        hmm_nic_remote_request(s, m, payload);
        break;
    case NIC_LINK_RESP:
        nic_link_response(s, m, payload);
        break;
    }
}

static int nic_link_can_receive(void *opaque)
{
    return HMM_NIC_LINK_CHUNK;
}

static void nic_link_receive(void *opaque, const uint8_t *buf, int size)
{
    HmmNicState *s = opaque;
    GByteArray *in = s->link_in;

    g_byte_array_append(in, buf, size);
    while (in->len >= sizeof(NicLinkMsg)) {
        NicLinkMsg m;
        uint32_t len;

        memcpy(&m, in->data, sizeof(m));
        nic_link_swab(&m);      /* little-endian to host: its own inverse */
        len = m.len;
        if (m.magic != HMM_NIC_LINK_MAGIC) {
            nic_link_protocol_error(s, "bad frame magic");
            return;
        }
        if (len > HMM_NIC_LINK_CHUNK ||
            m.type < NIC_LINK_HELLO || m.type > NIC_LINK_RESP) {
            nic_link_protocol_error(s, "bad frame type or length");
            return;
        }
        if (in->len < sizeof(m) + len) {
            break;
        }
        nic_link_dispatch(s, &m, in->data + sizeof(m));
        g_byte_array_remove_range(in, 0, sizeof(m) + len);
    }
    if (in->len > NIC_LINK_IN_MAX) {
        nic_link_protocol_error(s, "receive buffer overrun");
    }
}

static void nic_link_event(void *opaque, QEMUChrEvent event)
{
    HmmNicState *s = opaque;
    NicLinkMsg hello = { .type = NIC_LINK_HELLO };

    switch (event) {
    case CHR_EVENT_OPENED:
        g_byte_array_set_size(s->link_in, 0);
        g_byte_array_set_size(s->link_out, 0);
        nic_link_put(s, &hello, NULL);
        break;
    case CHR_EVENT_CLOSED:
        if (s->link_up) {
            trace_hmm_nic_link_state(false, s->peer_lid);
        }
        s->link_up = false;
        s->peer_lid = 0;
        g_byte_array_set_size(s->link_in, 0);
        g_byte_array_set_size(s->link_out, 0);
        nic_link_lost(s);
        break;
    default:
        break;
    }
}

void hmm_nic_link_realize(HmmNicState *s)
{
    s->link_in = g_byte_array_new();
    s->link_out = g_byte_array_new();
    if (qemu_chr_fe_backend_connected(&s->link)) {
        qemu_chr_fe_set_handlers(&s->link, nic_link_can_receive,
                                 nic_link_receive, nic_link_event, NULL, s,
                                 NULL, true);
    }
}

void hmm_nic_link_unrealize(HmmNicState *s)
{
    if (s->link_watch) {
        g_source_remove(s->link_watch);
        s->link_watch = 0;
    }
    qemu_chr_fe_deinit(&s->link, false);
    g_byte_array_unref(s->link_in);
    g_byte_array_unref(s->link_out);
    s->link_in = NULL;
    s->link_out = NULL;
}

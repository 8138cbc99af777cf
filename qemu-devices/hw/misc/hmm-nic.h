/*
 * hmm-nic: state shared by the register front end (hmm-nic.c) and the
 * queue-pair engine (hmm-nic-engine.c)
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_NIC_H
#define HW_MISC_HMM_NIC_H

#include "qemu/queue.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "chardev/char-fe.h"
#include "hw/pci/pci_device.h"
#include "qom/object.h"
#include "hmm-common/core.h"
#include "hmm-common/ring.h"
#include "hmm-common/mmu.h"
#include "hmm-common/regs.h"
#include "hw/misc/hmm_nic_regs.h"

#define TYPE_HMM_NIC "hmm-nic"
OBJECT_DECLARE_SIMPLE_TYPE(HmmNicState, HMM_NIC)

/* Payload moves through a bounce buffer of this size, one DMA per piece. */
#define HMM_NIC_CHUNK           (64 * KiB)

/* Queue buffer geometry the device accepts (table entries are checked). */
#define HMM_NIC_MAX_QUEUE_MASK  (HMM_NIC_QUEUE_MAX_ENTRIES - 1)
#define HMM_NIC_SQ_LOG2_MIN     8       /* a send WQE is 208 bytes + SGEs */
#define HMM_NIC_RQ_LOG2_MIN     6       /* a receive WQE is 40 bytes + SGEs */
#define HMM_NIC_CQ_LOG2_MIN     6       /* a CQE is 48 bytes */
#define HMM_NIC_LOG2_MAX        12

/* Where a QP is as far as the engine is concerned. */
typedef enum HmmNicQpSched {
    NIC_QP_IDLE,            /* nothing to do until a doorbell */
    NIC_QP_RUNNABLE,        /* on HmmNicState.runnable */
    NIC_QP_STALLED,         /* its xl[stalled_side] is on the MMU fault queue */
    NIC_QP_RNR,             /* on HmmNicState.rnr: waits for RQ_DOORBELL */
    NIC_QP_LINK,            /* a request to the linked device is out */
} HmmNicQpSched;

/* The two sides of a work request, for translations and trace records. */
enum {
    NIC_SIDE_REQ = 0,       /* the requester's own buffers (lkey) */
    NIC_SIDE_RESP = 1,      /* the responder's (rkey, receive buffers) */
};

struct HmmNicQp;

/* A translation job of one side of a QP's current work request. */
typedef struct HmmNicXlate {
    HmmMmuJob mj;
    struct HmmNicQp *qp;
} HmmNicXlate;

/*
 * Device-internal state of one queue pair. Everything else about it is
 * read from its table entry and queue buffers when needed.
 */
typedef struct HmmNicQp {
    QTAILQ_ENTRY(HmmNicQp) link;    /* runnable or rnr list */
    uint32_t qpn;
    HmmNicQpSched sched;
    uint32_t sq_ci;                 /* next send WQE to process (masked) */
    uint32_t rq_ci;                 /* next receive WQE to consume (masked) */
    bool err;                       /* the device moved it to ERR */
    uint32_t rnr_peer;              /* NIC_QP_RNR: the QP it waits for */
    uint32_t rnr_naks;              /* RNR waits of the current WR so far */
    uint32_t retries;               /* unanswered tries of the current WR */
    int64_t rnr_delay_ns;           /* the peer's min_rnr_timer */
    int64_t rnr_deadline;           /* QEMU_CLOCK_VIRTUAL: when to try again */
    /* the work request at sq_ci, across steps and stalls */
    uint64_t wr_done;               /* payload bytes already moved */
    bool atomic_done;               /* the atomic executed: old is valid */
    uint64_t atomic_old;
    int stalled_side;               /* NIC_SIDE_*: xl[] on the fault queue */
    HmmNicXlate xl[2];

    /* requester of a WR to the linked device (hmm-nic-link.c) */
    uint32_t link_psn;              /* of the request out or last answered */
    uint64_t link_end;              /* the message offset it ends at */
    bool link_retry;                /* the next request repeats it (RNR) */
    bool link_resp;                 /* its response is here: */
    uint32_t link_status;           /* HMM_NIC_WC_* or NIC_LINK_RNR */
    uint8_t link_rnr_timer;         /* the responder's min_rnr_timer */
    uint64_t link_old;              /* an atomic's old value */
    uint32_t link_len;              /* READ: bytes of data in link_buf */
    uint8_t *link_buf;              /* READ: HMM_NIC_LINK_CHUNK, on demand */
    /* responder to the linked device: a request of it faulted */
    bool resp_stalled;          /* xl[NIC_SIDE_RESP] is on the fault queue */
    uint32_t resp_psn;              /* the request that faulted */
    uint32_t resp_src_qpn;          /* ... and who sent it */
    bool resp_cancelled;            /* ... and the driver cancelled it */
} HmmNicQp;

typedef struct HmmNicCq {
    uint32_t pi;                    /* next slot the device fills (masked) */
    bool armed;
    bool armed_solicited;
    bool err;                       /* overran or unwritable: drops CQEs */
} HmmNicCq;

typedef QTAILQ_HEAD(, HmmNicQp) HmmNicQpList;

struct HmmNicState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    uint8_t *bounce;

    HmmCore core;           /* ERROR, INTR_*, VEC_ERR, DMA trace, counters */
    HmmRing eq;             /* event queue */
    HmmMmu mmu;             /* CTX_*, MMU_CTRL, TLB, FAULTQ_*, faults */
    HmmRegs regs;           /* the shared registers: vectors, SCRATCH */

    /* registers */
    uint32_t status;
    uint64_t mr_base;
    uint64_t qp_base;
    uint32_t qp_count;
    uint64_t cq_base;
    uint32_t cq_count;
    bool enabled;           /* NIC_CTRL */
    uint32_t inv_ctx;
    uint64_t inv_va;
    uint64_t inv_len;

    /* per-object device state, HMM_NIC_MAX_QP / HMM_NIC_MAX_CQ entries */
    HmmNicQp *qps;
    HmmNicCq *cqs;
    HmmNicQpList runnable;
    HmmNicQpList rnr;
    QEMUTimer *rnr_timer;   /* the earliest rnr_deadline of the rnr list */
    uint32_t nlink_wait;    /* QPs in NIC_QP_LINK */

    /* the link to another hmm-nic (hmm-nic-link.c) */
    CharBackend link;       /* property "link" */
    uint16_t lid;           /* property "lid": PORT_LID */
    bool link_up;           /* the peer said HELLO */
    uint16_t peer_lid;
    uint32_t link_psn_next;
    GByteArray *link_in;    /* bytes received, not yet a whole frame */
    GByteArray *link_out;   /* bytes not yet written */
    guint link_watch;
    HmmMmuJob ring_job;     /* translations of the queues (RING_CTX) */

    /* read-only QOM counters, cumulative over resets */
    uint64_t cnt_wrs_completed;
    uint64_t cnt_wrs_failed;
    uint64_t cnt_wrs_flushed;
    uint64_t cnt_events;
    uint64_t cnt_events_dropped;
    uint64_t cnt_rnr_waits;
    uint64_t cnt_link_frames_sent;
    uint64_t cnt_link_frames_received;
    uint64_t cnt_link_bytes_sent;   /* payload */
    uint64_t cnt_link_bytes_received;
};

/* hmm-nic.c */
const char *hmm_nic_err_name(uint32_t err);

/* hmm-nic-engine.c */
void hmm_nic_bh(void *opaque);
void hmm_nic_kick(HmmNicState *s);
void hmm_nic_rnr_wait(HmmNicState *s, HmmNicQp *qp);
void hmm_nic_rnr_expire(void *opaque);
void hmm_nic_update_busy(HmmNicState *s);
void hmm_nic_fatal(HmmNicState *s, uint32_t err, uint64_t addr,
                   const char *what);
void hmm_nic_drop_all(HmmNicState *s);
void hmm_nic_sq_doorbell(HmmNicState *s, uint32_t qpn);
void hmm_nic_rq_doorbell(HmmNicState *s, uint32_t qpn);
void hmm_nic_cq_arm(HmmNicState *s, uint32_t val);
void hmm_nic_cq_reset(HmmNicState *s, uint32_t cqn);
void hmm_nic_fault_replay(HmmNicState *s);
void hmm_nic_fault_cancel(HmmNicState *s, uint32_t token);
void hmm_nic_fail_unposted(HmmNicState *s);
void hmm_nic_link_realize(HmmNicState *s);
void hmm_nic_link_unrealize(HmmNicState *s);

#endif

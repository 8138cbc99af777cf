/*
 * hmm-nic: what the engine's files share (hmm-nic-queue.c: queue pairs'
 * scheduling and error state, queue DMA, completions and events;
 * hmm-nic-xfer.c: access checks, translation and the opcodes;
 * hmm-nic-engine.c: work requests, the engine, doorbells and faults)
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_NIC_ENGINE_H
#define HW_MISC_HMM_NIC_ENGINE_H

#include "qemu/host-utils.h"
#include "hmm-nic.h"

/*
 * Work per bottom-half run (steps, host time, payload bytes) and inside a
 * doorbell or replay write (where the writing vCPU waits), as on hmm-gpu.
 * A step moves at most HMM_NIC_STEP_BYTES of one work request.
 */
#define HMM_NIC_BH_STEPS        256
#define HMM_NIC_BH_NS           (1 * SCALE_MS)
#define HMM_NIC_BH_BYTES        (64 * MiB)
#define HMM_NIC_MMIO_NS         (50 * SCALE_US)
#define HMM_NIC_MMIO_BYTES      (256 * KiB)
#define HMM_NIC_STEP_BYTES      (256 * KiB)
/* ... and a FLUSH step translates at most this many pages of its range */
#define HMM_NIC_FLUSH_STEP_PAGES 512

#define HMM_NIC_ATOMIC_SIZE     8
#define HMM_NIC_QP_STATE_OFF    offsetof(struct hmm_nic_qp, state)

/* What a step of a work request came to. */
typedef enum NicRes {
    NIC_OK,                 /* done (or this part done) */
    NIC_MORE,               /* the step's byte budget ran out: continue */
    NIC_STALL,              /* a translation faulted: the QP stalled */
    NIC_RNR,                /* no receive WQE at the peer: wait */
    NIC_LINK,               /* a request went to the linked device: wait */
    NIC_FAIL,               /* the WR completes with w->status */
} NicRes;

/* A piece of a scatter list: an MR range, or bytes the device holds. */
typedef struct NicSeg {
    uint32_t mr;            /* MR index, the MMU context */
    uint64_t va;
    uint64_t len;
    uint8_t *host;          /* bytes the device holds: inline data, ... */
} NicSeg;

typedef struct NicSgl {
    NicSeg seg[HMM_NIC_MAX_SGE];
    int n;
    int side;               /* NIC_SIDE_* */
    uint8_t access;         /* enum hmm_gpu_access of the data DMA */
} NicSgl;

typedef struct NicWc {
    uint64_t wr_id;
    uint32_t status;
    uint32_t opcode;
    uint32_t vendor_err;
    uint32_t byte_len;
    uint32_t imm;
    uint32_t qp_num;
    uint32_t src_qp;
    uint32_t wc_flags;
    bool solicited;
} NicWc;

/* The send work request a step works on. */
typedef struct NicWr {
    HmmNicQp *qp;
    struct hmm_nic_qp *e;
    uint32_t index;
    uint64_t cmd[2];                /* fault/trace cmd_id of each side */
    uint64_t wr_id;
    uint32_t opcode;
    uint32_t send_flags;
    uint32_t imm;                   /* as stored: big-endian on the wire */
    uint64_t raddr;
    uint64_t compare_add;           /* ATOMIC_WRITE: the value to write */
    uint64_t swap;
    uint8_t flush_type;             /* FLUSH: HMM_NIC_FLUSH_GLOBAL | ... */
    uint8_t flush_level;            /* FLUSH: HMM_NIC_FLUSH_RANGE or _MR */
    uint32_t rkey;
    uint32_t length;
    uint32_t num_sge;
    struct hmm_nic_sge sge[HMM_NIC_MAX_SGE];
    uint8_t inline_data[HMM_NIC_MAX_INLINE];
    bool is_inline;
    uint32_t src_qpn;               /* the requester, for receive CQEs */
    bool remote_resp;               /* qp responds to the linked device */
    /* outcome */
    uint32_t status;                /* HMM_NIC_WC_* */
    uint32_t vendor_err;            /* HMM_NIC_ERR_* */
} NicWr;

static inline bool hmm_nic_alive(HmmNicState *s)
{
    return s->enabled && !(s->status & HMM_NIC_STATUS_FATAL);
}

static inline bool hmm_nic_mask_ok(uint32_t mask)
{
    return mask >= 1 && mask <= HMM_NIC_MAX_QUEUE_MASK &&
           is_power_of_2((uint64_t)mask + 1);
}

static inline uint64_t hmm_nic_slot_va(uint64_t qva, uint32_t index,
                                       uint8_t log2)
{
    return qva + HMM_NIC_QBUF_DATA + ((uint64_t)index << log2);
}

static inline uint32_t hmm_nic_wc_opcode(uint32_t wr_opcode)
{
    switch (wr_opcode) {
    case HMM_NIC_WR_RDMA_WRITE:
    case HMM_NIC_WR_RDMA_WRITE_WITH_IMM:
        return HMM_NIC_WC_OP_RDMA_WRITE;
    case HMM_NIC_WR_RDMA_READ:
        return HMM_NIC_WC_OP_RDMA_READ;
    case HMM_NIC_WR_ATOMIC_CMP_AND_SWP:
        return HMM_NIC_WC_OP_COMP_SWAP;
    case HMM_NIC_WR_ATOMIC_FETCH_AND_ADD:
        return HMM_NIC_WC_OP_FETCH_ADD;
    case HMM_NIC_WR_FLUSH:
        return HMM_NIC_WC_OP_FLUSH;
    case HMM_NIC_WR_ATOMIC_WRITE:
        return HMM_NIC_WC_OP_ATOMIC_WRITE;
    default:
        return HMM_NIC_WC_OP_SEND;
    }
}

/* The WC status of an access that failed on side @side (enum NicSide). */
static inline uint32_t hmm_nic_access_status(int side)
{
    return side == NIC_SIDE_RESP ? HMM_NIC_WC_REM_ACCESS_ERR :
                                   HMM_NIC_WC_LOC_PROT_ERR;
}

static inline bool hmm_nic_is_atomic(uint32_t opcode)
{
    return opcode == HMM_NIC_WR_ATOMIC_CMP_AND_SWP ||
           opcode == HMM_NIC_WR_ATOMIC_FETCH_AND_ADD;
}

/* Opcodes without SGEs: the WQE itself says everything (1.5). */
static inline bool hmm_nic_no_sge(uint32_t opcode)
{
    return opcode == HMM_NIC_WR_FLUSH || opcode == HMM_NIC_WR_ATOMIC_WRITE;
}

/*
 * The link (hmm-nic-link.c): frames between two hmm-nic devices over their
 * "link" chardevs, each a NicLinkMsg then `len` bytes of payload. Fields
 * are little-endian on the wire. A request carries at most
 * HMM_NIC_LINK_CHUNK bytes of a message (SEND, WRITE) or asks for as many
 * (READ); its response says how it went. Both sides of one stream run
 * the same QEMU, so this is an internal format, not guest ABI.
 */
#define HMM_NIC_LINK_MAGIC      0x314c4e48      /* "HNL1" */
#define HMM_NIC_LINK_CHUNK      (64 * KiB)
#define NIC_LINK_RNR            0xffffffffu     /* a response: try again */

enum {
    NIC_LINK_HELLO = 1,     /* src_lid: who is at the other end */
    NIC_LINK_REQ = 2,
    NIC_LINK_RESP = 3,
};

typedef struct QEMU_PACKED NicLinkMsg {
    uint32_t magic;
    uint16_t type;
    uint16_t src_lid;
    uint32_t src_qpn;
    uint32_t dst_qpn;
    uint32_t psn;           /* names a request; its response has the same */
    uint32_t opcode;        /* REQ: HMM_NIC_WR_* */
    uint32_t status;        /* RESP: HMM_NIC_WC_* or NIC_LINK_RNR */
    uint32_t len;           /* payload bytes after the header */
    uint64_t offset;        /* REQ: where the chunk is in the message */
    uint64_t msg_len;       /* REQ: the whole message */
    uint64_t raddr;
    /* REQ: the atomic's operand, ATOMIC_WRITE's value; RESP: old value */
    uint64_t compare_add;
    uint64_t swap;          /* REQ: CMP_AND_SWP's; FLUSH: type | level << 8 */
    uint32_t rkey;
    uint32_t imm;
    uint32_t send_flags;
    uint8_t rnr_timer;      /* RESP (RNR): the responder's min_rnr_timer */
    uint8_t rsvd[3];
} NicLinkMsg;

static inline bool hmm_nic_remote(HmmNicState *s, const struct hmm_nic_qp *e)
{
    return e->dest_lid && e->dest_lid != s->lid;
}

/* hmm-nic-link.c */
bool hmm_nic_link_send(HmmNicState *s, NicLinkMsg *m, const void *payload);
void hmm_nic_link_respond(HmmNicState *s, const NicLinkMsg *req,
                          uint32_t status, NicLinkMsg *resp,
                          const void *payload);

/* hmm-nic-queue.c */
void hmm_nic_qp_make_runnable(HmmNicState *s, HmmNicQp *qp);
void hmm_nic_qp_wake(HmmNicState *s, HmmNicQp *qp);
void hmm_nic_qp_forget(HmmNicState *s, HmmNicQp *qp);
bool hmm_nic_table_read(HmmNicState *s, uint64_t addr, void *buf,
                        uint64_t len, uint64_t cmd_id);
bool hmm_nic_qdma(HmmNicState *s, uint64_t cmd_id, uint64_t va, void *buf,
                  uint64_t len, bool write, uint64_t *fail_va);
bool hmm_nic_qread32(HmmNicState *s, uint64_t cmd_id, uint64_t va,
                     uint32_t *val, uint64_t *fail_va);
bool hmm_nic_qwrite32(HmmNicState *s, uint64_t cmd_id, uint64_t va,
                      uint32_t val, uint64_t *fail_va);
MemTxResult hmm_nic_data_dma(HmmNicState *s, NicWr *w, int side,
                             uint32_t mr, uint64_t pa, uint64_t va,
                             void *buf, uint64_t len, bool write);
bool hmm_nic_qp_read(HmmNicState *s, uint32_t qpn, struct hmm_nic_qp *e,
                     uint64_t cmd_id);
const char *hmm_nic_qp_check(HmmNicState *s, const struct hmm_nic_qp *e,
                             uint32_t *err);
bool hmm_nic_post_cqe(HmmNicState *s, uint32_t cqn, const NicWc *wc,
                      uint64_t cmd_id);
void hmm_nic_flush(HmmNicState *s, HmmNicQp *qp,
                   const struct hmm_nic_qp *e, bool sq);
void hmm_nic_qp_to_err(HmmNicState *s, HmmNicQp *qp,
                       const struct hmm_nic_qp *e, uint32_t err);
/* hmm-nic-xfer.c: one step of each opcode (both sides) */
NicRes hmm_nic_do_send(HmmNicState *s, NicWr *w, uint64_t *done);
NicRes hmm_nic_do_write(HmmNicState *s, NicWr *w, uint64_t *done);
NicRes hmm_nic_do_read(HmmNicState *s, NicWr *w, uint64_t *done);
NicRes hmm_nic_do_atomic(HmmNicState *s, NicWr *w, uint64_t *done);
NicRes hmm_nic_do_atomic_write(HmmNicState *s, NicWr *w, uint64_t *done);
NicRes hmm_nic_do_flush(HmmNicState *s, NicWr *w, uint64_t *done);
/* ... of a WR to the linked device, and a request from it */
NicRes hmm_nic_remote_step(HmmNicState *s, NicWr *w, uint64_t *done);
void hmm_nic_remote_request(HmmNicState *s, const NicLinkMsg *m,
                            uint8_t *payload);

#endif

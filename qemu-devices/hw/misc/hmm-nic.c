/*
 * hmm-nic: an emulated RDMA NIC whose memory regions fault like mlx5 ODP
 *
 * The guest describes memory regions, queue pairs and completion queues in
 * tables in its memory and rings doorbells; the device processes the send
 * queues' work requests (RDMA WRITE/READ, SEND/RECV, atomics). This first
 * version is a loopback device: a queue pair's peer is another queue pair
 * of the same device, so the requester and the responder side of every
 * transfer run here.
 *
 * Memory region N is translated by context N of the device MMU hmmlab's
 * devices share (hmm-common): a missing page stalls that queue pair and
 * posts a fault record; the driver maps the page and replays, or cancels
 * the work request. The queues themselves are in the layout of the
 * kernel's soft-RoCE (rxe) user ABI and are reached through context
 * HMM_NIC_RING_CTX.
 *
 * This file is the register front end and the QOM device; the engine is in
 * hmm-nic-engine.c. The ABI is include/hw/misc/hmm_nic_regs.h.
 *
 * Guest mistakes never crash or assert: they are reported through
 * REG_ERROR / INTR_ERROR, LOG_GUEST_ERROR, trace events and the
 * "guest-errors" QOM counter.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qapi/error.h"
#include "hw/pci/pcie.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "hw/registerfields.h"
#include "migration/vmstate.h"
#include "hmm-nic.h"
#include "trace.h"

/* BAR0 registers of hmm-nic's own (the shared ones: hmm-common/regs.h) */
REG32(MR_BASE_LO, HMM_NIC_REG_MR_BASE_LO)
REG32(MR_BASE_HI, HMM_NIC_REG_MR_BASE_HI)
REG32(QP_BASE_LO, HMM_NIC_REG_QP_BASE_LO)
REG32(QP_BASE_HI, HMM_NIC_REG_QP_BASE_HI)
REG32(QP_COUNT, HMM_NIC_REG_QP_COUNT)
REG32(CQ_BASE_LO, HMM_NIC_REG_CQ_BASE_LO)
REG32(CQ_BASE_HI, HMM_NIC_REG_CQ_BASE_HI)
REG32(CQ_COUNT, HMM_NIC_REG_CQ_COUNT)
REG32(NIC_CTRL, HMM_NIC_REG_NIC_CTRL)
REG32(EQ_BASE_LO, HMM_NIC_REG_EQ_BASE_LO)
REG32(EQ_BASE_HI, HMM_NIC_REG_EQ_BASE_HI)
REG32(EQ_SIZE, HMM_NIC_REG_EQ_SIZE)
REG32(EQ_HEAD, HMM_NIC_REG_EQ_HEAD)
REG32(EQ_TAIL, HMM_NIC_REG_EQ_TAIL)
REG32(EQ_CTRL, HMM_NIC_REG_EQ_CTRL)
REG32(SQ_DOORBELL, HMM_NIC_REG_SQ_DOORBELL)
REG32(RQ_DOORBELL, HMM_NIC_REG_RQ_DOORBELL)
REG32(CQ_ARM, HMM_NIC_REG_CQ_ARM)
REG32(CQ_RESET, HMM_NIC_REG_CQ_RESET)
REG32(INV_CTX, HMM_NIC_REG_INV_CTX)
REG32(INV_VA_LO, HMM_NIC_REG_INV_VA_LO)
REG32(INV_VA_HI, HMM_NIC_REG_INV_VA_HI)
REG32(INV_LEN_LO, HMM_NIC_REG_INV_LEN_LO)
REG32(INV_LEN_HI, HMM_NIC_REG_INV_LEN_HI)
REG32(INV_GO, HMM_NIC_REG_INV_GO)
REG32(PORT_LID, HMM_NIC_REG_PORT_LID)
REG32(LINK_STATUS, HMM_NIC_REG_LINK_STATUS)

#define HMM_NIC_INTR_ALL        (HMM_NIC_INTR_EQ | HMM_NIC_INTR_ERROR | \
                                 HMM_NIC_INTR_FAULT)
#define HMM_NIC_CAPS            (HMM_NIC_CAP_RC | HMM_NIC_CAP_ATOMIC | \
                                 HMM_NIC_CAP_ODP | HMM_NIC_CAP_IMPLICIT | \
                                 HMM_NIC_CAP_LINK | HMM_NIC_CAP_FLUSH | \
                                 HMM_NIC_CAP_ATOMIC_WRITE)
#define HMM_NIC_TABLE_ALIGN     64

/* the ABI header and the library agree on the shared registers */
QEMU_BUILD_BUG_ON(HMM_NIC_REG_ID != HMM_REG_ID ||
                  HMM_NIC_REG_VERSION != HMM_REG_VERSION ||
                  HMM_NIC_REG_CAPS != HMM_REG_CAPS ||
                  HMM_NIC_REG_RESET != HMM_REG_RESET ||
                  HMM_NIC_REG_STATUS != HMM_REG_STATUS ||
                  HMM_NIC_REG_ERROR != HMM_REG_ERROR ||
                  HMM_NIC_REG_ERROR_ADDR_LO != HMM_REG_ERROR_ADDR_LO ||
                  HMM_NIC_REG_ERROR_ADDR_HI != HMM_REG_ERROR_ADDR_HI ||
                  HMM_NIC_REG_INTR_STATUS != HMM_REG_INTR_STATUS ||
                  HMM_NIC_REG_INTR_MASK != HMM_REG_INTR_MASK ||
                  HMM_NIC_REG_VEC_EQ != HMM_REG_VEC_MAIN ||
                  HMM_NIC_REG_VEC_ERR != HMM_REG_VEC_ERR ||
                  HMM_NIC_REG_MAX_MSG != HMM_REG_MAX_XFER ||
                  HMM_NIC_REG_NUM_VECTORS != HMM_REG_NUM_VECTORS ||
                  HMM_NIC_REG_SCRATCH != HMM_REG_SCRATCH);
QEMU_BUILD_BUG_ON(HMM_NIC_REG_CTX_BASE_LO != HMM_REG_CTX_BASE_LO ||
                  HMM_NIC_REG_CTX_BASE_HI != HMM_REG_CTX_BASE_HI ||
                  HMM_NIC_REG_CTX_COUNT != HMM_REG_CTX_COUNT ||
                  HMM_NIC_REG_MMU_CTRL != HMM_REG_MMU_CTRL ||
                  HMM_NIC_REG_TLB_ENTRIES != HMM_REG_TLB_ENTRIES ||
                  HMM_NIC_REG_FAULTQ_BASE_LO != HMM_REG_FAULTQ_BASE_LO ||
                  HMM_NIC_REG_FAULTQ_BASE_HI != HMM_REG_FAULTQ_BASE_HI ||
                  HMM_NIC_REG_FAULTQ_SIZE != HMM_REG_FAULTQ_SIZE ||
                  HMM_NIC_REG_FAULTQ_HEAD != HMM_REG_FAULTQ_HEAD ||
                  HMM_NIC_REG_FAULTQ_TAIL != HMM_REG_FAULTQ_TAIL ||
                  HMM_NIC_REG_FAULTQ_CTRL != HMM_REG_FAULTQ_CTRL ||
                  HMM_NIC_REG_FAULT_REPLAY != HMM_REG_FAULT_REPLAY ||
                  HMM_NIC_REG_FAULT_CANCEL != HMM_REG_FAULT_CANCEL ||
                  HMM_NIC_REG_VEC_FAULT != HMM_REG_VEC_FAULT ||
                  HMM_NIC_REG_STALLED != HMM_REG_STALLED);

const char *hmm_nic_err_name(uint32_t err)
{
    switch (err) {
    case HMM_NIC_ERR_NONE:          return "none";
    case HMM_NIC_ERR_BAD_QPN:       return "bad-qpn";
    case HMM_NIC_ERR_BAD_CQN:       return "bad-cqn";
    case HMM_NIC_ERR_QP_STATE:      return "qp-state";
    case HMM_NIC_ERR_BAD_WQE:       return "bad-wqe";
    case HMM_NIC_ERR_QUEUE_READ:    return "queue-read";
    case HMM_NIC_ERR_CQ_WRITE:      return "cq-write";
    case HMM_NIC_ERR_CQ_OVERRUN:    return "cq-overrun";
    case HMM_NIC_ERR_BAD_TABLE:     return "bad-table";
    case HMM_NIC_ERR_EQ_WRITE:      return "eq-write";
    case HMM_NIC_ERR_FAULTQ_WRITE:  return "faultq-write";
    case HMM_NIC_ERR_QUEUE_CONFIG:  return "queue-config";
    case HMM_NIC_ERR_BAD_VECTOR:    return "bad-vector";
    case HMM_NIC_ERR_BAD_REGISTER:  return "bad-register";
    case HMM_NIC_ERR_BAD_TOKEN:     return "bad-token";
    case HMM_NIC_ERR_BUSY:          return "busy";
    case HMM_NIC_ERR_FAULT:         return "fault";
    case HMM_NIC_ERR_DMA:           return "dma";
    default:                        return "?";
    }
}

static const char *hmm_nic_kind_name(uint8_t kind)
{
    switch (kind) {
    case HMM_GPU_TRACE_CMD_FETCH:   return "queue-read";
    case HMM_GPU_TRACE_CPL_WRITE:   return "queue-write";
    case HMM_GPU_TRACE_CTX_FETCH:   return "ctx-fetch";
    case HMM_GPU_TRACE_PTW:         return "ptw";
    case HMM_GPU_TRACE_FAULT_WRITE: return "fault-write";
    default:                        return "data";
    }
}

static const HmmCoreInfo hmm_nic_core_info = {
    .name = TYPE_HMM_NIC,
    .err_name = hmm_nic_err_name,
    .kind_name = hmm_nic_kind_name,
    .nvectors = HMM_NIC_NUM_VECTORS,
    .intr_error = HMM_NIC_INTR_ERROR,
    .vec_err_default = HMM_NIC_VEC_ERR_DEFAULT,
    .err_bad_register = HMM_NIC_ERR_BAD_REGISTER,
    .err_bad_vector = HMM_NIC_ERR_BAD_VECTOR,
};

static const HmmRingLimits hmm_nic_eq_limits = {
    .align = 64,
    .min_entries = HMM_NIC_QUEUE_MIN_ENTRIES,
    .max_entries = HMM_NIC_QUEUE_MAX_ENTRIES,
};

static const HmmMmuConfig hmm_nic_mmu_config = {
    .max_ctx = HMM_NIC_MAX_MR,
    .ctx_align = 64,
    .tlb_size = HMM_NIC_TLB_SIZE,
    .faultq = {
        .align = 64,
        .min_entries = HMM_NIC_QUEUE_MIN_ENTRIES,
        .max_entries = HMM_NIC_QUEUE_MAX_ENTRIES,
    },
};

static const HmmRegsInfo hmm_nic_regs_info = {
    .id = HMM_NIC_ID_MAGIC,
    .version = HMM_NIC_VERSION_MAJOR << 16 | HMM_NIC_VERSION_MINOR,
    .caps = HMM_NIC_CAPS,
    .max_xfer = HMM_NIC_MAX_MSG,
    .num_vectors = HMM_NIC_NUM_VECTORS,
    .tlb_entries = HMM_NIC_TLB_SIZE,
    .reset_magic = HMM_NIC_RESET_MAGIC,
    .intr_all = HMM_NIC_INTR_ALL,
    .enable = HMM_NIC_ENABLE,
    .vec_main_default = HMM_NIC_VEC_EQ_DEFAULT,
    .vec_fault_default = HMM_NIC_VEC_FAULT_DEFAULT,
    .err_busy = HMM_NIC_ERR_BUSY,
};

/* ---- reset ------------------------------------------------------------- */

static void hmm_nic_soft_reset(HmmNicState *s, const char *why)
{
    trace_hmm_nic_reset(why);
    hmm_dmatrace_flush(&s->core.trace);
    qemu_bh_cancel(s->bh);
    /* stalled, waiting and runnable queue pairs are forgotten */
    hmm_nic_drop_all(s);
    hmm_mmu_reset(&s->mmu);
    hmm_ring_reset(&s->eq);
    s->status = HMM_NIC_STATUS_READY;
    hmm_regs_reset(&s->regs);
    s->mr_base = 0;
    s->qp_base = 0;
    s->qp_count = 0;
    s->cq_base = 0;
    s->cq_count = 0;
    s->enabled = false;
    s->inv_ctx = 0;
    s->inv_va = 0;
    s->inv_len = 0;
    hmm_core_reset(&s->core);
}

static void hmm_nic_device_reset(DeviceState *dev)
{
    hmm_nic_soft_reset(HMM_NIC(dev), "device");
}

/* ---- registers --------------------------------------------------------- */

static uint64_t hmm_nic_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    HmmNicState *s = opaque;
    uint32_t val = 0;

    if (size != 4 || (addr & 3)) {
        hmm_reg_error(&s->core, addr, 0, size,
                      "bad register read size/alignment");
        return 0;
    }

    if (hmm_regs_read(&s->regs, addr, &val)) {
        trace_hmm_nic_mmio_read(addr, val);
        return val;
    }

    switch (addr) {
    case A_SQ_DOORBELL:
    case A_RQ_DOORBELL:
    case A_CQ_ARM:
    case A_CQ_RESET:
    case A_INV_GO:
        val = 0;                                /* write-only */
        break;
    case A_MR_BASE_LO:
        val = extract64(s->mr_base, 0, 32);
        break;
    case A_MR_BASE_HI:
        val = extract64(s->mr_base, 32, 32);
        break;
    case A_QP_BASE_LO:
        val = extract64(s->qp_base, 0, 32);
        break;
    case A_QP_BASE_HI:
        val = extract64(s->qp_base, 32, 32);
        break;
    case A_QP_COUNT:
        val = s->qp_count;
        break;
    case A_CQ_BASE_LO:
        val = extract64(s->cq_base, 0, 32);
        break;
    case A_CQ_BASE_HI:
        val = extract64(s->cq_base, 32, 32);
        break;
    case A_CQ_COUNT:
        val = s->cq_count;
        break;
    case A_NIC_CTRL:
        val = s->enabled ? HMM_NIC_ENABLE : 0;
        break;
    case A_EQ_BASE_LO:
        val = extract64(s->eq.base, 0, 32);
        break;
    case A_EQ_BASE_HI:
        val = extract64(s->eq.base, 32, 32);
        break;
    case A_EQ_SIZE:
        val = s->eq.size;
        break;
    case A_EQ_HEAD:
        val = s->eq.head;
        break;
    case A_EQ_TAIL:
        val = s->eq.tail;
        break;
    case A_EQ_CTRL:
        val = s->eq.enabled ? HMM_NIC_ENABLE : 0;
        break;
    case A_INV_CTX:
        val = s->inv_ctx;
        break;
    case A_INV_VA_LO:
        val = extract64(s->inv_va, 0, 32);
        break;
    case A_INV_VA_HI:
        val = extract64(s->inv_va, 32, 32);
        break;
    case A_INV_LEN_LO:
        val = extract64(s->inv_len, 0, 32);
        break;
    case A_INV_LEN_HI:
        val = extract64(s->inv_len, 32, 32);
        break;
    case A_PORT_LID:
        val = s->lid;
        break;
    case A_LINK_STATUS:
        val = s->link_up ? HMM_NIC_LINK_UP | (uint32_t)s->peer_lid << 16 : 0;
        break;
    default:
        hmm_reg_error(&s->core, addr, 0, size, "read of undefined register");
        return 0;
    }
    trace_hmm_nic_mmio_read(addr, val);
    return val;
}

/* Enabling a queue with a bad base or size: ERR_QUEUE_CONFIG, stays off. */
static bool hmm_nic_ring_enable(HmmNicState *s, HmmRing *r, uint32_t val,
                                const char *what)
{
    switch (hmm_ring_set_enabled(r, val & HMM_NIC_ENABLE)) {
    case HMM_WRITE_OK:
        return true;
    case HMM_WRITE_BAD_CONFIG:
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_CONFIG, r->base, what);
        return false;
    default:
        return false;
    }
}

/* BASE_LO, BASE_HI or SIZE of ring @r, whose BASE_LO is at @base_lo */
static void hmm_nic_write_ring_config(HmmNicState *s, HmmRing *r,
                                      hwaddr base_lo, hwaddr addr,
                                      uint32_t val, const char *busy)
{
    if (hmm_ring_write_config(r, addr - base_lo, val) == HMM_WRITE_BUSY) {
        trace_hmm_reg_error(busy, addr, val, 4);
        hmm_guest_error(&s->core, HMM_NIC_ERR_BUSY, addr, busy);
    }
}

QEMU_BUILD_BUG_ON(A_EQ_BASE_HI != A_EQ_BASE_LO + 4 ||
                  A_EQ_SIZE != A_EQ_BASE_LO + 8);

/* HEAD of a ring the device produces: the driver consumed up to there. */
static bool hmm_nic_write_ring_head(HmmNicState *s, HmmRing *r, hwaddr addr,
                                    uint32_t val, const char *disabled,
                                    const char *bad_index)
{
    switch (hmm_ring_write_head(r, val)) {
    case HMM_WRITE_DISABLED:
        hmm_reg_error(&s->core, addr, val, 4, disabled);
        return false;
    case HMM_WRITE_BAD_INDEX:
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_CONFIG, val, bad_index);
        return false;
    default:
        return true;
    }
}

static bool hmm_nic_config_ok(HmmNicState *s)
{
    return !(s->mr_base & (HMM_NIC_TABLE_ALIGN - 1)) &&
           !(s->qp_base & (HMM_NIC_TABLE_ALIGN - 1)) &&
           !(s->cq_base & (HMM_NIC_TABLE_ALIGN - 1)) &&
           s->qp_count >= 1 && s->qp_count <= HMM_NIC_MAX_QP &&
           s->cq_count >= 1 && s->cq_count <= HMM_NIC_MAX_CQ;
}

static void hmm_nic_write_ctrl(HmmNicState *s, uint32_t val)
{
    bool enable = val & HMM_NIC_ENABLE;

    if (enable == s->enabled) {
        return;
    }
    if (enable && !hmm_nic_config_ok(s)) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_CONFIG, s->qp_base,
                        "NIC enabled with bad table bases or counts");
        return;
    }
    trace_hmm_nic_enable(enable, s->qp_count, s->cq_count);
    /* either way, every queue pair and CQ starts over */
    hmm_nic_drop_all(s);
    s->enabled = enable;
    hmm_nic_update_busy(s);
}

/* A table register: writable only while the NIC is disabled. */
static void hmm_nic_write_table(HmmNicState *s, hwaddr addr, uint32_t val)
{
    if (s->enabled) {
        trace_hmm_reg_error("table written while NIC enabled", addr, val, 4);
        hmm_guest_error(&s->core, HMM_NIC_ERR_BUSY, addr,
                        "table register written while NIC enabled");
        return;
    }
    switch (addr) {
    case A_MR_BASE_LO:
        s->mr_base = deposit64(s->mr_base, 0, 32, val);
        break;
    case A_MR_BASE_HI:
        s->mr_base = deposit64(s->mr_base, 32, 32, val);
        break;
    case A_QP_BASE_LO:
        s->qp_base = deposit64(s->qp_base, 0, 32, val);
        break;
    case A_QP_BASE_HI:
        s->qp_base = deposit64(s->qp_base, 32, 32, val);
        break;
    case A_QP_COUNT:
        s->qp_count = val;
        break;
    case A_CQ_BASE_LO:
        s->cq_base = deposit64(s->cq_base, 0, 32, val);
        break;
    case A_CQ_BASE_HI:
        s->cq_base = deposit64(s->cq_base, 32, 32, val);
        break;
    case A_CQ_COUNT:
        s->cq_count = val;
        break;
    default:
        g_assert_not_reached();
    }
}

static void hmm_nic_inv_go(HmmNicState *s)
{
    if (s->inv_ctx >= HMM_NIC_MAX_MR) {
        hmm_guest_error(&s->core, HMM_NIC_ERR_BAD_REGISTER, s->inv_ctx,
                        "INV_GO with INV_CTX beyond MAX_MR");
        return;
    }
    if (s->inv_len == 0) {
        return;
    }
    hmm_mmu_invalidate(&s->mmu, 0, s->inv_ctx, s->inv_va, s->inv_len);
}

/* What a write to a shared register asks of hmm-nic. */
static void hmm_nic_shared_write(HmmNicState *s, HmmRegWrite what,
                                 uint32_t val)
{
    switch (what) {
    case HMM_REG_DO_RESET:
        hmm_nic_soft_reset(s, "register");
        break;
    case HMM_REG_MMU_BAD_CONFIG:
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_CONFIG, s->mmu.ctx_base,
                        "MMU enabled with bad context table base/count");
        break;
    case HMM_REG_FAULTQ_BAD_CONFIG:
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_CONFIG,
                        s->mmu.faults.ring.base,
                        "fault queue enabled with bad base/size");
        break;
    case HMM_REG_FAULTQ_DISABLED:
        hmm_nic_fail_unposted(s);
        break;
    case HMM_REG_FAULTQ_CONSUMED:
        hmm_nic_kick(s);                        /* held records may fit now */
        break;
    case HMM_REG_FAULTQ_BAD_HEAD:
        hmm_guest_error(&s->core, HMM_NIC_ERR_QUEUE_CONFIG, val,
                        "FAULTQ_HEAD out of range");
        break;
    case HMM_REG_DO_REPLAY:
        hmm_nic_fault_replay(s);
        break;
    case HMM_REG_DO_CANCEL:
        hmm_nic_fault_cancel(s, val);
        break;
    case HMM_REG_NOT_SHARED:
    case HMM_REG_DONE:
        break;
    }
}

static void hmm_nic_mmio_write_reg(HmmNicState *s, hwaddr addr, uint64_t val,
                                   unsigned size)
{
    HmmRegWrite what;

    if (size != 4 || (addr & 3)) {
        hmm_reg_error(&s->core, addr, val, size,
                      "bad register write size/alignment");
        return;
    }
    trace_hmm_nic_mmio_write(addr, val);

    what = hmm_regs_write(&s->regs, addr, val);
    if (what != HMM_REG_NOT_SHARED) {
        hmm_nic_shared_write(s, what, val);
        return;
    }

    switch (addr) {
    case A_EQ_TAIL:
    case A_PORT_LID:
    case A_LINK_STATUS:
        hmm_reg_error(&s->core, addr, val, size,
                      "write to read-only register");
        break;
    case A_MR_BASE_LO:
    case A_MR_BASE_HI:
    case A_QP_BASE_LO:
    case A_QP_BASE_HI:
    case A_QP_COUNT:
    case A_CQ_BASE_LO:
    case A_CQ_BASE_HI:
    case A_CQ_COUNT:
        hmm_nic_write_table(s, addr, val);
        break;
    case A_NIC_CTRL:
        hmm_nic_write_ctrl(s, val);
        break;
    case A_EQ_BASE_LO:
    case A_EQ_BASE_HI:
    case A_EQ_SIZE:
        hmm_nic_write_ring_config(s, &s->eq, A_EQ_BASE_LO, addr, val,
                                  "event queue reconfigured while enabled");
        break;
    case A_EQ_CTRL:
        hmm_nic_ring_enable(s, &s->eq, val,
                            "event queue enabled with bad base/size");
        break;
    case A_EQ_HEAD:
        hmm_nic_write_ring_head(s, &s->eq, addr, val,
                                "EQ_HEAD write while event queue disabled",
                                "EQ_HEAD out of range");
        break;
    case A_SQ_DOORBELL:
        hmm_nic_sq_doorbell(s, val);
        break;
    case A_RQ_DOORBELL:
        hmm_nic_rq_doorbell(s, val);
        break;
    case A_CQ_ARM:
        hmm_nic_cq_arm(s, val);
        break;
    case A_CQ_RESET:
        hmm_nic_cq_reset(s, val);
        break;
    case A_INV_CTX:
        s->inv_ctx = val;
        break;
    case A_INV_VA_LO:
        s->inv_va = deposit64(s->inv_va, 0, 32, val);
        break;
    case A_INV_VA_HI:
        s->inv_va = deposit64(s->inv_va, 32, 32, val);
        break;
    case A_INV_LEN_LO:
        s->inv_len = deposit64(s->inv_len, 0, 32, val);
        break;
    case A_INV_LEN_HI:
        s->inv_len = deposit64(s->inv_len, 32, 32, val);
        break;
    case A_INV_GO:
        hmm_nic_inv_go(s);
        break;
    default:
        hmm_reg_error(&s->core, addr, val, size,
                      "write to undefined register");
        break;
    }
}

static void hmm_nic_mmio_write(void *opaque, hwaddr addr, uint64_t val,
                               unsigned size)
{
    HmmNicState *s = opaque;

    hmm_nic_mmio_write_reg(s, addr, val, size);
    hmm_dmatrace_run_end(&s->core.trace);
}

static const MemoryRegionOps hmm_nic_mmio_ops = {
    .read = hmm_nic_mmio_read,
    .write = hmm_nic_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /* every size and alignment reaches us, to be reported as a guest error */
    .valid = {
        .min_access_size = 1,
        .max_access_size = 8,
        .unaligned = true,
    },
    .impl = {
        .min_access_size = 1,
        .max_access_size = 8,
        .unaligned = true,
    },
};

/* ---- QOM ---------------------------------------------------------------- */

static void hmm_nic_realize(PCIDevice *pdev, Error **errp)
{
    HmmNicState *s = HMM_NIC(pdev);
    uint32_t i;

    /* IB unicast LIDs are 0x0001-0xbfff; 0 in a QP means "this device" */
    if (s->lid == 0 || s->lid >= 0xc000) {
        error_setg(errp, "hmm-nic: lid %u is invalid: it must be a unicast "
                   "LID, 1 to 49151", s->lid);
        return;
    }
    pci_config_set_interrupt_pin(pdev->config, 1);

    if (pci_bus_is_express(pci_get_bus(pdev))) {
        if (pcie_endpoint_cap_init(pdev, 0x80) < 0) {
            error_setg(errp, "hmm-nic: cannot add the PCIe capability");
            return;
        }
    } else {
        pdev->cap_present &= ~QEMU_PCI_CAP_EXPRESS;
    }

    memory_region_init_io(&s->mmio, OBJECT(s), &hmm_nic_mmio_ops, s,
                          "hmm-nic-mmio", HMM_NIC_MMIO_SIZE);
    pci_register_bar(pdev, HMM_NIC_BAR_MMIO, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);

    if (!hmm_core_realize(&s->core, HMM_NIC_BAR_MSIX, errp)) {
        return;
    }
    hmm_mmu_realize(&s->mmu, 0);
    s->bounce = g_malloc0(HMM_NIC_CHUNK);
    s->qps = g_new0(HmmNicQp, HMM_NIC_MAX_QP);
    s->cqs = g_new0(HmmNicCq, HMM_NIC_MAX_CQ);
    for (i = 0; i < HMM_NIC_MAX_QP; i++) {
        s->qps[i].qpn = i;
        s->qps[i].xl[NIC_SIDE_REQ].qp = &s->qps[i];
        s->qps[i].xl[NIC_SIDE_RESP].qp = &s->qps[i];
    }
    /* guarded: DMA that lands on our own BAR fails instead of re-entering */
    s->bh = qemu_bh_new_guarded(hmm_nic_bh, s,
                                &DEVICE(pdev)->mem_reentrancy_guard);
    s->rnr_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, hmm_nic_rnr_expire, s);
    hmm_nic_link_realize(s);
    hmm_nic_soft_reset(s, "realize");
    hmm_dmatrace_start(&s->core.trace, pdev->devfn);
}

static void hmm_nic_exit(PCIDevice *pdev)
{
    HmmNicState *s = HMM_NIC(pdev);

    qemu_bh_delete(s->bh);
    s->bh = NULL;
    hmm_nic_drop_all(s);
    timer_free(s->rnr_timer);
    s->rnr_timer = NULL;
    hmm_nic_link_unrealize(s);
    hmm_dmatrace_stop(&s->core.trace);
    g_free(s->bounce);
    s->bounce = NULL;
    g_free(s->qps);
    s->qps = NULL;
    g_free(s->cqs);
    s->cqs = NULL;
    hmm_mmu_unrealize(&s->mmu);
    hmm_core_unrealize(&s->core);
}

static void hmm_nic_instance_init(Object *obj)
{
    HmmNicState *s = HMM_NIC(obj);

    QTAILQ_INIT(&s->runnable);
    QTAILQ_INIT(&s->rnr);
    PCI_DEVICE(obj)->cap_present |= QEMU_PCI_CAP_EXPRESS;

    hmm_core_init(&s->core, PCI_DEVICE(obj), &hmm_nic_core_info);
    hmm_mmu_init(&s->mmu, &s->core, &hmm_nic_mmu_config);
    hmm_regs_init(&s->regs, &hmm_nic_regs_info, &s->core, &s->mmu, &s->status);
    hmm_ring_init(&s->eq, "eq", sizeof(struct hmm_nic_eqe),
                  &hmm_nic_eq_limits);

    object_property_add_uint64_ptr(obj, "wrs-completed",
                                   &s->cnt_wrs_completed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "wrs-failed",
                                   &s->cnt_wrs_failed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "wrs-flushed",
                                   &s->cnt_wrs_flushed, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "events",
                                   &s->cnt_events, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "events-dropped",
                                   &s->cnt_events_dropped,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "rnr-waits",
                                   &s->cnt_rnr_waits, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "link-frames-sent",
                                   &s->cnt_link_frames_sent,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "link-frames-received",
                                   &s->cnt_link_frames_received,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "link-bytes-sent",
                                   &s->cnt_link_bytes_sent,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "link-bytes-received",
                                   &s->cnt_link_bytes_received,
                                   OBJ_PROP_FLAG_READ);
}

/* Queue state lives in guest memory and in-flight DMA; not migrated. */
static const VMStateDescription vmstate_hmm_nic = {
    .name = TYPE_HMM_NIC,
    .unmigratable = 1,
};

static const Property hmm_nic_props[] = {
    DEFINE_PROP_CHR("dmatrace", HmmNicState, core.trace.chr),
    DEFINE_PROP_CHR("link", HmmNicState, link),
    DEFINE_PROP_UINT16("lid", HmmNicState, lid, 1),
    DEFINE_PROP_UINT32("dmatrace-flush-ms", HmmNicState, core.trace.flush_ms,
                       10),
    DEFINE_PROP_UINT32("dmatrace-queue", HmmNicState, core.trace.queue_max,
                       HMM_DMATRACE_QUEUE),
};

static void hmm_nic_class_init(ObjectClass *oc, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(oc);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(oc);

    k->realize = hmm_nic_realize;
    k->exit = hmm_nic_exit;
    k->vendor_id = HMM_NIC_PCI_VENDOR_ID;
    k->device_id = HMM_NIC_PCI_DEVICE_ID;
    k->revision = HMM_NIC_PCI_REVISION;
    k->class_id = PCI_CLASS_NETWORK_OTHER;
    dc->desc = "hmmlab emulated RDMA NIC with on-demand paging";
    dc->vmsd = &vmstate_hmm_nic;
    device_class_set_legacy_reset(dc, hmm_nic_device_reset);
    device_class_set_props(dc, hmm_nic_props);
    set_bit(DEVICE_CATEGORY_NETWORK, dc->categories);
}

static const TypeInfo hmm_nic_info = {
    .name = TYPE_HMM_NIC,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(HmmNicState),
    .instance_init = hmm_nic_instance_init,
    .class_init = hmm_nic_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_PCIE_DEVICE },
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void hmm_nic_register_types(void)
{
    type_register_static(&hmm_nic_info);
}

type_init(hmm_nic_register_types)

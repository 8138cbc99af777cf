/*
 * hmm-common: the registers every hmmlab device has at the same offsets
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "regs.h"
#include "trace.h"

void hmm_regs_init(HmmRegs *r, const HmmRegsInfo *info, HmmCore *core,
                   HmmMmu *mmu, const uint32_t *status)
{
    r->info = info;
    r->core = core;
    r->mmu = mmu;
    r->status = status;
    hmm_regs_reset(r);
}

void hmm_regs_reset(HmmRegs *r)
{
    r->vec_main = r->info->vec_main_default;
    r->vec_fault = r->info->vec_fault_default;
    r->scratch = 0;
}

bool hmm_regs_read(const HmmRegs *r, hwaddr addr, uint32_t *val)
{
    const HmmRegsInfo *info = r->info;
    const HmmMmu *mmu = r->mmu;
    const HmmRing *fq = &mmu->faults.ring;

    switch (addr) {
    case HMM_REG_ID:
        *val = info->id;
        break;
    case HMM_REG_VERSION:
        *val = info->version;
        break;
    case HMM_REG_CAPS:
        *val = info->caps;
        break;
    case HMM_REG_RESET:
    case HMM_REG_FAULT_REPLAY:
    case HMM_REG_FAULT_CANCEL:
        *val = 0;                               /* write-only */
        break;
    case HMM_REG_STATUS:
        *val = *r->status;
        break;
    case HMM_REG_ERROR:
        *val = r->core->error;
        break;
    case HMM_REG_ERROR_ADDR_LO:
        *val = extract64(r->core->error_addr, 0, 32);
        break;
    case HMM_REG_ERROR_ADDR_HI:
        *val = extract64(r->core->error_addr, 32, 32);
        break;
    case HMM_REG_INTR_STATUS:
        *val = r->core->intr_status;
        break;
    case HMM_REG_INTR_MASK:
        *val = r->core->intr_mask;
        break;
    case HMM_REG_VEC_MAIN:
        *val = r->vec_main;
        break;
    case HMM_REG_VEC_ERR:
        *val = r->core->vec_err;
        break;
    case HMM_REG_MAX_XFER:
        *val = info->max_xfer;
        break;
    case HMM_REG_NUM_VECTORS:
        *val = info->num_vectors;
        break;
    case HMM_REG_SCRATCH:
        *val = r->scratch;
        break;
    case HMM_REG_CTX_BASE_LO:
        *val = extract64(mmu->ctx_base, 0, 32);
        break;
    case HMM_REG_CTX_BASE_HI:
        *val = extract64(mmu->ctx_base, 32, 32);
        break;
    case HMM_REG_CTX_COUNT:
        *val = mmu->ctx_count;
        break;
    case HMM_REG_MMU_CTRL:
        *val = mmu->enabled ? info->enable : 0;
        break;
    case HMM_REG_TLB_ENTRIES:
        *val = info->tlb_entries;
        break;
    case HMM_REG_FAULTQ_BASE_LO:
        *val = extract64(fq->base, 0, 32);
        break;
    case HMM_REG_FAULTQ_BASE_HI:
        *val = extract64(fq->base, 32, 32);
        break;
    case HMM_REG_FAULTQ_SIZE:
        *val = fq->size;
        break;
    case HMM_REG_FAULTQ_HEAD:
        *val = fq->head;
        break;
    case HMM_REG_FAULTQ_TAIL:
        *val = fq->tail;
        break;
    case HMM_REG_FAULTQ_CTRL:
        *val = fq->enabled ? info->enable : 0;
        break;
    case HMM_REG_VEC_FAULT:
        *val = r->vec_fault;
        break;
    case HMM_REG_STALLED:
        *val = mmu->faults.nstalled;
        break;
    default:
        return false;
    }
    return true;
}

/* Configuration written while its unit runs: ignored, reported. */
static void hmm_regs_busy(HmmRegs *r, hwaddr addr, uint32_t val,
                          const char *what)
{
    if (!r->info->err_busy) {
        hmm_reg_error(r->core, addr, val, 4, what);
        return;
    }
    trace_hmm_reg_error(what, addr, val, 4);
    hmm_guest_error(r->core, r->info->err_busy, addr, what);
}

static HmmRegWrite hmm_regs_write_mmu(HmmRegs *r, hwaddr addr, uint32_t val)
{
    HmmMmu *mmu = r->mmu;
    HmmRing *fq = &mmu->faults.ring;

    switch (addr) {
    case HMM_REG_CTX_BASE_LO:
    case HMM_REG_CTX_BASE_HI:
    case HMM_REG_CTX_COUNT:
        if (mmu->enabled) {
            hmm_regs_busy(r, addr, val,
                          "context table reconfigured while MMU enabled");
        } else if (addr == HMM_REG_CTX_BASE_LO) {
            mmu->ctx_base = deposit64(mmu->ctx_base, 0, 32, val);
        } else if (addr == HMM_REG_CTX_BASE_HI) {
            mmu->ctx_base = deposit64(mmu->ctx_base, 32, 32, val);
        } else {
            mmu->ctx_count = val;
        }
        return HMM_REG_DONE;
    case HMM_REG_MMU_CTRL:
        return hmm_mmu_set_enabled(mmu, val & r->info->enable) ==
               HMM_WRITE_BAD_CONFIG ? HMM_REG_MMU_BAD_CONFIG : HMM_REG_DONE;
    case HMM_REG_FAULTQ_BASE_LO:
    case HMM_REG_FAULTQ_BASE_HI:
    case HMM_REG_FAULTQ_SIZE:
        if (hmm_ring_write_config(fq, addr - HMM_REG_FAULTQ_BASE_LO, val) ==
            HMM_WRITE_BUSY) {
            hmm_regs_busy(r, addr, val,
                          "fault queue reconfigured while enabled");
        }
        return HMM_REG_DONE;
    case HMM_REG_FAULTQ_CTRL:
        switch (hmm_ring_set_enabled(fq, val & r->info->enable)) {
        case HMM_WRITE_OK:
            return fq->enabled ? HMM_REG_DONE : HMM_REG_FAULTQ_DISABLED;
        case HMM_WRITE_BAD_CONFIG:
            return HMM_REG_FAULTQ_BAD_CONFIG;
        default:
            return HMM_REG_DONE;
        }
    case HMM_REG_FAULTQ_HEAD:
        switch (hmm_ring_write_head(fq, val)) {
        case HMM_WRITE_DISABLED:
            hmm_reg_error(r->core, addr, val, 4,
                          "FAULTQ_HEAD write while fault queue disabled");
            return HMM_REG_DONE;
        case HMM_WRITE_BAD_INDEX:
            return HMM_REG_FAULTQ_BAD_HEAD;
        default:
            return HMM_REG_FAULTQ_CONSUMED;
        }
    case HMM_REG_FAULT_REPLAY:
        return HMM_REG_DO_REPLAY;
    case HMM_REG_FAULT_CANCEL:
        return HMM_REG_DO_CANCEL;
    default:
        return HMM_REG_NOT_SHARED;
    }
}

HmmRegWrite hmm_regs_write(HmmRegs *r, hwaddr addr, uint32_t val)
{
    HmmCore *core = r->core;

    switch (addr) {
    case HMM_REG_ID:
    case HMM_REG_VERSION:
    case HMM_REG_CAPS:
    case HMM_REG_STATUS:
    case HMM_REG_ERROR:
    case HMM_REG_ERROR_ADDR_LO:
    case HMM_REG_ERROR_ADDR_HI:
    case HMM_REG_MAX_XFER:
    case HMM_REG_NUM_VECTORS:
    case HMM_REG_TLB_ENTRIES:
    case HMM_REG_FAULTQ_TAIL:
    case HMM_REG_STALLED:
        hmm_reg_error(core, addr, val, 4, "write to read-only register");
        return HMM_REG_DONE;
    case HMM_REG_RESET:
        if (val != r->info->reset_magic) {
            hmm_reg_error(core, addr, val, 4, "bad RESET magic");
            return HMM_REG_DONE;
        }
        return HMM_REG_DO_RESET;
    case HMM_REG_INTR_STATUS:
        hmm_irq_ack(core, val);                 /* RW1C */
        return HMM_REG_DONE;
    case HMM_REG_INTR_MASK:
        hmm_irq_set_mask(core, val & r->info->intr_all);
        return HMM_REG_DONE;
    case HMM_REG_VEC_MAIN:
        hmm_irq_write_vector(core, addr, &r->vec_main, val);
        return HMM_REG_DONE;
    case HMM_REG_VEC_ERR:
        hmm_irq_write_vector(core, addr, &core->vec_err, val);
        return HMM_REG_DONE;
    case HMM_REG_VEC_FAULT:
        hmm_irq_write_vector(core, addr, &r->vec_fault, val);
        return HMM_REG_DONE;
    case HMM_REG_SCRATCH:
        r->scratch = val;
        return HMM_REG_DONE;
    default:
        return hmm_regs_write_mmu(r, addr, val);
    }
}

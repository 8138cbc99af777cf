/*
 * hmm-common: the registers every hmmlab device has at the same offsets
 *
 * 0x000-0x03c (identity, reset, errors, interrupts) and 0x080-0x0c4 (the
 * device MMU and its fault queue). The library decodes them; what a write
 * means beyond this shared state (a reset, a replay, which error a bad
 * value is) stays the device's, told by the HmmRegWrite it gets back. The
 * device ABI headers name the same offsets (HMM_GPU_REG_*, HMM_NIC_REG_*);
 * each device checks them against these at build time.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_REGS_H
#define HW_MISC_HMM_COMMON_REGS_H

#include "core.h"
#include "mmu.h"

enum {
    HMM_REG_ID              = 0x000,
    HMM_REG_VERSION         = 0x004,
    HMM_REG_CAPS            = 0x008,
    HMM_REG_RESET           = 0x00c,
    HMM_REG_STATUS          = 0x010,
    HMM_REG_ERROR           = 0x014,
    HMM_REG_ERROR_ADDR_LO   = 0x018,
    HMM_REG_ERROR_ADDR_HI   = 0x01c,
    HMM_REG_INTR_STATUS     = 0x020,
    HMM_REG_INTR_MASK       = 0x024,
    HMM_REG_VEC_MAIN        = 0x028,    /* hmm-gpu VEC_CPL, hmm-nic VEC_EQ */
    HMM_REG_VEC_ERR         = 0x02c,
    HMM_REG_MAX_XFER        = 0x030,    /* hmm-nic MAX_MSG */
    HMM_REG_NUM_VECTORS     = 0x034,
    HMM_REG_SCRATCH         = 0x038,
    HMM_REG_CTX_BASE_LO     = 0x080,
    HMM_REG_CTX_BASE_HI     = 0x084,
    HMM_REG_CTX_COUNT       = 0x088,
    HMM_REG_MMU_CTRL        = 0x08c,
    HMM_REG_TLB_ENTRIES     = 0x090,
    HMM_REG_FAULTQ_BASE_LO  = 0x0a0,
    HMM_REG_FAULTQ_BASE_HI  = 0x0a4,
    HMM_REG_FAULTQ_SIZE     = 0x0a8,
    HMM_REG_FAULTQ_HEAD     = 0x0ac,
    HMM_REG_FAULTQ_TAIL     = 0x0b0,
    HMM_REG_FAULTQ_CTRL     = 0x0b4,
    HMM_REG_FAULT_REPLAY    = 0x0b8,
    HMM_REG_FAULT_CANCEL    = 0x0bc,
    HMM_REG_VEC_FAULT       = 0x0c0,
    HMM_REG_STALLED         = 0x0c4,
};

/* What the device says about itself; constant. */
typedef struct HmmRegsInfo {
    uint32_t id;
    uint32_t version;               /* major << 16 | minor */
    uint32_t caps;
    uint32_t max_xfer;
    uint32_t num_vectors;
    uint32_t tlb_entries;
    uint32_t reset_magic;
    uint32_t intr_all;              /* the INTR_MASK bits that exist */
    uint32_t enable;                /* MMU_CTRL's and FAULTQ_CTRL's bit */
    uint32_t vec_main_default;
    uint32_t vec_fault_default;
    /*
     * A configuration register written while its unit is enabled: ignored
     * and reported as this error code, or as a bad register access if 0.
     */
    uint32_t err_busy;
} HmmRegsInfo;

/* The shared registers' state that lives nowhere else. */
typedef struct HmmRegs {
    const HmmRegsInfo *info;
    HmmCore *core;
    HmmMmu *mmu;
    const uint32_t *status;         /* the device's STATUS */
    uint32_t vec_main;
    uint32_t vec_fault;
    uint32_t scratch;
} HmmRegs;

/* What a write to a shared register asks of the device. */
typedef enum HmmRegWrite {
    HMM_REG_NOT_SHARED,             /* not a shared register: decode it */
    HMM_REG_DONE,                   /* taken (or reported) by the library */
    HMM_REG_DO_RESET,               /* RESET with the right magic */
    HMM_REG_MMU_BAD_CONFIG,         /* MMU enabled with a bad table: off */
    HMM_REG_FAULTQ_BAD_CONFIG,      /* fault queue enabled badly: off */
    HMM_REG_FAULTQ_DISABLED,        /* fault queue turned off */
    HMM_REG_FAULTQ_CONSUMED,        /* FAULTQ_HEAD moved: held records fit */
    HMM_REG_FAULTQ_BAD_HEAD,        /* FAULTQ_HEAD outside the ring */
    HMM_REG_DO_REPLAY,              /* FAULT_REPLAY */
    HMM_REG_DO_CANCEL,              /* FAULT_CANCEL with the written token */
} HmmRegWrite;

void hmm_regs_init(HmmRegs *r, const HmmRegsInfo *info, HmmCore *core,
                   HmmMmu *mmu, const uint32_t *status);
/* vectors and scratch to their reset values */
void hmm_regs_reset(HmmRegs *r);
/* a 4-byte aligned read: true and *val if @addr is a shared register */
bool hmm_regs_read(const HmmRegs *r, hwaddr addr, uint32_t *val);
/* a 4-byte aligned write */
HmmRegWrite hmm_regs_write(HmmRegs *r, hwaddr addr, uint32_t val);

#endif

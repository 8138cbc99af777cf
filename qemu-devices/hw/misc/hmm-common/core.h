/*
 * hmm-common: what every hmmlab PCI device has
 *
 * An error register pair (ERROR / ERROR_ADDR) and an interrupt cause
 * register pair (INTR_STATUS, RW1C / INTR_MASK) signalled by MSI-X, with
 * INTx as the fallback; the DMA trace stream; DMA fault injection; the QOM
 * counters of all of that. The device embeds an HmmCore and describes
 * itself with an HmmCoreInfo: its name, error codes and cause bits stay its
 * own.
 *
 * Every error a device reports comes from guest input, so each one is
 * logged as a guest error (-d guest_errors), traced (hmm_error) and counted
 * ("guest-errors"), then signalled: ERROR/ERROR_ADDR set, the error cause
 * raised on the error vector.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_CORE_H
#define HW_MISC_HMM_COMMON_CORE_H

#include "exec/hwaddr.h"
#include "hw/pci/pci_device.h"
#include "dmatrace.h"

typedef struct HmmCoreInfo {
    const char *name;               /* prefix of guest-error messages */
    const char *(*err_name)(uint32_t err);
    const char *(*kind_name)(uint8_t kind);     /* trace record kinds */
    uint32_t nvectors;              /* MSI-X vectors, all in use */
    uint32_t intr_error;            /* the INTR_STATUS cause of errors */
    uint32_t vec_err_default;
    uint32_t err_bad_register;      /* the device's codes for ... */
    uint32_t err_bad_vector;        /* ... the errors the library finds */
} HmmCoreInfo;

typedef struct HmmCore {
    PCIDevice *pdev;
    const HmmCoreInfo *info;

    /* registers */
    uint32_t error;
    uint64_t error_addr;
    uint32_t intr_status;
    uint32_t intr_mask;
    uint32_t vec_err;

    HmmDmaTrace trace;
    uint32_t inject_dma_fault;      /* see hmm_dma_data_addr() */

    /* read-only QOM counters, cumulative over resets */
    uint64_t cnt_dma_read_bytes;
    uint64_t cnt_dma_write_bytes;
    uint64_t cnt_dma_errors;
    uint64_t cnt_irqs_raised;
    uint64_t cnt_guest_errors;
} HmmCore;

/*
 * What the library made of a guest write it checks for the device; the
 * device reports the failures with its own error codes.
 */
typedef enum HmmWrite {
    HMM_WRITE_OK,
    HMM_WRITE_UNCHANGED,    /* the enable bit already had that value */
    HMM_WRITE_BUSY,         /* configuration written while enabled */
    HMM_WRITE_DISABLED,     /* doorbell or head written while disabled */
    HMM_WRITE_BAD_CONFIG,   /* enabled with a bad base/size: stays off */
    HMM_WRITE_BAD_INDEX,    /* head/tail outside the ring or the data */
} HmmWrite;

/* instance_init: also adds the QOM counters and "inject-dma-fault" */
void hmm_core_init(HmmCore *c, PCIDevice *pdev, const HmmCoreInfo *info);
/* realize: MSI-X in its own BAR, every vector in use */
bool hmm_core_realize(HmmCore *c, uint8_t msix_bar, Error **errp);
void hmm_core_unrealize(HmmCore *c);
/* registers to their reset values (counters stay) */
void hmm_core_reset(HmmCore *c);

/* interrupts */
void hmm_irq_raise(HmmCore *c, uint32_t cause, uint32_t vector, bool notify);
void hmm_irq_update(HmmCore *c);
void hmm_irq_ack(HmmCore *c, uint32_t causes);
void hmm_irq_set_mask(HmmCore *c, uint32_t mask);
void hmm_irq_write_vector(HmmCore *c, hwaddr addr, uint32_t *vec,
                          uint32_t val);

/* errors */
void hmm_error_signal(HmmCore *c, uint32_t err, uint64_t addr,
                      const char *what);
void hmm_guest_error(HmmCore *c, uint32_t err, uint64_t addr,
                     const char *what);
void hmm_reg_error(HmmCore *c, hwaddr addr, uint64_t val, unsigned size,
                   const char *what);

#endif

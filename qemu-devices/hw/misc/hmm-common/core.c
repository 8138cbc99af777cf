/*
 * hmm-common: errors, interrupts and counters of an hmmlab PCI device
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qapi/error.h"
#include "hw/pci/msix.h"
#include "core.h"
#include "trace.h"

void hmm_core_init(HmmCore *c, PCIDevice *pdev, const HmmCoreInfo *info)
{
    Object *obj = OBJECT(pdev);

    c->pdev = pdev;
    c->info = info;

    /* host-side statistics for the harness (qom-get), not guest visible */
    object_property_add_uint64_ptr(obj, "dma-read-bytes",
                                   &c->cnt_dma_read_bytes, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "dma-write-bytes",
                                   &c->cnt_dma_write_bytes,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "dma-errors",
                                   &c->cnt_dma_errors, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "irqs-raised",
                                   &c->cnt_irqs_raised, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "guest-errors",
                                   &c->cnt_guest_errors, OBJ_PROP_FLAG_READ);
    /* trace records lost because the trace writer fell behind */
    object_property_add_uint64_ptr(obj, "dmatrace-dropped",
                                   &c->trace.dropped, OBJ_PROP_FLAG_READ);
    /* qom-set N: the next N data DMAs go astray (hmm_dma_data_addr) */
    object_property_add_uint32_ptr(obj, "inject-dma-fault",
                                   &c->inject_dma_fault,
                                   OBJ_PROP_FLAG_READWRITE);
}

bool hmm_core_realize(HmmCore *c, uint8_t msix_bar, Error **errp)
{
    uint32_t i;

    if (msix_init_exclusive_bar(c->pdev, c->info->nvectors, msix_bar, errp)) {
        return false;
    }
    /* without msix_vector_use, msix_notify silently drops the message */
    for (i = 0; i < c->info->nvectors; i++) {
        msix_vector_use(c->pdev, i);
    }
    return true;
}

void hmm_core_unrealize(HmmCore *c)
{
    msix_unuse_all_vectors(c->pdev);
    msix_uninit_exclusive_bar(c->pdev);
}

void hmm_core_reset(HmmCore *c)
{
    c->error = 0;
    c->error_addr = 0;
    c->intr_status = 0;
    c->intr_mask = 0;
    c->vec_err = c->info->vec_err_default;
    hmm_irq_update(c);
}

/* ---- interrupts ------------------------------------------------------- */

/* INTx fallback for guests that do not enable MSI-X: level = pending causes */
void hmm_irq_update(HmmCore *c)
{
    if (msix_enabled(c->pdev)) {
        pci_set_irq(c->pdev, 0);
        return;
    }
    pci_set_irq(c->pdev, !!(c->intr_status & c->intr_mask));
}

/*
 * Latch @cause in INTR_STATUS (always, so a polling driver sees it) and
 * signal it on @vector if the cause is enabled in INTR_MASK and @notify.
 * @vector was bounds-checked when the guest wrote it; check again because
 * msix_notify asserts on an out-of-range vector.
 */
void hmm_irq_raise(HmmCore *c, uint32_t cause, uint32_t vector, bool notify)
{
    c->intr_status |= cause;
    if ((c->intr_mask & cause) && notify) {
        if (!msix_enabled(c->pdev)) {
            trace_hmm_irq(UINT32_MAX, cause);
            c->cnt_irqs_raised++;
        } else if (vector < c->info->nvectors) {
            trace_hmm_irq(vector, cause);
            c->cnt_irqs_raised++;
            msix_notify(c->pdev, vector);
        }
    }
    hmm_irq_update(c);
}

/* INTR_STATUS is write-1-to-clear */
void hmm_irq_ack(HmmCore *c, uint32_t causes)
{
    c->intr_status &= ~causes;
    hmm_irq_update(c);
}

void hmm_irq_set_mask(HmmCore *c, uint32_t mask)
{
    c->intr_mask = mask;
    hmm_irq_update(c);
}

/*
 * A guest write of an MSI-X vector register at @addr. An out-of-range value
 * is rejected and signalled on the old (valid) error vector; msix_notify
 * never sees it.
 */
void hmm_irq_write_vector(HmmCore *c, hwaddr addr, uint32_t *vec,
                          uint32_t val)
{
    if (val >= c->info->nvectors) {
        trace_hmm_reg_error("bad MSI-X vector", addr, val, 4);
        hmm_guest_error(c, c->info->err_bad_vector, val,
                        "MSI-X vector out of range");
        return;
    }
    *vec = val;
}

/* ---- errors ----------------------------------------------------------- */

/* What the guest sees of an error: ERROR, ERROR_ADDR and the interrupt. */
void hmm_error_signal(HmmCore *c, uint32_t err, uint64_t addr,
                      const char *what)
{
    c->error = err;
    c->error_addr = addr;
    trace_hmm_error(c->info->err_name(err), addr, what);
    hmm_irq_raise(c, c->info->intr_error, c->vec_err, true);
}

/* An error caused by the guest: logged and counted as one, then signalled. */
void hmm_guest_error(HmmCore *c, uint32_t err, uint64_t addr,
                     const char *what)
{
    c->cnt_guest_errors++;
    qemu_log_mask(LOG_GUEST_ERROR, "%s: %s (error %u %s, addr 0x%" PRIx64
                  ")\n", c->info->name, what, err, c->info->err_name(err),
                  addr);
    hmm_error_signal(c, err, addr, what);
}

/* A bad register access: ignored, reported as the device's register error */
void hmm_reg_error(HmmCore *c, hwaddr addr, uint64_t val, unsigned size,
                   const char *what)
{
    trace_hmm_reg_error(what, addr, val, size);
    hmm_guest_error(c, c->info->err_bad_register, addr, what);
}

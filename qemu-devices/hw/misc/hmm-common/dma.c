/*
 * hmm-common: DMA with accounting, and DMA fault injection
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "hw/pci/pci_device.h"
#include "abi.h"
#include "dma.h"
#include "trace.h"

/*
 * Fault injection: a data DMA it applies to goes to its bus address with
 * this bit flipped, where neither guest RAM nor the IOVAs Linux allocates
 * (top-down below 4 GiB first) are. Behind a vIOMMU that is a DMA
 * remapping fault the guest sees; without one, an access to nothing.
 */
#define HMM_DMA_INJECT_ADDR_BIT (1ull << 47)

void hmm_dma_note(HmmCore *c, const HmmDmaRec *r)
{
    if (r->dir != HMM_GPU_DIR_NONE) {
        trace_hmm_dma(c->info->kind_name(r->kind),
                      r->dir ? "write" : "read", r->addr, r->len, r->cmd_id,
                      r->res);
        if (r->res != MEMTX_OK) {
            c->cnt_dma_errors++;
        } else if (r->dir == HMM_GPU_DIR_READ) {
            c->cnt_dma_read_bytes += r->len;
        } else {
            c->cnt_dma_write_bytes += r->len;
        }
    }
    hmm_dmatrace_record(&c->trace, r);
}

MemTxResult hmm_dma_read(HmmCore *c, HmmDmaRec *r, void *buf)
{
    r->dir = HMM_GPU_DIR_READ;
    r->res = pci_dma_read(c->pdev, r->addr, buf, r->len);
    hmm_dma_note(c, r);
    return r->res;
}

MemTxResult hmm_dma_write(HmmCore *c, HmmDmaRec *r, const void *buf)
{
    r->dir = HMM_GPU_DIR_WRITE;
    r->res = pci_dma_write(c->pdev, r->addr, buf, r->len);
    hmm_dma_note(c, r);
    return r->res;
}

void hmm_dma_event(HmmCore *c, uint8_t kind, uint64_t cmd_id, uint32_t ctx,
                   uint64_t va, uint64_t aux)
{
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_MMU,
        .kind = kind,
        .dir = HMM_GPU_DIR_NONE,
        .cmd_id = cmd_id,
        .ctx = ctx,
        .va = va,
        .aux = aux,
        .res = MEMTX_OK,
    };

    hmm_dma_note(c, &r);
}

uint64_t hmm_dma_data_addr(HmmCore *c, uint64_t addr)
{
    if (!c->inject_dma_fault) {
        return addr;
    }
    c->inject_dma_fault--;
    trace_hmm_inject_dma_fault(addr, addr ^ HMM_DMA_INJECT_ADDR_BIT);
    return addr ^ HMM_DMA_INJECT_ADDR_BIT;
}

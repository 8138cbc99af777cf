/*
 * hmm-common: DMA with accounting
 *
 * Every DMA a device issues goes through here (or is reported here with
 * hmm_dma_note() when the device needs the data before the record): it is
 * traced (hmm_dma), counted in "dma-read-bytes" / "dma-write-bytes" /
 * "dma-errors" and written to the DMA trace stream with its MemTxResult.
 * The caller fills in what the record says about the access (engine, kind,
 * addr, len, cmd_id, ctx, va, aux, level); the helpers set dir and res.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_DMA_H
#define HW_MISC_HMM_COMMON_DMA_H

#include "core.h"

MemTxResult hmm_dma_read(HmmCore *c, HmmDmaRec *r, void *buf);
MemTxResult hmm_dma_write(HmmCore *c, HmmDmaRec *r, const void *buf);
/* Account and record a DMA the caller made itself (r->dir, r->res set). */
void hmm_dma_note(HmmCore *c, const HmmDmaRec *r);
/* An event record (no DMA) of engine MMU, e.g. a replay. */
void hmm_dma_event(HmmCore *c, uint8_t kind, uint64_t cmd_id, uint32_t ctx,
                   uint64_t va, uint64_t aux);
/*
 * The bus address a data DMA really uses: @addr, unless fault injection
 * ("inject-dma-fault") sends this one astray.
 */
uint64_t hmm_dma_data_addr(HmmCore *c, uint64_t addr);

#endif

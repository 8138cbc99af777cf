/*
 * hmm-common: device MMU: the TLB
 *
 * A direct-mapped cache of leaf translations (4 KiB and 2 MiB pages),
 * tagged with their context. Faults are never cached.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "abi.h"
#include "mmu.h"

static const unsigned hmm_tlb_shifts[] = {
    HMM_GPU_PT_SHIFT(0), HMM_GPU_PT_SHIFT(1),
};

void hmm_tlb_init(HmmTlb *t, uint32_t size)
{
    t->entries = g_new0(HmmTlbEntry, size);
    t->size = size;
}

void hmm_tlb_cleanup(HmmTlb *t)
{
    g_free(t->entries);
    t->entries = NULL;
    t->size = 0;
}

static HmmTlbEntry *hmm_tlb_slot(HmmTlb *t, uint32_t ctx, uint64_t va,
                                 unsigned shift)
{
    uint64_t h = (va >> shift) * 0x9e3779b97f4a7c15ull ^ ctx ^ shift;

    return &t->entries[(h ^ (h >> 29)) % t->size];
}

static bool hmm_tlb_match(const HmmTlbEntry *e, uint32_t ctx, uint64_t va,
                          unsigned shift)
{
    return e->valid && e->ctx == ctx && e->shift == shift &&
           e->va == (va & ~((1ull << shift) - 1));
}

HmmTlbEntry *hmm_tlb_lookup(HmmTlb *t, uint32_t ctx, uint64_t va)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(hmm_tlb_shifts); i++) {
        HmmTlbEntry *e = hmm_tlb_slot(t, ctx, va, hmm_tlb_shifts[i]);

        if (hmm_tlb_match(e, ctx, va, hmm_tlb_shifts[i])) {
            return e;
        }
    }
    return NULL;
}

/* Cache @leaf, the translation of @va, replacing what maps that address. */
void hmm_tlb_insert(HmmTlb *t, uint64_t va, const HmmTlbEntry *leaf)
{
    unsigned other = leaf->shift == hmm_tlb_shifts[0] ? hmm_tlb_shifts[1] :
                                                        hmm_tlb_shifts[0];
    HmmTlbEntry *e = hmm_tlb_slot(t, leaf->ctx, va, other);

    /* the page size changed: drop the other-sized entry for this address */
    if (hmm_tlb_match(e, leaf->ctx, va, other)) {
        e->valid = false;
    }
    e = hmm_tlb_slot(t, leaf->ctx, va, leaf->shift);
    *e = *leaf;
    e->va = va & ~((1ull << leaf->shift) - 1);
}

/* Drop entries of @ctx overlapping [va, va + len); len ~0: all of @ctx. */
unsigned hmm_tlb_invalidate(HmmTlb *t, uint32_t ctx, uint64_t va,
                            uint64_t len)
{
    uint64_t last = (len == UINT64_MAX || va + len - 1 < va) ?
                    UINT64_MAX : va + len - 1;
    unsigned n = 0;
    uint32_t i;

    for (i = 0; i < t->size; i++) {
        HmmTlbEntry *e = &t->entries[i];
        uint64_t e_last = e->va + (1ull << e->shift) - 1;

        if (e->valid && e->ctx == ctx &&
            (len == UINT64_MAX || (e->va <= last && va <= e_last))) {
            e->valid = false;
            n++;
        }
    }
    return n;
}

void hmm_tlb_flush(HmmTlb *t)
{
    if (t->entries) {
        memset(t->entries, 0, t->size * sizeof(*t->entries));
    }
}

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

/*
 * A range of at most this many 4 KiB pages is invalidated by probing the
 * slots its pages and 2 MiB pages can occupy (the cache is direct-mapped:
 * a translation lives in one slot only); a larger one by a full scan. A
 * CPU fault's invalidation is one page: a scan per fault cost more than
 * the fault's copy.
 */
#define HMM_TLB_PROBE_PAGES 64

static unsigned hmm_tlb_probe(HmmTlb *t, uint32_t ctx, uint64_t va,
                              uint64_t last)
{
    unsigned n = 0;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(hmm_tlb_shifts); i++) {
        unsigned shift = hmm_tlb_shifts[i];
        uint64_t a;

        for (a = va >> shift; a <= last >> shift; a++) {
            HmmTlbEntry *e = hmm_tlb_slot(t, ctx, a << shift, shift);

            if (hmm_tlb_match(e, ctx, a << shift, shift)) {
                e->valid = false;
                n++;
            }
        }
    }
    return n;
}

/* Drop entries of @ctx overlapping [va, va + len); len ~0: all of @ctx. */
unsigned hmm_tlb_invalidate(HmmTlb *t, uint32_t ctx, uint64_t va,
                            uint64_t len)
{
    uint64_t last = (len == UINT64_MAX || va + len - 1 < va) ?
                    UINT64_MAX : va + len - 1;
    unsigned n = 0;
    uint32_t i;

    if (len && last != UINT64_MAX &&
        (last >> HMM_GPU_PT_SHIFT(0)) - (va >> HMM_GPU_PT_SHIFT(0)) <
        HMM_TLB_PROBE_PAGES) {
        return hmm_tlb_probe(t, ctx, va, last);
    }
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

/*
 * hmm-common: rings in guest memory
 *
 * A ring is an array of fixed-size entries at a bus address, indexed by a
 * head (next entry to consume) and a tail (next entry to produce), both
 * modulo its size, a power of two; it is empty when head == tail, so it
 * holds at most size - 1 entries. The guest programs base and size while
 * the ring is disabled; enabling checks them and starts the ring over
 * (head = tail = 0, phase 1). The device reads and writes the entries with
 * DMA. For a ring the device consumes the guest writes the tail (the
 * doorbell); for one it produces the guest writes the head (what it has
 * consumed). Both writes are bounds-checked here.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_RING_H
#define HW_MISC_HMM_COMMON_RING_H

#include "core.h"

/* What the device's ABI allows for a ring's base and size. */
typedef struct HmmRingLimits {
    uint32_t align;                 /* of the base, bytes (power of two) */
    uint32_t min_entries;
    uint32_t max_entries;
} HmmRingLimits;

typedef struct HmmRing {
    const char *name;               /* for traces */
    uint32_t entry_size;
    HmmRingLimits limits;

    uint64_t base;
    uint32_t size;                  /* entries */
    uint32_t head;
    uint32_t tail;
    bool enabled;
    uint16_t phase;                 /* flips each time the tail wraps */
} HmmRing;

void hmm_ring_init(HmmRing *r, const char *name, uint32_t entry_size,
                   const HmmRingLimits *limits);
void hmm_ring_reset(HmmRing *r);

/* guest register writes */
HmmWrite hmm_ring_write_base(HmmRing *r, bool high, uint32_t val);
HmmWrite hmm_ring_write_size(HmmRing *r, uint32_t val);
/* every ring's BASE_LO, BASE_HI, SIZE: @reg is 0, 4 or 8 past BASE_LO */
HmmWrite hmm_ring_write_config(HmmRing *r, unsigned reg, uint32_t val);
HmmWrite hmm_ring_set_enabled(HmmRing *r, bool enable);
HmmWrite hmm_ring_write_tail(HmmRing *r, uint32_t tail);
HmmWrite hmm_ring_write_head(HmmRing *r, uint32_t head);

/* the device's side: valid while the ring is enabled */
static inline bool hmm_ring_empty(const HmmRing *r)
{
    return r->head == r->tail;
}

static inline bool hmm_ring_full(const HmmRing *r)
{
    return ((r->tail + 1) & (r->size - 1)) == r->head;
}

/* entries produced and not yet consumed */
static inline uint32_t hmm_ring_used(const HmmRing *r)
{
    return (r->tail - r->head) & (r->size - 1);
}

static inline uint64_t hmm_ring_entry_addr(const HmmRing *r, uint32_t index)
{
    return r->base + (uint64_t)index * r->entry_size;
}

/* the device consumed the entry at the head */
void hmm_ring_pop(HmmRing *r);
/* the device produced the entry at the tail */
void hmm_ring_push(HmmRing *r);

#endif

/*
 * hmm-common: rings in guest memory
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qemu/host-utils.h"
#include "ring.h"
#include "trace.h"

void hmm_ring_init(HmmRing *r, const char *name, uint32_t entry_size,
                   const HmmRingLimits *limits)
{
    r->name = name;
    r->entry_size = entry_size;
    r->limits = *limits;
    hmm_ring_reset(r);
}

void hmm_ring_reset(HmmRing *r)
{
    r->base = 0;
    r->size = 0;
    r->head = 0;
    r->tail = 0;
    r->enabled = false;
    r->phase = 1;
}

HmmWrite hmm_ring_write_base(HmmRing *r, bool high, uint32_t val)
{
    if (r->enabled) {
        return HMM_WRITE_BUSY;
    }
    r->base = deposit64(r->base, high ? 32 : 0, 32, val);
    return HMM_WRITE_OK;
}

HmmWrite hmm_ring_write_size(HmmRing *r, uint32_t val)
{
    if (r->enabled) {
        return HMM_WRITE_BUSY;
    }
    r->size = val;
    return HMM_WRITE_OK;
}

HmmWrite hmm_ring_write_config(HmmRing *r, unsigned reg, uint32_t val)
{
    return reg == 8 ? hmm_ring_write_size(r, val)
                    : hmm_ring_write_base(r, reg == 4, val);
}

static bool hmm_ring_config_ok(const HmmRing *r)
{
    return !(r->base & (r->limits.align - 1)) &&
           r->size >= r->limits.min_entries &&
           r->size <= r->limits.max_entries && is_power_of_2(r->size);
}

/*
 * Enabling checks base and size (a bad one leaves the ring disabled);
 * enabling or disabling starts the ring over.
 */
HmmWrite hmm_ring_set_enabled(HmmRing *r, bool enable)
{
    if (enable == r->enabled) {
        return HMM_WRITE_UNCHANGED;
    }
    if (enable) {
        if (!hmm_ring_config_ok(r)) {
            return HMM_WRITE_BAD_CONFIG;
        }
        trace_hmm_queue_enable(r->name, r->base, r->size);
    }
    r->head = 0;
    r->tail = 0;
    r->phase = 1;
    r->enabled = enable;
    return HMM_WRITE_OK;
}

/* The doorbell of a ring the device consumes. */
HmmWrite hmm_ring_write_tail(HmmRing *r, uint32_t tail)
{
    if (!r->enabled) {
        return HMM_WRITE_DISABLED;
    }
    if (tail >= r->size) {
        return HMM_WRITE_BAD_INDEX;
    }
    r->tail = tail;
    return HMM_WRITE_OK;
}

/*
 * The guest consumed entries of a ring the device produces: the new head
 * must lie inside the ring and not beyond what was produced.
 */
HmmWrite hmm_ring_write_head(HmmRing *r, uint32_t head)
{
    if (!r->enabled) {
        return HMM_WRITE_DISABLED;
    }
    if (head >= r->size ||
        ((head - r->head) & (r->size - 1)) > hmm_ring_used(r)) {
        return HMM_WRITE_BAD_INDEX;
    }
    r->head = head;
    return HMM_WRITE_OK;
}

void hmm_ring_pop(HmmRing *r)
{
    r->head = (r->head + 1) & (r->size - 1);
}

void hmm_ring_push(HmmRing *r)
{
    r->tail = (r->tail + 1) & (r->size - 1);
    if (r->tail == 0) {
        r->phase ^= 1;
    }
}

/*
 * hmm-common: device MMU: contexts, page-table walk, translation
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "abi.h"
#include "dma.h"
#include "mmu.h"
#include "trace.h"

#define HMM_PAGE_SHIFT          HMM_GPU_PT_SHIFT(0)
#define HMM_HUGE_SHIFT          HMM_GPU_PT_SHIFT(1)
#define HMM_VA_LIMIT            (1ull << HMM_GPU_VA_BITS)
#define HMM_PTE_PERMS           (HMM_GPU_PTE_READ | HMM_GPU_PTE_WRITE | \
                                 HMM_GPU_PTE_ATOMIC)
#define HMM_PTE_RSVD            (~(HMM_GPU_PTE_ADDR_MASK | \
                                   HMM_GPU_PTE_VALID | HMM_PTE_PERMS | \
                                   HMM_GPU_PTE_LEAF | HMM_GPU_PTE_VRAM))

void hmm_mmu_init(HmmMmu *m, HmmCore *core, const HmmMmuConfig *cfg)
{
    Object *obj = OBJECT(core->pdev);

    m->core = core;
    m->cfg = cfg;
    QTAILQ_INIT(&m->faults.stalled);
    hmm_ring_init(&m->faults.ring, "faultq",
                  sizeof(struct hmm_gpu_fault_rec), &cfg->faultq);

    object_property_add_uint64_ptr(obj, "faults-raised",
                                   &m->cnt_faults_raised, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "faults-replayed",
                                   &m->cnt_faults_replayed,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "faults-cancelled",
                                   &m->cnt_faults_cancelled,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "stale-cancels",
                                   &m->cnt_stale_cancels, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "tlb-hits",
                                   &m->cnt_tlb_hits, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "tlb-misses",
                                   &m->cnt_tlb_misses, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "tlb-invalidations",
                                   &m->cnt_tlb_invalidations,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "ptw-reads",
                                   &m->cnt_ptw_reads, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "injected-faults",
                                   &m->cnt_injected_faults,
                                   OBJ_PROP_FLAG_READ);
    /*
     * qom-set N: the next N translations post a fault record although the
     * page is mapped (as a device whose TLB lost an entry would), so the
     * driver services a fault with nothing to do and replays. A large N is
     * a fault livelock: what a driver's job deadline and fatal-signal
     * handling must end.
     */
    object_property_add_uint32_ptr(obj, "inject-spurious-faults",
                                   &m->inject_spurious_faults,
                                   OBJ_PROP_FLAG_READWRITE);
}

void hmm_mmu_realize(HmmMmu *m, uint64_t devmem_size)
{
    m->devmem_size = devmem_size;
    hmm_tlb_init(&m->tlb, m->cfg->tlb_size);
}

void hmm_mmu_unrealize(HmmMmu *m)
{
    hmm_tlb_cleanup(&m->tlb);
}

void hmm_mmu_reset(HmmMmu *m)
{
    hmm_tlb_flush(&m->tlb);
    m->ctx_base = 0;
    m->ctx_count = 0;
    m->enabled = false;
    hmm_fault_reset(m);
}

HmmWrite hmm_mmu_set_enabled(HmmMmu *m, bool enable)
{
    if (enable == m->enabled) {
        return HMM_WRITE_UNCHANGED;
    }
    if (enable && ((m->ctx_base & (m->cfg->ctx_align - 1)) ||
                   m->ctx_count == 0 || m->ctx_count > m->cfg->max_ctx)) {
        return HMM_WRITE_BAD_CONFIG;
    }
    trace_hmm_mmu_enable(enable, m->ctx_base, m->ctx_count);
    /* the context table may differ next time: start from an empty TLB */
    hmm_tlb_flush(&m->tlb);
    m->enabled = enable;
    return HMM_WRITE_OK;
}

void hmm_mmu_job_init(HmmMmuJob *j, uint64_t cmd_id, uint32_t ctx)
{
    memset(j, 0, sizeof(*j));
    j->cmd_id = cmd_id;
    j->ctx = ctx;
}

static HmmXlate hmm_mmu_fail(HmmXlateResult *res, HmmMmuError err,
                             uint64_t addr, const char *what)
{
    res->err = err;
    res->err_addr = addr;
    res->what = what;
    return HMM_XLATE_FAILED;
}

/* Load the job's context descriptor (once per job). */
static HmmXlate hmm_mmu_load_ctx(HmmMmu *m, HmmMmuJob *j,
                                 HmmXlateResult *res)
{
    struct hmm_gpu_ctx_desc d;
    HmmDmaRec r = {
        .engine = HMM_GPU_ENGINE_MMU,
        .kind = HMM_GPU_TRACE_CTX_FETCH,
        .dir = HMM_GPU_DIR_READ,
        .len = sizeof(d),
        .cmd_id = j->cmd_id,
        .ctx = j->ctx,
    };

    if (!m->enabled || j->ctx >= m->ctx_count) {
        trace_hmm_bad_ctx(j->cmd_id, j->ctx, m->enabled, 0);
        return hmm_mmu_fail(res, HMM_MMU_BAD_CTX, j->ctx,
                            "VA job with the MMU disabled or ctx out of "
                            "range");
    }
    r.addr = m->ctx_base + (uint64_t)j->ctx * sizeof(d);
    r.res = pci_dma_read(m->core->pdev, r.addr, &d, sizeof(d));
    d.pt_root = le64_to_cpu(d.pt_root);
    d.flags = le32_to_cpu(d.flags);
    r.aux = r.res == MEMTX_OK ? d.pt_root : 0;
    hmm_dma_note(m->core, &r);
    if (r.res != MEMTX_OK) {
        return hmm_mmu_fail(res, HMM_MMU_PTW, r.addr,
                            "context descriptor read failed");
    }
    if (!(d.flags & HMM_GPU_CTX_VALID) || (d.flags & ~HMM_GPU_CTX_VALID) ||
        (d.pt_root & ~HMM_GPU_PTE_ADDR_MASK)) {
        trace_hmm_bad_ctx(j->cmd_id, j->ctx, d.flags, d.pt_root);
        return hmm_mmu_fail(res, HMM_MMU_BAD_CTX, j->ctx,
                            "context invalid, reserved flags or unaligned "
                            "root");
    }
    j->pt_root = d.pt_root;
    j->ctx_loaded = true;
    return HMM_XLATE_OK;
}

static bool hmm_mmu_perm_ok(uint64_t perms, uint8_t access)
{
    switch (access) {
    case HMM_GPU_ACCESS_READ:
        return perms & HMM_GPU_PTE_READ;
    case HMM_GPU_ACCESS_WRITE:
        return perms & HMM_GPU_PTE_WRITE;
    default:
        return (perms & (HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC)) ==
               (HMM_GPU_PTE_WRITE | HMM_GPU_PTE_ATOMIC);
    }
}

static HmmXlate hmm_mmu_bad_pte(HmmMmuJob *j, uint64_t addr, uint64_t va,
                                int level, uint64_t pte, const char *why,
                                HmmXlateResult *res)
{
    trace_hmm_bad_pte(j->cmd_id, va, level, addr, pte, why);
    return hmm_mmu_fail(res, HMM_MMU_BAD_PTE, addr, why);
}

/*
 * Walk the 4-level table for @va. At most four entry reads, so tables that
 * loop back on themselves just yield a (probably malformed) leaf. A leaf
 * found is cached and returned in @out.
 */
static HmmXlate hmm_mmu_walk(HmmMmu *m, HmmMmuJob *j, uint64_t va,
                             uint8_t access, HmmTlbEntry *out,
                             HmmXlateResult *res)
{
    uint64_t table = j->pt_root;
    int level;

    for (level = HMM_GPU_PT_LEVELS - 1; level >= 0; level--) {
        unsigned idx = (va >> HMM_GPU_PT_SHIFT(level)) &
                       (HMM_GPU_PT_ENTRIES - 1);
        uint64_t pte = 0;
        HmmDmaRec r = {
            .engine = HMM_GPU_ENGINE_MMU,
            .kind = HMM_GPU_TRACE_PTW,
            .dir = HMM_GPU_DIR_READ,
            .addr = table + idx * sizeof(uint64_t),
            .len = sizeof(pte),
            .cmd_id = j->cmd_id,
            .ctx = j->ctx,
            .va = va,
            .level = level,
        };

        r.res = pci_dma_read(m->core->pdev, r.addr, &pte, sizeof(pte));
        pte = le64_to_cpu(pte);
        m->cnt_ptw_reads++;
        r.aux = r.res == MEMTX_OK ? pte : 0;
        hmm_dma_note(m->core, &r);
        trace_hmm_ptw(j->cmd_id, va, level, r.addr, pte);
        if (r.res != MEMTX_OK) {
            trace_hmm_ptw_error(j->cmd_id, va, level, r.addr);
            return hmm_mmu_fail(res, HMM_MMU_PTW, r.addr,
                                "page-table entry read failed");
        }
        if (!(pte & HMM_GPU_PTE_VALID)) {
            return hmm_fault_stall(m, j, va, access,
                                   HMM_GPU_FAULT_NOT_PRESENT, res);
        }
        if (pte & HMM_PTE_RSVD) {
            return hmm_mmu_bad_pte(j, r.addr, va, level, pte,
                                   "page-table entry with reserved bits",
                                   res);
        }
        if ((pte & HMM_GPU_PTE_LEAF) && level > 1) {
            return hmm_mmu_bad_pte(j, r.addr, va, level, pte,
                                   "PTE_LEAF above level 1", res);
        }
        if (level == 0 || (pte & HMM_GPU_PTE_LEAF)) {
            unsigned shift = level ? HMM_HUGE_SHIFT : HMM_PAGE_SHIFT;
            uint64_t pa = pte & HMM_GPU_PTE_ADDR_MASK;
            bool devmem = pte & HMM_GPU_PTE_VRAM;

            if (pa & ((1ull << shift) - 1)) {
                return hmm_mmu_bad_pte(j, r.addr, va, level, pte,
                                       "2 MiB leaf address not aligned",
                                       res);
            }
            /* devmem_size is a multiple of 2 MiB: whole pages or none */
            if (devmem && pa >= m->devmem_size) {
                return hmm_mmu_bad_pte(j, r.addr, va, level, pte,
                                       "PTE_VRAM leaf beyond device memory",
                                       res);
            }
            *out = (HmmTlbEntry) {
                .valid = true,
                .devmem = devmem,
                .shift = shift,
                .ctx = j->ctx,
                .va = va & ~((1ull << shift) - 1),
                .pa = pa,
                .perms = pte & HMM_PTE_PERMS,
            };
            hmm_tlb_insert(&m->tlb, va, out);
            return HMM_XLATE_OK;
        }
        if (pte & HMM_GPU_PTE_VRAM) {
            /* tables live in system memory */
            return hmm_mmu_bad_pte(j, r.addr, va, level, pte,
                                   "PTE_VRAM in a table entry", res);
        }
        table = pte & HMM_GPU_PTE_ADDR_MASK;
    }
    g_assert_not_reached();
}

/*
 * Translate @va of job @j for @access (enum hmm_gpu_access). On success
 * res->pa is the bus address (a device-memory offset if res->devmem) and
 * res->avail the bytes from @va to the end of its page. A TLB hit without
 * the needed permission re-walks: the guest may have upgraded the PTE
 * (faults are never cached, so only downgrades need an invalidation).
 */
HmmXlate hmm_mmu_translate(HmmMmu *m, HmmMmuJob *j, uint64_t va,
                           uint8_t access, HmmXlateResult *res)
{
    HmmTlbEntry *e, walked;
    HmmXlate x;

    if (!m->enabled) {
        return hmm_mmu_fail(res, HMM_MMU_BAD_CTX, j->ctx,
                            "VA job with the MMU disabled");
    }
    if (va >= HMM_VA_LIMIT) {
        return hmm_mmu_fail(res, HMM_MMU_FAULT, va,
                            "virtual address beyond VA_BITS");
    }
    if (!j->ctx_loaded) {
        x = hmm_mmu_load_ctx(m, j, res);
        if (x != HMM_XLATE_OK) {
            return x;
        }
    }
    if (m->inject_spurious_faults) {
        m->inject_spurious_faults--;
        m->cnt_injected_faults++;
        trace_hmm_inject_spurious_fault(j->cmd_id, j->ctx, va, access);
        return hmm_fault_stall(m, j, va, access, HMM_GPU_FAULT_NOT_PRESENT,
                               res);
    }
    e = hmm_tlb_lookup(&m->tlb, j->ctx, va);
    if (e && hmm_mmu_perm_ok(e->perms, access)) {
        m->cnt_tlb_hits++;
    } else {
        m->cnt_tlb_misses++;
        trace_hmm_tlb_miss(j->cmd_id, j->ctx, va);
        x = hmm_mmu_walk(m, j, va, access, &walked, res);
        if (x != HMM_XLATE_OK) {
            return x;
        }
        e = &walked;
        if (!hmm_mmu_perm_ok(e->perms, access)) {
            return hmm_fault_stall(m, j, va, access,
                                   HMM_GPU_FAULT_PERMISSION, res);
        }
    }
    res->pa = e->pa + (va & ((1ull << e->shift) - 1));
    res->avail = (1ull << e->shift) - (va & ((1ull << e->shift) - 1));
    res->devmem = e->devmem;
    return HMM_XLATE_OK;
}

/*
 * Drop the cached translations of @ctx overlapping [va, va + len) (len ~0:
 * all of @ctx) for work item @cmd_id; no DMA issued afterwards uses them.
 */
unsigned hmm_mmu_invalidate(HmmMmu *m, uint64_t cmd_id, uint32_t ctx,
                            uint64_t va, uint64_t len)
{
    unsigned n = hmm_tlb_invalidate(&m->tlb, ctx, va, len);

    m->cnt_tlb_invalidations++;
    trace_hmm_tlb_inv(cmd_id, ctx, va, len, n);
    hmm_dma_event(m->core, HMM_GPU_TRACE_EV_TLB_INV, cmd_id, ctx, va, len);
    return n;
}

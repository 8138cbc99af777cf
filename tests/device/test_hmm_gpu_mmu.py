"""hmm-gpu ABI 1.1 over qtest: device MMU, VA jobs, TLB, replayable faults.

Page tables and context descriptors are built in guest RAM from Python
(hmmgpu.PageTables); the device walks them with DMA like any other memory.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hmmgpu import (
    CTX_TABLE,
    DST,
    SRC,
    Gpu,
    H,
    Launch,
    PageTables,
    atomic_add,
    cmpxchg,
    copy_va,
    fill,
    fill_va,
    parse_trace,
    read_va,
    tlb_inv,
    write_va,
)

from harness.checks import tracefile

pytestmark = pytest.mark.device

RW = H.PTE_READ | H.PTE_WRITE
RWA = RW | H.PTE_ATOMIC
VA = 0x7F12_3460_0000  # 2 MiB aligned, all four table levels non-zero index
HUGE_PA = 0x0600_0000  # 2 MiB aligned backing for huge pages
DATA_PA = 0x0300_0000  # backing for 4 KiB pages


def pattern_bytes(length: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed * 13 + (i >> 8)) & 0xFF for i in range(length))


def mmu(gpu: Gpu, faultq: bool = True, ctx_count: int = 4) -> PageTables:
    gpu.setup(intr_mask=H.INTR_CPL | H.INTR_ERROR | H.INTR_FAULT)
    pt = PageTables(gpu, ctx_count)
    pt.set_ctx(1)
    pt.enable()
    if faultq:
        gpu.setup_faultq()
    gpu.msi_clear()
    return pt


def qom(gpu: Gpu, prop: str) -> int:
    return gpu.qom_get(prop)


# ---- data movement -----------------------------------------------------------


def test_read_write_va_4k(gpu: Gpu) -> None:
    pt = mmu(gpu)
    # 3 pages, deliberately scattered and in reverse physical order
    pas = [DATA_PA + 0x5000, DATA_PA + 0x1000, DATA_PA + 0x9000]
    for i, pa in enumerate(pas):
        pt.map(1, VA + 4096 * i, pa, RW)
    data = pattern_bytes(3 * 4096 - 100, 3)
    gpu.qt.write(SRC, data)
    (c1,) = gpu.run(write_va(SRC, VA + 50, len(data), ctx=1, cmd_id=1))
    assert (c1.status, c1.nbytes, c1.opcode) == (H.ERR_NONE, len(data), H.OP_WRITE_VA)
    assert gpu.qt.read(pas[0] + 50, 4096 - 50) == data[: 4096 - 50]
    assert gpu.qt.read(pas[1], 4096) == data[4096 - 50 : 8192 - 50]
    assert gpu.qt.read(pas[2], len(data) - (8192 - 50)) == data[8192 - 50 :]
    (c2,) = gpu.run(read_va(VA + 50, DST, len(data), ctx=1, cmd_id=2))
    assert c2.status == H.ERR_NONE and c2.nbytes == len(data)
    assert gpu.qt.read(DST, len(data)) == data


def test_fill_and_copy_va_4k(gpu: Gpu) -> None:
    pt = mmu(gpu)
    pt.map_range(1, VA, DATA_PA, 4 * 4096, RW)
    pt.map_range(1, VA + 0x10_0000, DATA_PA + 0x10_0000, 4 * 4096, RW)
    pat = 0x1122334455667788
    gpu.qt.memset(DATA_PA, 4 * 4096, 0xEE)
    (c,) = gpu.run(fill_va(VA + 3, 2 * 4096 + 11, pat, ctx=1))
    assert c.status == H.ERR_NONE
    want = (struct.pack("<Q", pat) * 2000)[: 2 * 4096 + 11]
    assert gpu.qt.read(DATA_PA + 3, len(want)) == want  # pattern continues across pages
    assert gpu.qt.read(DATA_PA, 3) == b"\xee" * 3
    assert gpu.qt.read(DATA_PA + 3 + len(want), 8) == b"\xee" * 8
    (c,) = gpu.run(copy_va(VA + 3, VA + 0x10_0000 + 1000, len(want), ctx=1))
    assert c.status == H.ERR_NONE and c.nbytes == len(want)
    assert gpu.qt.read(DATA_PA + 0x10_0000 + 1000, len(want)) == want


def test_va_jobs_2m_pages(gpu: Gpu) -> None:
    pt = mmu(gpu)
    pt.map(1, VA, HUGE_PA, RW, huge=True)
    pt.map(1, VA + (2 << 20), HUGE_PA + (4 << 20), RW, huge=True)  # not contiguous
    data = pattern_bytes(256 * 1024, 5)
    gpu.qt.write(SRC, data)
    start = VA + (2 << 20) - 100 * 1024  # straddles the two huge pages
    (c,) = gpu.run(write_va(SRC, start, len(data), ctx=1))
    assert c.status == H.ERR_NONE
    assert gpu.qt.read(HUGE_PA + (2 << 20) - 100 * 1024, 100 * 1024) == data[: 100 * 1024]
    assert gpu.qt.read(HUGE_PA + (4 << 20), len(data) - 100 * 1024) == data[100 * 1024 :]
    (c,) = gpu.run(read_va(start, DST, len(data), ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, len(data)) == data
    (c,) = gpu.run(fill_va(VA + 8, 64, 0xABCD, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.readq(HUGE_PA + 8 + 56) == 0xABCD
    (c,) = gpu.run(copy_va(VA + 8, VA + (3 << 20), 64, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.readq(HUGE_PA + (5 << 20)) == 0xABCD


def test_atomics(gpu: Gpu) -> None:
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RWA)
    gpu.qt.writeq(DATA_PA + 16, 40)
    gpu.qt.writeq(DST, 0xFFFF)
    (c,) = gpu.run(atomic_add(VA + 16, 2, old_to=DST, ctx=1))
    assert (c.status, c.nbytes, c.opcode) == (H.ERR_NONE, 8, H.OP_ATOMIC_ADD)
    assert gpu.qt.readq(DATA_PA + 16) == 42 and gpu.qt.readq(DST) == 40
    (c,) = gpu.run(atomic_add(VA + 16, 2**64 - 50, ctx=1))  # wraps; no old-value write
    assert c.status == H.ERR_NONE and gpu.qt.readq(DATA_PA + 16) == 2**64 - 8
    (c,) = gpu.run(cmpxchg(VA + 16, 123, 7, old_to=DST + 8, ctx=1))  # mismatch
    assert c.status == H.ERR_NONE
    assert gpu.qt.readq(DATA_PA + 16) == 2**64 - 8 and gpu.qt.readq(DST + 8) == 2**64 - 8
    (c,) = gpu.run(cmpxchg(VA + 16, 2**64 - 8, 7, old_to=DST + 16, ctx=1))  # match
    assert c.status == H.ERR_NONE
    assert gpu.qt.readq(DATA_PA + 16) == 7 and gpu.qt.readq(DST + 16) == 2**64 - 8
    # 14 concurrent adds in flight: each read-modify-write is one engine step
    gpu.qt.writeq(DATA_PA + 24, 0)
    gpu.push(*(atomic_add(VA + 24, 1, ctx=1, cmd_id=i) for i in range(12)))
    gpu.push(*(atomic_add(VA + 24, 1, ctx=1, cmd_id=i) for i in range(2)))
    assert all(c.status == H.ERR_NONE for c in gpu.reap(14))
    assert gpu.qt.readq(DATA_PA + 24) == 14


# ---- faults, replay, cancel ---------------------------------------------------


def test_fault_record_replay_completes(gpu: Gpu) -> None:
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RW)  # page 0 mapped, page 1 not
    data = pattern_bytes(6000, 9)
    gpu.qt.write(SRC, data)
    gpu.push(write_va(SRC, VA + 100, len(data), ctx=1, cmd_id=0xF1, flags=H.CMD_F_IRQ))
    (rec,) = gpu.faults(1)
    assert rec.va == VA + 4096 and rec.cmd_id == 0xF1 and rec.ctx == 1
    assert (rec.access, rec.reason, rec.engine) == (
        H.ACCESS_WRITE,
        H.FAULT_NOT_PRESENT,
        H.ENGINE_MMU,
    )
    assert rec.token != 0
    assert gpu.reg("INTR_STATUS") & H.INTR_FAULT
    assert gpu.msi_fired(H.VEC_FAULT_DEFAULT)
    assert gpu.reg("STALLED") == 1 and gpu.pending_cpls() == 0
    assert gpu.reg("STATUS") & H.STATUS_BUSY
    # the part before the fault was done; nothing else
    assert gpu.qt.read(DATA_PA + 100, 4096 - 100) == data[: 4096 - 100]
    for _ in range(20):
        assert gpu.pending_cpls() == 0 and gpu.pending_faults() == 0
    pt.map(1, VA + 4096, DATA_PA + 0x8000, RW)
    gpu.set_reg("FAULT_REPLAY", 1)
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status, c.nbytes) == (0xF1, H.ERR_NONE, len(data))
    assert gpu.qt.read(DATA_PA + 0x8000, len(data) - 3996) == data[3996:]
    assert gpu.reg("STALLED") == 0
    gpu.wait_idle()


def test_replay_without_fix_faults_again(gpu: Gpu) -> None:
    mmu(gpu)
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=5))
    (r1,) = gpu.faults(1)
    assert r1.access == H.ACCESS_READ and r1.va == VA
    gpu.set_reg("FAULT_REPLAY", 0)
    (r2,) = gpu.faults(1)  # one new record per re-walk
    assert r2.cmd_id == 5 and r2.token != r1.token
    for _ in range(20):
        assert gpu.pending_faults() == 0, "more than one record for one stall"
    # the old token no longer names the job: a stale cancel is dropped
    gpu.set_reg("FAULT_CANCEL", r1.token)
    assert gpu.reg("ERROR") == H.ERR_NONE and gpu.reg("STALLED") == 1
    assert "hmm-gpu:" not in gpu.qt.log_text()
    gpu.set_reg("FAULT_CANCEL", r2.token)
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status, c.nbytes) == (5, H.ERR_FAULT, 0)


def test_cancel_fails_job(gpu: Gpu) -> None:
    mmu(gpu)
    gpu.push(fill_va(VA + 0x123, 16, 1, ctx=1, cmd_id=0xCA))
    (rec,) = gpu.faults(1)
    assert rec.va == VA
    gpu.msi_clear()
    gpu.set_reg("FAULT_CANCEL", rec.token)
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status) == (0xCA, H.ERR_FAULT)
    assert gpu.reg("ERROR") == H.ERR_FAULT and gpu.error_addr() == VA
    assert gpu.msi_fired(H.VEC_ERR_DEFAULT)
    assert gpu.reg("STALLED") == 0 and not gpu.reg("STATUS") & H.STATUS_FATAL
    # the driver asked for this outcome: no guest error is logged for it
    assert "hmm-gpu:" not in gpu.qt.log_text()


@pytest.mark.parametrize(
    "perms,job,access",
    [
        (H.PTE_READ, "write", H.ACCESS_WRITE),
        (H.PTE_WRITE, "read", H.ACCESS_READ),
        (RW, "atomic", H.ACCESS_ATOMIC),  # atomics need ATOMIC too
        (H.PTE_READ | H.PTE_ATOMIC, "atomic", H.ACCESS_ATOMIC),  # ... and WRITE
    ],
)
def test_permission_fault(gpu: Gpu, perms: int, job: str, access: int) -> None:
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, perms)
    gpu.qt.writeq(DATA_PA, 5)
    cmd = {
        "write": write_va(SRC, VA, 8, ctx=1, cmd_id=1),
        "read": read_va(VA, DST, 8, ctx=1, cmd_id=1),
        "atomic": atomic_add(VA, 1, ctx=1, cmd_id=1),
    }[job]
    gpu.push(cmd)
    (rec,) = gpu.faults(1)
    assert (rec.reason, rec.access, rec.va) == (H.FAULT_PERMISSION, access, VA)
    assert gpu.qt.readq(DATA_PA) == 5
    # upgrading the PTE needs no TLB_INVALIDATE: a permission miss re-walks
    pt.map(1, VA, DATA_PA, RWA)
    gpu.set_reg("FAULT_REPLAY", 1)
    (c,) = gpu.reap(1)
    assert c.status == H.ERR_NONE
    if job == "atomic":
        assert gpu.qt.readq(DATA_PA) == 6


def test_stalled_job_blocks_neither_jobs_nor_tlb_invalidate(gpu: Gpu) -> None:
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RW)
    gpu.push(read_va(VA + 0x10_0000, DST, 8, ctx=1, cmd_id=1))  # faults
    gpu.faults(1)
    gpu.push(
        fill_va(VA, 64, 0x77, ctx=1, cmd_id=2),
        tlb_inv(VA, 4096, ctx=1, cmd_id=3),
        fill(DST + 64, 8, 0x99, cmd_id=4),
    )
    got = gpu.reap(3)
    assert sorted((c.cmd_id, c.status) for c in got) == [(2, 0), (3, 0), (4, 0)]
    assert gpu.qt.readq(DATA_PA) == 0x77 and gpu.qt.readq(DST + 64) == 0x99
    assert gpu.reg("STALLED") == 1
    pt.map(1, VA + 0x10_0000, DATA_PA + 0x2000, RW)
    gpu.qt.writeq(DATA_PA + 0x2000, 0x1234)
    gpu.set_reg("FAULT_REPLAY", 1)
    (c,) = gpu.reap(1)
    assert c.cmd_id == 1 and c.status == 0 and gpu.qt.readq(DST) == 0x1234


def test_fault_ring_full_holds_records(gpu: Gpu) -> None:
    mmu(gpu, faultq=False)
    gpu.setup_faultq(size=2)  # holds one record
    gpu.push(*(read_va(VA + 4096 * i, DST, 8, ctx=1, cmd_id=i) for i in range(3)))
    gpu.wait(lambda: gpu.reg("STALLED") == 3, "3 stalled jobs")
    assert gpu.reg("FAULTQ_TAIL") == 1
    seen = []
    for _ in range(3):
        (r,) = gpu.faults(1)
        seen.append((r.cmd_id, r.va))
    assert sorted(seen) == [(i, VA + 4096 * i) for i in range(3)]
    assert gpu.pending_faults() == 0


def test_fault_with_queue_disabled_fails_at_once(gpu: Gpu) -> None:
    mmu(gpu, faultq=False)
    (c,) = gpu.run(read_va(VA + 8, DST, 8, ctx=1, cmd_id=7))
    assert (c.cmd_id, c.status) == (7, H.ERR_FAULT)
    assert gpu.reg("ERROR") == H.ERR_FAULT and gpu.error_addr() == VA + 8
    assert gpu.reg("STALLED") == 0


def test_faultq_disabled_midway(gpu: Gpu) -> None:
    mmu(gpu, faultq=False)
    gpu.setup_faultq(size=2)
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=1), read_va(VA + 4096, DST, 8, ctx=1, cmd_id=2))
    gpu.wait(lambda: gpu.reg("STALLED") == 2, "2 stalled jobs")
    rec = gpu.qt.read(gpu.faultq, 64)
    posted = struct.unpack_from("<Q", rec, 8)[0]
    gpu.set_reg("FAULTQ_CTRL", 0)  # the unposted record's job fails
    (c,) = gpu.reap(1)
    assert c.cmd_id == 3 - posted and c.status == H.ERR_FAULT
    assert gpu.reg("STALLED") == 1  # the posted one still waits for REPLAY/CANCEL
    gpu.set_reg("FAULT_REPLAY", 1)  # faults again, queue off: fails at once
    (c,) = gpu.reap(1)
    assert c.cmd_id == posted and c.status == H.ERR_FAULT


def test_qom_counters_mmu(launch: Launch) -> None:
    gpu = launch(qmp=True)
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RW)
    gpu.run(fill_va(VA, 8, 1, ctx=1))  # miss + 4 PTE reads
    gpu.run(fill_va(VA + 8, 8, 1, ctx=1), fill_va(VA + 16, 8, 1, ctx=1))  # 2 hits
    gpu.push(read_va(VA + 4096, DST, 8, ctx=1))
    (r,) = gpu.faults(1)
    gpu.set_reg("FAULT_REPLAY", 1)
    (r,) = gpu.faults(1)
    gpu.set_reg("FAULT_CANCEL", r.token)
    gpu.run(tlb_inv(0, 2**64 - 1, ctx=1))
    gpu.reap(1)
    counts = {
        p: gpu.qom_get(p)
        for p in (
            "faults-raised",
            "faults-replayed",
            "faults-cancelled",
            "tlb-hits",
            "tlb-misses",
            "tlb-invalidations",
            "ptw-reads",
            "va-jobs-completed",
        )
    }
    assert counts == {
        "faults-raised": 2,
        "faults-replayed": 1,
        "faults-cancelled": 1,
        "tlb-hits": 2,
        "tlb-misses": 3,
        "tlb-invalidations": 1,
        "ptw-reads": 4 + 4 + 4,  # fault walks stop at the missing level-0 entry
        "va-jobs-completed": 3,
    }


# ---- TLB -----------------------------------------------------------------------


def trace_launch(launch: Launch, tmp_path: Path) -> tuple[Gpu, Path]:
    path = tmp_path / "dmatrace.bin"
    return launch("dmatrace=t0", "dmatrace-flush-ms=0",
                  extra=("-chardev", f"file,id=t0,path={path}")), path


def test_tlb_hits_avoid_walks(launch: Launch, tmp_path: Path) -> None:
    gpu, path = trace_launch(launch, tmp_path)
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RW)
    pt.map(1, VA + (4 << 20), HUGE_PA, RW, huge=True)
    gpu.run(fill_va(VA, 8, 1, ctx=1, cmd_id=1))
    gpu.run(fill_va(VA + 8, 8, 2, ctx=1, cmd_id=2), read_va(VA, DST, 16, ctx=1, cmd_id=3))
    gpu.run(fill_va(VA + (4 << 20), 8, 3, ctx=1, cmd_id=4))
    gpu.run(fill_va(VA + (5 << 20) + 8, 8, 4, ctx=1, cmd_id=5))  # same 2 MiB page: hit
    ptw = [r for r in parse_trace(tracefile.read_bytes(path)) if r.kind == H.TRACE_PTW]
    want = [(1, 3), (1, 2), (1, 1), (1, 0), (4, 3), (4, 2), (4, 1)]  # 4K, then 2M walk
    assert [(r.cmd_id, r.level) for r in ptw] == want
    assert gpu.qt.readq(DATA_PA) == 1 and gpu.qt.readq(DATA_PA + 8) == 2
    assert gpu.qt.readq(DST) == 1 and gpu.qt.readq(HUGE_PA + (1 << 20) + 8) == 4


@pytest.mark.parametrize("invalidate", ["range", "all", "none", "other-range", "other-ctx"])
def test_tlb_invalidate_makes_pte_change_visible(gpu: Gpu, invalidate: str) -> None:
    pt = mmu(gpu)
    pt.set_ctx(2)
    pt.map(1, VA + 0x3000, DATA_PA, RW)
    gpu.qt.writeq(DATA_PA, 0x01D)
    gpu.qt.writeq(DATA_PA + 0x7000, 0x2E3)
    (c,) = gpu.run(read_va(VA + 0x3000, DST, 8, ctx=1))  # caches the translation
    assert c.status == 0 and gpu.qt.readq(DST) == 0x01D
    pt.map(1, VA + 0x3000, DATA_PA + 0x7000, RW)  # the driver moves the page
    inv = {
        "range": tlb_inv(VA + 0x2FFF, 2, ctx=1),  # overlaps the page by one byte
        "all": tlb_inv(0, 2**64 - 1, ctx=1),
        "none": None,
        "other-range": tlb_inv(VA + 0x4000, 0x1000, ctx=1),  # adjacent, no overlap
        "other-ctx": tlb_inv(0, 2**64 - 1, ctx=2),
    }[invalidate]
    if inv is not None:
        (c,) = gpu.run(inv)
        assert c.status == H.ERR_NONE and c.opcode == H.OP_TLB_INVALIDATE
    (c,) = gpu.run(read_va(VA + 0x3000, DST, 8, ctx=1))
    assert c.status == 0
    fresh = invalidate in ("range", "all")
    assert gpu.qt.readq(DST) == (0x2E3 if fresh else 0x01D), "stale translation semantics"


def test_unmap_needs_invalidate_to_fault(gpu: Gpu) -> None:
    pt = mmu(gpu)
    a = pt.map(1, VA, DATA_PA, RW)
    gpu.run(read_va(VA, DST, 8, ctx=1))
    gpu.qt.writeq(a, 0)  # unmapped, but still cached
    (c,) = gpu.run(read_va(VA, DST, 8, ctx=1))
    assert c.status == 0 and gpu.pending_faults() == 0
    gpu.run(tlb_inv(VA, 4096, ctx=1))
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=77))
    (rec,) = gpu.faults(1)
    assert rec.cmd_id == 77 and rec.reason == H.FAULT_NOT_PRESENT


# ---- trace records v2 ----------------------------------------------------------


def test_trace_v2_records(launch: Launch, tmp_path: Path) -> None:
    gpu, path = trace_launch(launch, tmp_path)
    pt = mmu(gpu)
    leaf = pt.map(1, VA, DATA_PA, RW)
    gpu.qt.write(SRC, b"v" * 16)
    gpu.run(write_va(SRC, VA + 8, 16, ctx=1, cmd_id=1))
    gpu.push(read_va(VA + 0x5000, DST, 8, ctx=1, cmd_id=2))
    (rec,) = gpu.faults(1)
    gpu.set_reg("FAULT_REPLAY", 1)
    (rec,) = gpu.faults(1)
    gpu.set_reg("FAULT_CANCEL", rec.token)
    gpu.reap(1)
    gpu.run(tlb_inv(VA, 0x2000, ctx=1, cmd_id=3))
    recs = parse_trace(tracefile.read_bytes(path))
    mmu_e, cp = H.ENGINE_MMU, H.ENGINE_COPY
    j1 = [r for r in recs if r.cmd_id == 1]
    # CMD_FETCH, CTX_FETCH, 4 x PTW, DATA read (bus), DATA write (VA), CPL_WRITE
    assert [r.kind for r in j1] == [
        H.TRACE_CMD_FETCH,
        H.TRACE_CTX_FETCH,
        *[H.TRACE_PTW] * 4,
        H.TRACE_DATA,
        H.TRACE_DATA,
        H.TRACE_CPL_WRITE,
    ]
    ctxf = j1[1]
    assert (ctxf.engine, ctxf.addr, ctxf.length, ctxf.aux, ctxf.ctx) == (
        mmu_e,
        CTX_TABLE + 16,
        16,
        pt.roots[1],
        1,
    )
    walk = j1[2:6]
    assert [r.level for r in walk] == [3, 2, 1, 0]
    assert all(r.engine == mmu_e and r.va == VA + 8 and r.length == 8 for r in walk)
    assert all(r.dir == H.DIR_READ and r.result == 0 for r in walk)
    assert walk[0].addr == pt.roots[1] + 8 * ((VA >> 39) & 511)
    assert walk[3].addr == leaf and walk[3].aux == DATA_PA | RW | H.PTE_VALID
    for lvl in (0, 1, 2):  # each entry read points at the next one
        assert walk[lvl + 1].addr & ~0xFFF == walk[lvl].aux & H.PTE_ADDR_MASK
    rd, wr = j1[6], j1[7]
    assert (rd.engine, rd.addr, rd.length, rd.va, rd.dir) == (cp, SRC, 16, VA + 8, H.DIR_READ)
    assert (wr.engine, wr.addr, wr.length, wr.va, wr.dir) == (
        cp,
        DATA_PA + 8,
        16,
        VA + 8,
        H.DIR_WRITE,
    )
    # the failing walk stops at the missing level-0 entry; then the record
    j2 = [r for r in recs if r.cmd_id == 2]
    fw = [r for r in j2 if r.kind == H.TRACE_FAULT_WRITE]
    assert len(fw) == 2
    assert (fw[0].engine, fw[0].addr, fw[0].length, fw[0].va, fw[0].dir) == (
        mmu_e,
        gpu.faultq,
        64,
        VA + 0x5000,
        H.DIR_WRITE,
    )
    assert fw[1].addr == gpu.faultq + 64 and fw[1].aux == rec.token
    assert [r.aux for r in j2 if r.kind == H.TRACE_PTW][3] == 0  # not-present entry
    ev = [r for r in recs if r.dir == H.DIR_NONE]
    assert [(r.kind, r.cmd_id, r.va, r.aux, r.length, r.addr) for r in ev] == [
        (H.TRACE_EV_REPLAY, 0, 0, 1, 0, 0),
        (H.TRACE_EV_CANCEL, 2, VA + 0x5000, rec.token, 0, 0),
        (H.TRACE_EV_TLB_INV, 3, VA, 0x2000, 0, 0),
    ]
    # the invalidate's event precedes its completion
    i_ev = recs.index(ev[2])
    assert recs[i_ev + 1].kind == H.TRACE_CPL_WRITE and recs[i_ev + 1].cmd_id == 3


def test_stale_cancel_after_completion_is_dropped(launch: Launch) -> None:
    """A cancel racing a replay that already let the job finish is no error."""
    gpu = launch(qmp=True)
    pt = mmu(gpu)
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=9))
    (rec,) = gpu.faults(1)
    pt.map(1, VA, DATA_PA, H.PTE_READ)
    gpu.set_reg("FAULT_REPLAY", 0)
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status) == (9, H.ERR_NONE)
    gpu.set_reg("FAULT_CANCEL", rec.token)
    assert gpu.reg("ERROR") == H.ERR_NONE
    assert not gpu.reg("INTR_STATUS") & H.INTR_ERROR
    assert "hmm-gpu:" not in gpu.qt.log_text()
    assert qom(gpu, "stale-cancels") == 1
    # a token never handed out is still a driver mistake
    gpu.set_reg("FAULT_CANCEL", rec.token + 100)
    assert gpu.reg("ERROR") == H.ERR_BAD_TOKEN

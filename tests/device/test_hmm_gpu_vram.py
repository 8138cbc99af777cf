"""hmm-gpu ABI 1.2 over qtest: VRAM, the MIGRATE copy engine, PTE_VRAM leaves.

The CPU cannot see VRAM, so every check goes through the device: data put in
with MIGRATE TO_VRAM (or a VA job on a PTE_VRAM page) is read back with
MIGRATE FROM_VRAM (or a READ_VA).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hmmgpu import (
    ABI,
    COPY_LIST,
    DST,
    NOT_RAM,
    SRC,
    Cmd,
    Gpu,
    H,
    Launch,
    PageTables,
    atomic_add,
    cmpxchg,
    copy_list,
    copy_va,
    fill,
    fill_va,
    migrate,
    parse_trace,
    read_va,
    tlb_inv,
    write_va,
)
from test_hmm_gpu_errors import RAM_END, expect_error, expect_recovers
from test_hmm_gpu_mmu import DATA_PA, RW, RWA, VA, mmu

from harness.build.qemu import QemuArtifact
from harness.checks import tracefile

pytestmark = pytest.mark.device

P = 4096
MiB = 1 << 20
VRAM_DEFAULT = 256 * MiB
TO, FROM = H.MIGRATE_TO_VRAM, H.MIGRATE_FROM_VRAM


def pages(n: int) -> list[bytes]:
    return [os.urandom(P) for _ in range(n)]


def vram_map(pt: PageTables, va: int, off: int, perms: int = RWA, huge: bool = False) -> int:
    """Map va to VRAM offset off (4 KiB or, with huge, a 2 MiB leaf)."""
    return pt.map(1, va, off | H.PTE_VRAM, perms, huge=huge)


def dmatrace(launch: Launch, tmp_path: Path, *opts: str) -> tuple[Gpu, Path]:
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", "dmatrace-flush-ms=0", *opts,
                 extra=("-chardev", f"file,id=t0,path={path}"))
    return gpu, path


# ---- identity and the vram-size property ---------------------------------------


def test_vram_registers_default(gpu: Gpu) -> None:
    assert gpu.reg("VERSION") >> 16 == 1 and gpu.reg("VERSION") & 0xFFFF >= 2
    assert gpu.reg("CAPS") & H.CAP_VRAM
    assert gpu.vram_size() == VRAM_DEFAULT
    for reg in ("VRAM_SIZE_LO", "VRAM_SIZE_HI"):
        gpu.set_reg(reg, 0)
        assert gpu.reg("ERROR") == H.ERR_BAD_REGISTER
        assert gpu.error_addr() == ABI["HMM_GPU_REG_" + reg]
    assert gpu.vram_size() == VRAM_DEFAULT


@pytest.mark.parametrize("size,value", [("2M", 2 * MiB), ("64M", 64 * MiB), ("4G", 4 << 30)])
def test_vram_size_property(launch: Launch, size: str, value: int) -> None:
    gpu = launch(f"vram-size={size}", qmp=True)
    assert gpu.vram_size() == value
    assert gpu.reg("VRAM_SIZE_HI") == value >> 32
    assert gpu.qom_get("vram-size") == value
    # the last page is usable, nothing beyond it
    gpu.setup()
    data = os.urandom(P)
    gpu.qt.write(SRC, data)
    assert gpu.to_vram([(SRC, value - P)]).status == H.ERR_NONE
    assert gpu.from_vram([(value - P, DST)]).status == H.ERR_NONE
    assert gpu.qt.read(DST, P) == data
    assert gpu.to_vram([(SRC, value)]).status == H.ERR_BAD_VRAM


@pytest.mark.parametrize(
    "size", ["0", "1M", "3M", "2097153", "4100M", "6G", str((4 << 30) + 2 * MiB), "1T"]
)
def test_vram_size_invalid(qemu: QemuArtifact, size: str) -> None:
    argv = [str(qemu.binary)]
    for d in qemu.datadirs:
        argv += ["-L", str(d)]
    argv += ["-M", "q35", "-accel", "qtest", "-display", "none", "-nodefaults", "-S"]
    argv += ["-device", f"hmm-gpu,vram-size={size}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 1, f"rc {p.returncode}: {p.stderr}"
    assert "vram-size" in p.stderr and "multiple of 2 MiB" in p.stderr, p.stderr
    assert "Aborted" not in p.stderr and "assert" not in p.stderr.lower()


# ---- MIGRATE ---------------------------------------------------------------------


def test_migrate_round_trip(gpu: Gpu) -> None:
    gpu.setup()
    data = pages(6)
    srcs = [SRC + 0x5000, SRC, SRC + 0x20000, SRC + 0x3000, SRC + 0x9000, SRC + 0x1000]
    offs = [0, 0x7000, VRAM_DEFAULT - P, 0x1234000, P, 0x200000]
    for a, d in zip(srcs, data, strict=True):
        gpu.qt.write(a, d)
    c = gpu.to_vram(list(zip(srcs, offs, strict=True)))
    assert (c.status, c.nbytes, c.opcode) == (H.ERR_NONE, 6 * P, H.OP_MIGRATE)
    # back out to different places, in another order
    order = [4, 2, 0, 5, 1, 3]
    c = gpu.from_vram([(offs[i], DST + k * P) for k, i in enumerate(order)])
    assert (c.status, c.nbytes) == (H.ERR_NONE, 6 * P)
    for k, i in enumerate(order):
        assert gpu.qt.read(DST + k * P, P) == data[i], f"page {i}"
    # untouched VRAM reads as zeroes
    c = gpu.from_vram([(0x3000, DST)])
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, P) == bytes(P)


def test_migrate_max_pages(launch: Launch) -> None:
    gpu = launch(qmp=True)
    gpu.setup()
    n = H.MIGRATE_MAX_PAGES
    data = os.urandom(n * P)
    gpu.qt.write(SRC, data)
    # page i goes to VRAM page (n - 1 - i) + 1000: reverses the order
    c = gpu.to_vram([(SRC + i * P, (n - 1 - i + 1000) * P) for i in range(n)])
    assert (c.status, c.nbytes) == (H.ERR_NONE, n * P)
    c = gpu.from_vram([((1000 + i) * P, DST + i * P) for i in range(n)])
    assert (c.status, c.nbytes) == (H.ERR_NONE, n * P)
    got = gpu.qt.read(DST, n * P)
    for i in range(n):
        assert got[i * P : (i + 1) * P] == data[(n - 1 - i) * P : (n - i) * P], f"page {i}"
    assert gpu.qom_get("migrate-pages-to-vram") == n
    assert gpu.qom_get("migrate-pages-from-vram") == n
    assert gpu.qom_get("vram-bytes-written") == n * P
    assert gpu.qom_get("vram-bytes-read") == n * P


def test_migrates_run_concurrently_with_other_jobs(gpu: Gpu) -> None:
    gpu.setup(cmdq_size=64, cplq_size=64)
    data = os.urandom(64 * P)
    gpu.qt.write(SRC, data)
    lists = []
    for k in range(4):
        la = COPY_LIST + k * 0x2000
        gpu.qt.write(la, copy_list([(SRC + (16 * k + i) * P, (16 * k + i) * P) for i in range(16)]))
        lists.append(migrate(la, 16, TO, cmd_id=k))
    gpu.push(*lists, fill(DST + 0x100000, 8, 0xF00D, cmd_id=99))
    cpls = gpu.reap(5)
    assert all(c.status == H.ERR_NONE for c in cpls)
    assert {c.cmd_id for c in cpls} == {0, 1, 2, 3, 99}
    c = gpu.from_vram([(i * P, DST + i * P) for i in range(64)])
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 64 * P) == data


def test_vram_survives_reset(gpu: Gpu) -> None:
    gpu.setup()
    data = os.urandom(P)
    gpu.qt.write(SRC, data)
    assert gpu.to_vram([(SRC, 0x40000)]).status == H.ERR_NONE
    gpu.reset()
    gpu.setup()
    assert gpu.from_vram([(0x40000, DST)]).status == H.ERR_NONE
    assert gpu.qt.read(DST, P) == data


def test_migrate_trace(launch: Launch, tmp_path: Path) -> None:
    gpu, path = dmatrace(launch, tmp_path)
    gpu.setup()
    gpu.qt.write(COPY_LIST, copy_list([(SRC, 0x5000), (SRC + 0x3000, 0x1000)]))
    gpu.run(migrate(COPY_LIST, 2, TO, cmd_id=0x77))
    gpu.qt.write(COPY_LIST + 0x100, copy_list([(0x1000, DST)]))
    gpu.run(migrate(COPY_LIST + 0x100, 1, FROM, cmd_id=0x78))
    recs = [r for r in parse_trace(tracefile.read_bytes(path)) if r.engine == H.ENGINE_MIGRATE]
    got = [(r.kind, r.dir, r.addr, r.length, r.aux, r.cmd_id, r.result) for r in recs]
    M = H.TRACE_COPY_LIST
    assert got == [
        (M, H.DIR_READ, COPY_LIST, 32, 0, 0x77, 0),
        (H.TRACE_DATA, H.DIR_READ, SRC, P, 0x5000, 0x77, 0),
        (H.TRACE_DATA, H.DIR_READ, SRC + 0x3000, P, 0x1000, 0x77, 0),
        (M, H.DIR_READ, COPY_LIST + 0x100, 16, 0, 0x78, 0),
        (H.TRACE_DATA, H.DIR_WRITE, DST, P, 0x1000, 0x78, 0),
    ]


# ---- PTE_VRAM: VA jobs on VRAM pages ---------------------------------------------


def test_read_va_from_vram_page_is_not_dma(launch: Launch, tmp_path: Path) -> None:
    gpu, path = dmatrace(launch, tmp_path)
    pt = mmu(gpu)
    vpage, spage = os.urandom(P), os.urandom(P)
    gpu.qt.write(SRC, vpage)
    assert gpu.to_vram([(SRC, 0x9000)]).status == H.ERR_NONE
    gpu.qt.write(DATA_PA + 0x1000, spage)
    vram_map(pt, VA, 0x9000, RW)  # page 0 in VRAM
    pt.map(1, VA + P, DATA_PA + 0x1000, RW)  # page 1 in system memory
    (c,) = gpu.run(read_va(VA + 100, DST, 2 * P - 200, ctx=1, cmd_id=0xAB))
    assert (c.status, c.nbytes) == (H.ERR_NONE, 2 * P - 200)
    assert gpu.qt.read(DST, 2 * P - 200) == (vpage + spage)[100 : 2 * P - 100]
    recs = [r for r in parse_trace(tracefile.read_bytes(path)) if r.cmd_id == 0xAB]
    data = [
        (r.kind, r.dir, r.addr, r.length, r.va)
        for r in recs
        if r.kind in (H.TRACE_DATA, H.TRACE_VRAM)
    ]
    assert data == [
        (H.TRACE_VRAM, H.DIR_READ, 0x9000 + 100, P - 100, VA + 100),
        (H.TRACE_DATA, H.DIR_WRITE, DST, P - 100, VA + 100),
        (H.TRACE_DATA, H.DIR_READ, DATA_PA + 0x1000, P - 100, VA + P),
        (H.TRACE_DATA, H.DIR_WRITE, DST + P - 100, P - 100, VA + P),
    ]
    vrec = next(r for r in recs if r.kind == H.TRACE_VRAM)
    assert (vrec.engine, vrec.ctx, vrec.result) == (H.ENGINE_COPY, 1, 0)
    # nothing read system memory at the VRAM offset's "address"
    assert not [r for r in recs if r.kind == H.TRACE_DATA and r.addr == 0x9000 + 100]


def test_va_jobs_on_vram_pages(launch: Launch) -> None:
    gpu = launch(qmp=True)
    pt = mmu(gpu)
    vram_map(pt, VA, 0x10000, RW)
    vram_map(pt, VA + P, 0x4000, RW)  # VRAM pages not contiguous
    pt.map(1, VA + 2 * P, DATA_PA, RW)
    dma_r0, dma_w0 = gpu.qom_get("dma-read-bytes"), gpu.qom_get("dma-write-bytes")
    data = os.urandom(2 * P)
    gpu.qt.write(SRC, data)
    # WRITE_VA into VRAM, READ back with MIGRATE
    (c,) = gpu.run(write_va(SRC, VA, 2 * P, ctx=1))
    assert c.status == H.ERR_NONE
    assert gpu.qom_get("vram-bytes-written") == 2 * P
    dma_r = gpu.qom_get("dma-read-bytes") - dma_r0
    dma_w = gpu.qom_get("dma-write-bytes") - dma_w0
    # data read from SRC + walks + the fetch; nothing written but the completion
    assert dma_w == 32 and dma_r >= 2 * P
    assert gpu.from_vram([(0x10000, DST), (0x4000, DST + P)]).status == H.ERR_NONE
    assert gpu.qt.read(DST, 2 * P) == data
    # FILL_VA across VRAM and system memory
    (c,) = gpu.run(fill_va(VA + P + P // 2, P, 0x0102030405060708, ctx=1))
    assert c.status == H.ERR_NONE
    pat = (0x0102030405060708).to_bytes(8, "little") * (P // 8)
    assert gpu.from_vram([(0x4000, DST)]).status == H.ERR_NONE
    assert gpu.qt.read(DST + P // 2, P // 2) == pat[: P // 2]
    assert gpu.qt.read(DST, P // 2) == data[P : P + P // 2]
    assert gpu.qt.read(DATA_PA, P // 2) == pat[P // 2 :]
    # COPY_VA VRAM -> VRAM and VRAM -> system memory
    (c,) = gpu.run(copy_va(VA, VA + P, 64, ctx=1))
    assert c.status == H.ERR_NONE
    (c,) = gpu.run(copy_va(VA + 64, VA + 2 * P + 1024, 128, ctx=1))
    assert c.status == H.ERR_NONE
    assert gpu.qt.read(DATA_PA + 1024, 128) == data[64:192]
    (c,) = gpu.run(read_va(VA + P, DST, 64, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 64) == data[:64]


def test_vram_2m_leaf(gpu: Gpu) -> None:
    pt = mmu(gpu, faultq=False)
    vram_map(pt, VA, 4 * MiB, RW, huge=True)
    data = os.urandom(3 * P)
    gpu.qt.write(SRC, data)
    (c,) = gpu.run(write_va(SRC, VA + 2 * MiB - P, 3 * P, ctx=1))
    assert (c.status, c.nbytes) == (H.ERR_FAULT, P), "only the first page is mapped"
    vram_map(pt, VA + 2 * MiB, 8 * MiB, RW, huge=True)
    (c,) = gpu.run(write_va(SRC, VA + 2 * MiB - P, 3 * P, ctx=1))
    assert c.status == H.ERR_NONE
    c = gpu.from_vram([(6 * MiB - P, DST), (8 * MiB, DST + P), (8 * MiB + P, DST + 2 * P)])
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 3 * P) == data


def test_atomics_on_vram(gpu: Gpu) -> None:
    pt = mmu(gpu)
    vram_map(pt, VA, 0x20000, RWA)
    gpu.qt.writeq(SRC + 16, 40)
    assert gpu.to_vram([(SRC, 0x20000)]).status == H.ERR_NONE
    gpu.qt.writeq(DST, 0)
    (c,) = gpu.run(atomic_add(VA + 16, 2, old_to=DST, ctx=1))
    assert (c.status, c.nbytes) == (H.ERR_NONE, 8) and gpu.qt.readq(DST) == 40
    (c,) = gpu.run(cmpxchg(VA + 16, 41, 7, old_to=DST + 8, ctx=1))  # mismatch
    assert c.status == H.ERR_NONE and gpu.qt.readq(DST + 8) == 42
    (c,) = gpu.run(cmpxchg(VA + 16, 42, 7, old_to=DST + 16, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.readq(DST + 16) == 42
    gpu.push(*(atomic_add(VA + 24, 1, ctx=1, cmd_id=i) for i in range(12)))
    assert all(c.status == H.ERR_NONE for c in gpu.reap(12))
    assert gpu.from_vram([(0x20000, DST + P)]).status == H.ERR_NONE
    assert gpu.qt.readq(DST + P + 16) == 7 and gpu.qt.readq(DST + P + 24) == 12
    # a VRAM page without ATOMIC permission faults like any other
    vram_map(pt, VA + P, 0x21000, RW)
    gpu.push(atomic_add(VA + P, 1, ctx=1, cmd_id=5))
    (rec,) = gpu.faults(1)
    assert (rec.va, rec.access, rec.reason) == (VA + P, H.ACCESS_ATOMIC, H.FAULT_PERMISSION)
    gpu.set_reg("FAULT_CANCEL", rec.token)
    assert gpu.reap(1)[0].status == H.ERR_FAULT


@pytest.mark.parametrize("change", ["vram-to-vram", "vram-to-system", "system-to-vram"])
def test_tlb_invalidate_vram_translation(gpu: Gpu, change: str) -> None:
    pt = mmu(gpu)
    a, b = os.urandom(P), os.urandom(P)
    gpu.qt.write(SRC, a)
    gpu.qt.write(SRC + P, b)
    assert gpu.to_vram([(SRC, 0x30000), (SRC + P, 0x31000)]).status == H.ERR_NONE
    gpu.qt.write(DATA_PA, a if change == "system-to-vram" else b)
    old = (0x30000 | H.PTE_VRAM) if change != "system-to-vram" else DATA_PA
    new = {
        "vram-to-vram": 0x31000 | H.PTE_VRAM,
        "vram-to-system": DATA_PA,
        "system-to-vram": 0x31000 | H.PTE_VRAM,
    }[change]
    pt.map(1, VA, old, RW)
    (c,) = gpu.run(read_va(VA, DST, 64, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 64) == a[:64]
    pt.map(1, VA, new, RW)
    (c,) = gpu.run(read_va(VA, DST, 64, ctx=1))
    assert gpu.qt.read(DST, 64) == a[:64], "the cached translation is used until invalidated"
    (c,) = gpu.run(tlb_inv(VA, P, ctx=1))
    assert c.status == H.ERR_NONE
    (c,) = gpu.run(read_va(VA, DST, 64, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 64) == b[:64]


def test_migrate_carries_its_tlb_invalidation(gpu: Gpu) -> None:
    """1.3: MIGRATE with arg2 invalidates [dst, dst + arg2) of ctx at fetch, as a
    TLB_INVALIDATE just before it would: a CPU fault's fence and copy in one."""
    pt = mmu(gpu)
    a, b = os.urandom(P), os.urandom(P)
    gpu.qt.write(SRC, a)
    gpu.qt.write(SRC + P, b)
    assert gpu.to_vram([(SRC, 0x30000), (SRC + P, 0x31000)]).status == H.ERR_NONE
    pt.map(1, VA, 0x30000 | H.PTE_VRAM, RW)
    (c,) = gpu.run(read_va(VA, DST, 64, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 64) == a[:64]
    pt.map(1, VA, 0x31000 | H.PTE_VRAM, RW)  # cached: still a until invalidated
    gpu.qt.write(COPY_LIST, copy_list([(0x30000, DST + P)]))
    cmd = migrate(COPY_LIST, 1, FROM)
    cmd.ctx, cmd.dst, cmd.arg2 = 1, VA, P
    (c,) = gpu.run(cmd)
    assert c.status == H.ERR_NONE and gpu.qt.read(DST + P, P) == a
    (c,) = gpu.run(read_va(VA, DST, 64, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.read(DST, 64) == b[:64]
    # a bad context is refused, nothing copied
    gpu.qt.write(DST + P, bytes(P))
    cmd = migrate(COPY_LIST, 1, FROM)
    cmd.ctx, cmd.dst, cmd.arg2 = H.MAX_CTX, VA, P
    (c,) = gpu.run(cmd)
    assert c.status == H.ERR_BAD_CTX and gpu.qt.read(DST + P, P) == bytes(P)


# ---- errors ---------------------------------------------------------------------

V = H.PTE_VALID
ENTRY = -1  # ERROR_ADDR: the command's ring entry
# name: (copy list, command, error, ERROR_ADDR, bytes)
GOOD = [(SRC, 0), (SRC + P, P)]
MIGRATE_ERRORS: dict[str, tuple[list[tuple[int, int]], Cmd, int, int, int]] = {
    "to-vram-offset-out-of-range": (
        [(SRC, VRAM_DEFAULT)],
        migrate(COPY_LIST, 1, TO),
        H.ERR_BAD_VRAM,
        VRAM_DEFAULT,
        0,
    ),
    "to-vram-offset-huge": (
        [(SRC, 2**64 - P)],
        migrate(COPY_LIST, 1, TO),
        H.ERR_BAD_VRAM,
        2**64 - P,
        0,
    ),
    "to-vram-offset-misaligned": (
        [(SRC, 0x10)],
        migrate(COPY_LIST, 1, TO),
        H.ERR_BAD_VRAM,
        0x10,
        0,
    ),
    "from-vram-offset-out-of-range": (
        [(VRAM_DEFAULT + P, DST)],
        migrate(COPY_LIST, 1, FROM),
        H.ERR_BAD_VRAM,
        VRAM_DEFAULT + P,
        0,
    ),
    "from-vram-offset-misaligned": (
        [(0x800, DST)],
        migrate(COPY_LIST, 1, FROM),
        H.ERR_BAD_VRAM,
        0x800,
        0,
    ),
    # checked before any page moves: nothing copied, bytes 0
    "bad-offset-in-the-middle": (
        [*GOOD, (SRC + 2 * P, 1), (SRC + 3 * P, 3 * P)],
        migrate(COPY_LIST, 4, TO),
        H.ERR_BAD_VRAM,
        1,
        0,
    ),
    "list-not-ram": (GOOD, migrate(NOT_RAM, 2, TO), H.ERR_DMA_READ, NOT_RAM, 0),
    "list-partly-beyond-ram": (GOOD, migrate(RAM_END - 16, 2, TO), H.ERR_DMA_READ, RAM_END - 16, 0),
    "list-wraps-address-space": (GOOD, migrate(2**64 - 16, 2, TO), H.ERR_DMA_READ, 2**64 - 16, 0),
    "direction-2": (
        GOOD,
        Cmd(H.OP_MIGRATE, src=COPY_LIST, length=P, pattern=2),
        H.ERR_BAD_FLAGS,
        ENTRY,
        0,
    ),
    "direction-huge": (
        GOOD,
        Cmd(H.OP_MIGRATE, src=COPY_LIST, length=P, pattern=2**63),
        H.ERR_BAD_FLAGS,
        ENTRY,
        0,
    ),
    "reserved-flags": (GOOD, migrate(COPY_LIST, 1, TO, flags=0x40), H.ERR_BAD_FLAGS, ENTRY, 0),
    "length-zero": (GOOD, migrate(COPY_LIST, 0, TO), H.ERR_BAD_LENGTH, ENTRY, 0),
    "length-not-page-multiple": (
        GOOD,
        Cmd(H.OP_MIGRATE, src=COPY_LIST, length=P + 8, pattern=TO),
        H.ERR_BAD_LENGTH,
        ENTRY,
        0,
    ),
    "length-sub-page": (
        GOOD,
        Cmd(H.OP_MIGRATE, src=COPY_LIST, length=512),
        H.ERR_BAD_LENGTH,
        ENTRY,
        0,
    ),
    "too-many-pages": (
        GOOD,
        migrate(COPY_LIST, H.MIGRATE_MAX_PAGES + 1, TO),
        H.ERR_BAD_LENGTH,
        ENTRY,
        0,
    ),
    "length-2^63": (
        GOOD,
        Cmd(H.OP_MIGRATE, src=COPY_LIST, length=1 << 63),
        H.ERR_BAD_LENGTH,
        ENTRY,
        0,
    ),
    # system-memory side fails midway: the pages before it are reported
    "to-vram-source-not-ram": (
        [*GOOD, (NOT_RAM, 2 * P), (SRC, 3 * P)],
        migrate(COPY_LIST, 4, TO),
        H.ERR_DMA_READ,
        NOT_RAM,
        2 * P,
    ),
    "from-vram-destination-not-ram": (
        [(0, DST), (P, RAM_END), (2 * P, DST + P)],
        migrate(COPY_LIST, 3, FROM),
        H.ERR_DMA_WRITE,
        RAM_END,
        P,
    ),
}


@pytest.mark.parametrize("name", MIGRATE_ERRORS)
def test_migrate_error(gpu: Gpu, name: str) -> None:
    entries, bad, err, addr, nbytes = MIGRATE_ERRORS[name]
    gpu.setup()
    # known VRAM contents, to see that failed MIGRATEs leave them alone
    gpu.qt.memset(SRC, 4 * P, 0xAA)
    assert gpu.to_vram([(SRC + i * P, i * P) for i in range(4)]).status == H.ERR_NONE
    gpu.qt.write(SRC, os.urandom(4 * P))
    gpu.qt.memset(DST, 4 * P, 0)
    gpu.qt.write(COPY_LIST, copy_list(entries))
    gpu.msi_clear()
    bad.cmd_id = 0xE0E0
    entry = gpu.cmdq + 64 * gpu.cmd_tail
    cpls = gpu.run(bad, fill(DST + 0x100000, 8, 0x600D, cmd_id=0x600D))
    cpls.sort(key=lambda c: c.cmd_id != 0xE0E0)
    assert (cpls[0].cmd_id, cpls[0].status, cpls[0].nbytes) == (0xE0E0, err, nbytes)
    assert cpls[0].opcode == H.OP_MIGRATE
    assert (cpls[1].cmd_id, cpls[1].status) == (0x600D, H.ERR_NONE), "queue did not continue"
    expect_error(gpu, err, entry if addr == ENTRY else addr, fatal=False)
    # VRAM pages: the first nbytes/P entries moved (TO_VRAM), the rest did not
    if bad.pattern == TO:
        assert gpu.from_vram([(i * P, DST + i * P) for i in range(4)]).status == H.ERR_NONE
        got = gpu.qt.read(DST, 4 * P)
        moved = nbytes // P
        for i in range(moved, 4):
            assert got[i * P : (i + 1) * P] == b"\xaa" * P, f"VRAM page {i} changed"
    if name == "from-vram-destination-not-ram":
        assert gpu.qt.read(DST, P) == b"\xaa" * P and gpu.qt.read(DST + P, P) == bytes(P)
    expect_recovers(gpu)


# PTE_VRAM errors: name: (entry level, entry value)
PTE_ERRORS = {
    "4k-beyond-vram-size": (0, VRAM_DEFAULT | V | RW | H.PTE_VRAM),
    "4k-far-beyond": (0, (1 << 40) | V | RW | H.PTE_VRAM),
    "2m-beyond-vram-size": (1, VRAM_DEFAULT | V | RW | H.PTE_LEAF | H.PTE_VRAM),
    "2m-misaligned": (1, (2 * MiB + P) | V | RW | H.PTE_LEAF | H.PTE_VRAM),
    "vram-table-entry": (1, 0x1000 | V | H.PTE_VRAM),
    "vram-table-entry-level3": (3, 0x1000 | V | H.PTE_VRAM),
}


@pytest.mark.parametrize("name", PTE_ERRORS)
def test_pte_vram_error(gpu: Gpu, name: str) -> None:
    level, value = PTE_ERRORS[name]
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RW)
    a = pt.set_pte(1, VA, level, value)
    gpu.msi_clear()
    cpls = gpu.run(read_va(VA, DST, 8, ctx=1, cmd_id=0xE0E0), fill(DST + 0x800, 8, 1, cmd_id=2))
    cpls.sort(key=lambda c: c.cmd_id != 0xE0E0)
    assert (cpls[0].status, cpls[0].nbytes) == (H.ERR_BAD_PTE, 0)
    assert cpls[1].status == H.ERR_NONE
    expect_error(gpu, H.ERR_BAD_PTE, a, fatal=False)
    assert gpu.reg("STALLED") == 0
    expect_recovers(gpu)


def test_vram_counters(launch: Launch) -> None:
    gpu = launch(qmp=True)
    pt = mmu(gpu)
    assert gpu.qom_get("vram-size") == VRAM_DEFAULT
    gpu.qt.write(SRC, os.urandom(3 * P))
    r0, w0 = gpu.qom_get("dma-read-bytes"), gpu.qom_get("dma-write-bytes")
    assert gpu.to_vram([(SRC, 0), (SRC + P, P), (SRC + 2 * P, 2 * P)]).status == H.ERR_NONE
    # the list, the fetch and the data are DMA reads; the completion a write
    assert gpu.qom_get("dma-read-bytes") - r0 == 3 * 16 + 64 + 3 * P
    assert gpu.qom_get("dma-write-bytes") - w0 == 32
    assert gpu.from_vram([(P, DST)]).status == H.ERR_NONE
    vram_map(pt, VA, 2 * P, RWA)
    c1, c2, c3 = gpu.run(
        read_va(VA + 8, DST, 100, ctx=1, cmd_id=1),
        atomic_add(VA, 1, ctx=1, cmd_id=2),
        Cmd(H.OP_MIGRATE, cmd_id=3, src=COPY_LIST, length=P, pattern=9),  # fails: no pages
    )
    assert sorted((c.cmd_id, c.status) for c in (c1, c2, c3)) == [
        (1, H.ERR_NONE),
        (2, H.ERR_NONE),
        (3, H.ERR_BAD_FLAGS),
    ]
    assert gpu.qom_get("migrate-pages-to-vram") == 3
    assert gpu.qom_get("migrate-pages-from-vram") == 1
    assert gpu.qom_get("vram-bytes-written") == 3 * P + 8
    assert gpu.qom_get("vram-bytes-read") == P + 100 + 8
    assert gpu.qom_get("cmds-failed") == 1


# ---- host-side behaviour ---------------------------------------------------------


def rss_kib(gpu: Gpu) -> int:
    assert gpu.qt.proc is not None
    status = Path(f"/proc/{gpu.qt.proc.pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])


def test_vram_is_allocated_lazily(launch: Launch) -> None:
    gpu = launch("vram-size=4G")
    gpu.setup()
    before = rss_kib(gpu)
    assert before < 1 << 20, f"QEMU with 4 GiB of VRAM already has {before} KiB resident"
    # touching 4 pages at both ends costs about 16 KiB, not gigabytes
    gpu.qt.write(SRC, os.urandom(4 * P))
    ents = [(SRC + i * P, off) for i, off in enumerate((0, P, (4 << 30) - 2 * P, (4 << 30) - P))]
    assert gpu.to_vram(ents).status == H.ERR_NONE
    assert rss_kib(gpu) - before < 64 << 10


def test_failed_list_fetch_in_trace(launch: Launch, tmp_path: Path) -> None:
    gpu, path = dmatrace(launch, tmp_path)
    gpu.setup()
    (c,) = gpu.run(migrate(NOT_RAM, 3, TO, cmd_id=0x51))
    assert (c.status, c.nbytes) == (H.ERR_DMA_READ, 0)
    recs = [r for r in parse_trace(tracefile.read_bytes(path)) if r.cmd_id == 0x51]
    kinds = [(r.engine, r.kind) for r in recs]
    assert kinds == [
        (H.ENGINE_QUEUE, H.TRACE_CMD_FETCH),
        (H.ENGINE_MIGRATE, H.TRACE_COPY_LIST),
        (H.ENGINE_QUEUE, H.TRACE_CPL_WRITE),
    ]
    assert (recs[1].addr, recs[1].length) == (NOT_RAM, 48) and recs[1].result != 0


def test_hot_unplug_with_migrate_in_flight(launch: Launch) -> None:
    """Unrealize while MIGRATE jobs (holding copy lists) are in flight: no crash, no DMA after."""
    slot = 5
    gpu = launch(f"addr={slot:#x}.0", machine="pc", qmp=True)
    gpu.setup(cmdq_size=16, cplq_size=16)
    n = H.MIGRATE_MAX_PAGES
    gpu.qt.write(COPY_LIST, copy_list([(i * P, DST + i * P) for i in range(n)]))
    # 15 jobs x 2 MiB: more than one engine run's budget, so most are in flight
    gpu.push(*(migrate(COPY_LIST, n, FROM, cmd_id=i) for i in range(15)))
    gpu.hot_unplug(slot)
    probe = [DST + i * P for i in range(0, n, 64)]
    for a in probe:
        gpu.qt.writeq(a, 0xDEAD)
    for _ in range(20):  # the device is gone: nothing writes DST any more
        gpu.qt.clock_step(1_000_000)
        assert all(gpu.qt.readq(a) == 0xDEAD for a in probe)
    assert gpu.qt.alive()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_migrate_lists(gpu: Gpu, seed: int) -> None:
    """Random lists mixing good and bad entries: each MIGRATE completes with
    a status its list explains, QEMU lives, the engine keeps working."""
    import random

    rnd = random.Random(seed)
    gpu.setup(cmdq_size=32, cplq_size=32)
    offs = [0, P, VRAM_DEFAULT - P, VRAM_DEFAULT, 1, 2**64 - P, 0x800, 0x123000]
    buses = [SRC, DST, NOT_RAM, RAM_END - P, RAM_END - 8, 2**64 - P]
    expect, sizes = {}, {}
    for i in range(24):
        direction = rnd.choice([TO, FROM, TO, FROM, 2])
        npages = rnd.choice([1, 2, 7, 64, H.MIGRATE_MAX_PAGES, H.MIGRATE_MAX_PAGES + 1])
        ents = [
            (rnd.choice(buses), rnd.choice(offs))
            if direction != FROM
            else (rnd.choice(offs), rnd.choice(buses))
            for _ in range(min(npages, H.MIGRATE_MAX_PAGES))
        ]
        la = 0x0A00_0000 + i * 0x2000
        gpu.qt.write(la, copy_list(ents))
        vram_ok = all(
            (o % P == 0 and o < VRAM_DEFAULT)
            for o in (e[1] if direction != FROM else e[0] for e in ents)
        )
        if direction == 2:
            expect[i] = {H.ERR_BAD_FLAGS}
        elif npages > H.MIGRATE_MAX_PAGES:
            expect[i] = {H.ERR_BAD_LENGTH}
        elif not vram_ok:
            expect[i] = {H.ERR_BAD_VRAM}
        else:
            expect[i] = {H.ERR_NONE, H.ERR_DMA_READ, H.ERR_DMA_WRITE}
        sizes[i] = npages
        gpu.push(migrate(la, npages, direction, cmd_id=i))
        if i % 8 == 7:
            for c in gpu.reap(8):
                assert c.status in expect[c.cmd_id], (c, expect[c.cmd_id])
                full = sizes[c.cmd_id] * P
                if c.status == H.ERR_NONE:
                    assert c.nbytes == full
                elif c.status in (H.ERR_DMA_READ, H.ERR_DMA_WRITE):
                    assert c.nbytes % P == 0 and c.nbytes < full
                else:
                    assert c.nbytes == 0, "validation errors move nothing"
    assert gpu.qt.alive() and not gpu.reg("STATUS") & H.STATUS_FATAL
    expect_recovers(gpu)

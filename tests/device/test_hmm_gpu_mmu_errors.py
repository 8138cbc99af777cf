"""hmm-gpu ABI 1.1 error paths: bad contexts and PTEs, walk DMA failures,
misaligned atomics, bad tokens, fault-ring failures, reset with stalled jobs.

Like test_hmm_gpu_errors: every case checks what the guest sees, that QEMU
lives, and that the device works again after RESET.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hmmgpu import (
    BAR0,
    CTX_TABLE,
    DST,
    NOT_RAM,
    SRC,
    Cmd,
    Gpu,
    H,
    PageTables,
    atomic_add,
    cmpxchg,
    fill,
    fill_va,
    read_va,
    tlb_inv,
    write_va,
)
from test_hmm_gpu_errors import expect_error, expect_recovers
from test_hmm_gpu_mmu import DATA_PA, HUGE_PA, RW, VA, mmu

pytestmark = pytest.mark.device

RAM_END = 256 << 20
Tamper = Callable[[PageTables], object]


def nothing(pt: PageTables) -> None:
    return None


def pte(level: int, value: int) -> Tamper:
    """Make the level-`level` entry for VA hold `value`."""
    return lambda pt: pt.set_pte(1, VA, level, value)


def ctx_desc(root: int, flags: int) -> Tamper:
    return lambda pt: pt.set_ctx(1, root, flags)


def mmu_off(pt: PageTables) -> None:
    pt.gpu.set_reg("MMU_CTRL", 0)


V = H.PTE_VALID
ENTRY_OF = -1  # ERROR_ADDR: the bus address of the tampered entry
# name: (tamper, command, error, ERROR_ADDR)
CASES: dict[str, tuple[Tamper, Cmd, int, int | None]] = {
    "ctx-out-of-range": (nothing, read_va(VA, DST, 8, ctx=4), H.ERR_BAD_CTX, 4),
    "ctx-huge": (nothing, read_va(VA, DST, 8, ctx=0xFFFFFFFF), H.ERR_BAD_CTX, 0xFFFFFFFF),
    "ctx-not-valid": (ctx_desc(DATA_PA, 0), read_va(VA, DST, 8, ctx=1), H.ERR_BAD_CTX, 1),
    "ctx-reserved-flags": (ctx_desc(DATA_PA, 3), read_va(VA, DST, 8, ctx=1), H.ERR_BAD_CTX, 1),
    "ctx-root-unaligned": (
        ctx_desc(DATA_PA + 8, 1),
        read_va(VA, DST, 8, ctx=1),
        H.ERR_BAD_CTX,
        1,
    ),
    "mmu-disabled": (mmu_off, fill_va(VA, 8, 1, ctx=1), H.ERR_BAD_CTX, 1),
    "tlb-inv-ctx-huge": (nothing, tlb_inv(0, 4096, ctx=H.MAX_CTX), H.ERR_BAD_CTX, H.MAX_CTX),
    "tlb-inv-zero-length": (nothing, tlb_inv(0, 0, ctx=1), H.ERR_BAD_LENGTH, None),
    "pte-reserved-bits": (
        pte(0, DATA_PA | V | H.PTE_READ | (1 << 7)),
        read_va(VA, DST, 8, ctx=1),
        H.ERR_BAD_PTE,
        ENTRY_OF,
    ),
    "pte-high-reserved-bits": (
        pte(2, DATA_PA | V | (1 << 60)),
        read_va(VA, DST, 8, ctx=1),
        H.ERR_BAD_PTE,
        ENTRY_OF,
    ),
    "pte-leaf-level3": (
        pte(3, V | H.PTE_LEAF | H.PTE_READ),
        read_va(VA, DST, 8, ctx=1),
        H.ERR_BAD_PTE,
        ENTRY_OF,
    ),
    "pte-leaf-level2": (
        pte(2, V | H.PTE_LEAF | H.PTE_READ),
        read_va(VA, DST, 8, ctx=1),
        H.ERR_BAD_PTE,
        ENTRY_OF,
    ),
    "pte-2m-misaligned": (
        pte(1, (HUGE_PA + 0x1000) | V | H.PTE_LEAF | RW),
        read_va(VA, DST, 8, ctx=1),
        H.ERR_BAD_PTE,
        ENTRY_OF,
    ),
    "pte-vram-beyond-vram-size": (
        pte(0, (256 << 20) | V | RW | H.PTE_VRAM),
        write_va(SRC, VA, 8, ctx=1),
        H.ERR_BAD_PTE,
        ENTRY_OF,
    ),
    "ptw-table-not-ram": (
        pte(2, (NOT_RAM & H.PTE_ADDR_MASK) | V),
        read_va(VA, DST, 8, ctx=1),
        None,  # filled in below
        None,
    ),
    "ptw-table-is-own-bar": (pte(1, BAR0 | V), read_va(VA, DST, 8, ctx=1), H.ERR_PTW, None),
    "ptw-root-not-ram": (ctx_desc(RAM_END, 1), read_va(VA, DST, 8, ctx=1), H.ERR_PTW, None),
    "atomic-misaligned": (nothing, atomic_add(VA + 4, 1, ctx=1), H.ERR_ALIGN, VA + 4),
    "cmpxchg-misaligned": (nothing, cmpxchg(VA + 1, 0, 1, ctx=1), H.ERR_ALIGN, VA + 1),
    "atomic-bad-length": (
        nothing,
        Cmd(H.OP_ATOMIC_ADD, ctx=1, dst=VA, length=16),
        H.ERR_BAD_LENGTH,
        None,
    ),
    "va-job-huge-length": (
        nothing,
        read_va(VA, DST, H.MAX_XFER + 1, ctx=1),
        H.ERR_BAD_LENGTH,
        None,
    ),
    "va-job-length-2^63": (nothing, fill_va(VA, 1 << 63, 0, ctx=1), H.ERR_BAD_LENGTH, None),
    "va-beyond-48-bits": (nothing, read_va(1 << 48, DST, 8, ctx=1), H.ERR_FAULT, 1 << 48),
    "va-wraps": (nothing, read_va(2**64 - 8, DST, 64, ctx=1), H.ERR_FAULT, 2**64 - 8),
    "read-va-bus-dst-not-ram": (nothing, read_va(VA, NOT_RAM, 8, ctx=1), H.ERR_DMA_WRITE, NOT_RAM),
    "write-va-bus-src-not-ram": (nothing, write_va(NOT_RAM, VA, 8, ctx=1), H.ERR_DMA_READ, NOT_RAM),
    "atomic-old-value-not-ram": (
        nothing,
        atomic_add(VA, 1, old_to=NOT_RAM, ctx=1),
        H.ERR_DMA_WRITE,
        NOT_RAM,
    ),
}
CASES["ptw-table-not-ram"] = (*CASES["ptw-table-not-ram"][:2], H.ERR_PTW, None)


@pytest.mark.parametrize("name", CASES)
def test_mmu_per_command_error(gpu: Gpu, name: str) -> None:
    tamper, bad, err, addr = CASES[name]
    pt = mmu(gpu)
    pt.map(1, VA, DATA_PA, RW | H.PTE_ATOMIC)
    entry = tamper(pt)
    gpu.msi_clear()
    bad.cmd_id = 0xE0E0
    want_addr = entry if addr == ENTRY_OF else addr
    if name == "ptw-table-not-ram":
        want_addr = (NOT_RAM & H.PTE_ADDR_MASK) + 8 * ((VA >> 21) & 511)
    cpls = gpu.run(bad, fill(DST + 0x800, 8, 0x600D, cmd_id=0x600D))
    cpls.sort(key=lambda c: c.cmd_id != 0xE0E0)
    assert (cpls[0].cmd_id, cpls[0].status) == (0xE0E0, err)
    assert (cpls[1].cmd_id, cpls[1].status) == (0x600D, H.ERR_NONE), "queue did not continue"
    expect_error(gpu, err, want_addr, fatal=False)
    assert gpu.reg("STALLED") == 0 and gpu.pending_faults() == 0, "an error is not a fault"
    if err == H.ERR_BAD_PTE or name.startswith("atomic"):
        assert gpu.qt.readq(DST) == 0
    expect_recovers(gpu)


def test_page_table_loop_terminates(gpu: Gpu) -> None:
    """Every level points back at the root: the walk still ends after 4 reads."""
    pt = mmu(gpu)
    root = pt.roots[1]
    for level in (3, 2, 1, 0):
        idx = (VA >> (12 + 9 * level)) & 511
        gpu.qt.writeq(root + 8 * idx, root | H.PTE_VALID | RW)
    (c,) = gpu.run(read_va(VA, DST, 8, ctx=1))
    # the level-0 "leaf" maps the root table page itself: a legal translation
    assert c.status == H.ERR_NONE
    assert gpu.qt.readq(DST) == gpu.qt.readq(root)
    assert gpu.qt.alive()


@pytest.mark.parametrize("token", [0, 0xFFFF, 0x10001, 0xFFFFFFFF, 12345])
def test_bad_token(gpu: Gpu, token: int) -> None:
    mmu(gpu)
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=1))
    (rec,) = gpu.faults(1)
    assert rec.token != token
    gpu.msi_clear()
    gpu.set_reg("FAULT_CANCEL", token)
    expect_error(gpu, H.ERR_BAD_TOKEN, token, fatal=False)
    assert gpu.reg("STALLED") == 1, "a bad token cancelled something"
    gpu.set_reg("FAULT_CANCEL", rec.token)
    (c,) = gpu.reap(1)
    assert c.status == H.ERR_FAULT
    expect_recovers(gpu)


def test_cancel_with_nothing_stalled(gpu: Gpu) -> None:
    mmu(gpu)
    gpu.set_reg("FAULT_CANCEL", 1)
    expect_error(gpu, H.ERR_BAD_TOKEN, 1, fatal=False)
    gpu.set_reg("FAULT_REPLAY", 1)  # replay with nothing stalled is harmless
    assert gpu.reg("ERROR") == H.ERR_BAD_TOKEN
    expect_recovers(gpu)


def test_fault_ring_outside_ram_is_fatal(gpu: Gpu) -> None:
    mmu(gpu, faultq=False)
    gpu.setup_faultq(base=NOT_RAM)
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=1))
    expect_error(gpu, H.ERR_FAULTQ_WRITE, NOT_RAM, fatal=True)
    assert gpu.reg("STALLED") == 0 and gpu.reg("CPLQ_TAIL") == 0
    expect_recovers(gpu)


def test_reset_with_stalled_jobs(gpu: Gpu) -> None:
    pt = mmu(gpu)
    gpu.push(*(read_va(VA + 4096 * i, DST + 8 * i, 8, ctx=1, cmd_id=i) for i in range(4)))
    gpu.wait(lambda: gpu.reg("STALLED") == 4, "4 stalled jobs")
    gpu.reset()
    assert gpu.reg("STALLED") == 0 and gpu.reg("STATUS") == H.STATUS_READY
    assert gpu.reg("MMU_CTRL") == 0 and gpu.reg("FAULTQ_CTRL") == 0
    # the dropped jobs never come back, even after the tables are fixed
    pt.map_range(1, VA, DATA_PA, 4 * 4096, RW)
    gpu.set_reg("FAULT_REPLAY", 1)
    gpu.set_reg("FAULT_CANCEL", 1)
    for _ in range(20):
        assert gpu.qt.readq(DST) == 0
    expect_recovers(gpu)
    # and the MMU works again from scratch
    gpu.reset()
    pt2 = mmu(gpu)
    pt2.map(1, VA, DATA_PA, RW)
    gpu.qt.writeq(DATA_PA, 0xAB)
    (c,) = gpu.run(read_va(VA, DST, 8, ctx=1))
    assert c.status == H.ERR_NONE and gpu.qt.readq(DST) == 0xAB


def test_cmdq_disable_with_stalled_jobs(gpu: Gpu) -> None:
    mmu(gpu)
    gpu.push(read_va(VA, DST, 8, ctx=1, cmd_id=1))
    gpu.faults(1)
    gpu.set_reg("CMDQ_CTRL", 0)
    assert gpu.reg("STALLED") == 0
    gpu.set_reg("FAULT_REPLAY", 1)
    assert gpu.qt.alive()
    expect_recovers(gpu)


@pytest.mark.parametrize(
    "what",
    ["ctx-base-unaligned", "ctx-count-0", "ctx-count-huge", "faultq-size", "faultq-base"],
)
def test_bad_mmu_config_is_fatal(gpu: Gpu, what: str) -> None:
    gpu.setup()
    gpu.msi_clear()
    if what.startswith("ctx"):
        gpu.set_reg("CTX_BASE_LO", CTX_TABLE + (8 if what == "ctx-base-unaligned" else 0))
        gpu.set_reg("CTX_COUNT", {"ctx-count-0": 0, "ctx-count-huge": H.MAX_CTX + 1}.get(what, 1))
        gpu.set_reg("MMU_CTRL", H.MMU_ENABLE)
        assert gpu.reg("MMU_CTRL") == 0
    else:
        gpu.set_reg("FAULTQ_BASE_LO", 0x31_0000 + (32 if what == "faultq-base" else 0))
        gpu.set_reg("FAULTQ_SIZE", 3 if what == "faultq-size" else 16)
        gpu.set_reg("FAULTQ_CTRL", H.QCTRL_ENABLE)
        assert gpu.reg("FAULTQ_CTRL") == 0
    expect_error(gpu, H.ERR_QUEUE_CONFIG, None, fatal=True)
    expect_recovers(gpu)


def test_faultq_head_out_of_range_is_fatal(gpu: Gpu) -> None:
    mmu(gpu)
    gpu.msi_clear()
    gpu.set_reg("FAULTQ_HEAD", 1)  # beyond FAULTQ_TAIL (0)
    expect_error(gpu, H.ERR_DOORBELL, 1, fatal=True)
    expect_recovers(gpu)


@pytest.mark.parametrize("reg", ["CTX_BASE_LO", "CTX_COUNT", "FAULTQ_BASE_LO", "FAULTQ_SIZE"])
def test_mmu_reconfigured_while_enabled(gpu: Gpu, reg: str) -> None:
    mmu(gpu)
    before = gpu.reg(reg)
    gpu.set_reg(reg, 0x4000)
    expect_error(gpu, H.ERR_BAD_REGISTER, getattr(H, f"REG_{reg}"), fatal=False)
    assert gpu.reg(reg) == before
    expect_recovers(gpu)


def test_faultq_head_while_disabled(gpu: Gpu) -> None:
    gpu.setup()
    gpu.msi_clear()
    gpu.set_reg("FAULTQ_HEAD", 0)
    expect_error(gpu, H.ERR_BAD_REGISTER, H.REG_FAULTQ_HEAD, fatal=False)
    expect_recovers(gpu)


def test_bad_fault_vector(gpu: Gpu) -> None:
    gpu.setup()
    gpu.msi_clear()
    gpu.set_reg("VEC_FAULT", H.NUM_VECTORS)
    assert gpu.reg("VEC_FAULT") == H.VEC_FAULT_DEFAULT
    expect_error(gpu, H.ERR_BAD_VECTOR, H.NUM_VECTORS, fatal=False)
    expect_recovers(gpu)


def test_huge_unmapped_job_faults_once(gpu: Gpu) -> None:
    mmu(gpu)
    gpu.push(fill_va(VA, H.MAX_XFER, 0, ctx=1, cmd_id=9))
    (rec,) = gpu.faults(1)
    for _ in range(20):
        assert gpu.pending_faults() == 0
    gpu.set_reg("FAULT_CANCEL", rec.token)
    (c,) = gpu.reap(1)
    assert (c.status, c.nbytes) == (H.ERR_FAULT, 0)


@pytest.mark.parametrize("seed", range(3))
def test_random_garbage_survives(gpu: Gpu, seed: int) -> None:
    """Random commands over random page tables (loops, MMIO, junk bits): the
    device never dies, every job completes or stalls, RESET recovers."""
    import random

    rnd = random.Random(seed)
    pt = mmu(gpu, ctx_count=2)
    addrs = [BAR0, NOT_RAM, RAM_END - 8, pt.roots[1], CTX_TABLE, DATA_PA, HUGE_PA, 0]
    for _ in range(40):  # scribble over the tables reachable from ctx 1
        lvl = rnd.randrange(4)
        va = VA + rnd.randrange(8) * (4096 << (9 * rnd.randrange(3)))
        val = rnd.choice(addrs) & H.PTE_ADDR_MASK | rnd.getrandbits(6)
        if rnd.random() < 0.1:
            val = rnd.getrandbits(64)
        pt.set_pte(1, va, lvl, val)
    gpu.qt.write(CTX_TABLE, rnd.randbytes(16) if seed == 2 else gpu.qt.read(CTX_TABLE, 16))
    cmds = []
    for i in range(60):
        op = rnd.randrange(3, 11)
        va = VA + rnd.randrange(8) * (4096 << (9 * rnd.randrange(3))) + rnd.randrange(16)
        cmds.append(
            Cmd(
                op,
                ctx=rnd.choice([0, 1, 1, 1, 2, 0xFFFFFFFF]),
                cmd_id=i,
                src=rnd.choice([va, DST, NOT_RAM, 0]),
                dst=rnd.choice([va, va + 8, DST + 64, 2**64 - 8]),
                length=rnd.choice([0, 1, 8, 4096, 70000, H.MAX_XFER, 2**64 - 1]),
                pattern=rnd.getrandbits(64),
                arg2=rnd.getrandbits(64),
            )
        )
    done = 0
    for k in range(0, len(cmds), 10):
        gpu.push(*cmds[k : k + 10])
        for _ in range(200):
            if gpu.pending_cpls() + done + gpu.reg("STALLED") >= k + 10:
                break
        n = gpu.pending_cpls()
        done += len(gpu.reap(n)) if n else 0
        while gpu.pending_faults():
            (r,) = gpu.faults(1)
            if rnd.random() < 0.5:
                gpu.set_reg("FAULT_CANCEL", r.token)
            else:
                gpu.set_reg("FAULT_REPLAY", 1)
        assert gpu.qt.alive()
    assert gpu.qt.alive()
    expect_recovers(gpu)

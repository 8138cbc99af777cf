"""hmm-gpu error model over qtest.

Every case checks what the guest can see (completion status, REG_ERROR,
ERROR_ADDR, INTR_STATUS.ERROR, the MSI-X message on the error vector,
STATUS_FATAL), that QEMU is still alive, and that the device works again
after RESET.
"""

from __future__ import annotations

import pytest
from hmmgpu import (
    BAR0,
    CMDQ,
    CPLQ,
    DST,
    NOT_RAM,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEM,
    SRC,
    Cmd,
    Gpu,
    H,
    copy,
    fill,
)

pytestmark = pytest.mark.device

RAM_END = 256 << 20  # conftest starts q35 with -m 256M: nothing mapped above


def expect_error(gpu: Gpu, err: int, addr: int | None, *, fatal: bool, msi: bool = True) -> None:
    if fatal:
        gpu.wait_fatal()
    assert gpu.reg("ERROR") == err, f"REG_ERROR {gpu.reg('ERROR')} != {err}"
    if addr is not None:
        assert gpu.error_addr() == addr, f"ERROR_ADDR {gpu.error_addr():#x} != {addr:#x}"
    assert gpu.reg("INTR_STATUS") & H.INTR_ERROR
    assert gpu.msi_fired(H.VEC_ERR_DEFAULT) == msi
    assert bool(gpu.reg("STATUS") & H.STATUS_FATAL) == fatal
    assert gpu.qt.alive()
    assert "hmm-gpu:" in gpu.qt.log_text(), "no LOG_GUEST_ERROR message"


def expect_recovers(gpu: Gpu) -> None:
    """RESET brings the device back to a clean, working state."""
    gpu.reset()
    assert gpu.reg("STATUS") == H.STATUS_READY
    assert gpu.reg("ERROR") == H.ERR_NONE
    assert gpu.reg("INTR_STATUS") == 0
    gpu.setup()
    gpu.msi_clear()
    gpu.qt.write(SRC, b"recovered!")
    (cpl,) = gpu.run(copy(SRC, DST + 0x1000, 10, cmd_id=0x5EC, flags=H.CMD_F_IRQ))
    assert (cpl.cmd_id, cpl.status, cpl.nbytes) == (0x5EC, H.ERR_NONE, 10)
    assert gpu.qt.read(DST + 0x1000, 10) == b"recovered!"
    assert gpu.msi_fired(H.VEC_CPL_DEFAULT)
    assert gpu.qt.alive()


# ---- per-command errors: that command fails, the queue keeps running ------

ENTRY = -1  # ERROR_ADDR is the command's ring entry

PER_COMMAND = {
    "bad-opcode": (Cmd(0x7F), H.ERR_BAD_OPCODE, ENTRY, 0),
    "bad-opcode-11": (Cmd(11, dst=DST, length=8), H.ERR_BAD_OPCODE, ENTRY, 0),
    "bad-opcode-255": (Cmd(255, dst=DST, length=8), H.ERR_BAD_OPCODE, ENTRY, 0),
    "zero-length-copy": (copy(SRC, DST, 0), H.ERR_BAD_LENGTH, ENTRY, 0),
    "zero-length-fill": (fill(DST, 0, 1), H.ERR_BAD_LENGTH, ENTRY, 0),
    "huge-length": (fill(DST, H.MAX_XFER + 1, 1), H.ERR_BAD_LENGTH, ENTRY, 0),
    "huge-length-2^63": (copy(SRC, DST, 1 << 63), H.ERR_BAD_LENGTH, ENTRY, 0),
    "reserved-flags": (fill(DST, 8, 1, flags=0x80), H.ERR_BAD_FLAGS, ENTRY, 0),
    "reserved-flags-nop": (Cmd(H.OP_NOP, flags=0x04), H.ERR_BAD_FLAGS, ENTRY, 0),
    "overlap-forward": (copy(SRC, SRC + 8, 64), H.ERR_OVERLAP, SRC + 8, 0),
    "overlap-backward": (copy(SRC + 8, SRC, 64), H.ERR_OVERLAP, SRC, 0),
    "overlap-same": (copy(SRC, SRC, 1), H.ERR_OVERLAP, SRC, 0),
    "copy-src-not-ram": (copy(NOT_RAM, DST, 64), H.ERR_DMA_READ, NOT_RAM, 0),
    "copy-dst-not-ram": (copy(SRC, NOT_RAM, 64), H.ERR_DMA_WRITE, NOT_RAM, 0),
    "fill-dst-not-ram": (fill(NOT_RAM, 64, 1), H.ERR_DMA_WRITE, NOT_RAM, 0),
    "copy-partial-src": (copy(RAM_END - 0x10000, DST, 0x20000), H.ERR_DMA_READ, RAM_END, 0x10000),
    "fill-partial-dst": (fill(RAM_END - 0x10000, 0x20000, 7), H.ERR_DMA_WRITE, RAM_END, 0x10000),
    "src-wraps-address-space": (copy(2**64 - 16, DST, 64), H.ERR_DMA_READ, 2**64 - 16, 0),
    "dst-wraps-address-space": (fill(2**64 - 16, 64, 1), H.ERR_DMA_WRITE, 2**64 - 16, 0),
    # our own BAR0: the BH's reentrancy guard makes the DMA fail cleanly
    "dma-into-own-bar": (
        fill(BAR0 + H.REG_SCRATCH, 4, 0x12345678),
        H.ERR_DMA_WRITE,
        BAR0 + H.REG_SCRATCH,
        0,
    ),
}


@pytest.mark.parametrize("name", PER_COMMAND)
def test_per_command_error(gpu: Gpu, name: str) -> None:
    bad, err, addr, nbytes = PER_COMMAND[name]
    gpu.setup()
    gpu.msi_clear()
    gpu.qt.write(SRC, bytes(range(256)))
    bad.cmd_id = 0xE0E0
    entry = gpu.cmdq + 64 * gpu.cmd_tail
    cpls = gpu.run(bad, fill(DST + 0x800, 8, 0x600D, cmd_id=0x600D))
    # jobs run concurrently (ABI 1.1): a short job may complete first
    cpls.sort(key=lambda c: c.cmd_id != 0xE0E0)
    assert (cpls[0].cmd_id, cpls[0].status, cpls[0].nbytes) == (0xE0E0, err, nbytes)
    assert cpls[0].opcode == bad.opcode
    assert (cpls[1].cmd_id, cpls[1].status) == (0x600D, H.ERR_NONE), "queue did not continue"
    assert gpu.qt.readq(DST + 0x800) == 0x600D
    expect_error(gpu, err, entry if addr == ENTRY else addr, fatal=False)
    if name.startswith("overlap"):
        assert gpu.qt.read(SRC, 256) == bytes(range(256)), "overlapping COPY moved data"
    if name == "dma-into-own-bar":
        assert gpu.reg("SCRATCH") == 0
    expect_recovers(gpu)


def test_error_interrupt_masked(gpu: Gpu) -> None:
    gpu.setup(intr_mask=H.INTR_CPL)
    gpu.msi_clear()
    (cpl,) = gpu.run(Cmd(0x7F))
    assert cpl.status == H.ERR_BAD_OPCODE
    expect_error(gpu, H.ERR_BAD_OPCODE, None, fatal=False, msi=False)
    gpu.set_reg("INTR_STATUS", H.INTR_ERROR)
    assert not gpu.reg("INTR_STATUS") & H.INTR_ERROR
    expect_recovers(gpu)


# ---- queue-level errors: STATUS_FATAL, engine halted until RESET ---------

BAD_RING_CONFIGS = {
    "cmdq-base-unaligned": ("CMDQ", CMDQ + 8, 16),
    "cmdq-size-not-pow2": ("CMDQ", CMDQ, 12),
    "cmdq-size-too-small": ("CMDQ", CMDQ, 1),
    "cmdq-size-zero": ("CMDQ", CMDQ, 0),
    "cmdq-size-too-big": ("CMDQ", CMDQ, H.QUEUE_MAX_ENTRIES * 2),
    "cplq-base-unaligned": ("CPLQ", CPLQ + 32, 16),
    "cplq-size-not-pow2": ("CPLQ", CPLQ, 3),
}


@pytest.mark.parametrize("name", BAD_RING_CONFIGS)
def test_bad_ring_config_is_fatal(gpu: Gpu, name: str) -> None:
    q, base, size = BAD_RING_CONFIGS[name]
    gpu.set_reg("INTR_MASK", H.INTR_CPL | H.INTR_ERROR)
    gpu.msi_clear()
    gpu.set_reg(f"{q}_BASE_LO", base & 0xFFFFFFFF)
    gpu.set_reg(f"{q}_BASE_HI", base >> 32)
    gpu.set_reg(f"{q}_SIZE", size)
    gpu.set_reg(f"{q}_CTRL", H.QCTRL_ENABLE)
    expect_error(gpu, H.ERR_QUEUE_CONFIG, base, fatal=True)
    assert gpu.reg(f"{q}_CTRL") == 0
    expect_recovers(gpu)


def test_doorbell_out_of_range(gpu: Gpu) -> None:
    gpu.setup(cmdq_size=16)
    gpu.msi_clear()
    gpu.set_reg("CMDQ_TAIL", 16)
    expect_error(gpu, H.ERR_DOORBELL, 16, fatal=True)
    assert gpu.reg("CMDQ_TAIL") == 0
    expect_recovers(gpu)


def test_cplq_head_out_of_range(gpu: Gpu) -> None:
    gpu.setup(cplq_size=8)
    gpu.msi_clear()
    gpu.set_reg("CPLQ_HEAD", 8)
    expect_error(gpu, H.ERR_DOORBELL, 8, fatal=True)
    expect_recovers(gpu)


def test_cplq_head_beyond_tail(gpu: Gpu) -> None:
    gpu.setup(cplq_size=8)
    gpu.run(fill(DST, 8, 1))  # TAIL = 1, HEAD = 1
    gpu.msi_clear()
    gpu.set_reg("CPLQ_HEAD", 3)  # consumes completions never produced
    expect_error(gpu, H.ERR_DOORBELL, 3, fatal=True)
    expect_recovers(gpu)


def test_command_ring_outside_ram(gpu: Gpu) -> None:
    gpu.setup(cmdq=NOT_RAM)
    gpu.msi_clear()
    gpu.set_reg("CMDQ_TAIL", 1)
    expect_error(gpu, H.ERR_CMDQ_FETCH, NOT_RAM, fatal=True)
    assert gpu.reg("CPLQ_TAIL") == 0
    expect_recovers(gpu)


def test_completion_ring_outside_ram(gpu: Gpu) -> None:
    gpu.setup(cplq=NOT_RAM)
    gpu.msi_clear()
    gpu.push(fill(DST, 8, 0xF00D))
    expect_error(gpu, H.ERR_CPLQ_WRITE, NOT_RAM, fatal=True)
    assert gpu.qt.readq(DST) == 0xF00D  # the command itself ran
    gpu.push(fill(DST + 8, 8, 0xF00D))
    for _ in range(20):
        assert gpu.qt.readq(DST + 8) == 0, "engine kept going after a fatal error"
    assert gpu.reg("CPLQ_TAIL") == 0
    expect_recovers(gpu)


def test_fatal_engine_ignores_doorbells_until_reset(gpu: Gpu) -> None:
    gpu.setup(cmdq_size=16)
    gpu.set_reg("CMDQ_TAIL", 99)
    gpu.wait_fatal()
    gpu.push(fill(DST, 8, 0xAB))  # valid doorbell, but the engine is halted
    for _ in range(50):
        assert gpu.reg("CMDQ_HEAD") == 0
    assert gpu.qt.readq(DST) == 0
    expect_recovers(gpu)


def test_bus_master_disabled(gpu: Gpu) -> None:
    gpu.setup()
    gpu.msi_clear()
    gpu.set_command(PCI_COMMAND_MEM)  # no bus mastering: every DMA fails
    gpu.push(fill(DST, 8, 0xAB, flags=H.CMD_F_IRQ))
    # the MSI-X message is a DMA too, so nothing reaches memory
    expect_error(gpu, H.ERR_CMDQ_FETCH, CMDQ, fatal=True, msi=False)
    assert gpu.qt.readq(DST) == 0
    gpu.set_command(PCI_COMMAND_MEM | PCI_COMMAND_MASTER)
    expect_recovers(gpu)


# ---- register-level errors (non-fatal, ignored writes) -------------------

RO_REGS = (
    "ID",
    "VERSION",
    "CAPS",
    "STATUS",
    "ERROR",
    "ERROR_ADDR_LO",
    "ERROR_ADDR_HI",
    "MAX_XFER",
    "NUM_VECTORS",
    "CMDQ_HEAD",
    "CPLQ_TAIL",
    "TLB_ENTRIES",
    "FAULTQ_TAIL",
    "STALLED",
)


@pytest.mark.parametrize("name", RO_REGS)
def test_write_to_read_only_register(gpu: Gpu, name: str) -> None:
    gpu.setup()
    gpu.msi_clear()
    before = gpu.reg(name)
    off = getattr(H, f"REG_{name}")
    gpu.wr(off, 0x5A5A5A5A)
    expect_error(gpu, H.ERR_BAD_REGISTER, off, fatal=False)
    if not name.startswith("ERROR"):
        assert gpu.reg(name) == before
    expect_recovers(gpu)


@pytest.mark.parametrize("off", [0x03C, 0x058, 0x100, 0xFFC])
@pytest.mark.parametrize("op", ["read", "write"])
def test_undefined_register_offset(gpu: Gpu, off: int, op: str) -> None:
    gpu.set_reg("INTR_MASK", H.INTR_ERROR)
    gpu.msi_clear()
    if op == "read":
        assert gpu.rd(off) == 0
    else:
        gpu.wr(off, 0xFFFFFFFF)
    expect_error(gpu, H.ERR_BAD_REGISTER, off, fatal=False)
    expect_recovers(gpu)


@pytest.mark.parametrize(
    "access",
    [
        "writeb",
        "writew",
        "writeq",
        "readb",
        "readw",
        "readq",
        "unaligned-readl",
        "unaligned-writel",
    ],
)
def test_bad_access_size(gpu: Gpu, access: str) -> None:
    gpu.set_reg("INTR_MASK", H.INTR_ERROR)
    gpu.set_reg("SCRATCH", 0x11223344)
    gpu.msi_clear()
    addr = BAR0 + H.REG_SCRATCH
    qt = gpu.qt
    if access.startswith("unaligned"):
        addr += 1
        if access.endswith("readl"):
            assert qt.readl(addr) == 0
        else:
            qt.writel(addr, 0)
    elif access.startswith("write"):
        getattr(qt, access)(addr, 0)
    else:
        assert getattr(qt, access)(addr) == 0
    expect_error(gpu, H.ERR_BAD_REGISTER, addr - BAR0, fatal=False)
    assert gpu.reg("SCRATCH") == 0x11223344
    expect_recovers(gpu)


def test_bad_reset_magic(gpu: Gpu) -> None:
    gpu.setup()
    gpu.set_reg("SCRATCH", 77)
    gpu.msi_clear()
    gpu.set_reg("RESET", 0x12345678)
    expect_error(gpu, H.ERR_BAD_REGISTER, H.REG_RESET, fatal=False)
    assert gpu.reg("SCRATCH") == 77, "a bad magic must not reset"
    assert gpu.reg("CMDQ_CTRL") == H.QCTRL_ENABLE
    expect_recovers(gpu)


@pytest.mark.parametrize("name", ["CMDQ_BASE_LO", "CMDQ_SIZE", "CPLQ_BASE_HI", "CPLQ_SIZE"])
def test_ring_reconfigured_while_enabled(gpu: Gpu, name: str) -> None:
    gpu.setup()
    before = gpu.reg(name)
    gpu.msi_clear()
    gpu.set_reg(name, 0x40000)
    expect_error(gpu, H.ERR_BAD_REGISTER, getattr(H, f"REG_{name}"), fatal=False)
    assert gpu.reg(name) == before
    (cpl,) = gpu.run(fill(DST, 8, 3))  # rings still as configured
    assert cpl.status == H.ERR_NONE
    expect_recovers(gpu)


@pytest.mark.parametrize("name", ["CMDQ_TAIL", "CPLQ_HEAD"])
def test_doorbell_while_disabled(gpu: Gpu, name: str) -> None:
    gpu.set_reg("INTR_MASK", H.INTR_ERROR)
    gpu.msi_clear()
    gpu.set_reg(name, 1)
    expect_error(gpu, H.ERR_BAD_REGISTER, getattr(H, f"REG_{name}"), fatal=False)
    assert gpu.reg(name) == 0
    expect_recovers(gpu)


def test_bad_vector(gpu: Gpu) -> None:
    gpu.setup()
    gpu.msi_clear()
    gpu.set_reg("VEC_CPL", H.NUM_VECTORS)
    # reported on the (unchanged, valid) error vector; the bad one is never used
    expect_error(gpu, H.ERR_BAD_VECTOR, H.NUM_VECTORS, fatal=False)
    assert gpu.reg("VEC_CPL") == H.VEC_CPL_DEFAULT
    gpu.msi_clear()
    gpu.set_reg("VEC_ERR", 0)
    gpu.set_reg("VEC_ERR", 0xFFFFFFFF)
    assert gpu.reg("ERROR") == H.ERR_BAD_VECTOR
    assert gpu.reg("VEC_ERR") == 0
    assert gpu.msi_fired(0), "error not signalled on the old error vector"
    assert not gpu.msi_fired(1)
    (cpl,) = gpu.run(fill(DST, 8, 1, flags=H.CMD_F_IRQ))
    assert cpl.status == H.ERR_NONE
    assert gpu.qt.alive()
    expect_recovers(gpu)

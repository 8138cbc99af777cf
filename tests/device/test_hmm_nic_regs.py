"""hmm-nic register front end over qtest: identity, reset, configuration errors.

Every error case checks what the guest sees (REG_ERROR, ERROR_ADDR,
INTR_STATUS.ERROR, the MSI-X message on the error vector), that the write
had no effect, and that QEMU is still alive.
"""

from __future__ import annotations

import pytest
from hmmnic import (
    ABI,
    ALL_INTR,
    EQ,
    QP_TABLE,
    LaunchNic,
    N,
    Nic,
)

pytestmark = pytest.mark.device


@pytest.fixture
def nic(launch_nic: LaunchNic) -> Nic:
    """An hmm-nic with every interrupt cause enabled (errors signal MSI-X)."""
    n = launch_nic()
    n.set_reg("INTR_MASK", ALL_INTR)
    return n


def expect_error(nic: Nic, err: int, addr: int | None = None) -> None:
    assert nic.reg("ERROR") == err, f"REG_ERROR {nic.reg('ERROR')} != {err}"
    if addr is not None:
        assert nic.error_addr() == addr, f"ERROR_ADDR {nic.error_addr():#x} != {addr:#x}"
    assert nic.reg("INTR_STATUS") & N.INTR_ERROR
    assert nic.msi_fired(N.VEC_ERR_DEFAULT)
    assert not nic.reg("STATUS") & N.STATUS_FATAL
    assert nic.qt.alive()
    assert "hmm-nic:" in nic.qt.log_text(), "no LOG_GUEST_ERROR message"
    nic.set_reg("INTR_STATUS", N.INTR_ERROR)
    nic.msi_clear()


def test_identity(nic: Nic) -> None:
    assert nic.cfg_read(0x00) == N.PCI_VENDOR_ID | (N.PCI_DEVICE_ID << 16)
    assert nic.cfg_read(0x08, 1) == N.PCI_REVISION
    assert nic.reg("ID") == N.ID_MAGIC
    assert nic.reg("VERSION") == (N.VERSION_MAJOR << 16) | N.VERSION_MINOR
    assert nic.reg("CAPS") == (N.CAP_RC | N.CAP_ATOMIC | N.CAP_ODP | N.CAP_IMPLICIT |
                               N.CAP_LINK | N.CAP_FLUSH | N.CAP_ATOMIC_WRITE)
    assert nic.reg("PORT_LID") == 1 and nic.reg("LINK_STATUS") == 0  # no link chardev
    assert nic.reg("MAX_MSG") == N.MAX_MSG
    assert nic.reg("NUM_VECTORS") == N.NUM_VECTORS
    assert nic.reg("TLB_ENTRIES") == N.TLB_SIZE
    assert nic.reg("STATUS") == N.STATUS_READY
    assert nic.reg("ERROR") == N.ERR_NONE
    assert nic.reg("VEC_EQ") == N.VEC_EQ_DEFAULT
    assert nic.reg("VEC_ERR") == N.VEC_ERR_DEFAULT
    assert nic.reg("VEC_FAULT") == N.VEC_FAULT_DEFAULT
    # write-only registers read as 0
    for r in ("RESET", "SQ_DOORBELL", "RQ_DOORBELL", "CQ_ARM", "INV_GO", "FAULT_REPLAY"):
        assert nic.reg(r) == 0
    assert nic.reg("ERROR") == N.ERR_NONE


RW_DEFAULTS = {
    # register: (value to write, value after RESET)
    "SCRATCH": (0xDEADBEEF, 0),
    "INTR_MASK": (N.INTR_EQ | N.INTR_ERROR | N.INTR_FAULT, 0),
    "VEC_EQ": (2, N.VEC_EQ_DEFAULT),
    "VEC_ERR": (0, N.VEC_ERR_DEFAULT),
    "VEC_FAULT": (1, N.VEC_FAULT_DEFAULT),
    "MR_BASE_LO": (0x1000, 0),
    "MR_BASE_HI": (0x1, 0),
    "QP_BASE_LO": (0x2000, 0),
    "QP_COUNT": (5, 0),
    "CQ_BASE_LO": (0x3000, 0),
    "CQ_COUNT": (7, 0),
    "EQ_BASE_LO": (0x4000, 0),
    "EQ_SIZE": (8, 0),
    "CTX_BASE_LO": (0x5000, 0),
    "CTX_COUNT": (9, 0),
    "FAULTQ_BASE_LO": (0x6000, 0),
    "FAULTQ_SIZE": (16, 0),
    "INV_CTX": (3, 0),
    "INV_VA_LO": (0x7000, 0),
    "INV_LEN_LO": (0x1000, 0),
}


def test_registers_and_reset(nic: Nic) -> None:
    for r, (val, _) in RW_DEFAULTS.items():
        nic.set_reg(r, val)
    for r, (val, _) in RW_DEFAULTS.items():
        assert nic.reg(r) == val, r
    nic.reset()
    for r, (_, after) in RW_DEFAULTS.items():
        assert nic.reg(r) == after, r
    assert nic.reg("STATUS") == N.STATUS_READY
    assert nic.reg("NIC_CTRL") == 0
    assert nic.reg("ERROR") == N.ERR_NONE


def test_reset_returns_a_running_nic_to_power_on(nic: Nic) -> None:
    nic.setup()
    assert nic.reg("NIC_CTRL") == N.ENABLE and nic.reg("EQ_CTRL") == N.ENABLE
    assert nic.reg("MMU_CTRL") == N.ENABLE and nic.reg("FAULTQ_CTRL") == N.ENABLE
    nic.reset()
    for r in ("NIC_CTRL", "EQ_CTRL", "MMU_CTRL", "FAULTQ_CTRL", "EQ_TAIL", "FAULTQ_TAIL",
              "STALLED", "QP_COUNT", "CQ_COUNT", "INTR_STATUS", "INTR_MASK"):
        assert nic.reg(r) == 0, r
    assert nic.reg("STATUS") == N.STATUS_READY


@pytest.mark.parametrize(
    "reg",
    ["ID", "VERSION", "CAPS", "STATUS", "ERROR", "MAX_MSG", "NUM_VECTORS", "TLB_ENTRIES",
     "EQ_TAIL", "FAULTQ_TAIL", "STALLED"],
)
def test_write_to_read_only_register(nic: Nic, reg: str) -> None:
    before = nic.reg(reg)
    nic.set_reg(reg, 0x12345678)
    expect_error(nic, N.ERR_BAD_REGISTER, ABI["HMM_NIC_REG_" + reg])
    if reg not in ("ERROR", "STATUS"):
        assert nic.reg(reg) == before


@pytest.mark.parametrize("off", [0x03C, 0x07C, 0x098, 0x114, 0x128, 0x15C, 0x1A8, 0x1C8, 0xFFC])
def test_undefined_register(nic: Nic, off: int) -> None:
    assert nic.rd(off) == 0
    expect_error(nic, N.ERR_BAD_REGISTER, off)
    nic.wr(off, 0xFFFFFFFF)
    expect_error(nic, N.ERR_BAD_REGISTER, off)
    assert nic.reg("ID") == N.ID_MAGIC


@pytest.mark.parametrize("size", [1, 2, 8])
def test_bad_access_size(nic: Nic, size: int) -> None:
    addr = 0xE000_0000 + N.REG_SCRATCH
    nic.set_reg("SCRATCH", 0x11223344)
    if size == 1:
        nic.qt.writeb(addr, 0xFF)
    elif size == 2:
        nic.qt.writew(addr, 0xFFFF)
    else:
        nic.qt.writeq(addr, 0xFFFF_FFFF_FFFF_FFFF)
    expect_error(nic, N.ERR_BAD_REGISTER, N.REG_SCRATCH)
    assert nic.reg("SCRATCH") == 0x11223344
    nic.qt.readb(addr + 1)
    expect_error(nic, N.ERR_BAD_REGISTER, N.REG_SCRATCH + 1)


def test_bad_reset_magic(nic: Nic) -> None:
    nic.set_reg("SCRATCH", 5)
    nic.set_reg("RESET", 0x1234)
    expect_error(nic, N.ERR_BAD_REGISTER, N.REG_RESET)
    assert nic.reg("SCRATCH") == 5


@pytest.mark.parametrize("reg", ["VEC_EQ", "VEC_ERR", "VEC_FAULT"])
def test_bad_vector(nic: Nic, reg: str) -> None:
    before = nic.reg(reg)
    nic.set_reg("INTR_MASK", N.INTR_ERROR)
    nic.set_reg(reg, N.NUM_VECTORS)
    expect_error(nic, N.ERR_BAD_VECTOR, N.NUM_VECTORS)
    assert nic.reg(reg) == before


TABLE_REGS = ["MR_BASE_LO", "MR_BASE_HI", "QP_BASE_LO", "QP_BASE_HI", "QP_COUNT",
              "CQ_BASE_LO", "CQ_BASE_HI", "CQ_COUNT"]


@pytest.mark.parametrize("reg", TABLE_REGS)
def test_table_written_while_enabled_is_busy(nic: Nic, reg: str) -> None:
    nic.setup()
    before = nic.reg(reg)
    nic.set_reg(reg, before ^ 0x40)
    expect_error(nic, N.ERR_BUSY, ABI["HMM_NIC_REG_" + reg])
    assert nic.reg(reg) == before
    # disabled again: writable
    nic.set_reg("NIC_CTRL", 0)
    nic.set_reg(reg, before ^ 0x40)
    assert nic.reg(reg) == before ^ 0x40


@pytest.mark.parametrize("reg", ["EQ_BASE_LO", "EQ_SIZE", "FAULTQ_BASE_LO", "FAULTQ_SIZE",
                                 "CTX_BASE_LO", "CTX_COUNT"])
def test_queue_written_while_enabled_is_busy(nic: Nic, reg: str) -> None:
    nic.setup()
    before = nic.reg(reg)
    nic.set_reg(reg, before + 64)
    expect_error(nic, N.ERR_BUSY, ABI["HMM_NIC_REG_" + reg])
    assert nic.reg(reg) == before


@pytest.mark.parametrize(
    "what, regs",
    [
        ("qp-count-0", {"QP_COUNT": 0}),
        ("qp-count-huge", {"QP_COUNT": N.MAX_QP + 1}),
        ("cq-count-0", {"CQ_COUNT": 0}),
        ("cq-count-huge", {"CQ_COUNT": N.MAX_CQ + 1}),
        ("mr-base-unaligned", {"MR_BASE_LO": 0x1008}),
        ("qp-base-unaligned", {"QP_BASE_LO": QP_TABLE + 4}),
    ],
)
def test_nic_enable_with_bad_config(nic: Nic, what: str, regs: dict[str, int]) -> None:
    nic.set_reg("QP_COUNT", 4)
    nic.set_reg("CQ_COUNT", 4)
    nic.set_reg("QP_BASE_LO", QP_TABLE)
    for r, v in regs.items():
        nic.set_reg(r, v)
    nic.set_reg("NIC_CTRL", N.ENABLE)
    expect_error(nic, N.ERR_QUEUE_CONFIG)
    assert nic.reg("NIC_CTRL") == 0


@pytest.mark.parametrize("size, base", [(0, EQ), (3, EQ), (1, EQ), (8192, EQ), (8, EQ + 8)])
def test_eq_enable_with_bad_config(nic: Nic, size: int, base: int) -> None:
    nic.set_reg("EQ_BASE_LO", base)
    nic.set_reg("EQ_SIZE", size)
    nic.set_reg("EQ_CTRL", N.ENABLE)
    expect_error(nic, N.ERR_QUEUE_CONFIG, base)
    assert nic.reg("EQ_CTRL") == 0


def test_eq_head_out_of_range(nic: Nic) -> None:
    nic.setup()
    nic.set_reg("EQ_HEAD", 16)
    expect_error(nic, N.ERR_QUEUE_CONFIG, 16)
    nic.set_reg("EQ_HEAD", 3)  # beyond what was produced
    expect_error(nic, N.ERR_QUEUE_CONFIG, 3)
    assert nic.reg("EQ_HEAD") == 0


def test_mmu_enable_with_bad_config(nic: Nic) -> None:
    nic.set_reg("CTX_COUNT", 0)
    nic.set_reg("MMU_CTRL", N.ENABLE)
    expect_error(nic, N.ERR_QUEUE_CONFIG)
    assert nic.reg("MMU_CTRL") == 0
    nic.set_reg("CTX_COUNT", N.MAX_MR + 1)
    nic.set_reg("MMU_CTRL", N.ENABLE)
    expect_error(nic, N.ERR_QUEUE_CONFIG)


def test_doorbell_for_qpn_out_of_range(nic: Nic) -> None:
    nic.setup(qp_count=4)
    nic.set_reg("SQ_DOORBELL", 4)
    expect_error(nic, N.ERR_BAD_QPN, 4)
    nic.set_reg("RQ_DOORBELL", 0xFFFFFFFF)
    expect_error(nic, N.ERR_BAD_QPN, 0xFFFFFFFF)


def test_doorbell_while_disabled(nic: Nic) -> None:
    nic.set_reg("SQ_DOORBELL", 0)
    expect_error(nic, N.ERR_QP_STATE, 0)


@pytest.mark.parametrize("state", ["RESET", "INIT", "RTR"])
def test_sq_doorbell_for_qp_not_in_rts(nic: Nic, state: str) -> None:
    nic.setup()
    nic.create_cq(0)
    qp = nic.create_qp(2, dest=2, state=ABI["HMM_NIC_QPS_" + state])
    nic.set_reg("SQ_DOORBELL", qp.qpn)
    expect_error(nic, N.ERR_QP_STATE, 2)
    assert nic.reg("STATUS") == N.STATUS_READY  # nothing runs


def test_cq_arm_errors(nic: Nic) -> None:
    nic.setup(cq_count=2)
    nic.set_reg("CQ_ARM", 2)
    expect_error(nic, N.ERR_BAD_CQN, 2)
    nic.set_reg("CQ_ARM", 1 | N.CQ_ARM_SOLICITED)  # CQ 1 exists in no table: not VALID
    expect_error(nic, N.ERR_BAD_CQN, 1)


def test_fault_cancel_of_unknown_token(nic: Nic) -> None:
    nic.setup()
    nic.set_reg("FAULT_CANCEL", 77)
    expect_error(nic, N.ERR_BAD_TOKEN, 77)


def test_inv_go_with_bad_context(nic: Nic) -> None:
    nic.setup()
    nic.invalidate(N.MAX_MR, 0, 4096)
    expect_error(nic, N.ERR_BAD_REGISTER, N.MAX_MR)

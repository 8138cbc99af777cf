"""hmm-nic FLUSH and ATOMIC_WRITE (ABI 1.5) over qtest, loopback.

QP 0 and QP 1 are each other's peer, as in test_hmm_nic_loopback.py; MR 1
is the requester's, MR 2 the responder's. The work requests are written as
the rxe provider's wr_flush() and wr_atomic_write() write them: no SGEs,
ATOMIC_WRITE's 8 bytes where the SGEs would be, FLUSH's range in
dma.length. Each error case checks the completion, that nothing was
written and that the QP went to ERR; the ODP cases play the driver's fault
handling (map and FAULT_REPLAY, or FAULT_CANCEL).
"""

from __future__ import annotations

import pytest
from hmmgpu import H as G
from hmmnic import (
    ACCESS_ALL,
    ALL_INTR,
    PAGE,
    REMOTE_ALL,
    RWA,
    Cqe,
    LaunchNic,
    Mr,
    N,
    Nic,
    Qp,
    SendWr,
    key,
)

pytestmark = pytest.mark.device

SIG = N.SEND_SIGNALED
ODP = N.MR_VALID | N.MR_ODP
FLUSH_ACCESS = N.ACCESS_FLUSH_GLOBAL | N.ACCESS_FLUSH_PERSISTENT
VALUE = 0x0123_4567_89AB_CDEF


@pytest.fixture
def nic(launch_nic: LaunchNic) -> Nic:
    return launch_nic()


def pair(nic: Nic, access: int = REMOTE_ALL | FLUSH_ACCESS) -> tuple[Qp, Qp]:
    nic.setup()
    nic.set_reg("INTR_MASK", ALL_INTR)
    nic.create_cq(0)
    nic.create_cq(1)
    a = nic.create_qp(0, dest=1, send_cq=0, recv_cq=1, access=access)
    b = nic.create_qp(1, dest=0, send_cq=0, recv_cq=1, access=access)
    return a, b


def remote_mr(nic: Nic, length: int = 4 * PAGE, **kw: int) -> Mr:
    kw.setdefault("access", ACCESS_ALL | FLUSH_ACCESS)
    return nic.reg_mr(2, length, **kw)


def fault_cmd(qpn: int, index: int, resp: int) -> int:
    return (resp << 63) | (qpn << 32) | index


def ok(wr_id: int, opcode: int, byte_len: int) -> Cqe:
    return Cqe(wr_id=wr_id, status=N.WC_SUCCESS, opcode=opcode, byte_len=byte_len,
               qp_num=0, imm=0, src_qp=0, wc_flags=0, vendor_err=0)


def atomic_write(dst: Mr, off: int = 0, wr_id: int = 0xA7, value: int = VALUE,
                 **kw: int) -> SendWr:
    return SendWr(N.WR_ATOMIC_WRITE, wr_id=wr_id, flags=SIG, remote_addr=dst.va + off,
                  rkey=dst.key, value=value, **kw)


def flush(dst: Mr, off: int = 0, length: int = 8, wr_id: int = 0xF1,
          type_: int = N.FLUSH_GLOBAL, level: int = N.FLUSH_RANGE, **kw: int) -> SendWr:
    return SendWr(N.WR_FLUSH, wr_id=wr_id, flags=SIG, remote_addr=dst.va + off, rkey=dst.key,
                  length=length, flush_type=type_, flush_level=level, **kw)


def expect_error(nic: Nic, wr_id: int, status: int, vendor_err: int = 0) -> None:
    """The WR failed with ``status``, the next one was flushed, the QP is in ERR."""
    c1, c2 = nic.poll(0, 2)
    assert (c1.wr_id, c1.status, c1.vendor_err, c1.qp_num) == (wr_id, status, vendor_err, 0)
    assert (c2.wr_id, c2.status) == (0xE0F, N.WC_WR_FLUSH_ERR)
    assert nic.qp_state(0) == N.QPS_ERR
    evs = nic.events()
    assert any(e.type == N.EV_QP_FATAL and e.num == 0 for e in evs), evs
    assert nic.qt.alive()


FOLLOW = SendWr(N.WR_SEND, wr_id=0xE0F, inline=b"next")


# ---- ATOMIC_WRITE ----------------------------------------------------------------


def test_atomic_write(nic: Nic) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic)
    nic.qt.write(dst.pa + 0x38, b"\xEE" * 24)
    nic.post_send(a, atomic_write(dst, 0x40))
    assert nic.poll(0, 1) == [ok(0xA7, N.WC_OP_ATOMIC_WRITE, 8)]
    assert nic.qt.readq(dst.pa + 0x40) == VALUE
    assert nic.qt.read(dst.pa + 0x38, 8) == b"\xEE" * 8  # neighbours untouched
    assert nic.qt.read(dst.pa + 0x48, 8) == b"\xEE" * 8
    # unsignaled: no completion, the value is written all the same
    wr = atomic_write(dst, 0x40, wr_id=2, value=7)
    wr.flags = 0
    nic.post_send(a, wr, atomic_write(dst, 0x48, wr_id=3, value=8))
    assert nic.poll(0, 1) == [ok(3, N.WC_OP_ATOMIC_WRITE, 8)]
    assert (nic.qt.readq(dst.pa + 0x40), nic.qt.readq(dst.pa + 0x48)) == (7, 8)
    assert nic.reg("ERROR") == N.ERR_NONE


def test_atomic_write_implicit_mr(nic: Nic) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic, 0x100, flags=N.MR_VALID | N.MR_IMPLICIT, va=0x6000_0000)
    nic.post_send(a, SendWr(N.WR_ATOMIC_WRITE, wr_id=1, flags=SIG, remote_addr=0x6000_0808,
                            rkey=dst.key, value=VALUE))
    assert nic.poll(0, 1) == [ok(1, N.WC_OP_ATOMIC_WRITE, 8)]
    assert nic.qt.readq(dst.pa + 0x808) == VALUE


@pytest.mark.parametrize("case", ["misaligned", "mr-no-remote-write", "qp-no-remote-write",
                                  "rkey-tag", "rkey-index", "beyond-mr", "below-mr",
                                  "other-pd"])
def test_atomic_write_remote_errors(nic: Nic, case: str) -> None:
    a, b = pair(nic)
    dst = remote_mr(nic, PAGE)
    wr = atomic_write(dst, 0x10)
    status = N.WC_REM_ACCESS_ERR
    if case == "misaligned":
        wr.remote_addr += 4
        status = N.WC_REM_INV_REQ_ERR
    elif case == "mr-no-remote-write":
        # REMOTE_ATOMIC is not what ATOMIC_WRITE needs (IBA oA19-28)
        remote_mr(nic, PAGE, access=N.ACCESS_LOCAL_WRITE | N.ACCESS_REMOTE_READ |
                  N.ACCESS_REMOTE_ATOMIC)
    elif case == "qp-no-remote-write":
        b.access = N.ACCESS_REMOTE_READ | N.ACCESS_REMOTE_ATOMIC
        nic.write_qp(b)
    elif case == "rkey-tag":
        wr.rkey = key(2, 0x11)
    elif case == "rkey-index":
        wr.rkey = key(9)
    elif case == "beyond-mr":
        wr.remote_addr = dst.va + PAGE
    elif case == "below-mr":
        wr.remote_addr = dst.va - 8
    elif case == "other-pd":
        remote_mr(nic, PAGE, pdn=2)
    nic.post_send(a, wr, FOLLOW)
    expect_error(nic, 0xA7, status)
    assert nic.qt.read(dst.pa, PAGE) == b"\0" * PAGE  # nothing written
    assert nic.qt.readq(dst.pa - 8) == 0


@pytest.mark.parametrize("case, status", [("length-4", N.WC_LOC_LEN_ERR),
                                          ("length-16", N.WC_LOC_LEN_ERR),
                                          ("with-sge", N.WC_LOC_QP_OP_ERR),
                                          ("inline", N.WC_LOC_QP_OP_ERR)])
def test_atomic_write_bad_wqe(nic: Nic, case: str, status: int) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic, PAGE)
    wr = atomic_write(dst)
    if case == "length-4":
        wr.length = 4
    elif case == "length-16":
        wr.length = 16
    elif case == "with-sge":
        wr.num_sge = 1
    elif case == "inline":
        wr.flags |= N.SEND_INLINE
    wr.flags &= ~SIG  # errors complete even unsignaled
    nic.post_send(a, wr, FOLLOW)
    expect_error(nic, 0xA7, status, N.ERR_BAD_WQE)
    assert nic.reg("ERROR") == N.ERR_BAD_WQE
    assert nic.qt.readq(dst.pa) == 0


def test_atomic_write_odp_fault_replay(nic: Nic) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic, 2 * PAGE, mapped=False, flags=ODP)
    nic.post_send(a, atomic_write(dst, PAGE + 8))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access, f.cmd_id) == (2, dst.va + PAGE, G.ACCESS_WRITE,
                                                  fault_cmd(0, 0, 1))
    assert nic.reg("STALLED") == 1 and nic.cq_pending(0) == 0
    assert nic.qt.readq(dst.pa + PAGE + 8) == 0
    # a replay that fixes nothing faults again
    nic.set_reg("FAULT_REPLAY", 1)
    nic.faults(1)
    nic.pt.map(2, dst.va + PAGE, dst.pa + PAGE, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert nic.poll(0, 1) == [ok(0xA7, N.WC_OP_ATOMIC_WRITE, 8)]
    assert nic.qt.readq(dst.pa + PAGE + 8) == VALUE
    assert nic.reg("STALLED") == 0
    nic.wait_idle()


def test_atomic_write_read_only_page_faults(nic: Nic) -> None:
    """A page mapped read-only (an ODP snapshot of a page not yet writable)
    faults for write access."""
    a, _ = pair(nic)
    dst = remote_mr(nic, PAGE, perms=G.PTE_READ, flags=ODP)
    nic.post_send(a, atomic_write(dst))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access, f.reason) == (2, dst.va, G.ACCESS_WRITE,
                                                  G.FAULT_PERMISSION)
    nic.pt.map(2, dst.va, dst.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert nic.poll(0, 1)[0].status == N.WC_SUCCESS
    assert nic.qt.readq(dst.pa) == VALUE


def test_atomic_write_fault_cancel(nic: Nic) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic, PAGE, mapped=False, flags=ODP)
    nic.post_send(a, atomic_write(dst), FOLLOW)
    (f,) = nic.faults(1)
    nic.set_reg("FAULT_CANCEL", f.token)
    expect_error(nic, 0xA7, N.WC_REM_ACCESS_ERR, N.ERR_FAULT)
    assert nic.reg("STALLED") == 0
    assert nic.qt.readq(dst.pa) == 0


# ---- FLUSH -----------------------------------------------------------------------


@pytest.mark.parametrize("type_", [N.FLUSH_GLOBAL, N.FLUSH_PERSISTENT,
                                   N.FLUSH_GLOBAL | N.FLUSH_PERSISTENT])
def test_flush_range_and_mr(nic: Nic, type_: int) -> None:
    a, _ = pair(nic)
    src = nic.reg_mr(1, PAGE)
    dst = remote_mr(nic)
    nic.qt.write(src.pa, b"flushed!")
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=1, sges=[(src.va, 8, src.key)],
                            remote_addr=dst.va + PAGE, rkey=dst.key),
                  flush(dst, PAGE, 8, wr_id=2, type_=type_))
    assert nic.poll(0, 1) == [ok(2, N.WC_OP_FLUSH, 8)]
    assert nic.qt.read(dst.pa + PAGE, 8) == b"flushed!"
    # the whole MR: the address and length are ignored (rxe's provider sends
    # whatever the caller gave; rdma-core's test gives a random length)
    nic.post_send(a, flush(dst, 0, 12345678, wr_id=3, type_=type_, level=N.FLUSH_MR),
                  flush(dst, 0, 0, wr_id=4, type_=type_, level=N.FLUSH_MR),
                  flush(dst, 4 * PAGE, 0, wr_id=5, type_=type_))  # empty range at the end
    assert nic.poll(0, 3) == [ok(3, N.WC_OP_FLUSH, 12345678), ok(4, N.WC_OP_FLUSH, 0),
                              ok(5, N.WC_OP_FLUSH, 0)]
    remote_mr_whole = flush(dst, 0, 4 * PAGE, wr_id=6, type_=type_)
    nic.post_send(a, remote_mr_whole)
    assert nic.poll(0, 1) == [ok(6, N.WC_OP_FLUSH, 4 * PAGE)]
    assert nic.reg("ERROR") == N.ERR_NONE


def flush_case(nic: Nic, b: Qp, dst: Mr, case: str) -> SendWr:
    wr = flush(dst, 0x100, 0x200)
    if case == "mr-no-flush-access":
        remote_mr(nic, access=ACCESS_ALL)
    elif case == "mr-global-only-persistent-asked":
        remote_mr(nic, access=ACCESS_ALL | N.ACCESS_FLUSH_GLOBAL)
        wr.flush_type = N.FLUSH_GLOBAL | N.FLUSH_PERSISTENT
    elif case == "qp-no-flush-access":
        b.access = REMOTE_ALL
        nic.write_qp(b)
    elif case == "qp-persistent-only":
        b.access = REMOTE_ALL | N.ACCESS_FLUSH_PERSISTENT
        nic.write_qp(b)
    elif case == "rkey-tag":
        wr.rkey = key(2, 0x11)
    elif case == "rkey-tag-mr-level":
        wr.rkey = key(2, 0x11)
        wr.flush_level = N.FLUSH_MR
    elif case == "rkey-ring-ctx":
        wr.rkey = key(0)
    elif case == "beyond-mr":
        wr.remote_addr = dst.va + dst.length - 0x100
    elif case == "below-mr":
        wr.remote_addr = dst.va - 1
    elif case == "range-wraps":
        wr.remote_addr = (1 << 64) - 0x100
    elif case == "other-pd":
        remote_mr(nic, pdn=3)
    elif case == "other-pd-mr-level":
        remote_mr(nic, pdn=3)
        wr.flush_level = N.FLUSH_MR
    else:
        raise AssertionError(case)
    return wr


FLUSH_CASES = ["mr-no-flush-access", "mr-global-only-persistent-asked", "qp-no-flush-access",
               "qp-persistent-only", "rkey-tag", "rkey-tag-mr-level", "rkey-ring-ctx",
               "beyond-mr", "below-mr", "range-wraps", "other-pd", "other-pd-mr-level"]


@pytest.mark.parametrize("case", FLUSH_CASES)
def test_flush_remote_errors(nic: Nic, case: str) -> None:
    a, b = pair(nic)
    dst = remote_mr(nic)
    nic.post_send(a, flush_case(nic, b, dst, case), FOLLOW)
    expect_error(nic, 0xF1, N.WC_REM_ACCESS_ERR)


@pytest.mark.parametrize("case", ["type-0", "type-4", "level-2", "with-sge", "inline"])
def test_flush_bad_wqe(nic: Nic, case: str) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic)
    wr = flush(dst)
    if case == "type-0":
        wr.flush_type = 0
    elif case == "type-4":
        wr.flush_type = N.FLUSH_GLOBAL | 4
    elif case == "level-2":
        wr.flush_level = 2
    elif case == "with-sge":
        wr.num_sge = 1
    elif case == "inline":
        wr.flags |= N.SEND_INLINE
    nic.post_send(a, wr, FOLLOW)
    expect_error(nic, 0xF1, N.WC_LOC_QP_OP_ERR, N.ERR_BAD_WQE)
    assert nic.reg("ERROR") == N.ERR_BAD_WQE


def test_flush_longer_than_max_msg(nic: Nic) -> None:
    """dma.length of a FLUSH is a range: MAX_MSG does not bound it (the MR
    does; an implicit MR has no bound but the address space)."""
    a, _ = pair(nic)
    dst = remote_mr(nic, 0x100, flags=N.MR_VALID | N.MR_IMPLICIT, va=0)
    nic.pt.map_range(2, 0x1_0000_0000, dst.pa, PAGE, RWA)
    nic.post_send(a, SendWr(N.WR_FLUSH, wr_id=1, flags=SIG, remote_addr=0x1_0000_0000,
                            rkey=dst.key, length=PAGE))
    assert nic.poll(0, 1) == [ok(1, N.WC_OP_FLUSH, PAGE)]
    big = N.MAX_MSG + PAGE
    nic.post_send(a, SendWr(N.WR_FLUSH, wr_id=2, flags=SIG, remote_addr=0x1_0000_0000,
                            rkey=dst.key, length=big))
    # the pages after the first are not mapped: the range faults in there
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access, f.cmd_id) == (2, 0x1_0000_1000, G.ACCESS_READ,
                                                  fault_cmd(0, 1, 1))
    nic.set_reg("FAULT_CANCEL", f.token)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.vendor_err) == (2, N.WC_REM_ACCESS_ERR, N.ERR_FAULT)


@pytest.mark.parametrize("level", [N.FLUSH_RANGE, N.FLUSH_MR])
def test_flush_odp_faults_the_range_in(nic: Nic, level: int) -> None:
    """Each page of the range that is not there faults in turn (responder
    side, read access); the replay goes on from the page that faulted."""
    a, _ = pair(nic)
    dst = remote_mr(nic, 3 * PAGE, mapped=False, flags=ODP)
    nic.pt.map(2, dst.va + PAGE, dst.pa + PAGE, RWA)  # the middle page is there
    nic.post_send(a, flush(dst, 0x10, 3 * PAGE - 0x20, level=level))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access, f.reason, f.cmd_id) == (
        2, dst.va, G.ACCESS_READ, G.FAULT_NOT_PRESENT, fault_cmd(0, 0, 1))
    assert nic.reg("STALLED") == 1 and nic.cq_pending(0) == 0
    nic.pt.map(2, dst.va, dst.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (f,) = nic.faults(1)
    assert (f.va, f.cmd_id) == (dst.va + 2 * PAGE, fault_cmd(0, 0, 1))
    nic.pt.map(2, dst.va + 2 * PAGE, dst.pa + 2 * PAGE, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert nic.poll(0, 1) == [ok(0xF1, N.WC_OP_FLUSH, 3 * PAGE - 0x20)]
    assert nic.reg("STALLED") == 0 and nic.reg("ERROR") == N.ERR_NONE
    nic.wait_idle()


def test_flush_odp_fault_cancel(nic: Nic) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic, PAGE, mapped=False, flags=ODP)
    nic.post_send(a, flush(dst, 0, PAGE), FOLLOW)
    (f,) = nic.faults(1)
    assert f.cmd_id == fault_cmd(0, 0, 1)
    nic.set_reg("FAULT_CANCEL", f.token)
    expect_error(nic, 0xF1, N.WC_REM_ACCESS_ERR, N.ERR_FAULT)
    assert nic.reg("ERROR") == N.ERR_FAULT and nic.reg("STALLED") == 0


def test_flush_empty_range_does_not_fault(nic: Nic) -> None:
    a, _ = pair(nic)
    dst = remote_mr(nic, PAGE, mapped=False, flags=ODP)
    nic.post_send(a, flush(dst, 0x80, 0))
    assert nic.poll(0, 1) == [ok(0xF1, N.WC_OP_FLUSH, 0)]
    assert nic.pending_faults() == 0


def test_flush_implicit_mr(nic: Nic) -> None:
    """A range of an implicit MR faults in like any; the whole of one has no
    extent to translate, and acks."""
    a, _ = pair(nic)
    dst = remote_mr(nic, 0x100, flags=ODP | N.MR_IMPLICIT, va=0x6000_0000, mapped=False)
    nic.post_send(a, flush(dst, 0, 0, level=N.FLUSH_MR, wr_id=1))
    assert nic.poll(0, 1) == [ok(1, N.WC_OP_FLUSH, 0)]
    assert nic.pending_faults() == 0
    nic.post_send(a, flush(dst, 0x2000, 8, wr_id=2))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.cmd_id) == (2, 0x6000_2000, fault_cmd(0, 1, 1))
    nic.pt.map(2, 0x6000_2000, dst.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert nic.poll(0, 1) == [ok(2, N.WC_OP_FLUSH, 8)]


def test_flush_large_mr_takes_several_steps(nic: Nic) -> None:
    """FLUSH_MR of a pinned MR larger than a step's pages completes."""
    a, _ = pair(nic)
    pages = 3 * 512 + 5
    dst = remote_mr(nic, pages * PAGE)
    nic.post_send(a, flush(dst, 0, 0, level=N.FLUSH_MR),
                  atomic_write(dst, 8 * PAGE, wr_id=0xA8))
    assert nic.poll(0, 2) == [ok(0xF1, N.WC_OP_FLUSH, 0), ok(0xA8, N.WC_OP_ATOMIC_WRITE, 8)]
    assert nic.qt.readq(dst.pa + 8 * PAGE) == VALUE

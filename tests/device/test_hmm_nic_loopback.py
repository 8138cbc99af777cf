"""hmm-nic loopback over qtest: two connected RC queue pairs of one device.

QP 0 and QP 1 are each other's peer; both complete sends on CQ 0 and
receives on CQ 1. MR 1 is the requester's buffer, MR 2 the responder's.
Data, CQEs, consumer indices, QP states and events are all checked.
"""

from __future__ import annotations

import struct

import pytest
from hmmnic import (
    ALL_INTR,
    REMOTE_ALL,
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


def pattern(length: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed * 13 + (i >> 8)) & 0xFF for i in range(length))


@pytest.fixture
def nic(launch_nic: LaunchNic) -> Nic:
    return launch_nic()


def pair(nic: Nic, *, cq_entries: int = 16, **qp_kw: int) -> tuple[Qp, Qp]:
    nic.setup()
    nic.create_cq(0, entries=cq_entries)
    nic.create_cq(1, entries=cq_entries)
    a = nic.create_qp(0, dest=1, send_cq=0, recv_cq=1, **qp_kw)
    b = nic.create_qp(1, dest=0, send_cq=0, recv_cq=1, **qp_kw)
    return a, b


def mrs(nic: Nic, length: int = 0x4000) -> tuple[Mr, Mr]:
    return nic.reg_mr(1, length), nic.reg_mr(2, length)


def ok(wr_id: int, opcode: int, byte_len: int, qp_num: int = 0, **kw: int) -> Cqe:
    fields = {"imm": 0, "src_qp": 0, "wc_flags": 0, "vendor_err": 0}
    fields.update(kw)
    return Cqe(wr_id=wr_id, status=N.WC_SUCCESS, opcode=opcode, byte_len=byte_len,
               qp_num=qp_num, **fields)


def expect_qp_error(nic: Nic, qpn: int) -> None:
    assert nic.qp_state(qpn) == N.QPS_ERR
    evs = nic.events()
    assert any(e.type == N.EV_QP_FATAL and e.num == qpn for e in evs), evs
    assert nic.qt.alive()


# ---- data movement -----------------------------------------------------------


def test_rdma_write(nic: Nic) -> None:
    a, _ = pair(nic)
    src, dst = mrs(nic)
    data = pattern(5000)
    nic.qt.write(src.pa + 100, data)
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=0x11, flags=SIG,
                            sges=[(src.va + 100, 5000, src.key)],
                            remote_addr=dst.va + 7, rkey=dst.key))
    assert nic.poll(0, 1) == [ok(0x11, N.WC_OP_RDMA_WRITE, 5000)]
    assert nic.qt.read(dst.pa + 7, 5000) == data
    assert nic.qt.read(dst.pa, 7) == b"\0" * 7
    assert nic.sq_consumer(a) == 1
    assert nic.qp_state(0) == N.QPS_RTS
    assert nic.cq_pending(1) == 0  # no receive completion for a plain WRITE


def test_rdma_write_three_sges_and_unsignaled(nic: Nic) -> None:
    a, _ = pair(nic)
    src, dst = mrs(nic)
    parts = [pattern(100, 1), pattern(4000, 2), pattern(1, 3)]
    offs = [0x3000, 0x10, 0x1FFF]
    for p, o in zip(parts, offs, strict=True):
        nic.qt.write(src.pa + o, p)
    sges = [(src.va + o, len(p), src.key) for p, o in zip(parts, offs, strict=True)]
    # the first WR is unsignaled: no CQE, but the SQ moves on
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=1, sges=sges, remote_addr=dst.va,
                            rkey=dst.key),
                  SendWr(N.WR_RDMA_WRITE, wr_id=2, flags=SIG, sges=sges[:1],
                         remote_addr=dst.va + 0x2000, rkey=dst.key))
    assert nic.poll(0, 1) == [ok(2, N.WC_OP_RDMA_WRITE, 100)]
    assert nic.qt.read(dst.pa, 4101) == b"".join(parts)
    assert nic.qt.read(dst.pa + 0x2000, 100) == parts[0]
    assert nic.sq_consumer(a) == 2


def test_sig_all(nic: Nic) -> None:
    a, _ = pair(nic, flags=N.QP_SIG_ALL)
    src, dst = mrs(nic)
    nic.post_send(a, *(SendWr(N.WR_RDMA_WRITE, wr_id=i, sges=[(src.va, 8, src.key)],
                              remote_addr=dst.va, rkey=dst.key) for i in range(3)))
    assert [c.wr_id for c in nic.poll(0, 3)] == [0, 1, 2]


def test_rdma_write_with_imm(nic: Nic) -> None:
    a, b = pair(nic)
    src, dst = mrs(nic)
    nic.qt.write(src.pa, b"immediate!")
    nic.post_recv(b, 0xAB, [])
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE_WITH_IMM, wr_id=5, flags=SIG, imm=0x78563412,
                            sges=[(src.va, 10, src.key)], remote_addr=dst.va + 1,
                            rkey=dst.key))
    assert nic.poll(0, 1) == [ok(5, N.WC_OP_RDMA_WRITE, 10)]
    assert nic.poll(1, 1) == [ok(0xAB, N.WC_OP_RECV_RDMA_WITH_IMM, 10, qp_num=1, src_qp=0,
                                 imm=0x78563412, wc_flags=N.WC_WITH_IMM)]
    assert nic.qt.read(dst.pa + 1, 10) == b"immediate!"
    assert nic.rq_consumer(b) == 1


def test_rdma_read(nic: Nic) -> None:
    a, _ = pair(nic)
    local, remote = mrs(nic, 0x10000)
    data = pattern(9000, 4)
    nic.qt.write(remote.pa + 0x1234, data)
    nic.post_send(a, SendWr(N.WR_RDMA_READ, wr_id=0x22, flags=SIG,
                            sges=[(local.va + 5, 4000, local.key),
                                  (local.va + 0x8000, 5000, local.key)],
                            remote_addr=remote.va + 0x1234, rkey=remote.key))
    assert nic.poll(0, 1) == [ok(0x22, N.WC_OP_RDMA_READ, 9000)]
    assert nic.qt.read(local.pa + 5, 4000) == data[:4000]
    assert nic.qt.read(local.pa + 0x8000, 5000) == data[4000:]


def test_send_recv(nic: Nic) -> None:
    a, b = pair(nic)
    src, dst = mrs(nic)
    data = pattern(3000, 5)
    nic.qt.write(src.pa + 0x100, data)
    # the receive WQE scatters over two SGEs, with room to spare
    nic.post_recv(b, 0xB0, [(dst.va + 0x10, 1000, dst.key), (dst.va + 0x2000, 4000, dst.key)])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0xA0, flags=SIG,
                            sges=[(src.va + 0x100, 3000, src.key)]))
    assert nic.poll(0, 1) == [ok(0xA0, N.WC_OP_SEND, 3000)]
    assert nic.poll(1, 1) == [ok(0xB0, N.WC_OP_RECV, 3000, qp_num=1, src_qp=0)]
    assert nic.qt.read(dst.pa + 0x10, 1000) == data[:1000]
    assert nic.qt.read(dst.pa + 0x2000, 2000) == data[1000:]
    assert nic.qt.read(dst.pa + 0x2000 + 2000, 16) == b"\0" * 16
    assert nic.rq_consumer(b) == 1 and nic.sq_consumer(a) == 1


def test_send_inline_with_imm_both_directions(nic: Nic) -> None:
    a, b = pair(nic)
    src, dst = mrs(nic)
    nic.post_recv(b, 1, [(dst.va, 64, dst.key)])
    nic.post_recv(a, 2, [(src.va, 64, src.key)])
    nic.post_send(a, SendWr(N.WR_SEND_WITH_IMM, wr_id=3, flags=SIG, inline=b"hello, rxe",
                            imm=0x01020304))
    nic.post_send(b, SendWr(N.WR_SEND, wr_id=4, flags=SIG, inline=b"and back"))
    sends = nic.poll(0, 2)
    assert sends == [ok(3, N.WC_OP_SEND, 10), ok(4, N.WC_OP_SEND, 8, qp_num=1)]
    recvs = nic.poll(1, 2)
    assert recvs == [
        ok(1, N.WC_OP_RECV, 10, qp_num=1, src_qp=0, imm=0x01020304, wc_flags=N.WC_WITH_IMM),
        ok(2, N.WC_OP_RECV, 8, qp_num=0, src_qp=1),
    ]
    assert nic.qt.read(dst.pa, 10) == b"hello, rxe"
    assert nic.qt.read(src.pa, 8) == b"and back"


def test_atomics(nic: Nic) -> None:
    a, _ = pair(nic)
    local, remote = mrs(nic)
    nic.qt.writeq(remote.pa + 0x40, 1000)
    result = local.va + 0x80
    nic.post_send(
        a,
        # CAS that matches: swapped
        SendWr(N.WR_ATOMIC_CMP_AND_SWP, wr_id=1, flags=SIG, sges=[(result, 8, local.key)],
               remote_addr=remote.va + 0x40, rkey=remote.key, compare_add=1000, swap=77),
    )
    assert nic.poll(0, 1) == [ok(1, N.WC_OP_COMP_SWAP, 8)]
    assert nic.qt.readq(remote.pa + 0x40) == 77
    assert nic.qt.readq(local.pa + 0x80) == 1000
    # CAS that does not match: unchanged, old value returned
    nic.post_send(a, SendWr(N.WR_ATOMIC_CMP_AND_SWP, wr_id=2, flags=SIG,
                            sges=[(result + 8, 8, local.key)], remote_addr=remote.va + 0x40,
                            rkey=remote.key, compare_add=1000, swap=5))
    assert nic.poll(0, 1) == [ok(2, N.WC_OP_COMP_SWAP, 8)]
    assert nic.qt.readq(remote.pa + 0x40) == 77
    assert nic.qt.readq(local.pa + 0x88) == 77
    # FAA returns the old value and adds (mod 2^64)
    nic.post_send(a, SendWr(N.WR_ATOMIC_FETCH_AND_ADD, wr_id=3, flags=SIG,
                            sges=[(result + 16, 8, local.key)], remote_addr=remote.va + 0x40,
                            rkey=remote.key, compare_add=(1 << 64) - 7))
    assert nic.poll(0, 1) == [ok(3, N.WC_OP_FETCH_ADD, 8)]
    assert nic.qt.readq(remote.pa + 0x40) == 70
    assert nic.qt.readq(local.pa + 0x90) == 77


def test_implicit_mr(nic: Nic) -> None:
    a, _ = pair(nic)
    src = nic.reg_mr(1, 0x1000)
    # implicit: va/length ignored (0x800 is beyond them), any mapped address is fine
    dst = nic.reg_mr(3, 0x100, flags=N.MR_VALID | N.MR_IMPLICIT, va=0x6000_0000)
    nic.qt.write(src.pa, b"implicit")
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=9, flags=SIG, sges=[(src.va, 8, src.key)],
                            remote_addr=0x6000_0800, rkey=dst.key))
    assert nic.poll(0, 1) == [ok(9, N.WC_OP_RDMA_WRITE, 8)]
    assert nic.qt.read(dst.pa + 0x800, 8) == b"implicit"


# ---- malformed work requests ---------------------------------------------------


@pytest.mark.parametrize(
    "name, wr, status",
    [
        ("bad-opcode", SendWr(7, sges=[]), N.WC_LOC_QP_OP_ERR),
        ("bad-opcode-huge", SendWr(0x80000000, sges=[]), N.WC_LOC_QP_OP_ERR),
        ("too-many-sges", SendWr(N.WR_RDMA_WRITE, sges=[], num_sge=N.MAX_SGE + 1),
         N.WC_LOC_QP_OP_ERR),
        ("length-not-sum", SendWr(N.WR_SEND, sges=[], length=16), N.WC_LOC_LEN_ERR),
        ("length-huge", SendWr(N.WR_SEND, inline=b"", length=N.MAX_MSG + 1), N.WC_LOC_LEN_ERR),
        ("inline-too-long", SendWr(N.WR_SEND, inline=b"x" * 280), N.WC_LOC_LEN_ERR),
        ("inline-read", SendWr(N.WR_RDMA_READ, inline=b"xx"), N.WC_LOC_QP_OP_ERR),
        ("atomic-4-bytes", SendWr(N.WR_ATOMIC_FETCH_AND_ADD, sges=[]), N.WC_LOC_LEN_ERR),
    ],
)
def test_bad_wqe(nic: Nic, name: str, wr: SendWr, status: int) -> None:
    a, _ = pair(nic)
    src, dst = mrs(nic)
    nic.set_reg("INTR_MASK", ALL_INTR)
    if name == "atomic-4-bytes":
        wr.sges = [(src.va, 4, src.key)]
    wr.wr_id, wr.flags = 0xBAD, 0  # errors complete even unsignaled
    follow = SendWr(N.WR_RDMA_WRITE, wr_id=0xF0, flags=SIG, sges=[(src.va, 8, src.key)],
                    remote_addr=dst.va, rkey=dst.key)
    nic.post_send(a, wr, follow)
    c1, c2 = nic.poll(0, 2)
    assert (c1.wr_id, c1.status, c1.vendor_err, c1.qp_num) == (0xBAD, status, N.ERR_BAD_WQE, 0)
    assert (c2.wr_id, c2.status) == (0xF0, N.WC_WR_FLUSH_ERR)
    assert nic.reg("ERROR") == N.ERR_BAD_WQE
    assert nic.msi_fired(N.VEC_ERR_DEFAULT)
    assert nic.qt.read(dst.pa, 8) == b"\0" * 8  # the flushed WRITE did nothing
    assert nic.sq_consumer(a) == 2
    expect_qp_error(nic, 0)


# ---- protection ------------------------------------------------------------------


def test_bad_lkey_and_flush(nic: Nic) -> None:
    a, b = pair(nic)
    src, dst = mrs(nic)
    nic.post_recv(a, 0x77, [(src.va, 8, src.key)])  # flushed along with the SQ
    wrs = [
        SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, sges=[(src.va, 8, src.key)],
               remote_addr=dst.va, rkey=dst.key),
        SendWr(N.WR_RDMA_WRITE, wr_id=2, sges=[(src.va, 8, key(9))],  # MR 9: not valid
               remote_addr=dst.va, rkey=dst.key),
        SendWr(N.WR_RDMA_WRITE, wr_id=3, sges=[(src.va, 8, src.key)],
               remote_addr=dst.va, rkey=dst.key),
        SendWr(N.WR_SEND, wr_id=4, inline=b"x"),
    ]
    nic.post_send(a, *wrs)
    cqes = nic.poll(0, 4)
    assert [(c.wr_id, c.status) for c in cqes] == [
        (1, N.WC_SUCCESS),
        (2, N.WC_LOC_PROT_ERR),
        (3, N.WC_WR_FLUSH_ERR),
        (4, N.WC_WR_FLUSH_ERR),
    ]
    assert [(c.wr_id, c.status, c.opcode) for c in nic.poll(1, 1)] == [
        (0x77, N.WC_WR_FLUSH_ERR, N.WC_OP_RECV)
    ]
    expect_qp_error(nic, 0)
    assert nic.qp_state(1) == N.QPS_RTS  # the peer is fine
    # a doorbell of a QP in ERR flushes what was posted since
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=5, inline=b"y"))
    assert [(c.wr_id, c.status) for c in nic.poll(0, 1)] == [(5, N.WC_WR_FLUSH_ERR)]
    assert nic.cq_pending(1) == 0 and nic.rq_consumer(b) == 0


def remote_case(nic: Nic, src: Mr, dst: Mr, case: str) -> SendWr:
    wr = SendWr(N.WR_RDMA_WRITE, wr_id=0xE, sges=[(src.va, 16, src.key)],
                remote_addr=dst.va, rkey=dst.key)
    if case == "rkey-tag":
        wr.rkey = key(2, 0x5B)
    elif case == "rkey-index":
        wr.rkey = key(200)
    elif case == "rkey-ring-ctx":
        wr.rkey = key(0)
    elif case == "range-overflow":
        wr.remote_addr = dst.va + dst.length - 8
    elif case == "range-below":
        wr.remote_addr = dst.va - 1
    elif case == "range-wraps":
        wr.remote_addr = (1 << 64) - 8
    elif case == "mr-no-remote-write":
        nic.reg_mr(2, dst.length, access=N.ACCESS_LOCAL_WRITE | N.ACCESS_REMOTE_READ)
    elif case == "qp-no-remote-write":
        b = nic.qps[1]
        b.access = N.ACCESS_REMOTE_READ
        nic.write_qp(b)
    elif case == "other-pd":
        nic.reg_mr(2, dst.length, pdn=2)
    elif case == "read-no-remote-read":
        wr.opcode = N.WR_RDMA_READ
        nic.reg_mr(2, dst.length, access=N.ACCESS_REMOTE_WRITE)
    elif case == "atomic-no-remote-atomic":
        wr.opcode = N.WR_ATOMIC_FETCH_AND_ADD
        wr.sges = [(src.va, 8, src.key)]
        nic.reg_mr(2, dst.length, access=N.ACCESS_REMOTE_WRITE | N.ACCESS_REMOTE_READ)
    else:
        raise AssertionError(case)
    return wr


REMOTE_CASES = ["rkey-tag", "rkey-index", "rkey-ring-ctx", "range-overflow", "range-below",
                "range-wraps", "mr-no-remote-write", "qp-no-remote-write", "other-pd",
                "read-no-remote-read", "atomic-no-remote-atomic"]


@pytest.mark.parametrize("case", REMOTE_CASES)
def test_remote_access_error(nic: Nic, case: str) -> None:
    a, _ = pair(nic)
    src, dst = mrs(nic)
    nic.qt.write(src.pa, b"S" * 16)
    nic.qt.writeq(dst.pa, 0x1111)
    wr = remote_case(nic, src, dst, case)
    nic.post_send(a, wr, SendWr(N.WR_SEND, wr_id=0xF, inline=b"z"))
    c1, c2 = nic.poll(0, 2)
    assert (c1.wr_id, c1.status) == (0xE, N.WC_REM_ACCESS_ERR), case
    assert (c2.wr_id, c2.status) == (0xF, N.WC_WR_FLUSH_ERR)
    assert nic.qt.readq(dst.pa) == 0x1111  # nothing written
    assert nic.qt.readq(dst.pa + dst.length - 8) == 0
    expect_qp_error(nic, 0)


@pytest.mark.parametrize("case", ["lkey-tag", "lkey-range", "read-no-local-write",
                                  "atomic-no-local-write", "lkey-other-pd"])
def test_local_protection_error(nic: Nic, case: str) -> None:
    a, _ = pair(nic)
    src, dst = mrs(nic)
    wr = SendWr(N.WR_RDMA_WRITE, wr_id=0xE, sges=[(src.va, 16, src.key)],
                remote_addr=dst.va, rkey=dst.key)
    if case == "lkey-tag":
        wr.sges = [(src.va, 16, key(1, 0x11))]
    elif case == "lkey-range":
        wr.sges = [(src.va + src.length - 15, 16, src.key)]
    elif case == "read-no-local-write":
        wr.opcode = N.WR_RDMA_READ
        nic.reg_mr(1, src.length, access=REMOTE_ALL)
    elif case == "atomic-no-local-write":
        wr.opcode = N.WR_ATOMIC_CMP_AND_SWP
        wr.sges = [(src.va, 8, src.key)]
        nic.reg_mr(1, src.length, access=REMOTE_ALL)
    elif case == "lkey-other-pd":
        nic.reg_mr(1, src.length, pdn=7)
    nic.qt.writeq(dst.pa, 0x2222)
    nic.post_send(a, wr)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.vendor_err) == (0xE, N.WC_LOC_PROT_ERR, 0)
    assert nic.qt.readq(dst.pa) == 0x2222
    expect_qp_error(nic, 0)


def test_misaligned_atomic(nic: Nic) -> None:
    a, _ = pair(nic)
    src, dst = mrs(nic)
    nic.post_send(a, SendWr(N.WR_ATOMIC_FETCH_AND_ADD, wr_id=1, sges=[(src.va, 8, src.key)],
                            remote_addr=dst.va + 4, rkey=dst.key, compare_add=1))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (1, N.WC_REM_INV_REQ_ERR)
    assert nic.qt.read(dst.pa, 16) == b"\0" * 16
    expect_qp_error(nic, 0)


def test_receive_buffer_errors(nic: Nic) -> None:
    a, b = pair(nic)
    _src, dst = mrs(nic)
    # too short a receive WQE: responder LOC_LEN_ERR, requester REM_INV_REQ_ERR
    nic.post_recv(b, 0x51, [(dst.va, 4, dst.key)])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x50, inline=b"longer than 4"))
    (s,) = nic.poll(0, 1)
    (r,) = nic.poll(1, 1)
    assert (s.wr_id, s.status) == (0x50, N.WC_REM_INV_REQ_ERR)
    assert (r.wr_id, r.status, r.qp_num) == (0x51, N.WC_LOC_LEN_ERR, 1)
    assert nic.qp_state(0) == N.QPS_ERR and nic.qp_state(1) == N.QPS_ERR
    evs = nic.events()
    assert {(e.type, e.num) for e in evs} == {(N.EV_QP_FATAL, 0), (N.EV_QP_FATAL, 1)}
    assert nic.qt.read(dst.pa, 4) == b"\0" * 4


def test_receive_buffer_bad_key(nic: Nic) -> None:
    a, b = pair(nic)
    _src, dst = mrs(nic)
    nic.post_recv(b, 0x61, [(dst.va, 64, key(2, 0x01))])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x60, inline=b"data"))
    (s,) = nic.poll(0, 1)
    (r,) = nic.poll(1, 1)
    assert (s.wr_id, s.status) == (0x60, N.WC_REM_OP_ERR)
    assert (r.wr_id, r.status) == (0x61, N.WC_LOC_PROT_ERR)
    assert nic.qp_state(1) == N.QPS_ERR


def test_peer_not_ready(nic: Nic) -> None:
    nic.setup()
    nic.create_cq(0)
    a = nic.create_qp(0, dest=1)
    nic.create_qp(1, dest=0, state=N.QPS_INIT)
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=1, inline=b"x"))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (1, N.WC_RETRY_EXC_ERR)
    expect_qp_error(nic, 0)


# ---- RNR ----------------------------------------------------------------------


def test_rnr_wait_then_rq_doorbell(nic: Nic) -> None:
    a, b = pair(nic)
    _src, dst = mrs(nic)
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x10, flags=SIG, inline=b"early bird"),
                  SendWr(N.WR_RDMA_WRITE, wr_id=0x11, flags=SIG, inline=b"after",
                         remote_addr=dst.va + 0x100, rkey=dst.key))
    for _ in range(20):
        assert nic.cq_pending(0) == 0
    assert nic.reg("STATUS") & N.STATUS_BUSY
    assert nic.sq_consumer(a) == 0
    assert nic.qt.read(dst.pa + 0x100, 5) == b"\0" * 5  # in order: waits behind the SEND
    nic.post_recv(b, 0x20, [(dst.va, 64, dst.key)])
    assert [(c.wr_id, c.status) for c in nic.poll(0, 2)] == [(0x10, 0), (0x11, 0)]
    assert nic.poll(1, 1) == [ok(0x20, N.WC_OP_RECV, 10, qp_num=1, src_qp=0)]
    assert nic.qt.read(dst.pa, 10) == b"early bird"
    assert nic.qt.read(dst.pa + 0x100, 5) == b"after"
    nic.wait_idle()


def test_rnr_retry_zero(nic: Nic) -> None:
    a, _ = pair(nic, rnr_retry=0)
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x30, inline=b"nobody listens"))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (0x30, N.WC_RNR_RETRY_EXC_ERR)
    expect_qp_error(nic, 0)


def test_rnr_timer_ends_a_user_qp_wait(nic: Nic) -> None:
    """rxe's provider posts receives without a doorbell: the peer's
    min_rnr_timer (14: 1.28 ms) is what makes the sender try again."""
    a, b = pair(nic, min_rnr_timer=14)
    _src, dst = mrs(nic)
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x40, flags=SIG, inline=b"patience"))
    for _ in range(20):
        assert nic.cq_pending(0) == 0
    nic.post_recv(b, 0x41, [(dst.va, 64, dst.key)], ring=False)
    nic.qt.clock_step(1_200_000)
    for _ in range(20):
        assert nic.cq_pending(0) == 0, "tried again before min_rnr_timer"
    nic.qt.clock_step(100_000)
    assert nic.poll(0, 1) == [ok(0x40, N.WC_OP_SEND, 8)]
    assert nic.poll(1, 1) == [ok(0x41, N.WC_OP_RECV, 8, qp_num=1, src_qp=0)]
    assert nic.qt.read(dst.pa, 8) == b"patience"
    nic.wait_idle()


def test_rnr_retry_count(nic: Nic) -> None:
    """rnr_retry 2: two tries after the first RNR wait, then RNR_RETRY_EXC_ERR."""
    a, _ = pair(nic, rnr_retry=2, min_rnr_timer=1)  # 10 us
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x50, inline=b"anyone?"))
    for step in range(2):
        for _ in range(20):
            assert nic.cq_pending(0) == 0, f"failed after {step} tries"
        nic.qt.clock_step(10_000)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (0x50, N.WC_RNR_RETRY_EXC_ERR)
    expect_qp_error(nic, 0)


def test_reset_during_rnr_wait(nic: Nic) -> None:
    a, _ = pair(nic, min_rnr_timer=1)
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x60, inline=b"x"))
    assert nic.reg("STATUS") & N.STATUS_BUSY
    nic.reset()
    nic.qt.clock_step(1_000_000)  # the timer of the forgotten wait must not fire
    assert nic.qt.alive()
    assert not nic.reg("STATUS") & N.STATUS_BUSY
    assert nic.reg("ERROR") == N.ERR_NONE


# ---- completion and event queues ------------------------------------------------


def test_cq_overrun(nic: Nic) -> None:
    a, _ = pair(nic, cq_entries=4)  # holds 3
    _src, dst = mrs(nic)
    nic.set_reg("INTR_MASK", ALL_INTR)
    nic.post_send(a, *(SendWr(N.WR_RDMA_WRITE, wr_id=i, flags=SIG, inline=bytes([i]),
                              remote_addr=dst.va + i, rkey=dst.key) for i in range(4)))
    nic.wait(lambda: nic.reg("ERROR") == N.ERR_CQ_OVERRUN, "CQ overrun")
    assert nic.error_addr() == 0
    assert nic.msi_fired(N.VEC_ERR_DEFAULT)
    evs = nic.events()
    assert (N.EV_CQ_ERR, 0) in {(e.type, e.num) for e in evs}, evs
    assert [c.wr_id for c in nic.poll(0, 3)] == [0, 1, 2]
    assert nic.qt.read(dst.pa, 4) == bytes([0, 1, 2, 3])  # the data moved anyway
    assert nic.qt.alive()


def test_cq_arm(nic: Nic) -> None:
    a, _ = pair(nic)
    _src, dst = mrs(nic)
    nic.set_reg("INTR_MASK", ALL_INTR)
    wr = SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, inline=b"a", remote_addr=dst.va,
                rkey=dst.key)
    nic.post_send(a, wr)
    nic.poll(0, 1)
    assert nic.eq_pending() == 0 and not nic.msi_fired(N.VEC_EQ_DEFAULT)
    nic.set_reg("CQ_ARM", 0)
    nic.post_send(a, wr, wr)
    nic.poll(0, 2)
    evs = nic.events()
    assert [(e.type, e.num, e.err) for e in evs] == [(N.EV_CQ, 0, 0)]  # once: disarmed
    assert nic.msi_fired(N.VEC_EQ_DEFAULT)
    assert nic.reg("INTR_STATUS") & N.INTR_EQ


def test_cq_arm_solicited(nic: Nic) -> None:
    a, b = pair(nic)
    _src, dst = mrs(nic)
    nic.set_reg("CQ_ARM", 1 | N.CQ_ARM_SOLICITED)
    nic.post_recv(b, 1, [(dst.va, 64, dst.key)])
    nic.post_recv(b, 2, [(dst.va, 64, dst.key)])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=1, inline=b"plain"))
    nic.poll(1, 1)
    assert nic.eq_pending() == 0
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=2, flags=N.SEND_SOLICITED, inline=b"wake up"))
    nic.poll(1, 1)
    assert [(e.type, e.num) for e in nic.events()] == [(N.EV_CQ, 1)]


def test_vector_registers_route_interrupts(nic: Nic) -> None:
    a, _ = pair(nic)
    _src, dst = mrs(nic)
    nic.set_reg("INTR_MASK", ALL_INTR)
    nic.set_reg("VEC_EQ", 2)
    nic.set_reg("CQ_ARM", 0)
    nic.msi_clear()
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, inline=b"v",
                            remote_addr=dst.va, rkey=dst.key))
    nic.poll(0, 1)
    assert nic.msi_fired(2) and not nic.msi_fired(0)


def test_many_wrs_wrap_the_queues(nic: Nic) -> None:
    a, b = pair(nic, sq_entries=4, rq_entries=4)
    _src, dst = mrs(nic)
    for i in range(10):
        nic.post_recv(b, 100 + i, [(dst.va + 64 * i, 64, dst.key)])
        nic.post_send(a, SendWr(N.WR_SEND, wr_id=i, flags=SIG, inline=struct.pack("<Q", i)))
        assert nic.poll(0, 1) == [ok(i, N.WC_OP_SEND, 8)]
        assert nic.poll(1, 1) == [ok(100 + i, N.WC_OP_RECV, 8, qp_num=1, src_qp=0)]
        assert nic.qt.readq(dst.pa + 64 * i) == i
    assert nic.sq_consumer(a) == 10 % 4 and nic.rq_consumer(b) == 10 % 4


def test_self_loopback(nic: Nic) -> None:
    """A QP whose peer is itself sends to its own receive queue."""
    nic.setup()
    nic.create_cq(0)
    q = nic.create_qp(3, dest=3)
    src, dst = mrs(nic)
    nic.post_recv(q, 0x33, [(dst.va, 32, dst.key)])
    nic.post_send(q, SendWr(N.WR_SEND, wr_id=0x34, flags=SIG, inline=b"to myself"))
    got = nic.poll(0, 2)
    assert ok(0x33, N.WC_OP_RECV, 9, qp_num=3, src_qp=3) in got
    assert ok(0x34, N.WC_OP_SEND, 9, qp_num=3) in got
    assert nic.qt.read(dst.pa, 9) == b"to myself"
    del src


def test_event_queue_overflow(launch_nic: LaunchNic) -> None:
    """An EQ of 2 entries holds one event: the next is lost (ERR_EQ_WRITE),
    the device goes on."""
    nic = launch_nic()
    nic.setup(eq_size=2)
    nic.create_cq(0)
    a = nic.create_qp(0, dest=1)
    nic.create_qp(1, dest=0)
    _src, dst = mrs(nic)
    wr = SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, inline=b"e", remote_addr=dst.va,
                rkey=dst.key)
    for _ in range(2):
        nic.set_reg("CQ_ARM", 0)
        nic.post_send(a, wr)
        nic.poll(0, 1)
    assert nic.reg("ERROR") == N.ERR_EQ_WRITE
    assert not nic.reg("STATUS") & N.STATUS_FATAL
    assert [(e.type, e.num) for e in nic.events()] == [(N.EV_CQ, 0)]
    nic.set_reg("CQ_ARM", 0)
    nic.post_send(a, wr)
    nic.poll(0, 1)
    assert [(e.type, e.num) for e in nic.events()] == [(N.EV_CQ, 0)]


def test_rq_doorbell_of_a_qp_in_err_flushes_receives(nic: Nic) -> None:
    a, b = pair(nic)
    _src, dst = mrs(nic)
    b.state = N.QPS_ERR  # the driver moves it to ERR itself: no event
    nic.write_qp(b)
    nic.post_recv(b, 0x71, [(dst.va, 8, dst.key)])
    nic.post_recv(b, 0x72, [(dst.va, 8, dst.key)])
    got = nic.poll(1, 2)
    assert [(c.wr_id, c.status, c.opcode, c.qp_num) for c in got] == [
        (0x71, N.WC_WR_FLUSH_ERR, N.WC_OP_RECV, 1), (0x72, N.WC_WR_FLUSH_ERR, N.WC_OP_RECV, 1)]
    assert nic.rq_consumer(b) == 2
    assert nic.eq_pending() == 0
    # a SEND to it: nobody answers
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x70, inline=b"x"))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (0x70, N.WC_RETRY_EXC_ERR)


def test_peer_connected_to_another_qp(nic: Nic) -> None:
    """RC is one to one: QP 2 names QP 1 as its peer, but QP 1's peer is QP 0."""
    nic.setup()
    nic.create_cq(0)
    nic.create_qp(0, dest=1)
    b = nic.create_qp(1, dest=0)
    c = nic.create_qp(2, dest=1)
    _src, dst = mrs(nic)
    nic.post_recv(b, 0x41, [(dst.va, 8, dst.key)])
    nic.post_send(c, SendWr(N.WR_SEND, wr_id=0x42, inline=b"intruder"))
    (e,) = nic.poll(0, 1)
    assert (e.wr_id, e.status, e.qp_num) == (0x42, N.WC_RETRY_EXC_ERR, 2)
    assert nic.rq_consumer(b) == 0 and nic.qt.read(dst.pa, 8) == b"\0" * 8
    assert nic.qp_state(1) == N.QPS_RTS


@pytest.mark.parametrize("reset", [True, False])
def test_cq_reset_starts_a_reused_cqn_over(nic: Nic, reset: bool) -> None:
    """A CQN freed and taken again (a process exits, the next creates a CQ)
    without the device reading the entry in between: CQ_RESET makes the new
    CQ start at slot 0; without it the device goes on at the old index,
    which is what the rxe provider then misreads as completions."""
    a, _ = pair(nic)
    src, dst = mrs(nic)
    wr = SendWr(N.WR_RDMA_WRITE, wr_id=7, flags=SIG, sges=[(src.va, 8, src.key)],
                remote_addr=dst.va, rkey=dst.key)
    for _ in range(3):
        nic.post_send(a, wr)
        assert nic.poll(0, 1) == [ok(7, N.WC_OP_RDMA_WRITE, 8)]
    fresh = nic.create_cq(0)  # a new buffer under the same CQN, entry valid throughout
    if reset:
        nic.set_reg("CQ_RESET", 0)
    nic.post_send(a, wr)
    if reset:
        assert nic.poll(0, 1) == [ok(7, N.WC_OP_RDMA_WRITE, 8)]
        assert nic.qt.readl(fresh.pa + N.QBUF_PRODUCER) == 1
    else:
        nic.wait(lambda: nic.qt.readl(fresh.pa + N.QBUF_PRODUCER) == 4, "the CQE at the old index")
    assert nic.reg("ERROR") == N.ERR_NONE


def test_cq_reset_beyond_cq_count(nic: Nic) -> None:
    pair(nic)
    nic.set_reg("CQ_RESET", nic.reg("CQ_COUNT"))
    assert nic.reg("ERROR") == N.ERR_BAD_CQN and nic.error_addr() == nic.reg("CQ_COUNT")
    assert nic.qt.alive()


def test_peer_not_ready_yet_is_tried_again(nic: Nic) -> None:
    """A SEND to a peer still in INIT is resent after the local ACK timeout (as
    perftest's client does before its server reaches RTR), then goes through."""
    nic.setup()
    nic.create_cq(0)
    nic.create_cq(1)
    a = nic.create_qp(0, dest=1, send_cq=0, recv_cq=1, retry_cnt=7, timeout=10)  # 4.2 ms
    b = nic.create_qp(1, dest=0, send_cq=0, recv_cq=1, state=N.QPS_INIT)
    dst = nic.reg_mr(2, 0x1000)
    nic.post_recv(b, 0x2, [(dst.va, 64, dst.key)])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x1, flags=SIG, inline=b"ready?"))
    for _ in range(3):
        nic.qt.clock_step(4_200_000)  # three tries, each unanswered
        assert nic.cq_pending(0) == 0 and nic.qp_state(0) == N.QPS_RTS
    b.state = N.QPS_RTS
    nic.write_qp(b)
    nic.wait(lambda: (nic.qt.clock_step(4_200_000), nic.cq_pending(1))[1] == 1, "the resend")
    assert nic.poll(0, 1) == [ok(0x1, N.WC_OP_SEND, 6)]
    assert nic.qt.read(dst.pa, 6) == b"ready?"


@pytest.mark.parametrize("retry_cnt", [0, 2])
def test_peer_never_ready_retries_run_out(nic: Nic, retry_cnt: int) -> None:
    nic.setup()
    nic.create_cq(0)
    nic.create_cq(1)
    a = nic.create_qp(0, dest=1, send_cq=0, recv_cq=1, retry_cnt=retry_cnt, timeout=1)
    nic.create_qp(1, dest=0, send_cq=0, recv_cq=1, state=N.QPS_INIT)
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x9, flags=SIG, inline=b"x"))
    if retry_cnt:
        assert nic.cq_pending(0) == 0  # waiting for the first resend
    nic.wait(lambda: (nic.qt.clock_step(10_000), nic.cq_pending(0))[1] == 1, "the last try")
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (0x9, N.WC_RETRY_EXC_ERR)
    assert nic.reg("ERROR") == N.ERR_NONE

"""hmm-nic's link over qtest: two devices in two QEMUs joined by a unix
socket (the "link" chardev), as two guests would be.

Device A (LID 1) is the requester, device B (LID 2) the responder, unless
a test says otherwise. Each QEMU has its own guest memory, so A's and B's
tables and buffers sit at the same guest addresses without meeting. The
responder's ODP faults are B's: its fault queue gets the record, the
requester is answered "receiver not ready" and tries again after B's
min_rnr_timer, on A's virtual clock (qtest: clock_step).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from hmmgpu import H as G
from hmmnic import ACCESS_ALL, PAGE, REMOTE_ALL, RWA, LaunchNic, Mr, N, Nic, Qp, SendWr

from harness.build.qemu import QemuArtifact

pytestmark = pytest.mark.device

SIG = N.SEND_SIGNALED
ODP = N.MR_VALID | N.MR_ODP
CHUNK = 64 * 1024  # what one link frame carries (hmm-nic-engine.h)


def wait_link(nic: Nic, peer_lid: int) -> None:
    nic.wait(lambda: nic.reg("LINK_STATUS") == (N.LINK_UP | peer_lid << 16),
             f"link up to LID {peer_lid}")


def start_pair(launch_nic: LaunchNic, sock: Path) -> tuple[Nic, Nic]:
    a = launch_nic("link=lk", "lid=1",
                   extra=("-chardev", f"socket,id=lk,path={sock},server=on,wait=off"))
    b = launch_nic("link=lk", "lid=2", extra=("-chardev", f"socket,id=lk,path={sock}"))
    wait_link(a, 2)
    wait_link(b, 1)
    return a, b


def connect(nic: Nic, peer_lid: int, **qp_kw: int) -> Qp:
    """CQ 0 (send), CQ 1 (receive), QP 0 connected to QP 0 of LID peer_lid."""
    nic.setup()
    nic.create_cq(0, entries=64)
    nic.create_cq(1, entries=64)
    return nic.create_qp(0, dest=0, send_cq=0, recv_cq=1, dest_lid=peer_lid, **qp_kw)


@pytest.fixture
def linked(launch_nic: LaunchNic, tmp_path: Path) -> tuple[Nic, Nic]:
    return start_pair(launch_nic, tmp_path / "link.sock")


@pytest.fixture
def qps(linked: tuple[Nic, Nic]) -> tuple[Nic, Nic, Qp, Qp]:
    a, b = linked
    return a, b, connect(a, 2), connect(b, 1, min_rnr_timer=1)


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed + (i >> 9)) & 0xFF for i in range(n))


def test_port_and_link_status(linked: tuple[Nic, Nic]) -> None:
    a, b = linked
    assert (a.reg("PORT_LID"), b.reg("PORT_LID")) == (1, 2)
    assert a.reg("CAPS") & N.CAP_LINK
    a.set_reg("PORT_LID", 7)
    assert a.reg("ERROR") == N.ERR_BAD_REGISTER and a.reg("PORT_LID") == 1


@pytest.mark.parametrize("lid", ["0", "49152", "65535"])
def test_lid_property_checked(qemu: QemuArtifact, lid: str) -> None:
    args = [str(qemu.binary), *[a for d in qemu.datadirs for a in ("-L", str(d))],
            "-M", "q35", "-nodefaults", "-display", "none", "-S",
            "-device", f"hmm-nic,lid={lid}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 1
    assert f"lid {lid} is invalid: it must be a unicast LID, 1 to 49151" in p.stderr


def test_write_then_read_back(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, qa, _ = qps
    n = 3 * CHUNK + 4000  # four frames each way
    src = a.reg_mr(1, n)
    back = a.reg_mr(2, n)
    dst = b.reg_mr(3, n)
    data = pattern(n, 5)
    a.qt.write(src.pa, data)
    a.post_send(qa, SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, sges=[(src.va, n, src.key)],
                           remote_addr=dst.va, rkey=dst.key))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status, c.byte_len) == (1, N.WC_SUCCESS, n)
    assert b.qt.read(dst.pa, n) == data
    a.post_send(qa, SendWr(N.WR_RDMA_READ, wr_id=2, flags=SIG, sges=[(back.va, n, back.key)],
                           remote_addr=dst.va, rkey=dst.key))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status, c.byte_len) == (2, N.WC_SUCCESS, n)
    assert a.qt.read(back.pa, n) == data
    assert b.cq_pending(0) == 0 and b.cq_pending(1) == 0  # one-sided: B sees nothing
    a.wait_idle()
    b.wait_idle()


def test_send_with_imm_to_the_peer(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, qa, qb = qps
    n = CHUNK + 123
    src = a.reg_mr(1, n)
    dst = b.reg_mr(1, 2 * n)
    data = pattern(n, 9)
    a.qt.write(src.pa, data)
    b.post_recv(qb, 0x51, [(dst.va, 100, dst.key), (dst.va + 1000, n, dst.key)], ring=False)
    a.post_send(qa, SendWr(N.WR_SEND_WITH_IMM, wr_id=0x50, flags=SIG, imm=0x11223344,
                           sges=[(src.va, n, src.key)]))
    (s,) = a.poll(0, 1)
    (r,) = b.poll(1, 1)
    assert (s.wr_id, s.status, s.byte_len) == (0x50, N.WC_SUCCESS, n)
    assert (r.wr_id, r.status, r.opcode, r.byte_len) == (0x51, N.WC_SUCCESS, N.WC_OP_RECV, n)
    assert (r.qp_num, r.src_qp, r.wc_flags & N.WC_WITH_IMM) == (0, 0, N.WC_WITH_IMM)
    assert b.qt.read(dst.pa, 100) + b.qt.read(dst.pa + 1000, n - 100) == data
    assert b.rq_consumer(qb) == 1


def test_atomics_on_the_peer(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, qa, _ = qps
    old = a.reg_mr(1, PAGE)
    tgt = b.reg_mr(2, PAGE)
    b.qt.write(tgt.pa + 64, (1000).to_bytes(8, "little"))
    a.post_send(qa, SendWr(N.WR_ATOMIC_FETCH_AND_ADD, wr_id=1, flags=SIG,
                           sges=[(old.va, 8, old.key)], remote_addr=tgt.va + 64, rkey=tgt.key,
                           compare_add=5),
                SendWr(N.WR_ATOMIC_CMP_AND_SWP, wr_id=2, flags=SIG,
                       sges=[(old.va + 8, 8, old.key)], remote_addr=tgt.va + 64, rkey=tgt.key,
                       compare_add=1005, swap=77))
    assert [(c.wr_id, c.status) for c in a.poll(0, 2)] == [(1, 0), (2, 0)]
    assert int.from_bytes(a.qt.read(old.pa, 8), "little") == 1000
    assert int.from_bytes(a.qt.read(old.pa + 8, 8), "little") == 1005
    assert int.from_bytes(b.qt.read(tgt.pa + 64, 8), "little") == 77


def test_atomic_write_and_flush_on_the_peer(linked: tuple[Nic, Nic]) -> None:
    """ATOMIC_WRITE and FLUSH (1.5) run at B; the FLUSH faults in B's ODP
    page that is missing, and A gets its answer after B's replay."""
    a, b = linked
    qa = connect(a, 2)
    connect(b, 1, min_rnr_timer=1, access=REMOTE_ALL | N.ACCESS_FLUSH_GLOBAL)
    tgt = b.reg_mr(2, 2 * PAGE, access=ACCESS_ALL | N.ACCESS_FLUSH_GLOBAL, mapped=False,
                   flags=ODP)
    b.pt.map(2, tgt.va, tgt.pa, RWA)
    value = 0x1122_3344_5566_7788
    a.post_send(qa, SendWr(N.WR_ATOMIC_WRITE, wr_id=1, flags=SIG, remote_addr=tgt.va + 16,
                           rkey=tgt.key, value=value),
                SendWr(N.WR_FLUSH, wr_id=2, flags=SIG, remote_addr=tgt.va + 8, rkey=tgt.key,
                       length=2 * PAGE - 8))
    (f,) = b.faults(1)
    assert (f.ctx, f.va, f.access) == (2, tgt.va + PAGE, G.ACCESS_READ)
    assert f.cmd_id >> 63 == 1
    assert b.qt.readq(tgt.pa + 16) == value
    b.pt.map(2, tgt.va + PAGE, tgt.pa + PAGE, RWA)
    b.set_reg("FAULT_REPLAY", 1)
    a.wait(lambda: (a.qt.clock_step(10_000), a.cq_pending(0))[1] == 2, "FLUSH after the replay")
    c1, c2 = a.poll(0, 2)
    assert (c1.wr_id, c1.status, c1.opcode, c1.byte_len) == (1, N.WC_SUCCESS,
                                                             N.WC_OP_ATOMIC_WRITE, 8)
    assert (c2.wr_id, c2.status, c2.opcode, c2.byte_len) == (2, N.WC_SUCCESS, N.WC_OP_FLUSH,
                                                             2 * PAGE - 8)
    # the whole MR, with any address and length
    a.post_send(qa, SendWr(N.WR_FLUSH, wr_id=3, flags=SIG, remote_addr=0, rkey=tgt.key,
                           length=999, flush_level=N.FLUSH_MR))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status, c.opcode) == (3, N.WC_SUCCESS, N.WC_OP_FLUSH)
    assert b.cq_pending(0) == 0 and b.reg("ERROR") == N.ERR_NONE
    b.wait_idle()


@pytest.mark.parametrize("case", ["flush-no-access", "persistent-not-granted",
                                  "atomic-write-misaligned", "atomic-write-no-remote-write"])
def test_atomic_write_and_flush_errors_on_the_peer(linked: tuple[Nic, Nic], case: str) -> None:
    a, b = linked
    qa = connect(a, 2)
    connect(b, 1, min_rnr_timer=1, access=N.ACCESS_REMOTE_READ | N.ACCESS_FLUSH_GLOBAL)
    tgt = b.reg_mr(2, PAGE, access=ACCESS_ALL)
    status = N.WC_REM_ACCESS_ERR
    if case == "flush-no-access":
        wr = SendWr(N.WR_FLUSH, remote_addr=tgt.va, rkey=tgt.key, length=8)
    elif case == "persistent-not-granted":
        tgt = b.reg_mr(2, PAGE, access=ACCESS_ALL | N.ACCESS_FLUSH_GLOBAL)
        wr = SendWr(N.WR_FLUSH, remote_addr=tgt.va, rkey=tgt.key, length=8,
                    flush_type=N.FLUSH_PERSISTENT)
    elif case == "atomic-write-misaligned":
        wr = SendWr(N.WR_ATOMIC_WRITE, remote_addr=tgt.va + 4, rkey=tgt.key, value=1)
        status = N.WC_REM_INV_REQ_ERR
    else:
        wr = SendWr(N.WR_ATOMIC_WRITE, remote_addr=tgt.va, rkey=tgt.key, value=1)
    wr.wr_id = 0xE
    a.post_send(qa, wr)
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (0xE, status)
    assert a.qp_state(0) == N.QPS_ERR
    assert b.qt.read(tgt.pa, 16) == b"\0" * 16


def test_rnr_until_the_peer_posts_a_receive(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    """No receive WQE at B: B answers RNR, A waits B's min_rnr_timer
    (1: 10 us of A's clock) and tries again, until B posts one (no doorbell,
    as rxe's provider does)."""
    a, b, qa, qb = qps
    src = a.reg_mr(1, PAGE)
    dst = b.reg_mr(1, PAGE)
    a.qt.write(src.pa, b"knock knock")
    a.post_send(qa, SendWr(N.WR_SEND, wr_id=7, flags=SIG, sges=[(src.va, 11, src.key)]))
    for _ in range(3):
        a.qt.clock_step(10_000)
        assert a.cq_pending(0) == 0
    b.post_recv(qb, 8, [(dst.va, 64, dst.key)], ring=False)
    a.wait(lambda: (a.qt.clock_step(10_000), a.cq_pending(0))[1] == 1, "SEND after the receive")
    (s,) = a.poll(0, 1)
    (r,) = b.poll(1, 1)
    assert (s.wr_id, s.status, r.wr_id, r.byte_len) == (7, N.WC_SUCCESS, 8, 11)
    assert b.qt.read(dst.pa, 11) == b"knock knock"


def test_rnr_retry_exhausted_across_the_link(linked: tuple[Nic, Nic]) -> None:
    a, b = linked
    qa = connect(a, 2, rnr_retry=1)
    connect(b, 1, min_rnr_timer=1)
    a.post_send(qa, SendWr(N.WR_SEND, wr_id=9, inline=b"hello?"))
    a.wait(lambda: (a.qt.clock_step(10_000), a.cq_pending(0))[1] == 1, "RNR retries used up")
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (9, N.WC_RNR_RETRY_EXC_ERR)


def responder_fault(qps: tuple[Nic, Nic, Qp, Qp]) -> tuple[Mr, bytes, int]:
    """A writes two pages into B's ODP MR, whose second page is missing."""
    a, b, qa, _ = qps
    src = a.reg_mr(1, 2 * PAGE)
    dst = b.reg_mr(2, 2 * PAGE, mapped=False, flags=ODP)
    b.pt.map(2, dst.va, dst.pa, RWA)
    data = pattern(2 * PAGE, 3)
    a.qt.write(src.pa, data)
    a.post_send(qa, SendWr(N.WR_RDMA_WRITE, wr_id=0x99, flags=SIG,
                           sges=[(src.va, 2 * PAGE, src.key)], remote_addr=dst.va,
                           rkey=dst.key))
    (f,) = b.faults(1)
    assert (f.ctx, f.va, f.access) == (2, dst.va + PAGE, G.ACCESS_WRITE)
    assert f.cmd_id >> 63 == 1 and (f.cmd_id >> 32) & 0x7FFFFFFF == 0  # responder, QP 0
    assert b.reg("STALLED") == 1
    return dst, data, f.token


def test_responder_fault_replay(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, _, _ = qps
    dst, data, _ = responder_fault(qps)
    for _ in range(3):  # A keeps trying; B keeps answering RNR until the replay
        a.qt.clock_step(10_000)
        assert a.cq_pending(0) == 0
    assert b.reg("STALLED") == 1 and b.pending_faults() == 0  # one record, not one per try
    b.pt.map(2, dst.va + PAGE, dst.pa + PAGE, RWA)
    b.set_reg("FAULT_REPLAY", 1)
    assert b.reg("STALLED") == 0
    a.wait(lambda: (a.qt.clock_step(10_000), a.cq_pending(0))[1] == 1, "WRITE after the replay")
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (0x99, N.WC_SUCCESS)
    assert b.qt.read(dst.pa, 2 * PAGE) == data
    b.wait_idle()


def test_responder_fault_cancel(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, qa, _ = qps
    _, _, tok = responder_fault(qps)
    b.set_reg("FAULT_CANCEL", tok)
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (0x99, N.WC_REM_ACCESS_ERR)
    assert a.qp_state(qa.qpn) == N.QPS_ERR
    assert b.reg("STALLED") == 0 and a.qt.alive() and b.qt.alive()


def test_bad_rkey_at_the_peer(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, qa, _ = qps
    src = a.reg_mr(1, PAGE)
    dst = b.reg_mr(1, PAGE)
    a.post_send(qa, SendWr(N.WR_RDMA_WRITE, wr_id=4, sges=[(src.va, 8, src.key)],
                           remote_addr=dst.va, rkey=dst.key ^ 0x1))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (4, N.WC_REM_ACCESS_ERR)
    assert b.qp_state(0) == N.QPS_RTS  # the responder is not at fault
    assert b.qt.read(dst.pa, 8) == b"\0" * 8


def test_unknown_lid_and_unconnected_qp(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, _, _ = qps
    lost = a.create_qp(1, dest=0, send_cq=0, recv_cq=1, dest_lid=3)  # nobody is LID 3
    a.post_send(lost, SendWr(N.WR_SEND, wr_id=1, inline=b"x"))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (1, N.WC_RETRY_EXC_ERR)
    stray = a.create_qp(2, dest=5, send_cq=0, recv_cq=1, dest_lid=2)  # B's QP 5 is RESET
    a.post_send(stray, SendWr(N.WR_SEND, wr_id=2, inline=b"x"))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (2, N.WC_RETRY_EXC_ERR)
    assert b.reg("ERROR") == N.ERR_NONE  # nothing the guest of B did wrong


def test_peer_gone(qps: tuple[Nic, Nic, Qp, Qp]) -> None:
    a, b, qa, _ = qps
    src = a.reg_mr(1, PAGE)
    b.qt.close()
    a.wait(lambda: not a.reg("LINK_STATUS") & N.LINK_UP, "link down")
    a.post_send(qa, SendWr(N.WR_RDMA_WRITE, wr_id=6, sges=[(src.va, 8, src.key)],
                           remote_addr=0x1000, rkey=0x100))
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (6, N.WC_RETRY_EXC_ERR)
    assert a.qt.alive()


def test_garbage_on_the_link(launch_nic: LaunchNic, tmp_path: Path) -> None:
    """Whatever arrives on the socket, the device stays up and the link
    stays down until a peer says HELLO."""
    sock = tmp_path / "link.sock"
    a = launch_nic("link=lk", "lid=1",
                   extra=("-chardev", f"socket,id=lk,path={sock},server=on,wait=off"))
    for junk in (b"\0" * 200, b"HNL1" * 100, bytes(range(256)) * 300):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
            s.sendall(junk)
            s.recv(4096)  # our HELLO, then the device hangs up on the junk
        a.wait(lambda: a.qt.alive() and a.reg("LINK_STATUS") == 0, "link down again")
    assert a.reg("ERROR") == N.ERR_NONE



def test_peer_qp_not_ready_yet_is_tried_again(linked: tuple[Nic, Nic]) -> None:
    """B's QP is still in INIT when A's SEND arrives (perftest's client may be
    first): B does not answer, A resends after its local ACK timeout."""
    a, b = linked
    qa = connect(a, 2, retry_cnt=7, timeout=10)  # 4.2 ms
    qb = connect(b, 1, state=N.QPS_INIT)
    dst = b.reg_mr(1, PAGE)
    b.post_recv(qb, 0x7, [(dst.va, 64, dst.key)], ring=False)
    a.post_send(qa, SendWr(N.WR_SEND, wr_id=0x6, flags=SIG, inline=b"early"))
    for _ in range(2):
        a.qt.clock_step(4_200_000)
        assert a.cq_pending(0) == 0
    qb.state = N.QPS_RTS
    b.write_qp(qb)
    a.wait(lambda: (a.qt.clock_step(4_200_000), a.cq_pending(0))[1] == 1, "the resend")
    (c,) = a.poll(0, 1)
    assert (c.wr_id, c.status) == (0x6, N.WC_SUCCESS)
    assert b.qt.read(dst.pa, 5) == b"early"


def test_doorbell_does_not_cut_a_wait_short(linked: tuple[Nic, Nic]) -> None:
    """A QP waiting (here: RNR, 655 ms) is not woken by its own SQ doorbell:
    that sent the request again, which burned RNR retries and, for a QP
    waiting on the link's response, ran requests twice at the peer
    (ib_send_bw's server received more messages than the client sent)."""
    a, b = linked
    qa = connect(a, 2, rnr_retry=1)
    qb = connect(b, 1, min_rnr_timer=0)
    dst = b.reg_mr(1, PAGE)
    a.post_send(qa, SendWr(N.WR_SEND, wr_id=1, flags=SIG, inline=b"one"))
    for _ in range(200):  # round trips: A's main loop gets B's RNR answer
        a.reg("STATUS")
    for i in (2, 3):
        a.post_send(qa, SendWr(N.WR_SEND, wr_id=i, flags=SIG, inline=b"more"))
    for _ in range(50):
        a.qt.clock_step(1000)  # 50 us: far from the 655 ms
    assert a.cq_pending(0) == 0, "a doorbell ended the RNR wait"
    for i in range(3):
        b.post_recv(qb, 0x10 + i, [(dst.va + 64 * i, 64, dst.key)], ring=False)
    a.wait(lambda: (a.qt.clock_step(50_000_000), a.cq_pending(0))[1] == 3, "three sends")
    assert [c.status for c in a.poll(0, 3)] == [N.WC_SUCCESS] * 3
    assert [r.wr_id for r in b.poll(1, 3)] == [0x10, 0x11, 0x12]
    assert b.cq_pending(1) == 0 and b.rq_consumer(qb) == 3  # no message twice

"""hmm-nic on-demand paging over qtest: MR faults, replay, cancel, TLB
invalidation, reset with stalled queue pairs, and the DMA trace stream.

A memory region registered unmapped (as an ODP MR whose pages are not
faulted in yet) makes the work request that touches it stall with a fault
record on the shared fault queue; the test plays the driver: it maps the
page and writes FAULT_REPLAY, or cancels the fault.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hmmgpu import TRACE_REC, parse_trace
from hmmgpu import H as G
from hmmnic import (
    ALL_INTR,
    DATA_PA,
    PAGE,
    RWA,
    LaunchNic,
    Mr,
    N,
    Nic,
    Qp,
    SendWr,
)

from harness.checks import tracefile

pytestmark = pytest.mark.device

SIG = N.SEND_SIGNALED
ODP = N.MR_VALID | N.MR_ODP


def fault_cmd(qpn: int, index: int, resp: int) -> int:
    return (resp << 63) | (qpn << 32) | index


@pytest.fixture
def nic(launch_nic: LaunchNic) -> Nic:
    return launch_nic()


def pairs(nic: Nic, npairs: int = 1) -> list[Qp]:
    nic.setup()
    nic.create_cq(0)
    nic.create_cq(1)
    qps = []
    for p in range(npairs):
        qps.append(nic.create_qp(2 * p, dest=2 * p + 1, send_cq=0, recv_cq=1))
        qps.append(nic.create_qp(2 * p + 1, dest=2 * p, send_cq=0, recv_cq=1))
    return qps


def write_wr(src: Mr, dst: Mr, length: int, wr_id: int = 1, soff: int = 0,
             doff: int = 0) -> SendWr:
    return SendWr(N.WR_RDMA_WRITE, wr_id=wr_id, flags=SIG,
                  sges=[(src.va + soff, length, src.key)], remote_addr=dst.va + doff,
                  rkey=dst.key)


def test_requester_fault_replay(nic: Nic) -> None:
    a, _ = pairs(nic)
    src = nic.reg_mr(1, 3 * PAGE, mapped=False, flags=ODP)
    dst = nic.reg_mr(2, 3 * PAGE)
    data = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(3 * PAGE))
    nic.qt.write(src.pa + 100, data[: 3 * PAGE - 100])
    nic.post_send(a, write_wr(src, dst, 3 * PAGE - 100, wr_id=0x77, soff=100))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access, f.reason, f.engine) == (
        1, src.va, G.ACCESS_READ, G.FAULT_NOT_PRESENT, G.ENGINE_MMU)
    assert f.cmd_id == fault_cmd(0, 0, 0)
    assert f.token != 0
    assert nic.msi_fired(N.VEC_FAULT_DEFAULT)
    assert nic.reg("INTR_STATUS") & N.INTR_FAULT
    assert nic.reg("STALLED") == 1
    assert nic.reg("STATUS") & N.STATUS_BUSY
    assert nic.cq_pending(0) == 0
    # map the first page only: the WR goes on and faults on the second
    nic.pt.map(1, src.va, src.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (f2,) = nic.faults(1)
    assert (f2.ctx, f2.va, f2.cmd_id) == (1, src.va + PAGE, fault_cmd(0, 0, 0))
    nic.pt.map_range(1, src.va + PAGE, src.pa + PAGE, 2 * PAGE, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.byte_len) == (0x77, N.WC_SUCCESS, 3 * PAGE - 100)
    assert nic.qt.read(dst.pa, 3 * PAGE - 100) == data[: 3 * PAGE - 100]
    assert nic.reg("STALLED") == 0
    nic.wait_idle()


def test_responder_fault_replay_send(nic: Nic) -> None:
    a, b = pairs(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, 2 * PAGE, mapped=False, flags=ODP)
    nic.qt.write(src.pa, b"odp receive buffer")
    nic.post_recv(b, 0xB, [(dst.va + PAGE + 8, 64, dst.key)])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0xA, flags=SIG, sges=[(src.va, 18, src.key)]))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access) == (2, dst.va + PAGE, G.ACCESS_WRITE)
    assert f.cmd_id == fault_cmd(0, 0, 1)
    assert nic.cq_pending(1) == 0 and nic.rq_consumer(b) == 0  # receive not consumed
    nic.pt.map(2, dst.va + PAGE, dst.pa + PAGE, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (s,) = nic.poll(0, 1)
    (r,) = nic.poll(1, 1)
    assert (s.wr_id, s.status) == (0xA, N.WC_SUCCESS)
    assert (r.wr_id, r.status, r.byte_len) == (0xB, N.WC_SUCCESS, 18)
    assert nic.qt.read(dst.pa + PAGE + 8, 18) == b"odp receive buffer"


def test_rdma_read_responder_fault(nic: Nic) -> None:
    a, _ = pairs(nic)
    local = nic.reg_mr(1, PAGE)
    remote = nic.reg_mr(2, PAGE, mapped=False, flags=ODP)
    nic.qt.write(remote.pa + 16, b"remote bytes")
    nic.post_send(a, SendWr(N.WR_RDMA_READ, wr_id=3, flags=SIG, sges=[(local.va, 12, local.key)],
                            remote_addr=remote.va + 16, rkey=remote.key))
    (f,) = nic.faults(1)
    assert (f.ctx, f.va, f.access, f.cmd_id) == (2, remote.va, G.ACCESS_READ, fault_cmd(0, 0, 1))
    nic.pt.map(2, remote.va, remote.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (3, N.WC_SUCCESS)
    assert nic.qt.read(local.pa, 12) == b"remote bytes"


def test_permission_fault(nic: Nic) -> None:
    """A read-only PTE under a remote WRITE is a PERMISSION fault; upgrade and replay."""
    a, _ = pairs(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE, perms=G.PTE_READ)
    nic.qt.write(src.pa, b"perm")
    nic.post_send(a, write_wr(src, dst, 4))
    (f,) = nic.faults(1)
    assert (f.ctx, f.access, f.reason) == (2, G.ACCESS_WRITE, G.FAULT_PERMISSION)
    nic.pt.map(2, dst.va, dst.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert nic.poll(0, 1)[0].status == N.WC_SUCCESS
    assert nic.qt.read(dst.pa, 4) == b"perm"


@pytest.mark.parametrize("resp", [0, 1])
def test_fault_cancel(nic: Nic, resp: int) -> None:
    a, _ = pairs(nic)
    nic.set_reg("INTR_MASK", ALL_INTR)
    src = nic.reg_mr(1, PAGE, mapped=resp == 1, flags=ODP)
    dst = nic.reg_mr(2, PAGE, mapped=resp == 0, flags=ODP)
    nic.post_send(a, write_wr(src, dst, 8, wr_id=0xC),
                  SendWr(N.WR_SEND, wr_id=0xD, inline=b"next"))
    (f,) = nic.faults(1)
    assert f.cmd_id == fault_cmd(0, 0, resp)
    nic.set_reg("FAULT_CANCEL", f.token)
    c1, c2 = nic.poll(0, 2)
    want = N.WC_REM_ACCESS_ERR if resp else N.WC_LOC_PROT_ERR
    assert (c1.wr_id, c1.status, c1.vendor_err) == (0xC, want, N.ERR_FAULT)
    assert (c2.wr_id, c2.status) == (0xD, N.WC_WR_FLUSH_ERR)
    assert nic.reg("ERROR") == N.ERR_FAULT
    assert nic.reg("STALLED") == 0
    assert nic.qp_state(0) == N.QPS_ERR
    evs = nic.events()
    assert (N.EV_QP_FATAL, 0, N.ERR_FAULT) in {(e.type, e.num, e.err) for e in evs}
    # a second cancel of the same token is stale: dropped, no error
    nic.set_reg("INTR_STATUS", N.INTR_ERROR)
    nic.set_reg("FAULT_CANCEL", f.token)
    assert not nic.reg("INTR_STATUS") & N.INTR_ERROR
    nic.wait_idle()


def test_second_qp_runs_while_first_is_stalled(nic: Nic) -> None:
    q0, _, q2, _ = pairs(nic, 2)
    odp = nic.reg_mr(1, PAGE, mapped=False, flags=ODP)
    src = nic.reg_mr(3, PAGE)
    dst = nic.reg_mr(4, 4 * PAGE)
    nic.qt.write(odp.pa, b"stalled first")
    nic.qt.write(src.pa, b"runs meanwhile")
    nic.post_send(q0, write_wr(odp, dst, 13, wr_id=0x100))
    (f,) = nic.faults(1)
    assert f.cmd_id == fault_cmd(0, 0, 0)
    for i in range(3):
        nic.post_send(q2, write_wr(src, dst, 14, wr_id=0x200 + i, doff=PAGE * (i + 1)))
        (c,) = nic.poll(0, 1)
        assert (c.wr_id, c.status, c.qp_num) == (0x200 + i, N.WC_SUCCESS, 2)
        assert nic.qt.read(dst.pa + PAGE * (i + 1), 14) == b"runs meanwhile"
    assert nic.reg("STALLED") == 1
    assert nic.qt.read(dst.pa, 13) == b"\0" * 13
    nic.pt.map(1, odp.va, odp.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.qp_num) == (0x100, N.WC_SUCCESS, 0)
    assert nic.qt.read(dst.pa, 13) == b"stalled first"


def test_atomic_is_not_executed_twice(nic: Nic) -> None:
    """The remote FAA runs, then the write of its result faults: the replay
    writes the result without adding again."""
    a, _ = pairs(nic)
    local = nic.reg_mr(1, PAGE, mapped=False, flags=ODP)
    remote = nic.reg_mr(2, PAGE)
    nic.qt.writeq(remote.pa + 8, 40)
    nic.post_send(a, SendWr(N.WR_ATOMIC_FETCH_AND_ADD, wr_id=0xFA, flags=SIG,
                            sges=[(local.va + 32, 8, local.key)], remote_addr=remote.va + 8,
                            rkey=remote.key, compare_add=2))
    (f,) = nic.faults(1)
    assert (f.ctx, f.access, f.cmd_id) == (1, G.ACCESS_WRITE, fault_cmd(0, 0, 0))
    assert nic.qt.readq(remote.pa + 8) == 42
    # replay without fixing anything: faults again, still no second add
    nic.set_reg("FAULT_REPLAY", 1)
    nic.faults(1)
    assert nic.qt.readq(remote.pa + 8) == 42
    nic.pt.map(1, local.va, local.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.opcode) == (0xFA, N.WC_SUCCESS, N.WC_OP_FETCH_ADD)
    assert nic.qt.readq(local.pa + 32) == 40
    assert nic.qt.readq(remote.pa + 8) == 42


def test_atomic_remote_fault(nic: Nic) -> None:
    a, _ = pairs(nic)
    local = nic.reg_mr(1, PAGE)
    remote = nic.reg_mr(2, PAGE, mapped=False, flags=ODP)
    nic.qt.writeq(remote.pa, 5)
    nic.post_send(a, SendWr(N.WR_ATOMIC_CMP_AND_SWP, wr_id=1, flags=SIG,
                            sges=[(local.va, 8, local.key)], remote_addr=remote.va,
                            rkey=remote.key, compare_add=5, swap=6))
    (f,) = nic.faults(1)
    assert (f.ctx, f.access, f.cmd_id) == (2, G.ACCESS_ATOMIC, fault_cmd(0, 0, 1))
    nic.pt.map(2, remote.va, remote.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert nic.poll(0, 1)[0].status == N.WC_SUCCESS
    assert nic.qt.readq(remote.pa) == 6 and nic.qt.readq(local.pa) == 5


def test_faultq_disabled_fails_the_wr(nic: Nic) -> None:
    nic.setup(faultq=False)
    nic.create_cq(0)
    a = nic.create_qp(0, dest=1)
    nic.create_qp(1, dest=0)
    src = nic.reg_mr(1, PAGE, mapped=False, flags=ODP)
    dst = nic.reg_mr(2, PAGE)
    nic.post_send(a, write_wr(src, dst, 8, wr_id=5))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.vendor_err) == (5, N.WC_LOC_PROT_ERR, N.ERR_FAULT)
    assert nic.reg("ERROR") == N.ERR_FAULT


def test_inv_go_drops_a_cached_translation(nic: Nic) -> None:
    a, _ = pairs(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE)
    old_pa, new_pa = dst.pa, DATA_PA + (40 << 20)
    nic.qt.write(src.pa, b"first")
    nic.post_send(a, write_wr(src, dst, 5, wr_id=1))
    nic.poll(0, 1)
    assert nic.qt.read(old_pa, 5) == b"first"
    # the driver moves the page without telling the device: the old
    # translation may still be used (it is cached)
    nic.pt.map(2, dst.va, new_pa, RWA)
    nic.qt.write(src.pa, b"secnd")
    nic.post_send(a, write_wr(src, dst, 5, wr_id=2))
    nic.poll(0, 1)
    assert b"secnd" in (nic.qt.read(old_pa, 5), nic.qt.read(new_pa, 5))
    # after INV_GO the device must use the new page
    nic.invalidate(2, dst.va, PAGE)
    nic.qt.write(old_pa, b"-----")
    nic.qt.write(new_pa, b"-----")
    nic.qt.write(src.pa, b"third")
    nic.post_send(a, write_wr(src, dst, 5, wr_id=3))
    nic.poll(0, 1)
    assert nic.qt.read(new_pa, 5) == b"third"
    assert nic.qt.read(old_pa, 5) == b"-----"
    # whole-context invalidation (LEN ~0) works the same way
    nic.pt.map(2, dst.va, old_pa, RWA)
    nic.invalidate(2, 0, (1 << 64) - 1)
    nic.qt.write(src.pa, b"fourt")
    nic.post_send(a, write_wr(src, dst, 5, wr_id=4))
    nic.poll(0, 1)
    assert nic.qt.read(old_pa, 5) == b"fourt"


def test_reset_with_a_stalled_qp(nic: Nic) -> None:
    a, _ = pairs(nic)
    src = nic.reg_mr(1, PAGE, mapped=False, flags=ODP)
    dst = nic.reg_mr(2, PAGE)
    nic.post_send(a, write_wr(src, dst, 8))
    nic.faults(1)
    assert nic.reg("STALLED") == 1
    nic.reset()
    assert nic.reg("STALLED") == 0
    assert nic.reg("STATUS") == N.STATUS_READY
    assert nic.reg("FAULTQ_TAIL") == 0 and nic.reg("NIC_CTRL") == 0
    # the driver starts over: the same memory, fresh tables and queues
    a, _ = pairs(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE)
    nic.qt.write(src.pa, b"after reset")
    nic.post_send(a, write_wr(src, dst, 11, wr_id=0xAF))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (0xAF, N.WC_SUCCESS)
    assert nic.qt.read(dst.pa, 11) == b"after reset"
    assert nic.qt.alive()


def test_nic_disable_drops_a_stalled_qp(nic: Nic) -> None:
    a, _ = pairs(nic)
    src = nic.reg_mr(1, PAGE, mapped=False, flags=ODP)
    dst = nic.reg_mr(2, PAGE)
    nic.post_send(a, write_wr(src, dst, 8))
    (f,) = nic.faults(1)
    nic.set_reg("NIC_CTRL", 0)
    assert nic.reg("STALLED") == 0
    nic.set_reg("INTR_STATUS", N.INTR_ERROR)
    nic.set_reg("FAULT_CANCEL", f.token)  # stale now: dropped
    assert not nic.reg("INTR_STATUS") & N.INTR_ERROR
    assert nic.qt.alive()


def test_queue_page_not_mapped(nic: Nic) -> None:
    """The queues must stay mapped: a hole in RING_CTX is a queue error, not a stall."""
    a, _ = pairs(nic)
    nic.set_reg("INTR_MASK", ALL_INTR)
    nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE)
    nic.qt.writel(a.sq.pa + N.QBUF_PRODUCER, 1)
    nic.pt.set_pte(N.RING_CTX, a.sq.va, 0, 0)  # unmap the SQ's first page
    nic.invalidate(N.RING_CTX, a.sq.va, PAGE)
    nic.set_reg("SQ_DOORBELL", 0)
    nic.wait(lambda: nic.reg("ERROR") == N.ERR_QUEUE_READ, "ERR_QUEUE_READ")
    assert nic.reg("STALLED") == 0
    assert nic.qp_state(0) == N.QPS_ERR
    assert nic.qt.read(dst.pa, 8) == b"\0" * 8
    assert nic.qt.alive()


# ---- the DMA trace stream ----------------------------------------------------


def test_dmatrace_engines(launch_nic: LaunchNic, tmp_path: Path) -> None:
    path = tmp_path / "dmatrace.bin"
    nic = launch_nic("dmatrace=t0", "dmatrace-flush-ms=0",
                     extra=("-chardev", f"file,id=t0,path={path}"))
    a, b = pairs(nic)
    src = nic.reg_mr(1, 2 * PAGE)
    dst = nic.reg_mr(2, 2 * PAGE, mapped=False, flags=ODP)
    nic.qt.write(src.pa, bytes(range(200)))
    nic.post_recv(b, 0x9, [(dst.va + PAGE, 200, dst.key)])
    nic.post_send(a, SendWr(N.WR_SEND, wr_id=0x8, flags=SIG, sges=[(src.va, 200, src.key)]))
    nic.faults(1)
    nic.pt.map_range(2, dst.va, dst.pa, 2 * PAGE, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    nic.poll(0, 1)
    nic.poll(1, 1)
    nic.post_send(a, SendWr(N.WR_RDMA_READ, wr_id=0x10, flags=SIG,
                            sges=[(src.va + PAGE, 64, src.key)], remote_addr=dst.va + PAGE,
                            rkey=dst.key))
    nic.poll(0, 1)
    recs = parse_trace(tracefile.read_bytes(path))
    assert recs, "empty trace"
    engines = {N.ENGINE_QUEUE, N.ENGINE_REQ, N.ENGINE_MMU, N.ENGINE_RESP}
    assert {r.engine for r in recs} <= engines
    data = [r for r in recs if r.kind == G.TRACE_DATA]
    # every payload DMA belongs to the requester or the responder and names its WR
    assert data and all(r.engine in (N.ENGINE_REQ, N.ENGINE_RESP) for r in data)
    send = [(r.engine, r.dir, r.addr, r.length, r.ctx, r.va, r.cmd_id) for r in data
            if r.cmd_id & 0x7FFFFFFF_FFFFFFFF == 0 and r.result == 0]
    assert (N.ENGINE_REQ, G.DIR_READ, src.pa, 200, 1, src.va, fault_cmd(0, 0, 0)) in send
    assert (N.ENGINE_RESP, G.DIR_WRITE, dst.pa + PAGE, 200, 2, dst.va + PAGE,
            fault_cmd(0, 0, 1)) in send
    read = [(r.engine, r.dir, r.addr, r.length, r.ctx) for r in data
            if r.cmd_id & 0xFFFFFFFF == 1]
    assert read == [(N.ENGINE_RESP, G.DIR_READ, dst.pa + PAGE, 64, 2),
                    (N.ENGINE_REQ, G.DIR_WRITE, src.pa + PAGE, 64, 1)]
    # queue traffic: WQE reads and CQE/index writes, through RING_CTX
    q = [r for r in recs if r.engine == N.ENGINE_QUEUE]
    assert all(r.kind in (G.TRACE_CMD_FETCH, G.TRACE_CPL_WRITE) for r in q)
    assert any(r.kind == G.TRACE_CMD_FETCH and r.addr == a.sq.slot_pa(0) and
               r.va == a.sq.va + N.QBUF_DATA and r.ctx == N.RING_CTX for r in q)
    cq0 = nic.cqs[0]
    assert any(r.kind == G.TRACE_CPL_WRITE and r.addr == cq0.slot_pa(0) and r.length == 48
               for r in q)
    assert any(r.kind == G.TRACE_CPL_WRITE and r.addr == a.sq.pa + N.QBUF_CONSUMER
               for r in q)
    # the MMU: walks and the fault record
    mmu = [r for r in recs if r.engine == N.ENGINE_MMU]
    kinds = {r.kind for r in mmu}
    assert {G.TRACE_CTX_FETCH, G.TRACE_PTW, G.TRACE_FAULT_WRITE, G.TRACE_EV_REPLAY} <= kinds
    assert all(r.result == 0 for r in recs)
    assert len(tracefile.read_bytes(path)) % TRACE_REC.size == 24 % TRACE_REC.size


def two_stalled_one_record_slot(nic: Nic) -> tuple[Mr, Mr]:
    """QPs 0 and 2 stalled on ODP MRs 1 and 3 (WRs 1 and 2), with a fault
    ring of 2 entries: it holds one record, the other waits for room."""
    q0, _, q2, _ = pairs(nic, 2)
    nic.set_reg("FAULTQ_CTRL", 0)
    nic.setup_faultq(size=2)
    odp1 = nic.reg_mr(1, PAGE, mapped=False, flags=ODP)
    odp3 = nic.reg_mr(3, PAGE, mapped=False, flags=ODP)
    dst = nic.reg_mr(4, 2 * PAGE)
    nic.post_send(q0, write_wr(odp1, dst, 8, wr_id=1))
    nic.post_send(q2, write_wr(odp3, dst, 8, wr_id=2, doff=PAGE))
    assert nic.reg("STALLED") == 2
    return odp1, odp3


def test_fault_records_wait_for_room(nic: Nic) -> None:
    """A fault ring of 2 entries holds one record: the second QP's waits until
    FAULTQ_HEAD moves, then is posted."""
    odp1, odp3 = two_stalled_one_record_slot(nic)
    assert nic.reg("FAULTQ_TAIL") == 1
    (f1,) = nic.faults(1)  # consuming it makes room: the held record follows
    (f2,) = nic.faults(1)
    assert {(f1.ctx, f1.cmd_id), (f2.ctx, f2.cmd_id)} == {(1, fault_cmd(0, 0, 0)),
                                                          (3, fault_cmd(2, 0, 0))}
    nic.pt.map(1, odp1.va, odp1.pa, RWA)
    nic.pt.map(3, odp3.va, odp3.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    assert sorted(c.wr_id for c in nic.poll(0, 2)) == [1, 2]


def test_faultq_disabled_with_a_record_pending(nic: Nic) -> None:
    """Disabling the fault queue fails the WRs whose record could not be
    written yet; the one whose record the driver has stays stalled."""
    odp1, _ = two_stalled_one_record_slot(nic)
    nic.set_reg("FAULTQ_CTRL", 0)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.vendor_err, c.qp_num) == (2, N.WC_LOC_PROT_ERR, N.ERR_FAULT, 2)
    assert nic.reg("STALLED") == 1
    assert nic.qp_state(2) == N.QPS_ERR and nic.qp_state(0) == N.QPS_RTS
    nic.pt.map(1, odp1.va, odp1.pa, RWA)
    nic.set_reg("FAULT_REPLAY", 1)
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (1, N.WC_SUCCESS)


def test_huge_page_mr(nic: Nic) -> None:
    a, _ = pairs(nic)
    src = nic.reg_mr(1, PAGE)
    huge = 2 << 20
    va = 0x7E00_0000_0000
    dst = nic.reg_mr(2, 2 * huge, va=va, mapped=False)
    assert nic.pt is not None
    nic.pt.map(2, va, 0x0A00_0000, RWA, huge=True)
    nic.pt.map(2, va + huge, 0x0C00_0000, RWA, huge=True)  # not contiguous
    nic.qt.write(src.pa, bytes(range(64)))
    nic.post_send(a, write_wr(src, dst, 64, wr_id=0x2A, doff=huge - 32))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (0x2A, N.WC_SUCCESS)
    assert nic.qt.read(0x0A00_0000 + huge - 32, 32) == bytes(range(32))
    assert nic.qt.read(0x0C00_0000, 32) == bytes(range(32, 64))

"""hmm-nic lifecycle and robustness over qtest: large transfers across engine
steps and the bottom half, QOM counters against the DMA trace, hot unplug
with stalled and waiting queue pairs, migration refused, and guest garbage
in every table and queue (QEMU must survive it and RESET must recover).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hmmgpu import H as G
from hmmgpu import parse_trace
from hmmnic import (
    CQ,
    CQ_TABLE,
    MR,
    MR_TABLE,
    PAGE,
    QP,
    QP_TABLE,
    RWA,
    LaunchNic,
    N,
    Nic,
    Qp,
    SendWr,
)

from harness.checks import tracefile

pytestmark = pytest.mark.device

SIG = N.SEND_SIGNALED


def pair(nic: Nic) -> tuple[Qp, Qp]:
    nic.setup()
    nic.create_cq(0)
    nic.create_cq(1)
    return nic.create_qp(0, dest=1, recv_cq=1), nic.create_qp(1, dest=0, recv_cq=1)


def test_large_write_spans_steps(launch_nic: LaunchNic, tmp_path: Path) -> None:
    """1 MiB moves in several engine steps (the doorbell's budget, then the
    bottom half); the data, the QOM counters and the DMA trace agree."""
    path = tmp_path / "dmatrace.bin"
    nic = launch_nic("dmatrace=t0", "dmatrace-flush-ms=0", qmp=True,
                     extra=("-chardev", f"file,id=t0,path={path}"))
    a, _ = pair(nic)
    size = 1 << 20
    src = nic.reg_mr(1, size, pa=0x0600_0000)
    dst = nic.reg_mr(2, size, pa=0x0800_0000)
    rng = random.Random(7)
    data = rng.randbytes(size)
    nic.qt.write(src.pa, data)
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=0x1A, flags=SIG,
                            sges=[(src.va, size, src.key)], remote_addr=dst.va, rkey=dst.key))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status, c.byte_len) == (0x1A, N.WC_SUCCESS, size)
    assert nic.qt.read(dst.pa, size) == data
    nic.wait_idle()
    assert nic.qom_get("wrs-completed") == 1
    assert nic.qom_get("wrs-failed") == 0
    # every byte the counters saw since realize is in the stream, and the
    # payload exactly once
    recs = parse_trace(tracefile.read_bytes(path))
    dma = [r for r in recs if r.dir != G.DIR_NONE and r.result == 0]
    reads = sum(r.length for r in dma if r.dir == G.DIR_READ)
    writes = sum(r.length for r in dma if r.dir == G.DIR_WRITE)
    assert nic.qom_get("dma-read-bytes") == reads
    assert nic.qom_get("dma-write-bytes") == writes
    payload = [r for r in dma if r.kind == G.TRACE_DATA]
    assert sum(r.length for r in payload if r.engine == N.ENGINE_REQ) == size
    assert sum(r.length for r in payload if r.engine == N.ENGINE_RESP) == size
    assert all(r.length <= 64 * 1024 for r in payload)


def test_hot_unplug_with_stalled_and_waiting_qps(launch_nic: LaunchNic) -> None:
    slot = 5
    nic = launch_nic(f"addr={slot:#x}.0", machine="pc", qmp=True)
    nic.setup(qp_count=4)
    nic.create_cq(0)
    a = nic.create_qp(0, dest=1)
    nic.create_qp(1, dest=0)
    c = nic.create_qp(2, dest=3)
    nic.create_qp(3, dest=2)
    odp = nic.reg_mr(1, PAGE, mapped=False, flags=N.MR_VALID | N.MR_ODP)
    dst = nic.reg_mr(2, PAGE)
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=1, sges=[(odp.va, 8, odp.key)],
                            remote_addr=dst.va, rkey=dst.key))
    nic.faults(1)
    nic.post_send(c, SendWr(N.WR_SEND, wr_id=2, inline=b"waiting for a receive"))
    assert nic.reg("STALLED") == 1 and nic.reg("STATUS") & N.STATUS_BUSY
    nic.hot_unplug(slot)
    for _ in range(10):
        nic.qt.clock_step(1_000_000)
    assert nic.qt.alive()


def test_migration_is_refused(launch_nic: LaunchNic, tmp_path: Path) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    nic = launch_nic(qmp=True)
    assert nic.qt.qmp_path is not None
    mon = QEMUMonitorProtocol(str(nic.qt.qmp_path))
    mon.connect()
    mon.settimeout(10)
    try:
        r = mon.cmd_raw("migrate", {"uri": f"unix:{tmp_path / 'nowhere.sock'}"})
    finally:
        mon.close()
    assert "error" in r, r
    assert "hmm-nic" in r["error"]["desc"], r
    assert nic.qt.alive()


def garbage_round(nic: Nic, rng: random.Random, qps: list[Qp]) -> None:
    """One round of guest garbage: tables, queue buffers, registers, doorbells."""
    what = rng.choices(range(9), weights=[3, 3, 6, 40, 15, 10, 8, 5, 10])[0]
    if what == 0:
        n = rng.randrange(4)
        nic.qt.write(QP_TABLE + QP.size * n + rng.randrange(QP.size),
                     rng.randbytes(rng.randrange(1, 16)))
    elif what == 1:
        nic.qt.write(CQ_TABLE + CQ.size * rng.randrange(2) + rng.randrange(CQ.size),
                     rng.randbytes(rng.randrange(1, 8)))
    elif what == 2:
        nic.qt.write(MR_TABLE + MR.size * rng.randrange(4) + rng.randrange(MR.size),
                     rng.randbytes(rng.randrange(1, 8)))
    elif what == 3:
        qp = rng.choice(qps)
        slot = rng.randrange(qp.sq.mask + 1)
        wqe = bytearray(rng.randbytes(1 << qp.sq.log2))
        wqe[12:16] = rng.randrange(8).to_bytes(4, "little")  # mostly valid opcodes
        wqe[184 + 12:184 + 16] = rng.randrange(10).to_bytes(4, "little")  # num_sge
        for i in range(rng.randrange(3)):  # some SGEs with keys that exist
            off = 208 + 16 * i
            wqe[off + 8:off + 12] = rng.randrange(64).to_bytes(4, "little")
            wqe[off + 12:off + 16] = ((rng.randrange(4) << 8) | 0x5A).to_bytes(4, "little")
        nic.qt.write(qp.sq.slot_pa(slot), bytes(wqe))
        nic.qt.writel(qp.sq.pa + N.QBUF_PRODUCER, rng.randrange(1 << 16))
        nic.set_reg("SQ_DOORBELL", qp.qpn if rng.random() < 0.8 else rng.randrange(1 << 32))
    elif what == 4:
        qp = rng.choice(qps)
        nic.qt.write(qp.rq.slot_pa(rng.randrange(qp.rq.mask + 1)), rng.randbytes(1 << qp.rq.log2))
        nic.qt.writel(qp.rq.pa + N.QBUF_PRODUCER, rng.randrange(1 << 16))
        nic.set_reg("RQ_DOORBELL", qp.qpn)
    elif what == 5:
        reg = rng.choice(["CQ_ARM", "FAULT_CANCEL", "FAULT_REPLAY", "EQ_HEAD", "FAULTQ_HEAD",
                          "INV_CTX", "INV_LEN_LO", "INV_GO", "VEC_EQ", "SCRATCH"])
        nic.set_reg(reg, rng.randrange(1 << 32) if rng.random() < 0.5 else rng.randrange(8))
    elif what == 6:
        # a page-table entry of some context: garbage or a hole
        ctx = rng.randrange(4)
        va = nic.mrs[ctx].va if ctx in nic.mrs else qps[0].sq.va
        nic.pt.set_pte(ctx, va + PAGE * rng.randrange(2), 0,
                       rng.choice([0, rng.randrange(1 << 64), 0x0300_0000 | RWA | G.PTE_VALID]))
    elif what == 7:
        nic.wr(rng.randrange(0, 0x1000, 4), rng.randrange(1 << 32))
    else:
        # the driver recreates a QP: INIT with RQ_DOORBELL (the device
        # forgets it), then RTS
        qp = rng.choice(qps)
        qp.state = N.QPS_INIT
        nic.write_qp(qp)
        nic.set_reg("RQ_DOORBELL", qp.qpn)
        qp.state = N.QPS_RTS
        qp.sq.index = qp.rq.index = 0
        for q in (qp.sq, qp.rq):
            nic.qt.writel(q.pa + N.QBUF_PRODUCER, 0)
            nic.qt.writel(q.pa + N.QBUF_CONSUMER, 0)
        nic.write_qp(qp)


@pytest.mark.parametrize("seed", range(6))
def test_guest_garbage_never_kills_qemu(launch_nic: LaunchNic, seed: int) -> None:
    nic = launch_nic()
    rng = random.Random(seed)
    qps = list(pair(nic))
    nic.reg_mr(1, 2 * PAGE)
    nic.reg_mr(2, 2 * PAGE, mapped=False, flags=N.MR_VALID | N.MR_ODP)
    nic.reg_mr(3, 2 * PAGE, flags=N.MR_VALID | N.MR_IMPLICIT)
    for _ in range(150):
        garbage_round(nic, rng, qps)
        assert nic.reg("ID") == N.ID_MAGIC
    for _ in range(20):
        nic.qt.clock_step(1_000_000)
    assert nic.qt.alive()
    # RESET brings it back
    nic.reset()
    assert nic.reg("STATUS") == N.STATUS_READY and nic.reg("STALLED") == 0
    a, _ = pair(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE)
    nic.qt.write(src.pa, b"alive")
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=9, flags=SIG, sges=[(src.va, 5, src.key)],
                            remote_addr=dst.va, rkey=dst.key))
    (c,) = nic.poll(0, 1)
    assert (c.wr_id, c.status) == (9, N.WC_SUCCESS)
    assert nic.qt.read(dst.pa, 5) == b"alive"


NOT_RAM = 0x0000_4000_0000_0000  # nothing is mapped up there


def recovers(nic: Nic) -> None:
    nic.reset()
    assert nic.reg("STATUS") == N.STATUS_READY and nic.reg("ERROR") == N.ERR_NONE
    a, _ = pair(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE)
    nic.qt.write(src.pa, b"recovered")
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=7, flags=SIG, sges=[(src.va, 9, src.key)],
                            remote_addr=dst.va, rkey=dst.key))
    assert [(c.wr_id, c.status) for c in nic.poll(0, 1)] == [(7, N.WC_SUCCESS)]
    assert nic.qt.read(dst.pa, 9) == b"recovered"


def test_event_write_failure_is_fatal(nic: Nic) -> None:
    a, _ = pair(nic)
    src = nic.reg_mr(1, PAGE)
    dst = nic.reg_mr(2, PAGE)
    nic.set_reg("EQ_CTRL", 0)
    nic.set_reg("EQ_BASE_LO", NOT_RAM & 0xFFFFFFFF)
    nic.set_reg("EQ_BASE_HI", NOT_RAM >> 32)
    nic.set_reg("EQ_CTRL", N.ENABLE)
    nic.set_reg("CQ_ARM", 0)
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, sges=[(src.va, 8, src.key)],
                            remote_addr=dst.va, rkey=dst.key))
    nic.wait(lambda: nic.reg("STATUS") & N.STATUS_FATAL, "STATUS_FATAL")
    assert nic.reg("ERROR") == N.ERR_EQ_WRITE
    assert nic.error_addr() == NOT_RAM
    assert nic.msi_fired(N.VEC_ERR_DEFAULT)
    assert not nic.reg("STATUS") & N.STATUS_BUSY
    # halted: doorbells are refused until RESET
    nic.set_reg("SQ_DOORBELL", 0)
    assert nic.reg("ERROR") == N.ERR_QP_STATE
    recovers(nic)


def test_fault_record_write_failure_is_fatal(nic: Nic) -> None:
    a, _ = pair(nic)
    nic.set_reg("FAULTQ_CTRL", 0)
    nic.setup_faultq(base=NOT_RAM)
    odp = nic.reg_mr(1, PAGE, mapped=False, flags=N.MR_VALID | N.MR_ODP)
    dst = nic.reg_mr(2, PAGE)
    nic.post_send(a, SendWr(N.WR_RDMA_WRITE, wr_id=1, flags=SIG, sges=[(odp.va, 8, odp.key)],
                            remote_addr=dst.va, rkey=dst.key))
    nic.wait(lambda: nic.reg("STATUS") & N.STATUS_FATAL, "STATUS_FATAL")
    assert nic.reg("ERROR") == N.ERR_FAULTQ_WRITE
    assert nic.reg("STALLED") == 0
    recovers(nic)

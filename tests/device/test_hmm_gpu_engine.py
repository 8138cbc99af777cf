"""hmm-gpu over qtest: identity, COPY/FILL/NOP, completions, interrupts, tracing."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from hmmgpu import (
    DST,
    PCI_CAP_ID_EXP,
    SRC,
    TRACE_HDR,
    TRACE_REC,
    Cmd,
    Gpu,
    H,
    Launch,
    copy,
    fill,
)
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.checks import tracefile

pytestmark = pytest.mark.device


def pattern_bytes(length: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed * 13 + (i >> 8)) & 0xFF for i in range(length))


def test_identity(gpu: Gpu) -> None:
    assert gpu.cfg_read(0x00, 2) == H.PCI_VENDOR_ID
    assert gpu.cfg_read(0x02, 2) == H.PCI_DEVICE_ID
    assert gpu.cfg_read(0x08, 1) == H.PCI_REVISION
    assert gpu.reg("ID") == H.ID_MAGIC
    assert gpu.reg("VERSION") == (H.VERSION_MAJOR << 16) | H.VERSION_MINOR
    assert gpu.reg("CAPS") == H.CAP_DMA_ENGINE | H.CAP_MMU | H.CAP_VRAM | H.CAP_CLOCK_SYNC
    assert gpu.reg("TLB_ENTRIES") == H.TLB_SIZE
    assert gpu.reg("VEC_FAULT") == H.VEC_FAULT_DEFAULT == 2
    assert H.NUM_VECTORS == 3
    assert gpu.reg("MAX_XFER") == H.MAX_XFER
    assert gpu.reg("NUM_VECTORS") == H.NUM_VECTORS
    assert gpu.reg("STATUS") == H.STATUS_READY
    assert gpu.reg("ERROR") == H.ERR_NONE
    assert gpu.reg("VEC_CPL") == H.VEC_CPL_DEFAULT
    assert gpu.reg("VEC_ERR") == H.VEC_ERR_DEFAULT
    assert gpu.find_cap(PCI_CAP_ID_EXP) is not None, "PCIe capability missing on q35"
    gpu.set_reg("SCRATCH", 0xDEADBEEF)
    assert gpu.reg("SCRATCH") == 0xDEADBEEF
    assert gpu.reg("ERROR") == H.ERR_NONE  # nothing above was an error


def test_copy(gpu: Gpu) -> None:
    gpu.setup()
    small = pattern_bytes(4096, 1)
    big = pattern_bytes(200 * 1024 + 5, 2)  # several 64 KiB chunks, odd tail
    gpu.qt.write(SRC, small)
    gpu.qt.write(SRC + 0x10_0000, big)
    gpu.qt.memset(DST - 16, 16 + 0x10_0000 + len(big) + 64, 0xEE)
    cpls = gpu.run(
        copy(SRC, DST, len(small), cmd_id=0x1111, ctx=7),
        copy(SRC + 0x10_0000, DST + 0x10_0000, len(big), cmd_id=0x2222),
    )
    assert [c.cmd_id for c in cpls] == [0x1111, 0x2222]
    assert all(c.status == H.ERR_NONE for c in cpls)
    assert all(c.opcode == H.OP_COPY for c in cpls)
    assert [c.nbytes for c in cpls] == [len(small), len(big)]
    assert cpls[1].timestamp_ns >= cpls[0].timestamp_ns
    assert gpu.qt.read(DST, len(small)) == small
    assert gpu.qt.read(DST + 0x10_0000, len(big)) == big
    # nothing written outside the destination ranges
    assert gpu.qt.read(DST - 16, 16) == b"\xee" * 16
    assert gpu.qt.read(DST + 0x10_0000 + len(big), 64) == b"\xee" * 64
    gpu.wait_idle()
    assert gpu.reg("CMDQ_HEAD") == gpu.reg("CMDQ_TAIL") == 2
    assert gpu.reg("ERROR") == H.ERR_NONE
    assert gpu.reg("INTR_STATUS") == H.INTR_CPL


def test_fill_and_nop(gpu: Gpu) -> None:
    gpu.setup()
    pat = 0x0123456789ABCDEF
    length = 3 * 65536 + 13
    gpu.qt.memset(DST, length + 64, 0x55)
    cpls = gpu.run(
        Cmd(H.OP_NOP, cmd_id=1),
        fill(DST, length, pat, cmd_id=2),
    )
    assert [(c.cmd_id, c.status, c.opcode, c.nbytes) for c in cpls] == [
        (1, H.ERR_NONE, H.OP_NOP, 0),
        (2, H.ERR_NONE, H.OP_FILL, length),
    ]
    want = (struct.pack("<Q", pat) * (length // 8 + 1))[:length]
    assert gpu.qt.read(DST, length) == want
    assert gpu.qt.read(DST + length, 64) == b"\x55" * 64


def test_phase_flips_across_ring_wraps(gpu: Gpu) -> None:
    gpu.setup(cmdq_size=4, cplq_size=4)
    seen: list[tuple[int, int]] = []
    for i in range(11):  # 11 completions through a 4-entry ring: wraps twice
        slot = gpu.cpl_head
        (cpl,) = gpu.run(fill(DST + 64 * i, 64, i, cmd_id=100 + i))
        assert cpl.cmd_id == 100 + i and cpl.status == H.ERR_NONE
        seen.append((slot, cpl.phase))
    assert seen[:9] == [(0, 1), (1, 1), (2, 1), (3, 1), (0, 0), (1, 0), (2, 0), (3, 0), (0, 1)]
    for i in range(11):
        assert gpu.qt.readq(DST + 64 * i) == i


def test_full_completion_ring_applies_backpressure(gpu: Gpu) -> None:
    # A 2-entry completion ring holds one completion (full when TAIL+1 == HEAD).
    gpu.setup(cmdq_size=8, cplq_size=2)
    gpu.push(*(fill(DST + 8 * i, 8, 0x1000 + i, cmd_id=i) for i in range(3)))
    gpu.wait(lambda: gpu.reg("CPLQ_TAIL") == 1, "first completion")
    for _ in range(50):  # give the engine every chance to overrun
        assert gpu.reg("CPLQ_TAIL") == 1
    assert gpu.qt.readq(DST + 8) == 0, "command ran without a completion slot"
    assert gpu.reg("STATUS") & H.STATUS_BUSY
    got = gpu.reap(1) + gpu.reap(1) + gpu.reap(1)
    assert [c.cmd_id for c in got] == [0, 1, 2]
    assert [gpu.qt.readq(DST + 8 * i) for i in range(3)] == [0x1000, 0x1001, 0x1002]
    gpu.wait_idle()


def test_msix_on_completion(gpu: Gpu) -> None:
    gpu.setup()
    gpu.msi_clear()
    gpu.run(fill(DST, 8, 1, cmd_id=1))  # no F_IRQ: status only
    assert gpu.reg("INTR_STATUS") & H.INTR_CPL
    assert not gpu.msi_fired(H.VEC_CPL_DEFAULT)
    gpu.set_reg("INTR_STATUS", H.INTR_CPL)  # RW1C
    assert gpu.reg("INTR_STATUS") == 0

    gpu.run(fill(DST, 8, 2, cmd_id=2, flags=H.CMD_F_IRQ))
    assert gpu.msi_fired(H.VEC_CPL_DEFAULT)
    assert not gpu.msi_fired(H.VEC_ERR_DEFAULT)

    # masked cause: latched, not signalled
    gpu.msi_clear()
    gpu.set_reg("INTR_MASK", H.INTR_ERROR)
    gpu.run(fill(DST, 8, 3, cmd_id=3, flags=H.CMD_F_IRQ))
    assert not gpu.msi_fired(H.VEC_CPL_DEFAULT)
    assert gpu.reg("INTR_STATUS") & H.INTR_CPL

    # completion vector moved to vector 1
    gpu.set_reg("INTR_MASK", H.INTR_CPL | H.INTR_ERROR)
    gpu.set_reg("VEC_CPL", 1)
    assert gpu.reg("VEC_CPL") == 1
    gpu.run(fill(DST, 8, 4, cmd_id=4, flags=H.CMD_F_IRQ))
    assert gpu.msi_fired(1)
    assert not gpu.msi_fired(0)


def test_max_xfer_fill_and_copy(launch: Launch) -> None:
    gpu = launch(extra=("-m", "512M"))
    gpu.setup()
    n = H.MAX_XFER
    base_a, base_b = 0x0400_0000, 0x0800_0000  # 64 MiB each, inside 512 MiB RAM
    (c1,) = gpu.run(fill(base_a, n, 0xA5A5_5A5A_0F0F_F0F0, cmd_id=1))
    (c2,) = gpu.run(copy(base_a, base_b, n, cmd_id=2))
    assert (c1.status, c1.nbytes, c2.status, c2.nbytes) == (0, n, 0, n)
    for off in (0, 8, n // 2, n - 8):
        assert gpu.qt.readq(base_b + off) == 0xA5A5_5A5A_0F0F_F0F0
    assert gpu.qt.readq(base_b + n) == 0


def test_pc_machine(launch: Launch) -> None:
    gpu = launch(machine="pc")
    assert gpu.find_cap(PCI_CAP_ID_EXP) is None  # conventional bus: plain PCI
    assert gpu.reg("ID") == H.ID_MAGIC
    gpu.setup()
    gpu.msi_clear()
    gpu.qt.write(SRC, b"hello, pc machine")
    (cpl,) = gpu.run(copy(SRC, DST, 17, cmd_id=9, flags=H.CMD_F_IRQ))
    assert cpl.status == H.ERR_NONE
    assert gpu.qt.read(DST, 17) == b"hello, pc machine"
    assert gpu.msi_fired(H.VEC_CPL_DEFAULT)


def test_reset_clears_state(gpu: Gpu) -> None:
    gpu.setup()
    gpu.set_reg("SCRATCH", 5)
    gpu.set_reg("VEC_CPL", 1)
    gpu.set_reg("VEC_FAULT", 0)
    gpu.set_reg("CTX_COUNT", 3)
    gpu.set_reg("FAULTQ_SIZE", 8)
    gpu.run(fill(DST, 8, 1))
    gpu.reset()
    for name, want in (
        ("STATUS", H.STATUS_READY),
        ("ERROR", 0),
        ("INTR_STATUS", 0),
        ("INTR_MASK", 0),
        ("SCRATCH", 0),
        ("VEC_CPL", H.VEC_CPL_DEFAULT),
        ("VEC_ERR", H.VEC_ERR_DEFAULT),
        ("CMDQ_CTRL", 0),
        ("CMDQ_HEAD", 0),
        ("CMDQ_TAIL", 0),
        ("CMDQ_SIZE", 0),
        ("CPLQ_CTRL", 0),
        ("CPLQ_HEAD", 0),
        ("CPLQ_TAIL", 0),
        ("CPLQ_BASE_LO", 0),
        ("VEC_FAULT", H.VEC_FAULT_DEFAULT),
        ("CTX_COUNT", 0),
        ("MMU_CTRL", 0),
        ("FAULTQ_SIZE", 0),
        ("FAULTQ_CTRL", 0),
        ("FAULTQ_TAIL", 0),
        ("STALLED", 0),
    ):
        assert gpu.reg(name) == want, name
    # and works again, phase starting at 1
    gpu.setup()
    (cpl,) = gpu.run(fill(DST, 8, 2))
    assert cpl.phase == 1 and cpl.status == 0


def _trace_cmd_ids(path: Path) -> list[int]:
    body = tracefile.read_bytes(path)[TRACE_HDR.size :]
    return [TRACE_REC.unpack_from(body, i)[3]
            for i in range(0, len(body) - len(body) % TRACE_REC.size, TRACE_REC.size)]


def test_dmatrace_written_within_flush_ms(launch: Launch, tmp_path: Path) -> None:
    """The stream is written at most dmatrace-flush-ms after the device code that
    recorded it (not at every doorbell: a write() per doorbell was half of it)."""
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", "dmatrace-flush-ms=20",
                 extra=("-chardev", f"file,id=t0,path={path}"))
    gpu.setup()
    gpu.run(fill(DST, 4096, 0x5A, cmd_id=0x1234))
    deadline = time.monotonic() + 5.0
    while 0x1234 not in _trace_cmd_ids(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _trace_cmd_ids(path).count(0x1234) >= 3  # fetch, data, completion


def test_dmatrace_complete_when_the_vm_stops(launch: Launch, tmp_path: Path) -> None:
    """Whatever waits for the flush timer is written when the VM stops."""
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", "dmatrace-flush-ms=600000", qmp=True,
                 extra=("-chardev", f"file,id=t0,path={path}"))
    gpu.setup()
    gpu.run(fill(DST, 4096, 0x5A, cmd_id=0x4321))
    assert gpu.qt.qmp_path is not None
    mon = QEMUMonitorProtocol(str(gpu.qt.qmp_path))
    mon.connect()
    mon.settimeout(10)
    try:
        mon.cmd("stop")
    finally:
        mon.close()
    assert _trace_cmd_ids(path).count(0x4321) >= 3


def test_dmatrace_stream(launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", "dmatrace-flush-ms=0",
                 extra=("-chardev", f"file,id=t0,path={path}"))
    gpu.setup()
    data = os.urandom(100 * 1024)
    gpu.qt.write(SRC, data)
    gpu.run(copy(SRC, DST, len(data), cmd_id=0xC0FFEE, ctx=42))
    gpu.run(fill(0x0000_4000_0000_0000, 16, 0, cmd_id=0xBAD))  # a failing data DMA
    raw = tracefile.read_bytes(path)

    magic, version, rec_size, devfn, rsvd = TRACE_HDR.unpack_from(raw, 0)
    assert (magic, version, rec_size, devfn, rsvd) == (
        H.TRACE_MAGIC,
        H.TRACE_VERSION,
        TRACE_REC.size,
        gpu.devfn,
        0,
    )
    body = raw[TRACE_HDR.size :]
    assert len(body) % TRACE_REC.size == 0
    recs = [TRACE_REC.unpack_from(body, i) for i in range(0, len(body), TRACE_REC.size)]
    # v2 fields va, aux, level are 0 for bus-address commands
    assert all(r[4:6] == (0, 0) and r[11] == 0 for r in recs)
    # (addr, len, cmd_id, ctx, engine, kind, dir, result)
    got = [r[1:4] + r[6:11] for r in recs]
    q, c = H.ENGINE_QUEUE, H.ENGINE_COPY
    rd, wr = H.DIR_READ, H.DIR_WRITE
    ch = 64 * 1024
    tail = len(data) - ch
    cid = 0xC0FFEE
    assert got[:6] == [
        (gpu.cmdq, 64, cid, 42, q, H.TRACE_CMD_FETCH, rd, 0),
        (SRC, ch, cid, 42, c, H.TRACE_DATA, rd, 0),
        (DST, ch, cid, 42, c, H.TRACE_DATA, wr, 0),
        (SRC + ch, tail, cid, 42, c, H.TRACE_DATA, rd, 0),
        (DST + ch, tail, cid, 42, c, H.TRACE_DATA, wr, 0),
        (gpu.cplq, 32, cid, 42, q, H.TRACE_CPL_WRITE, wr, 0),
    ]
    assert got[6][:6] == (gpu.cmdq + 64, 64, 0xBAD, 0, q, H.TRACE_CMD_FETCH)
    assert got[7][:7] == (0x0000_4000_0000_0000, 16, 0xBAD, 0, c, H.TRACE_DATA, wr)
    assert got[7][7] != 0, "failed DMA must carry its MemTxResult"
    assert got[8][:6] == (gpu.cplq + 32, 32, 0xBAD, 0, q, H.TRACE_CPL_WRITE)
    assert len(recs) == 9
    stamps = [r[0] for r in recs]
    assert stamps == sorted(stamps)


def test_qom_counters(launch: Launch) -> None:
    gpu = launch(qmp=True)
    gpu.setup()
    gpu.qt.write(SRC, b"x" * 100)
    gpu.run(copy(SRC, DST, 100, flags=H.CMD_F_IRQ), Cmd(0x7F))
    gpu.set_reg("ID", 0)  # one register error
    mon = QEMUMonitorProtocol(str(gpu.qt.qmp_path))
    mon.connect()
    mon.settimeout(10)
    dev = "/machine/peripheral/gpu0"
    try:

        def get(prop: str) -> int:
            return mon.cmd("qom-get", path=dev, property=prop)

        assert get("cmds-completed") == 1
        assert get("cmds-failed") == 1
        assert get("dma-read-bytes") == 100 + 2 * 64  # data + two command fetches
        assert get("dma-write-bytes") == 100 + 2 * 32  # data + two completions
        assert get("dma-errors") == 0
        assert get("irqs-raised") == 3  # F_IRQ completion, bad-opcode and RO-write errors
        assert get("guest-errors") == 2
        r = mon.cmd_raw("qom-set", {"path": dev, "property": "cmds-completed", "value": 0})
        assert "error" in r, "counters must be read-only"
        assert get("cmds-completed") == 1
    finally:
        mon.close()


def test_hot_unplug_with_work_in_flight(launch: Launch) -> None:
    """Unrealize (exit) while the engine BH still has work: no crash, no DMA after."""
    slot = 5
    gpu = launch(f"addr={slot:#x}.0", machine="pc", qmp=True)
    gpu.setup(cmdq_size=8, cplq_size=2)  # one completion fits: the engine then waits
    big = 16 << 20
    gpu.push(*(fill(0x0100_0000 + i * big, big, 0x1111 * (i + 1), cmd_id=i) for i in range(4)))
    gpu.wait(lambda: gpu.reg("CPLQ_TAIL") == 1, "first completion")
    assert gpu.reg("STATUS") & H.STATUS_BUSY, "engine finished before the unplug"
    gpu.hot_unplug(slot)
    assert gpu.qt.readq(0x0100_0000) == 0x1111
    for _ in range(20):  # the device is gone: the queued commands never run
        gpu.qt.clock_step(1_000_000)
        assert gpu.qt.readq(0x0100_0000 + big) == 0
        assert gpu.qt.readq(0x0100_0000 + 4 * big - 8) == 0
    assert gpu.qt.alive()


def test_irq_late_interrupts_only_after_the_doorbell(gpu: Gpu) -> None:
    """F_IRQ_LATE (1.3): no MSI for a completion posted inside the doorbell write
    (the driver reaps those itself), an MSI for one posted later."""
    gpu.setup()
    gpu.msi_clear()
    gpu.push(fill(DST, 4096, 0x1111, cmd_id=1, flags=H.CMD_F_IRQ_LATE))
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status) == (1, H.ERR_NONE)
    assert gpu.reg("INTR_STATUS") & H.INTR_CPL  # latched all the same
    assert not gpu.msi_fired(H.VEC_CPL_DEFAULT)
    # more than the doorbell write runs: the rest completes in the bottom half
    gpu.push(fill(DST, 16 << 20, 0x2222, cmd_id=2, flags=H.CMD_F_IRQ_LATE))
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status, c.nbytes) == (2, H.ERR_NONE, 16 << 20)
    assert gpu.msi_fired(H.VEC_CPL_DEFAULT)
    gpu.msi_clear()
    # F_IRQ still interrupts for what completes in the doorbell write
    gpu.push(fill(DST, 64, 0x3333, cmd_id=3, flags=H.CMD_F_IRQ))
    gpu.reap(1)
    assert gpu.msi_fired(H.VEC_CPL_DEFAULT)

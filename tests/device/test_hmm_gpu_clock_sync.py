"""hmm-gpu 1.4 CLOCK_SYNC over qtest: the guest's trace clock into the DMA trace.

CLOCK_SYNC_LO latches the low half; the CLOCK_SYNC_HI write completes the
value and emits one EV_CLOCK_SYNC record stamped with the virtual clock of
that write (qtest drives the virtual clock, so the stamp is known exactly),
``va`` the value, ``aux`` the device's sequence number; the latch is then
cleared, so HI alone means low bits 0. Counted in QOM "clock-syncs".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hmmgpu import DST, TRACE_HDR, Gpu, H, Launch, TraceRec, fill, parse_trace

from harness.checks import tracefile

pytestmark = pytest.mark.device


def traced(launch: Launch, tmp_path: Path) -> tuple[Gpu, Path]:
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", "dmatrace-flush-ms=0", qmp=True,
                 extra=("-chardev", f"file,id=t0,path={path}"))
    assert isinstance(gpu, Gpu)
    return gpu, path


def records(path: Path) -> list[TraceRec]:
    raw = tracefile.read_bytes(path)
    assert len(raw) >= TRACE_HDR.size
    return parse_trace(raw)


def syncs(path: Path) -> list[TraceRec]:
    return [r for r in records(path) if r.kind == H.TRACE_EV_CLOCK_SYNC]


def sync(gpu: Gpu, value: int) -> None:
    gpu.set_reg("CLOCK_SYNC_LO", value & 0xFFFFFFFF)
    gpu.set_reg("CLOCK_SYNC_HI", value >> 32)


def test_advertised(gpu: Gpu) -> None:
    assert gpu.reg("CAPS") & H.CAP_CLOCK_SYNC
    assert gpu.reg("VERSION") == (1 << 16) | 4
    assert (H.REG_CLOCK_SYNC_LO, H.REG_CLOCK_SYNC_HI) == (0x0D8, 0x0DC)
    assert H.TRACE_EV_CLOCK_SYNC == 19


def test_pair_emits_one_record_with_value_and_stamp(launch: Launch, tmp_path: Path) -> None:
    gpu, path = traced(launch, tmp_path)
    before = len(records(path))
    values = [0x0000_0123_89AB_CDEF, 0xFEDC_BA98_7654_3210, 5_000_000_000]
    stamps = []
    for v in values:
        stamps.append(gpu.qt.clock_step(1_000_000))  # the virtual time of the HI write
        sync(gpu, v)
    recs = records(path)
    assert len(recs) == before + len(values), "one record per LO/HI pair, nothing else"
    got = recs[before:]
    assert [(r.va, r.aux, r.timestamp_ns) for r in got] == [
        (v, i + 1, t) for i, (v, t) in enumerate(zip(values, stamps, strict=True))]
    for r in got:
        assert (r.kind, r.engine, r.dir, r.length, r.addr, r.cmd_id, r.ctx, r.result,
                r.level) == (H.TRACE_EV_CLOCK_SYNC, H.ENGINE_QUEUE, H.DIR_NONE, 0, 0, 0, 0, 0, 0)
    assert gpu.qom_get("clock-syncs") == len(values)
    # write-only: they read 0, and no access was a guest error
    assert gpu.reg("CLOCK_SYNC_LO") == gpu.reg("CLOCK_SYNC_HI") == 0
    assert gpu.reg("ERROR") == H.ERR_NONE and gpu.qom_get("guest-errors") == 0


def test_lone_lo_emits_nothing_and_hi_alone_has_low_bits_zero(
        launch: Launch, tmp_path: Path) -> None:
    gpu, path = traced(launch, tmp_path)
    sync(gpu, 0x1_0000_0002)
    gpu.set_reg("CLOCK_SYNC_LO", 0xDEADBEEF)  # alone: only latched
    gpu.set_reg("CLOCK_SYNC_LO", 0x00000007)  # the last LO is the one that counts
    assert [r.aux for r in syncs(path)] == [1]
    assert gpu.qom_get("clock-syncs") == 1
    gpu.set_reg("CLOCK_SYNC_HI", 0x3)
    gpu.set_reg("CLOCK_SYNC_HI", 0x4)  # the pair's HI cleared the latch
    assert [(r.va, r.aux) for r in syncs(path)] == [
        (0x1_0000_0002, 1), (0x3_0000_0007, 2), (0x4_0000_0000, 3)]
    assert gpu.qom_get("clock-syncs") == 3
    assert gpu.reg("ERROR") == H.ERR_NONE


def test_reset_clears_the_latch_not_the_sequence(launch: Launch, tmp_path: Path) -> None:
    gpu, path = traced(launch, tmp_path)
    sync(gpu, 10)
    gpu.set_reg("CLOCK_SYNC_LO", 0x55)
    gpu.reset()
    gpu.set_reg("CLOCK_SYNC_HI", 0x2)
    assert [(r.va, r.aux) for r in syncs(path)] == [(10, 1), (0x2_0000_0000, 2)]
    assert gpu.qom_get("clock-syncs") == 2


def test_between_commands_and_without_a_trace(launch: Launch, tmp_path: Path) -> None:
    """A sync between two commands sits between their records; with no dmatrace
    chardev the counter still counts."""
    gpu, path = traced(launch, tmp_path)
    gpu.setup()
    gpu.run(fill(DST, 4096, 0x11, cmd_id=0xA1))
    sync(gpu, 77)
    gpu.run(fill(DST, 4096, 0x22, cmd_id=0xA2))
    order = [(r.kind, r.cmd_id) for r in records(path)]
    i = order.index((H.TRACE_EV_CLOCK_SYNC, 0))
    assert (H.TRACE_CPL_WRITE, 0xA1) in order[:i] and (H.TRACE_CMD_FETCH, 0xA2) in order[i:]

    plain = launch(qmp=True)
    sync(plain, 1)
    sync(plain, 2)
    assert plain.qom_get("clock-syncs") == 2

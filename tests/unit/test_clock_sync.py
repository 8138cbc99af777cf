"""EV_CLOCK_SYNC (ABI 1.4) in the DMA trace: decoded, printed, and ignored by the checks.

The driver writes its trace clock to the device at probe, whenever the harness writes
the sysfs attribute ``clock_sync`` (around every scenario) and from the fault handler;
each write is one event record (engine QUEUE, ``va`` = guest ns, ``aux`` = sequence
number). None of that is device work: the audits must see the trace as without it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import dmatrace_ref as old  # tests/ is on sys.path (its conftest.py)
import pytest

from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind
from harness.cli import main

PAGE = 4096
VA = 0x7F0000000000
PA = 0x40000000
V = dmatrace.PTE_VALID | dmatrace.PTE_READ | dmatrace.PTE_WRITE
HDR = struct.pack("<QIIII", dmatrace.TRACE_MAGIC, 2, 64, 4 << 3, 0)


def rec(kind: int, addr: int = 0, length: int = 0, direction: int = Dir.READ, cmd: int = 1,
        ctx: int = 0, engine: int = Engine.COPY, va: int = 0, aux: int = 0, level: int = 0,
        ts: int = 1000) -> bytes:
    return struct.pack("<QQQQQQIBBBBB7x", ts, addr, length, cmd, va, aux, ctx, engine, kind,
                       direction, 0, level)


def sync(seq: int, guest_ns: int = 5_000_000_123, ts: int = 1000) -> bytes:
    return rec(Kind.EV_CLOCK_SYNC, direction=Dir.NONE, cmd=0, engine=Engine.QUEUE,
               va=guest_ns + seq, aux=seq, ts=ts)


def copy_cmd(cmd: int, src: int, dst: int) -> bytes:
    return (rec(Kind.CMD_FETCH, 0x1000 + 64 * cmd, 64, cmd=cmd, engine=Engine.QUEUE)
            + rec(Kind.DATA, src, PAGE, Dir.READ, cmd)
            + rec(Kind.DATA, dst, PAGE, Dir.WRITE, cmd)
            + rec(Kind.CPL_WRITE, 0x2000 + 32 * cmd, 32, Dir.WRITE, cmd, engine=Engine.QUEUE))


def va_job() -> bytes:
    """A VA job: a walk, an access, an invalidation and a stale access (one problem)."""
    walk = b"".join(rec(Kind.PTW, 0x9000 + 8 * lvl, 8, cmd=7, ctx=1, engine=Engine.MMU, va=VA,
                        aux=(PA if lvl == 0 else 0xA000 * (lvl + 1)) | V, level=lvl)
                    for lvl in (3, 2, 1, 0))
    return (walk + rec(Kind.DATA, PA, PAGE, Dir.WRITE, 7, ctx=1, va=VA)
            + rec(Kind.EV_TLB_INV, direction=Dir.NONE, cmd=8, ctx=1, engine=Engine.MMU, va=VA,
                  aux=PAGE)
            + rec(Kind.DATA, PA, PAGE, Dir.WRITE, 7, ctx=1, va=VA))


def vram_use() -> bytes:
    """A VRAM page used while free (copied out, not yet copied into again): one VRAM
    lifetime problem, and one of translation (no walk mapped it)."""
    return (rec(Kind.DATA, 0x5000_0000, PAGE, Dir.READ, 3, engine=Engine.MIGRATE, aux=0x8000)
            + rec(Kind.DATA, 0x5000_0000, PAGE, Dir.WRITE, 4, engine=Engine.MIGRATE, aux=0x8000)
            + rec(Kind.VRAM, 0x8000, 64, Dir.READ, 6, ctx=1, va=VA)
            + rec(Kind.DATA, 0x5100_0000, PAGE, Dir.READ, 5, engine=Engine.MIGRATE, aux=0x8000))


EXPECT = [dmatrace.Expectation("copy", PAGE, (dmatrace.MapRange("src", 0x10000, PAGE),
                                              dmatrace.MapRange("dst", 0x20000, PAGE)), ncmds=1)]


def test_the_record_decodes_and_prints() -> None:
    t = dmatrace.decode(HDR + sync(1, 7_000_000_000, ts=42))
    (r,) = t.records
    assert t.problems == []
    assert r.kind is Kind.EV_CLOCK_SYNC
    assert r.is_event and r.dir == Dir.NONE and r.engine == Engine.QUEUE
    assert (r.timestamp_ns, r.va, r.aux) == (42, 7_000_000_001, 1)
    assert r.describe().endswith("QUEUE EV_CLOCK_SYNC guest_ns=7000000001 seq=1")
    assert dmatrace.summarize(t).count_by == {"EV_CLOCK_SYNC": 1}


def test_hmmlab_trace_selects_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "dmatrace-0.bin"
    f.write_bytes(HDR + sync(1, ts=100) + copy_cmd(1, 0x10000, 0x20000) + sync(2, ts=900))
    assert main(["trace", str(f), "--kind", "ev_clock_sync", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = [(r["index"], r["kind"], r["timestamp_ns"], r["va"], r["aux"]) for r in out["records"]]
    assert got == [(0, "EV_CLOCK_SYNC", 100, 5_000_000_124, 1),
                   (5, "EV_CLOCK_SYNC", 900, 5_000_000_125, 2)]
    # a kind spelt without its EV_ prefix is named back with the kinds there are
    assert main(["trace", str(f), "--kind", "clock_sync"]) != 0
    err = capsys.readouterr().err
    assert "--kind clock_sync: not a record kind" in err and "EV_CLOCK_SYNC" in err


def test_smoke_window_is_not_cut_by_the_probe_sync() -> None:
    """smoke's check of the first commands (only_first) stops at the first MMU work; a
    clock sync before smoke's commands (the driver's at probe, the harness's at the
    scenario's start) is none, nor one between them."""
    later = rec(Kind.PTW, 0x9000, 8, cmd=9, engine=Engine.MMU) + rec(Kind.DATA, 0x80000, PAGE,
                                                                     Dir.WRITE, 9)
    t = dmatrace.decode(HDR + sync(1) + copy_cmd(1, 0x10000, 0x20000) + sync(2) + later)
    assert dmatrace.check_trace(EXPECT, t, only_first=True) == []
    assert old.check_trace(EXPECT, old.decode(bytes(HDR + sync(1) + copy_cmd(1, 0x10000, 0x20000)
                                                    + sync(2) + later)), only_first=True) == []
    # the window still ends at the MMU work: smoke's request and a later one do not match
    assert dmatrace.check_trace(EXPECT * 2, t, only_first=True) != []


@pytest.mark.parametrize(("body", "problems"), [
    (va_job(), (1, 0)), (vram_use(), (1, 1)), (copy_cmd(1, 0x10000, 0x20000), (0, 0))])
def test_audits_see_the_trace_as_without_syncs(body: bytes, problems: tuple[int, int]) -> None:
    n = len(body) // 64
    recs = [body[i * 64:(i + 1) * 64] for i in range(n)]
    mixed = sync(1) + b"".join(r + sync(i + 2) for i, r in enumerate(recs))
    plain, synced = dmatrace.decode(HDR + body), dmatrace.decode(HDR + mixed)
    a = dmatrace.check_invalidations(plain.records)
    b = dmatrace.check_invalidations(synced.records)
    assert a.to_dict() == b.to_dict() and len(a.problems) == len(b.problems)
    a2 = dmatrace.check_vram_lifetime(plain.records)
    b2 = dmatrace.check_vram_lifetime(synced.records)
    assert a2.to_dict() == b2.to_dict() and len(a2.problems) == len(b2.problems)
    for first in (True, False):
        assert (dmatrace.check_trace(EXPECT, plain, only_first=first)
                == dmatrace.check_trace(EXPECT, synced, only_first=first))
    # the audits found what they should where there is something to find
    assert (a.problem_count, a2.problem_count) == problems


def test_the_reference_decoder_agrees() -> None:
    """tests/dmatrace_ref.py, the oracle of the numpy rewrite, knows the kind too (an
    unknown kind would be a problem there and not here)."""
    data = HDR + sync(1) + va_job() + sync(2) + vram_use() + copy_cmd(1, 0x10000, 0x20000)
    a, b = dmatrace.decode(data), old.decode(data)
    assert a.problems == b.problems == []
    assert [r.describe() for r in a.records] == [r.describe() for r in b.records]
    assert dmatrace.summarize(a).to_dict() == old.summarize(b).to_dict()
    for first in (True, False):
        assert (dmatrace.check_trace(EXPECT, a, only_first=first)
                == old.check_trace(EXPECT, b, only_first=first))

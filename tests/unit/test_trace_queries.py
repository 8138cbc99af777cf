"""hmmlab trace's queries, on the real trace slice checked in and on a built stream."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind
from harness.cli import main

REAL = Path(__file__).parent / "data" / "dmatrace-real-6.12-iommu.bin"
PAGE = 4096


def rec2(kind: int, addr: int = 0, length: int = 0, direction: int = Dir.READ, cmd: int = 1,
         ctx: int = 1, engine: int = Engine.COPY, va: int = 0, aux: int = 0, level: int = 0,
         ts: int = 0) -> bytes:
    return struct.pack("<QQQQQQIBBBBB7s", ts, addr, length, cmd, va, aux, ctx, engine, kind,
                       direction, 0, level, b"\0" * 7)


VA = 0x7F00_0000_3000


def fault_stream() -> bytes:
    """Two faults (tokens 1 and 2), the first replayed, the second cancelled, noise
    around them."""
    return b"".join([
        struct.pack("<QIIII", dmatrace.TRACE_MAGIC, 2, 64, 0x18, 0),
        rec2(Kind.DATA, 0x5000, PAGE, ts=100, cmd=9),                                  # 1
        rec2(Kind.PTW, 0x9000, 8, engine=Engine.MMU, va=VA, aux=0, level=0, ts=200),   # 2
        rec2(Kind.FAULT_WRITE, 0xF000, 64, Dir.WRITE, engine=Engine.MMU, va=VA, aux=1,
             ts=200),                                                                  # 3
        rec2(Kind.PTW, 0x9000, 8, engine=Engine.MMU, va=0x1000, aux=0, ts=250),       # 4
        rec2(Kind.EV_TLB_INV, direction=Dir.NONE, engine=Engine.MMU, va=VA & ~0xFFFF,
             aux=1 << 16, ts=300),                                                     # 5
        rec2(Kind.EV_TLB_INV, direction=Dir.NONE, engine=Engine.MMU, va=0x1000,
             aux=PAGE, ts=310),                                                        # 6
        rec2(Kind.EV_REPLAY, direction=Dir.NONE, engine=Engine.MMU, ts=400),           # 7
        rec2(Kind.PTW, 0x9000, 8, engine=Engine.MMU, va=VA, aux=0x77001, ts=400),      # 8
        rec2(Kind.DATA, 0x77000, PAGE, va=VA, ts=400),                                 # 9
        rec2(Kind.DATA, 0x78000, PAGE, va=VA, ts=400),                                 # 10
        rec2(Kind.FAULT_WRITE, 0xF040, 64, Dir.WRITE, engine=Engine.MMU, va=0x2000, aux=2,
             ts=500),                                                                  # 11
        rec2(Kind.EV_CANCEL, direction=Dir.NONE, engine=Engine.MMU, aux=2, ts=600),    # 12
    ])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["trace", *argv])
    return code, capsys.readouterr().out


def test_fault_life_by_va_and_by_token(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "dmatrace-0.bin"
    f.write_bytes(fault_stream())
    code, out = run(capsys, str(f), "--fault", hex(VA + 0x10), "--json")
    assert code == 0
    life = json.loads(out)["faults"]
    # the missing walk, the fault, the invalidation of its page (not the other one),
    # the replay, the rewalk and the first access; not the second access
    assert [r["index"] for r in life[0]] == [1, 2, 4, 6, 7, 8]
    assert [r["kind"] for r in life[0]] == ["PTW", "FAULT_WRITE", "EV_TLB_INV", "EV_REPLAY",
                                           "PTW", "DATA"]
    code, out = run(capsys, str(f), "--fault", "2", "--json")
    assert [[r["kind"] for r in life] for life in json.loads(out)["faults"]] == [
        ["FAULT_WRITE", "EV_CANCEL"]]
    assert "1 faults on the page of 0x2 or with token 2" in run(capsys, str(f), "--fault", "2")[1]


def test_addr_time_kind_and_ctx_queries(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "dmatrace-0.bin"
    f.write_bytes(fault_stream())
    picked = lambda *q: [r["index"] for r in json.loads(run(capsys, str(f), "--json", *q)[1])[  # noqa: E731
        "records"]]
    assert picked("--addr", "0x77000-0x78000") == [8]   # overlaps: one page, not the next
    assert picked("--addr", "0x76fff-0x77001") == [8]
    assert picked("--addr", "0x9000-0x9008") == [1, 3, 7]  # the walks' entry reads
    assert picked("--from", "300", "--to", "400") == [4, 5]
    assert picked("--kind", "fault_write", "--kind", "EV_CANCEL") == [2, 10, 11]
    assert picked("--kind", "DATA", "--from", "4e2") == [8, 9]
    assert picked("--ctx", "2") == []
    assert picked("--kind", "DATA", "--limit", "2") == [0, 8]
    summary = json.loads(run(capsys, str(f), "--json")[1])["summary"]
    assert summary["records"] == 12 and summary["counts"]["EV_TLB_INV"] == 2
    assert run(capsys, str(f), "--kind", "NOPE")[0] == 2
    assert run(capsys, str(f), "--addr", "0x10")[0] == 2


def test_limit_decodes_only_the_head(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--records --limit N on a trace whose tail is garbage: the tail is not decoded
    (no problem reported, exit 0), the rest is counted from the file's size."""
    f = tmp_path / "dmatrace-0.bin"
    shutil.copyfile(REAL, f)
    with f.open("ab") as out:
        out.write(b"\xff" * (64 * 100))
    code, text = run(capsys, str(f), "--records", "--limit", "5")
    assert code == 0, text
    assert len([ln for ln in text.splitlines() if ln.startswith(" ")]) == 5
    assert "... 4191 more" in text
    assert run(capsys, str(f))[0] == 1  # the whole file: unknown kinds reported

"""The hmmlab command line (no guest)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from harness.cli import main
from harness.scenarios.smoke import parse_workload_output


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("build", "run", "trace", "exit status"):
        assert word in out


def test_run_help_documents_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "timeouts:" in out and "--results" in out
    assert "--keep-going" not in out  # every scenario runs while the guest is usable


@pytest.mark.parametrize("rounds", ["0", "-2", "five"])
def test_bench_rounds_must_be_a_positive_number(rounds: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "svm", "--rounds", rounds])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--rounds: expected a number of rounds from 1, got '{rounds}'" in err


def test_bench_help_names_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--rounds N" in out and "(default: 5)" in out and "median" in out


def test_keep_going_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--keep-going"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --keep-going" in capsys.readouterr().err


def test_run_with_a_bad_config_says_where(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("machine: q35\nmemory: lots\n")
    assert main(["run", str(f), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f'{f}:2: memory: expected MiB as an integer or like "1G", got "lots"' in err
    assert not (tmp_path / "r").exists()


def _trace(path: Path, truncated: bool = False) -> None:
    hdr = struct.pack("<QIIII", 0x31435254474D4D48, 1, 40, 0x18, 0)
    rec = struct.pack("<QQQQIBBBB", 5, 0x100000, 4096, 9, 1, 1, 2, 1, 0)
    path.write_bytes(hdr + rec + (rec[:7] if truncated else b""))


def test_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "dmatrace-0.bin"
    _trace(f)
    assert main(["trace", str(f), "--records"]) == 0
    out = capsys.readouterr().out
    assert "device 03.0" in out
    assert "COPY  DATA        WRITE addr=0x100000 len=4096 cmd=9 ctx=1" in out
    assert "DATA/WRITE" in out


def test_trace_v2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "dmatrace-1.bin"
    hdr = struct.pack("<QIIII", 0x31435254474D4D48, 2, 64, 0x20, 0)
    ptw = struct.pack("<QQQQQQIBBBBB7x", 5, 0x9008, 8, 9, 0x7F0000001000, 0x123007, 3,
                      2, 4, 0, 0, 0)
    inv = struct.pack("<QQQQQQIBBBBB7x", 6, 0, 0, 10, 0x7F0000000000, 1 << 21, 3,
                      2, 16, 2, 0, 0)
    f.write_bytes(hdr + ptw + inv)
    assert main(["trace", str(f), "--records"]) == 0
    out = capsys.readouterr().out
    assert "trace v2, device 04.0" in out
    assert "MMU   PTW         READ  addr=0x9008 len=8 cmd=9 ctx=3 va=0x7f0000001000 L0 " \
           "pte=0x123007" in out
    assert "MMU   EV_TLB_INV  va=0x7f0000000000 len=0x200000 cmd=10 ctx=3" in out


def test_trace_truncated_and_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.bin"
    _trace(f, truncated=True)
    assert main(["trace", str(f)]) == 1
    assert "truncated last record: 7 of 40" in capsys.readouterr().out
    f.write_bytes(b"not a trace at all, definitely")
    assert main(["trace", str(f)]) == 1
    assert "bad magic" in capsys.readouterr().err
    assert main(["trace", str(tmp_path / "missing.bin")]) == 2


def test_parse_workload_output() -> None:
    out = ('{"test": "info", "ok": true}\n'
           "some noise\n"
           '{"test": "copy", "ok": false, "error": "x"}\n'
           '{"broken json\n'
           '{"no_test_key": 1}\n\n')
    objs, other = parse_workload_output(out)
    assert [o["test"] for o in objs] == ["info", "copy"]
    assert other == ["some noise", '{"broken json', '{"no_test_key": 1}']

"""harness.core.proc against real subprocesses: timeouts, logs, failures."""

import logging
import time
from pathlib import Path

import pytest

from harness.core.proc import CommandError, run, run_with_progress


def test_progress_step_that_hangs_silently_times_out(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(CommandError) as e:
        run_with_progress(["sleep", "30"], label="hang", timeout=2, logfile=tmp_path / "l.log")
    assert time.monotonic() - t0 < 10
    assert e.value.rc is None and "timed out" in str(e.value)


def test_progress_logs_output_and_beats_while_quiet(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="harness.core.proc")
    log = tmp_path / "l.log"
    run_with_progress(["sh", "-c", "echo '[1/2] first'; sleep 2.5; echo '[2/2] last'"],
                      label="step", timeout=30, logfile=log, interval=1)
    text = log.read_text()
    assert "[1/2] first" in text and "[2/2] last" in text
    # a heartbeat came during the silent sleep, naming the latest line
    assert any("step:" in r.message and "[1/2] first" in r.message for r in caplog.records)


def test_progress_failure_names_the_log(tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    with pytest.raises(CommandError) as e:
        run_with_progress(["sh", "-c", "echo broken >&2; exit 3"], label="x", timeout=30,
                          logfile=log)
    assert e.value.rc == 3 and str(log) in str(e.value) and "broken" in e.value.tail


def test_run_timeout_and_capture(tmp_path: Path) -> None:
    assert run(["sh", "-c", "echo hi"], timeout=10).stdout == b"hi\n"
    with pytest.raises(CommandError):
        run(["sleep", "30"], timeout=1)

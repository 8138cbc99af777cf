"""harness.core.proc against real subprocesses: timeouts, logs, failures."""

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from harness.core.proc import CommandError, run, run_with_progress


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_progress_step_that_hangs_silently_times_out(tmp_path: Path) -> None:
    """A silent step that never ends is killed at its timeout, not at its own end."""
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(CommandError) as e:
        run_with_progress(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"], label="hang",
                          timeout=2, logfile=tmp_path / "l.log")
    assert 2 <= time.monotonic() - t0 < 300
    assert e.value.rc is None and "timed out" in str(e.value)
    assert not alive(int(pidfile.read_text()))


class OnHeartbeat(logging.Handler):
    """Creates ``go`` when a heartbeat naming ``line`` is logged."""

    def __init__(self, go: Path, line: str) -> None:
        super().__init__()
        self.go, self.line = go, line

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("step:") and self.line in msg:
            self.go.touch()


def test_progress_logs_output_and_beats_while_quiet(tmp_path: Path) -> None:
    """The step stays silent until a heartbeat naming its latest line has been
    logged (it waits for the file the heartbeat makes), then finishes."""
    log, go = tmp_path / "l.log", tmp_path / "go"
    handler = OnHeartbeat(go, "[1/2] first")
    logger = logging.getLogger("harness.core.proc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        run_with_progress(["sh", "-c", f"echo '[1/2] first'; while [ ! -e {go} ]; do sleep 0.1;"
                           " done; echo '[2/2] last'"],
                          label="step", timeout=120, logfile=log, interval=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = log.read_text()
    assert "[1/2] first" in text and "[2/2] last" in text


def test_progress_failure_names_the_log(tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    with pytest.raises(CommandError) as e:
        run_with_progress(["sh", "-c", "echo broken >&2; exit 3"], label="x", timeout=30,
                          logfile=log)
    assert e.value.rc == 3 and str(log) in str(e.value) and "broken" in e.value.tail


def test_run_timeout_and_capture(tmp_path: Path) -> None:
    assert run(["sh", "-c", "echo hi"], timeout=10).stdout == b"hi\n"
    with pytest.raises(CommandError, match="timed out") as e:
        run(["sleep", "600"], timeout=1)
    assert e.value.rc is None


# ---- a timed-out or interrupted step leaves no process behind ------------------------

def _makefile(tmp_path: Path) -> Path:
    """A Makefile whose recipe starts a long "compiler": a shell that waits for its own
    child (as cc1 under gcc under make), and records both pids."""
    pids = tmp_path / "pids"
    (tmp_path / "Makefile").write_text(
        f"all:\n\tsh -c 'sleep 300 & echo $$$$ $$! > {pids}; wait'\n")
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _survivors(pids_file: Path, wait: float = 5.0) -> list[int]:
    """The recorded pids still running ``wait`` seconds on (they are killed then, so a
    failing test leaves nothing behind either)."""
    for _ in range(50):  # make may not have started the recipe yet
        if pids_file.exists() and len(pids_file.read_text().split()) == 2:
            break
        time.sleep(0.1)
    pids = [int(p) for p in pids_file.read_text().split()]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return left


def test_progress_timeout_kills_makes_children(tmp_path: Path) -> None:
    pids = _makefile(tmp_path)
    with pytest.raises(CommandError) as e:
        run_with_progress(["make", "-C", str(tmp_path)], label="make", timeout=3,
                          logfile=tmp_path / "make.log")
    assert e.value.rc is None
    assert _survivors(pids) == []


def test_progress_interrupt_kills_makes_children(tmp_path: Path) -> None:
    pids = _makefile(tmp_path)
    # Ctrl-C (or the harness's SIGTERM handler) arrives while the step runs. Python
    # raises KeyboardInterrupt on SIGINT only if SIGINT was not ignored when it started
    # (a background job of a non-interactive shell inherits it ignored): say so here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_with_progress(["make", "-C", str(tmp_path)], label="make", timeout=60,
                              logfile=tmp_path / "make.log")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert _survivors(pids) == []


@pytest.mark.parametrize("logged", [True, False])
def test_run_timeout_kills_makes_children(tmp_path: Path, logged: bool) -> None:
    pids = _makefile(tmp_path)
    with pytest.raises(CommandError) as e:
        run(["make", "-C", str(tmp_path)], timeout=3,
            logfile=tmp_path / "make.log" if logged else None)
    assert e.value.rc is None
    assert _survivors(pids) == []

"""End to end: a single `hmmlab run` (one run file) that is stopped from outside.

SIGTERM (a CI job's timeout) ends the guest, writes results.json with the
scenario that was running and the ones after it as MISS, and exits 2.
SIGKILL cannot be handled: QEMU must still die with the harness
(PR_SET_PDEATHSIG), not run on unowned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from procs import qemus_under

from harness.build import Artifacts

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# a scenario that runs for minutes, with one before it and one after it
RUN_FILE = """\
kernel: "6.12"
scenarios: [smoke, hmm-tests, svm-mirror]
"""
UP_TIMEOUT = 600  # boot and smoke under TCG on a loaded 2-core host
EXIT_TIMEOUT = 90  # ending QEMU (SIGTERM, 5 s, SIGKILL) and writing the results



def start(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent(RUN_FILE))
    out_dir = tmp_path / "results"
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(cfg), "--results",
                          str(out_dir)], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return p, out_dir


def wait_for_line(p: subprocess.Popen[str], needle: str, seen: list[str]) -> None:
    """Read the run's output until ``needle`` (the output pipe must not fill up)."""
    assert p.stdout is not None
    deadline = time.monotonic() + UP_TIMEOUT
    for line in p.stdout:
        seen.append(line)
        if needle in line:
            return
        if time.monotonic() > deadline:
            break
    p.kill()
    pytest.fail(f"no {needle!r} in the run's output:\n{''.join(seen)}")


def cleanup(p: subprocess.Popen[str], out_dir: Path) -> None:
    """Whatever the test found, leave no process of this run behind."""
    if p.poll() is None:
        p.kill()
        p.wait(30)
    for pid in qemus_under(out_dir):
        os.kill(pid, signal.SIGKILL)


def test_sigterm_ends_the_guest_and_writes_the_results(artifacts: Artifacts,
                                                       tmp_path: Path) -> None:
    p, out_dir = start(tmp_path)
    seen: list[str] = []
    try:
        wait_for_line(p, "scenario hmm-tests", seen)
        assert qemus_under(out_dir), "the run's QEMU is not running"
        time.sleep(3)  # well inside hmm-tests
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)  # what a CI job's timeout does
        rest, _ = p.communicate(timeout=EXIT_TIMEOUT)
        took = time.monotonic() - t0
        print("".join(seen) + rest)
        print(f"exit {p.returncode} {took:.1f}s after SIGTERM")
        assert p.returncode == 2
        assert qemus_under(out_dir) == []
        doc = json.loads((out_dir / "results.json").read_text())
        tests = {t["path"]: t for t in doc["tests"]}
        assert tests["boot"]["status"] == "PASS"
        assert tests["hmm-tests"]["status"] == "MISS"
        assert "while it ran" in tests["hmm-tests"]["log_excerpt"]
        assert tests["svm-mirror"]["status"] == "MISS"
        assert "not run: interrupted" in tests["svm-mirror"]["log_excerpt"]
        assert not any(path.startswith("svm-mirror.") for path in tests)
        assert doc["environment"]["interrupted"] == f"signal {signal.SIGTERM}"
        # the report a finished run gets, opening with what did not pass
        assert "hmm-tests" in (out_dir / "index.html").read_text()
        assert (out_dir / "junit.xml").exists()
        assert doc["summary"]["exit_status"] == 2
        assert doc["environment"]["qemu_exit_status"] is not None  # it ended, not left
    finally:
        cleanup(p, out_dir)


def test_qemu_dies_with_a_sigkilled_harness(artifacts: Artifacts, tmp_path: Path) -> None:
    p, out_dir = start(tmp_path)
    seen: list[str] = []
    try:
        wait_for_line(p, "guest started", seen)
        qemus = qemus_under(out_dir)
        assert qemus, "the run's QEMU is not running"
        p.kill()  # no handler runs: only the kernel can end QEMU now
        p.wait(30)
        deadline = time.monotonic() + 20
        while qemus_under(out_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert qemus_under(out_dir) == [], f"QEMU {qemus} outlived its harness"
    finally:
        cleanup(p, out_dir)

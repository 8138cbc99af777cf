"""Real kernel splats (provoked with LKDTM) are caught and fail the run.

The kernel config carries CONFIG_LKDTM=y: writing a crash type to
/sys/kernel/debug/provoke-crash/DIRECT makes the kernel WARN, oops or panic
on demand, so the console scanner is tested on the kernel's own output.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import config, runner
from harness.build import Artifacts
from harness.results import Results, Status
from harness.scenarios import Session
from harness.scenarios.smoke import Smoke
from harness.ssh import SSHClient, SSHError
from harness.vm import AccelChoice, Guest, GuestImage

pytestmark = pytest.mark.e2e

LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"
TCG = AccelChoice("tcg", "test")


def provoke(ssh: SSHClient, guest: Guest, what: str) -> None:
    out = ssh.run(f"test -w {LKDTM} && echo ok", 30).stdout
    assert out.strip() == "ok", f"{LKDTM} missing: kernel built without CONFIG_LKDTM?"
    # The shell may die with the oops, or the whole guest with the panic.
    with contextlib.suppress(SSHError):
        ssh.run(f"echo {what} > {LKDTM}", 30, abort=guest.exit_reason)


def wait_for_splats(guest: Guest, n: int = 1, timeout: float = 20) -> list[str]:
    assert guest.console is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a report is complete once its end marker arrives; give it a moment
        if len(guest.console.splats()) >= n:
            break
        time.sleep(0.2)
    return [s.title for s in guest.console.splats()]


@pytest.fixture
def booted(artifacts: Artifacts, tmp_path: Path) -> Iterator[tuple[Guest, SSHClient]]:
    cfg = config.load_text("devices: []\n", "test.yaml")
    guest = Guest(cfg, GuestImage.from_artifacts(artifacts), tmp_path, TCG)
    with guest:
        guest.wait_ready()
        ssh = guest.ssh(artifacts.ssh_key, artifacts.ssh_host_pubkey, 60)
        try:
            yield guest, ssh
        finally:
            ssh.close()


@pytest.mark.parametrize(("what", "title"), [
    ("WARNING", "WARNING in lkdtm_WARNING"),
    ("EXCEPTION", "BUG: kernel NULL pointer dereference in lkdtm_EXCEPTION"),
    ("BUG", "kernel BUG in lkdtm_BUG"),
])
def test_real_splat_titles(booted: tuple[Guest, SSHClient], what: str, title: str) -> None:
    guest, ssh = booted
    provoke(ssh, guest, what)
    titles = wait_for_splats(guest)
    console = (guest.run_dir / "console.log").read_text(errors="replace")
    assert titles[:1] == [title], console[-3000:]
    assert guest.exit_reason() is None  # an oops is not fatal: the guest keeps running


def test_panic_ends_the_guest(booted: tuple[Guest, SSHClient]) -> None:
    guest, ssh = booted
    provoke(ssh, guest, "PANIC")
    assert guest.proc is not None
    guest.proc.wait(timeout=30)  # panic=-1 + -no-reboot: QEMU exits
    assert guest.console is not None
    guest.console.join(10)
    titles = [s.title for s in guest.console.splats()]
    assert titles and titles[0] == "Kernel panic - not syncing: dumptest"
    assert "QEMU exited" in (guest.exit_reason() or "")


class Provoke:
    """A test-only scenario: make the kernel crash in the given way (LKDTM)."""

    name = "provoke"

    def __init__(self, what: str) -> None:
        self.what = what

    def run(self, s: Session) -> None:
        s.results.add_status("provoke", Status.PASS, f"asked LKDTM for {self.what}")
        provoke(s.ssh, s.guest, self.what)
        wait_for_splats(s.guest)

    def finish(self, s: Session) -> None:
        pass


def run_with_provoke(what: str, artifacts: Artifacts, tmp_path: Path) -> Results:
    cfg = config.load_text("", "test.yaml")
    return runner.run(cfg, tmp_path / "res", artifacts=artifacts,
                      scenarios=[Smoke(), Provoke(what)])


def test_warning_fails_an_otherwise_passing_run(artifacts: Artifacts, tmp_path: Path) -> None:
    res = run_with_provoke("WARNING", artifacts, tmp_path)
    status = {t.path: t.status for t in res.tests}
    assert status["smoke.copy"] == Status.PASS
    assert status["smoke.dmatrace"] == Status.PASS
    assert status["smoke.counters"] == Status.PASS
    assert status["console.splat"] == Status.FAIL
    splat = next(t for t in res.tests if t.path == "console.splat")
    assert splat.extra["title"] == "WARNING in lkdtm_WARNING"
    assert "Call Trace:" in splat.log_excerpt
    assert res.exit_code() == 1


def test_panic_mid_run_is_a_failure_not_an_infrastructure_error(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    res = run_with_provoke("PANIC", artifacts, tmp_path)
    status = {t.path: t.status for t in res.tests}
    assert status["smoke.copy"] == Status.PASS
    # read right after the workload, before the panic (a panic under the
    # workload, with QMP gone, is test_runner_guest's)
    assert status["smoke.counters"] == Status.PASS
    assert status["console.splat"] == Status.FAIL
    splat = next(t for t in res.tests if t.path == "console.splat")
    assert splat.extra["title"] == "Kernel panic - not syncing: dumptest"
    assert res.exit_code() == 1, res.table()

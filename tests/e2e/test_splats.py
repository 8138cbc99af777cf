"""Real kernel splats, panics and hangs (provoked with LKDTM) are caught.

The kernel config carries CONFIG_LKDTM=y: writing a crash type to
/sys/kernel/debug/provoke-crash/DIRECT makes the kernel WARN, oops, panic or
lock up on demand, so the console scanner, pvpanic and the watchdog are
tested on the kernel's own behaviour.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.core.results import Results, Status
from harness.guest.ssh import SSHClient, SSHError
from harness.guest.vm import AccelChoice, Guest, GuestImage
from harness.run import runner
from harness.scenarios import Session
from harness.scenarios.smoke import Smoke

pytestmark = pytest.mark.e2e

LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"
TCG = AccelChoice("tcg", "test")


def provoke(ssh: SSHClient, guest: Guest, what: str) -> None:
    out = ssh.run(f"test -w {LKDTM} && echo ok", 30).stdout
    assert out.strip() == "ok", f"{LKDTM} missing: kernel built without CONFIG_LKDTM?"
    # The shell may die with the oops, or the whole guest with the panic.
    with contextlib.suppress(SSHError):
        ssh.run(f"echo {what} > {LKDTM}", 30, abort=guest.exit_reason)


def wait_for_splats(guest: Guest, n: int = 1, timeout: float = 120) -> list[str]:
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


USER_SPACE = [
    "WARNING: this line comes from user space, not from the kernel",
    "BUG: neither does this one",
    "Oops: nor this",
]


def test_user_space_warning_lines_are_not_splats(booted: tuple[Guest, SSHClient]) -> None:
    """Lines a program writes to the console that look like a kernel report's
    first line are not splats; a real WARNING after them still is, alone."""
    guest, ssh = booted
    assert guest.console is not None
    # a newline first: getty's "Please press Enter" prompt leaves its line open
    lines = "; ".join(f"echo '{line}' > /dev/console" for line in ["", *USER_SPACE])
    ssh.run(f"{lines}; echo 'hmmlab-test: user space done' > /dev/console", 30)
    deadline = time.monotonic() + 60
    while "hmmlab-test: user space done" not in guest.console.tail(5):
        assert time.monotonic() < deadline, guest.console.tail(20)
        time.sleep(0.2)
    assert guest.console.splats() == []
    provoke(ssh, guest, "WARNING")
    titles = wait_for_splats(guest)
    console = (guest.run_dir / "console.log").read_text(errors="replace")
    assert all(line in console for line in USER_SPACE)
    assert titles == ["WARNING in lkdtm_WARNING"], console[-3000:]


def test_panic_ends_the_guest(booted: tuple[Guest, SSHClient]) -> None:
    guest, ssh = booted
    provoke(ssh, guest, "PANIC")
    assert guest.proc is not None
    guest.proc.wait(timeout=30)  # panic=-1 + -no-reboot: QEMU exits
    assert guest.console is not None
    guest.console.join(10)
    titles = [s.title for s in guest.console.splats()]
    assert titles and titles[0] == "Kernel panic - not syncing: dumptest"
    # pvpanic told QEMU, QEMU told QMP
    assert guest.panic_event is not None
    assert guest.panic_event["data"] == {"action": "run"}
    events = [json.loads(ln)["event"] for ln in
              (guest.run_dir / "qmp-events.jsonl").read_text().splitlines()]
    assert "GUEST_PANICKED" in events
    reason = guest.exit_reason() or ""
    assert reason.startswith("QEMU exited (status 0) after a kernel panic (pvpanic GUEST_PANICKED)")
    assert reason.endswith(": Kernel panic - not syncing: dumptest")


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
    panic = next(t for t in res.tests if t.path == "guest.panic")
    assert panic.status == Status.FAIL
    assert panic.extra["title"] == "Kernel panic - not syncing: dumptest"
    assert panic.log_excerpt.startswith("QMP GUEST_PANICKED")
    assert (tmp_path / "res" / "qmp-events.jsonl").exists()
    assert "guest.hang" not in status
    assert res.exit_code() == 1, res.table()


def no_qemu_for(results: Path) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
    return str(results) not in ps


class Freeze:
    """A test-only scenario: freeze the kernel with LKDTM, then run a command
    that would wait ``wait`` seconds for an answer that never comes."""

    name = "freeze"

    def __init__(self, what: str, wait: float) -> None:
        self.what, self.wait = what, wait

    def run(self, s: Session) -> None:
        s.results.add_status("freeze", Status.PASS, f"asked LKDTM for {self.what}")
        try:
            s.ssh.run(f"echo {self.what} > {LKDTM}; echo unreachable", self.wait,
                      abort=s.guest.exit_reason)
        except SSHError as e:
            s.results.add_status("freeze.command", Status.ERROR, str(e))

    def finish(self, s: Session) -> None:
        pass


def test_frozen_guest_is_found_hung_dumped_and_killed(artifacts: Artifacts,
                                                      tmp_path: Path) -> None:
    """HARDLOCKUP on the only CPU: no console, no SSH. The watchdog dumps the
    vCPU registers and kills QEMU after timeouts.no_output, long before the
    scenario's own timeout, and the run goes on to write its results."""
    cfg = config.load_text("cpus: 1\ndevices: []\ntimeouts: {no_output: 15, scenario: 600}\n",
                           "test.yaml")
    results = tmp_path / "res"
    t0 = time.monotonic()
    res = runner.run(cfg, results, artifacts=artifacts,
                     scenarios=[Freeze("HARDLOCKUP", 600), Smoke()])
    took = time.monotonic() - t0
    print(res.table())
    # before the scenario's 600 s: the watchdog ended it (guest.hang says so below)
    assert took < 600, f"the run took {took:.0f}s: the watchdog did not end it"
    status = {t.path: t.status for t in res.tests}
    hang = next(t for t in res.tests if t.path == "guest.hang")
    assert hang.status == Status.FAIL  # hung past its budget, though the kernel said nothing
    assert hang.log_excerpt.startswith("no console output and no SSH answer for 15s")
    assert "hang-registers.txt" in hang.output_files
    regs = (results / "hang-registers.txt").read_text()
    assert "RIP=" in regs and "CPU#0" in regs
    assert "aborted: QEMU was killed: no console output" in next(
        t for t in res.tests if t.path == "freeze.command").log_excerpt
    assert status["smoke"] == Status.MISS  # the guest is gone: it could not run
    assert next(t for t in res.tests if t.path == "smoke").log_excerpt.startswith(
        "not run: guest unusable: QEMU was killed: no console output")
    assert status["console.splat"] == Status.PASS
    for name in ("console.log", "qemu.log", "run.log", "results.json"):
        assert (results / name).exists(), name
    assert res.exit_code() == 2
    assert no_qemu_for(results)


class Background:
    """A test-only scenario: start an LKDTM action in the background, then
    wait (at most ``wait`` seconds) for the kernel to report ``title``."""

    name = "background"

    def __init__(self, what: str, title: str, wait: float, setup: str = "true") -> None:
        self.what, self.title, self.wait, self.setup = what, title, wait, setup

    def run(self, s: Session) -> None:
        # a panic may end the guest before the command returns
        with contextlib.suppress(SSHError):
            s.ssh.run(f"{self.setup}; (echo {self.what} > {LKDTM} &)", 30,
                      abort=s.guest.exit_reason)
        s.results.add_status("background", Status.PASS, f"LKDTM {self.what} started")
        assert s.guest.console is not None
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline and s.guest.exit_reason() is None:
            if any(sp.title == self.title for sp in s.guest.console.splats()):
                return
            time.sleep(0.5)

    def finish(self, s: Session) -> None:
        pass


@pytest.mark.parametrize(("what", "setup", "title"), [
    # a spin with preemption off on one of two CPUs: the other keeps the guest
    # answering; the lockup detector needs 20-50 s under TCG
    ("SOFTLOCKUP", "true", "BUG: soft lockup in lkdtm_SOFTLOCKUP"),
    ("HUNG_TASK", "echo 5 > /proc/sys/kernel/hung_task_timeout_secs",
     "INFO: task hung in lkdtm_HUNG_TASK"),
])
def test_lockups_the_kernel_reports_fail_the_run(artifacts: Artifacts, tmp_path: Path,
                                                 what: str, setup: str, title: str) -> None:
    cfg = config.load_text("devices: []\n", "test.yaml")
    results = tmp_path / "res"
    res = runner.run(cfg, results, artifacts=artifacts,
                     scenarios=[Background(what, title, 300, setup)])  # ends at the splat
    print(res.table())
    splat = next(t for t in res.tests if t.path == "console.splat")
    assert splat.status == Status.FAIL
    titles = [sp["title"] for sp in splat.extra["splats"]]
    assert title in titles, titles
    assert "guest.hang" not in {t.path for t in res.tests}  # it still answered
    assert res.exit_code() == 1
    assert no_qemu_for(results)


def test_panicked_guest_that_does_not_end_is_killed(artifacts: Artifacts, tmp_path: Path) -> None:
    """panic=0 (set at run time): the kernel panics and then waits forever.
    pvpanic tells the harness, which gives it PANIC_GRACE to end itself,
    then dumps the vCPUs and kills QEMU: a failure, not a hang."""
    cfg = config.load_text("devices: []\ntimeouts: {scenario: 600}\n", "test.yaml")
    results = tmp_path / "res"
    t0 = time.monotonic()
    res = runner.run(cfg, results, artifacts=artifacts, scenarios=[
        Background("PANIC", "Kernel panic - not syncing: dumptest", 600,
                   setup="echo 0 > /proc/sys/kernel/panic")])
    took = time.monotonic() - t0
    print(res.table())
    assert took < 600, f"the run took {took:.0f}s: the scenario's timeout, not the grace, ended it"
    status = {t.path: t.status for t in res.tests}
    assert status["guest.panic"] == Status.FAIL
    assert "guest.hang" not in status
    panic = next(t for t in res.tests if t.path == "guest.panic")
    assert "QEMU was killed: the guest panicked and QEMU had not ended 10s later" in \
        panic.log_excerpt
    assert (results / "hang-registers.txt").read_text().count("RIP=") == 2  # both vCPUs
    assert res.exit_code() == 1
    assert no_qemu_for(results)

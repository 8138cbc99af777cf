"""The runner and the smoke scenario against real guests: every way a run can go wrong.

The statuses are decided by pure functions (tests/unit/test_runner.py); here
the real QEMU, kernel, driver and workload produce the situations: an insmod
that fails, a device fault injected through the driver's debugfs, a workload
that prints no JSON, exits non-zero or outlives its timeout, a guest that
never comes up, panics while booting or under the workload, or offers an
unexpected SSH host key.

Scenario-level tests share one booted guest (the module's ``shared``
fixture; each test unloads the driver first). Tests that need the whole
pipeline (boot, QMP counters, DMA trace after QEMU exits) or break the guest
do a full ``runner.run`` each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.core.results import Results, Status
from harness.guest.ssh import SSHClient, SSHError
from harness.guest.vm import AccelChoice, AccelProbe, Guest, GuestImage
from harness.run import runner
from harness.scenarios import Session
from harness.scenarios.smoke import DRIVER, WORKLOAD, Smoke

pytestmark = pytest.mark.e2e

SMALL = f"{WORKLOAD} -s 4K"  # the smoke workload with one-page transfers: fast
LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"


def inject(fault: str) -> str:
    """A prepare command: inject ``fault`` into every hmm-gpu through the driver's debugfs."""
    return f"echo {fault} | tee /sys/kernel/debug/hmm_gpu/*/inject >/dev/null"


def statuses(res: Results) -> dict[str, str]:
    return {t.path: str(t.status) for t in res.tests}


def entry(res: Results, path: str) -> str:
    return next(t.log_excerpt for t in res.tests if t.path == path)


# ---- scenario steps in one shared guest -------------------------------------------------

@dataclass
class Shared:
    guest: Guest
    ssh: SSHClient

    def session(self, run_dir: Path, yaml: str = "") -> Session:
        """A fresh session (own results, config) with the driver not loaded."""
        self.ssh.run("rmmod hmm_gpu 2>/dev/null; true", 30)
        assert "hmm_gpu" not in self.ssh.run("cat /proc/modules", 10).stdout
        cfg = config.load_text(yaml, "test.yaml")
        return Session(cfg, run_dir, self.guest, self.ssh, Results(run_dir))


@pytest.fixture(scope="module")
def shared(artifacts: Artifacts, accel: AccelChoice,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    run_dir = tmp_path_factory.mktemp("shared-guest")
    with Guest(config.load_text("", "test.yaml"), GuestImage.from_artifacts(artifacts), run_dir,
               accel) as guest:
        guest.wait_ready()
        ssh = guest.ssh(artifacts.ssh_key, artifacts.ssh_host_pubkey, 60)
        try:
            yield Shared(guest, ssh)
        finally:
            ssh.close()
    assert guest.console is not None
    assert guest.console.splats() == [], "a test made the shared guest's kernel splat"


def run_smoke(sc: Smoke, s: Session) -> dict[str, str]:
    """Statuses after smoke; its driver.build entry (W=1 warnings) is checked here once."""
    sc.run(s)
    st = statuses(s.results)
    assert st.pop("driver.build") == "PASS"
    return st


def test_insmod_of_a_missing_module_skips_the_workload(shared: Shared, tmp_path: Path) -> None:
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(driver="/opt/hmmlab/no-such-module.ko"), s)
    assert st == {"driver.load": "FAIL", "smoke": "SKIP"}
    text = entry(s.results, "driver.load")
    assert "insmod exited with status" in text and "No such file" in text
    assert "/dev/hmm_gpu0 does not exist after insmod" in text
    assert not (tmp_path / "smoke.stdout").exists()  # the workload never ran


def test_insmod_twice_fails(shared: Shared, tmp_path: Path) -> None:
    s = shared.session(tmp_path)
    assert shared.ssh.run(f"insmod {DRIVER}", 30).rc == 0
    st = run_smoke(Smoke(), s)
    assert st == {"driver.load": "FAIL", "smoke": "SKIP"}
    text = entry(s.results, "driver.load")
    assert text.startswith("insmod exited with status") and "File exists" in text
    assert "does not exist" not in text  # the node is there: only insmod failed
    assert (tmp_path / "driver-load.dmesg").read_text()


def test_all_pass_with_a_chosen_workload(shared: Shared, tmp_path: Path) -> None:
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(workload=SMALL), s)
    assert st["driver.load"] == "PASS"
    assert {st[f"smoke.{t}"] for t in ("info", "copy", "fill", "einval_len0")} == {"PASS"}
    assert '"len": 4096' in entry(s.results, "smoke.copy")
    assert len(s.state["objs"]) == 11
    assert (tmp_path / "smoke.stdout").read_text().count('"ok": true') == 11


def test_injected_hang_fails_the_sub_test_it_hit(shared: Shared, tmp_path: Path) -> None:
    """The device stops completing; the driver times the copy out (10 s) and resets."""
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(workload=SMALL, prepare=(inject("hang"),)), s)
    assert st["smoke.prepare"] == "PASS"
    assert st["smoke.info"] == "PASS"
    assert st["smoke.copy"] == "FAIL"
    assert '"errno": 110' in entry(s.results, "smoke.copy")  # ETIMEDOUT
    assert "Connection timed out" in entry(s.results, "smoke.copy")
    assert st["smoke.fill"] == "PASS"  # the reset brought the device back
    assert "smoke.exit" not in st  # exit status 1 goes with the failed sub-test


def test_workload_on_a_wrong_device_fails_every_sub_test(shared: Shared, tmp_path: Path) -> None:
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(workload=f"{WORKLOAD} -d /dev/null"), s)
    subs = {k: v for k, v in st.items() if k.startswith("smoke.")}
    assert len(subs) == 11 and set(subs.values()) == {"FAIL"}
    assert "Inappropriate ioctl for device" in entry(s.results, "smoke.info")


def test_nonzero_exit_although_all_passed(shared: Shared, tmp_path: Path) -> None:
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(workload=f"{SMALL}; echo oops >&2; exit 3"), s)
    assert st["smoke.copy"] == "PASS"
    assert st["smoke.exit"] == "FAIL"
    text = entry(s.results, "smoke.exit")
    assert "exited with status 3 although every sub-test passed" in text and "oops" in text


@pytest.mark.parametrize(("workload", "rc", "says"), [
    ("/opt/hmmlab/bin/no-such-workload", 127, "not found"),
    ("echo not json; echo '{broken'", 0, "not json"),
])
def test_no_sub_test_reported(shared: Shared, tmp_path: Path, workload: str, rc: int,
                              says: str) -> None:
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(workload=workload), s)
    assert st == {"driver.load": "PASS", "smoke.run": "FAIL"}
    text = entry(s.results, "smoke.run")
    assert f"exited with status {rc} and reported no sub-test" in text and says in text
    assert s.state["objs"] == []  # finish() has nothing to check


def test_workload_timeout_is_a_failure_and_keeps_its_output(shared: Shared,
                                                            tmp_path: Path) -> None:
    s = shared.session(tmp_path, "timeouts: {scenario: 2}\n")
    st = run_smoke(Smoke(workload=f"{SMALL}; sleep 60"), s)
    assert st == {"driver.load": "PASS", "smoke.run": "FAIL"}  # README "Statuses"
    assert "did not finish within 2s" in entry(s.results, "smoke.run")
    assert len(s.state["objs"]) == 11  # what it reported before is kept for finish()
    assert (tmp_path / "smoke.stdout").read_text().count('"ok": true') == 11
    shared.ssh.run("killall sleep 2>/dev/null; true", 10)


def test_failed_prepare_command_skips_the_workload(shared: Shared, tmp_path: Path) -> None:
    s = shared.session(tmp_path)
    st = run_smoke(Smoke(prepare=("true", "echo x > /no/such/dir", "touch /tmp/never")), s)
    assert st == {"driver.load": "PASS", "smoke.prepare": "ERROR", "smoke": "SKIP"}
    text = entry(s.results, "smoke.prepare")
    assert text.startswith("`echo x > /no/such/dir` exited with status")
    assert shared.ssh.run("test -e /tmp/never", 10).rc != 0  # stopped at the first failure
    assert not (tmp_path / "smoke.stdout").exists()


# ---- whole runs, each in its own guest ----------------------------------------------------

def run(artifacts: Artifacts, probe: AccelProbe, results: Path, yaml: str = "",
        **kw: object) -> Results:
    res = runner.run(config.load_text(yaml, "test.yaml"), results, artifacts=artifacts,
                     probe=probe, **kw)  # type: ignore[arg-type]
    print(res.table())
    return res


def no_qemu_for(results: Path) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
    return str(results) not in ps


def test_injected_fatal_error_fails_the_counters(artifacts: Artifacts, accel_probe: AccelProbe,
                                                 results_dir: Path) -> None:
    """A fatal device error (the driver resets the device) shows in guest-errors."""
    res = run(artifacts, accel_probe, results_dir,
              scenarios=[Smoke(workload=SMALL, prepare=(inject("fatal"),))])
    st = statuses(res)
    assert st["smoke.prepare"] == "PASS"
    assert st["smoke.copy"] == "PASS" and st["smoke.fill"] == "PASS"
    assert st["smoke.counters"] == "FAIL"
    assert entry(res, "smoke.counters").startswith("guest-errors = 1, expected 0")
    assert st["smoke.dmatrace"] == "PASS"
    assert st["console.splat"] == "PASS"
    assert res.devices["gpu0"]["guest-errors"] == 1
    assert res.exit_code() == 1
    assert res.config["scenarios"] == ["smoke"]


def test_a_failed_scenario_does_not_stop_the_run(
    artifacts: Artifacts, accel_probe: AccelProbe, results_dir: Path
) -> None:
    """The first scenario fails (its driver does not load); the guest still answers, so
    the second runs, and passes, in the same guest."""
    res = run(artifacts, accel_probe, results_dir,
              scenarios=[Smoke(driver="/opt/hmmlab/no-such-module.ko"), Smoke(workload=SMALL)])
    paths = [(t.path, str(t.status)) for t in res.tests if t.path != "driver.build"]
    assert res.status_of("driver.build") == "PASS"
    assert paths[:3] == [("boot", "PASS"), ("driver.load", "FAIL"), ("smoke", "SKIP")]
    assert ("driver.load", "PASS") in paths and ("smoke.copy", "PASS") in paths
    assert ("smoke.dmatrace", "PASS") in paths
    assert not [p for p, st in paths if st == "MISS"]
    assert "guest probe" not in (results_dir / "run.log").read_text()  # it answered at once
    assert res.exit_code() == 1


@dataclass
class Freeze:
    """A scenario that stops the guest's vCPUs (QMP ``stop``) and fails: QEMU runs on,
    the guest answers nothing."""

    name: str = "freeze"

    def run(self, s: Session) -> None:
        assert s.guest.qmp is not None
        s.guest.qmp.execute("stop")
        s.results.add_status(self.name, Status.FAIL, "stopped the guest's vCPUs")

    def finish(self, s: Session) -> None:
        return None


@dataclass
class DropConnection:
    """A scenario that kills the dropbear process serving its own SSH connection and
    fails: the guest is fine, the harness's connection is gone."""

    name: str = "drop"

    def run(self, s: Session) -> None:
        with contextlib.suppress(SSHError):
            s.ssh.run("kill -9 $PPID", 10)
        s.results.add_status(self.name, Status.FAIL, "killed its own SSH session")

    def finish(self, s: Session) -> None:
        return None


def test_a_lost_connection_is_made_again_and_the_run_goes_on(
    artifacts: Artifacts, accel_probe: AccelProbe, results_dir: Path
) -> None:
    res = run(artifacts, accel_probe, results_dir,
              scenarios=[DropConnection(), Smoke(workload=SMALL)])
    st = statuses(res)
    assert st["drop"] == "FAIL"
    assert st["smoke.copy"] == "PASS" and st["smoke.dmatrace"] == "PASS"
    assert "MISS" not in st.values()
    log_text = (results_dir / "run.log").read_text()
    assert "guest probe: the SSH connection is closed; connecting again" in log_text
    assert "guest powered off" in log_text  # over the new connection
    assert res.exit_code() == 1


def test_a_guest_that_stops_answering_misses_the_scenarios_left(
    artifacts: Artifacts, accel_probe: AccelProbe, results_dir: Path
) -> None:
    """After a failure the guest is probed; QEMU still runs but the guest does not answer
    within runner.PROBE_TIMEOUT: what is left is MISS, the run an infrastructure error."""
    t0 = time.monotonic()
    # no_output: the watchdog must not end QEMU first (that is the other way in)
    res = run(artifacts, accel_probe, results_dir, "timeouts: {no_output: 600}\n",
              scenarios=[Freeze(), Smoke(workload=SMALL), Freeze("later")])
    st = statuses(res)
    assert st["freeze"] == "FAIL"
    assert st["smoke"] == st["later"] == "MISS"
    assert "smoke.copy" not in st and "driver.load" not in st
    why = entry(res, "smoke")
    # the channel for `true` does not even open (or `true` does not finish) in 20 s
    assert why.startswith("not run: guest unusable after freeze: no answer over SSH: "), why
    assert "connecting again" not in why  # the connection was up: no reconnect tried
    assert entry(res, "later") == why
    assert res.exit_code() == 2
    # it was not asked to power off over SSH (30 s more): QMP quit ended it
    assert time.monotonic() - t0 < 120
    assert no_qemu_for(results_dir)


def test_boot_timeout_is_an_infrastructure_error(artifacts: Artifacts, accel_probe: AccelProbe,
                                                 results_dir: Path) -> None:
    res = run(artifacts, accel_probe, results_dir, "timeouts: {boot: 0.3}\n")
    assert statuses(res) == {"boot": "ERROR", "console.splat": "PASS"}
    assert 'no "hmmlab: ready" on the console within' in entry(res, "boot")
    assert res.exit_code() == 2
    assert (results_dir / "results.json").exists() and (results_dir / "console.log").exists()
    assert (results_dir / "initrd.img").exists()  # kept for a rerun by hand: the run failed
    assert no_qemu_for(results_dir)


def test_panic_while_booting_is_a_failure(artifacts: Artifacts, accel_probe: AccelProbe,
                                          results_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.cpio"  # no init at all: the kernel panics
    empty.write_bytes(b"")
    res = run(dataclasses.replace(artifacts, initrds=(empty,)), accel_probe, results_dir)
    # pvpanic reports the panic too
    assert statuses(res) == {"boot": "FAIL", "console.splat": "FAIL", "guest.panic": "FAIL"}
    splat = next(t for t in res.tests if t.path == "console.splat")
    assert splat.extra["title"].startswith("Kernel panic - not syncing")
    assert res.exit_code() == 1
    assert no_qemu_for(results_dir)


def test_unexpected_host_key_is_an_infrastructure_error(
    artifacts: Artifacts, accel_probe: AccelProbe, results_dir: Path, other_ed25519_key: Path
) -> None:
    pinned = other_ed25519_key.with_suffix(".pub").read_text()
    res = run(dataclasses.replace(artifacts, ssh_host_pubkey=pinned), accel_probe, results_dir)
    assert statuses(res) == {"boot": "PASS", "ssh.connect": "ERROR", "console.splat": "PASS"}
    assert "host key mismatch" in entry(res, "ssh.connect")
    assert res.exit_code() == 2
    assert no_qemu_for(results_dir)


def test_panic_under_the_workload_fails_it(artifacts: Artifacts, accel_probe: AccelProbe,
                                           results_dir: Path) -> None:
    """The guest dies while the workload runs: smoke.run FAIL, not a timeout; the
    scenario after it is MISS: its guest is gone."""
    workload = f"{SMALL}; sleep 0.5; echo PANIC > {LKDTM}; sleep 60"
    res = run(artifacts, accel_probe, results_dir, "timeouts: {scenario: 60}\n",
              scenarios=[Smoke(workload=workload), Freeze("after")])
    st = statuses(res)
    assert st["after"] == "MISS"
    assert entry(res, "after").startswith("not run: guest unusable: "), entry(res, "after")
    assert "kernel panic" in entry(res, "after")
    assert st["smoke.run"] == "FAIL", res.table()
    assert "aborted: QEMU exited" in entry(res, "smoke.run")
    assert st["smoke.counters"] == "MISS"  # the guest it would have read them from is gone
    assert st["smoke.dmatrace"] == "PASS"  # the sub-tests printed before still get checked
    assert next(t for t in res.tests if t.path == "console.splat").extra["title"] == (
        "Kernel panic - not syncing: dumptest")
    assert res.exit_code() == 2  # a scenario it should have run is MISSing

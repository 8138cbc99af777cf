"""results.json and the exit status (tuxrun: 2 infrastructure, 1 failure, 0 pass)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.core.results import (
    EXIT_FAIL,
    EXIT_INFRA,
    EXIT_PASS,
    Event,
    Results,
    Status,
    TestResult,
    default_results_dir,
    excerpt,
    exit_code,
    interruption,
    rollup,
    status_for,
    verdict,
)


def t(status: Status, path: str = "x") -> TestResult:
    return TestResult(path, status)


@pytest.mark.parametrize(("statuses", "code"), [
    ([], EXIT_INFRA),  # no test ran: never a pass
    ([Status.SKIP, Status.SKIP], EXIT_INFRA),  # nothing was tested
    ([Status.PASS, Status.SKIP], EXIT_PASS),
    ([Status.PASS, Status.FAIL], EXIT_FAIL),
    ([Status.PASS, Status.ERROR], EXIT_INFRA),
    ([Status.FAIL, Status.ERROR], EXIT_INFRA),
    ([Status.SKIP], EXIT_INFRA),
    ([Status.FAIL, Status.SKIP], EXIT_FAIL),
    ([Status.PASS, Status.MISS], EXIT_INFRA),
    ([Status.FAIL, Status.MISS], EXIT_INFRA),
])
def test_exit_code(statuses: list[Status], code: int) -> None:
    assert exit_code([t(s) for s in statuses]) == code


def test_results_json(tmp_path: Path) -> None:
    r = Results(tmp_path / "run", config={"kernel": "6.12"}, environment={"accel": "tcg"})
    r.add(TestResult("boot", Status.PASS, 9.87654, "hmmlab: ready", ["console.log"]))
    r.add(TestResult("smoke.copy", Status.FAIL, 1.5, "mismatch", extra={"len": 4096}))
    r.add_status("smoke.dmatrace", Status.SKIP, "not run")
    r.devices["gpu0"] = {"cmds-completed": 3}
    path = r.write()
    d = json.loads(path.read_text())
    assert d["version"] == 1
    assert d["config"] == {"kernel": "6.12"}
    assert d["environment"] == {"accel": "tcg"}
    assert d["devices"] == {"gpu0": {"cmds-completed": 3}}
    assert d["tests"][0] == {"path": "boot", "status": "PASS", "duration": 9.877,
                             "log_excerpt": "hmmlab: ready", "output_files": ["console.log"]}
    assert d["tests"][1]["len"] == 4096
    assert d["summary"] == {"total": 3, "PASS": 1, "FAIL": 1, "ERROR": 0, "MISS": 0,
                            "SKIP": 1, "exit_status": 1, "reason": "1 FAIL: a test failed"}
    assert not (tmp_path / "run" / "results.json.tmp").exists()
    assert r.status_of("smoke.copy") == Status.FAIL and r.has("boot") and not r.has("nope")


def test_table(tmp_path: Path) -> None:
    r = Results(tmp_path)
    r.add(TestResult("boot", Status.PASS, 2.0))
    r.add(TestResult("smoke.copy", Status.ERROR, 0.5))
    table = r.table()
    assert "boot        PASS" in table
    assert "smoke.copy  ERROR" in table
    assert table.splitlines()[-2:] == [
        "2 tests: 1 passed, 0 failed, 1 errors, 0 skipped",
        "exit status 2: 1 ERROR: the harness or host got in the way, or tests never ran"]


def test_excerpt_keeps_the_end() -> None:
    text = "a" * 100 + "THE END"
    e = excerpt(text, 10)
    assert e.endswith("aaaTHE END") and e.startswith("[...]")
    assert excerpt("short") == "short"


def test_default_results_dir_is_unique(tmp_path: Path) -> None:
    a = default_results_dir(tmp_path)
    a.mkdir(parents=True)
    b = default_results_dir(tmp_path)
    assert a.parent == tmp_path / "results" and a != b
    assert a.name.endswith("Z")


@pytest.mark.parametrize(("statuses", "status"), [
    ([], Status.MISS),
    ([Status.SKIP], Status.SKIP),
    ([Status.PASS, Status.SKIP], Status.PASS),
    ([Status.PASS, Status.MISS], Status.MISS),
    ([Status.MISS, Status.ERROR], Status.ERROR),
    ([Status.ERROR, Status.FAIL, Status.PASS], Status.FAIL),
])
def test_rollup_is_kcidbs_order(statuses: list[Status], status: Status) -> None:
    assert rollup(statuses) == status


def test_failures_lists_only_what_did_not_pass_or_skip(tmp_path: Path) -> None:
    r = Results(tmp_path)
    r.add(TestResult("a", Status.PASS, log_excerpt="fine"))
    r.add(TestResult("b", Status.SKIP, log_excerpt="skipped"))
    r.add(TestResult("c", Status.FAIL, log_excerpt="x" * 2000 + "the end"))
    r.add(TestResult("d", Status.ERROR, log_excerpt="no boot"))
    text = r.failures(tail=10)
    assert text == f"c: FAIL\nxxxthe end\n\nd: ERROR\nno boot\n(results in {tmp_path})"


@pytest.mark.parametrize(("statuses", "code", "reason"), [
    ([], EXIT_INFRA, "no test ran"),
    ([Status.SKIP] * 3, EXIT_INFRA, "every test was skipped (3 SKIP)"),
    ([Status.PASS, Status.ERROR, Status.MISS, Status.MISS], EXIT_INFRA,
     "1 ERROR and 2 MISS: the harness or host got in the way, or tests never ran"),
    ([Status.PASS, Status.FAIL, Status.SKIP], EXIT_FAIL, "1 FAIL: a test failed"),
    ([Status.PASS, Status.SKIP], EXIT_PASS, ""),
])
def test_verdict_says_why(statuses: list[Status], code: int, reason: str) -> None:
    assert (verdict(statuses).exit_status, verdict(statuses).reason) == (code, reason)


def test_a_run_that_tested_nothing_says_so_in_results_json(tmp_path: Path) -> None:
    empty = Results(tmp_path / "empty")
    assert empty.exit_code() == EXIT_INFRA
    d = json.loads(empty.write().read_text())
    assert (d["summary"]["exit_status"], d["summary"]["reason"]) == (EXIT_INFRA, "no test ran")
    assert empty.table().endswith("exit status 2: no test ran")
    skipped = Results(tmp_path / "skipped")
    skipped.add_status("hmm-tests", Status.SKIP, "no hmm-tests in this kernel")
    assert skipped.summary()["exit_status"] == EXIT_INFRA
    assert skipped.summary()["reason"] == "every test was skipped (1 SKIP)"
    passed = Results(tmp_path / "passed")
    passed.add_status("boot", Status.PASS)
    assert "reason" not in passed.summary() and passed.exit_code() == EXIT_PASS


# README "Statuses": one event, one status, wherever it happens.
@pytest.mark.parametrize(("event", "status"), [
    (Event.HELD, Status.PASS),
    (Event.CHECK_FAILED, Status.FAIL), (Event.SPLAT, Status.FAIL),
    (Event.COMMAND_HUNG, Status.FAIL), (Event.GUEST_HUNG, Status.FAIL),
    (Event.GUEST_DIED, Status.FAIL), (Event.DEVICE_ERROR, Status.FAIL),
    (Event.BUILD_FAILED, Status.ERROR), (Event.QEMU_START_FAILED, Status.ERROR),
    (Event.NEVER_CAME_UP, Status.ERROR), (Event.SSH_FAILED, Status.ERROR),
    (Event.HARNESS_ERROR, Status.ERROR), (Event.SETUP_FAILED, Status.ERROR),
    (Event.NOT_BUILT, Status.MISS), (Event.KILLED, Status.MISS),
    (Event.INTERRUPTED, Status.MISS), (Event.GUEST_UNUSABLE, Status.MISS),
    (Event.UNSUPPORTED, Status.SKIP),
])
def test_status_for_every_event(event: Event, status: Status) -> None:
    assert status_for(event) == status


def test_every_event_has_a_status() -> None:
    assert {e for e in Event} == set(Event.__members__.values())
    for e in Event:
        status_for(e)  # a KeyError here is an event the rule forgot


@pytest.mark.parametrize(("timed_out", "gone", "splat", "event"), [
    (True, False, False, Event.COMMAND_HUNG),  # a hang is the software's, splat or not
    (True, True, True, Event.COMMAND_HUNG),
    (False, True, False, Event.GUEST_DIED),  # died quietly: still under the test
    (False, False, True, Event.SPLAT),
    (False, False, False, Event.SSH_FAILED),  # the link broke, the guest runs on
])
def test_what_cut_a_command_off(timed_out: bool, gone: bool, splat: bool, event: Event) -> None:
    assert interruption(timed_out=timed_out, guest_gone=gone, splat=splat) == event

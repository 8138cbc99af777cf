"""The KTAP/TAP parser, on real kselftest output and on crafted edge cases."""

from __future__ import annotations

from pathlib import Path

from harness.checks import ktap
from harness.checks.ktap import Outcome

DATA = Path(__file__).parent / "data"


def test_real_hmm_tests_output_without_a_device() -> None:
    # hmm-tests (6.12) run on a host without /dev/hmm_dmirror0: every device-private
    # test fails in its fixture, every coherent variant skips.
    doc = ktap.parse((DATA / "ktap_hmm_tests_nodevice.txt").read_text())
    assert doc.version == "TAP version 13" and doc.plan == 58 and doc.problems == []
    flat = doc.flatten()
    assert len(flat) == 58
    c = doc.counts()
    assert (c["PASS"], c["FAIL"], c["SKIP"], c["MISSING"]) == (0, 29, 29, 0)
    name, first = flat[0]
    assert name == "hmm.hmm_device_private.hmm_cow_in_device"
    assert first.outcome == Outcome.FAIL and first.number == 1
    assert any("could not open hmm dmirror driver" in d for d in first.diagnostics)
    assert any("Test terminated by assertion" in d for d in first.diagnostics)
    last_name, last = flat[-1]
    assert last_name == "hmm2.hmm2_device_coherent.migrate_mixed"
    assert last.outcome == Outcome.SKIP and last.reason == "DEVICE_COHERENT not available"
    assert any(line.startswith("# Totals:") for line in doc.other)


def test_ktap_v1_nested_by_indentation() -> None:
    text = """KTAP version 1
1..2
  KTAP version 1
  1..3
  ok 1 first
  not ok 2 second
    # diag
  ok 3 third # SKIP no hw
ok 1 suite_a
ok 2 suite_b # SKIP nothing here
"""
    doc = ktap.parse(text)
    assert doc.problems == []
    assert [(p, r.outcome) for p, r in doc.flatten()] == [
        ("suite_a.first", Outcome.PASS), ("suite_a.second", Outcome.FAIL),
        ("suite_a.third", Outcome.SKIP), ("suite_b", Outcome.SKIP)]
    assert doc.results[0].children[2].reason == "no hw"


def test_runner_style_hash_prefixed_nesting() -> None:
    text = """TAP version 13
1..1
# selftests: mm: hmm-tests
# TAP version 13
# 1..2
# ok 1 hmm.x.a
# not ok 2 hmm.x.b
not ok 1 selftests: mm: hmm-tests # exit=1
"""
    doc = ktap.parse(text)
    flat = doc.flatten()
    assert [(p, r.outcome) for p, r in flat] == [
        ("selftests: mm: hmm-tests.hmm.x.a", Outcome.PASS),
        ("selftests: mm: hmm-tests.hmm.x.b", Outcome.FAIL)]
    assert doc.results[0].reason == "exit=1" and doc.results[0].outcome == Outcome.FAIL


def test_missing_results_after_a_crash_and_junk_lines() -> None:
    text = """random boot noise
TAP version 13
1..3
[   12.3] hmm_gpu: something in dmesg
ok 1 - a
Segmentation fault
"""
    doc = ktap.parse(text)
    outcomes = [r.outcome for _, r in doc.flatten()]
    assert outcomes == [Outcome.PASS, Outcome.MISSING, Outcome.MISSING]
    assert doc.results[0].name == "a"
    assert "random boot noise" in doc.results[0].diagnostics
    assert "Segmentation fault" in doc.other


def test_directives_and_odd_names() -> None:
    text = """TAP version 13
1..5
ok 1 x # XFAIL known bug
not ok 2 y # TIMEOUT after 45s
not ok 3 z # ERROR setup
ok 4 w # TODO later
not ok 5 name # with a hash
"""
    doc = ktap.parse(text)
    got = [(r.name, r.outcome, r.reason) for r in doc.results]
    assert got == [("x", Outcome.XFAIL, "known bug"), ("y", Outcome.TIMEOUT, "after 45s"),
                   ("z", Outcome.ERROR, "setup"), ("w", Outcome.PASS, "later"),
                   ("name", Outcome.FAIL, "with a hash")]
    assert [r.ok for r in doc.results] == [True, False, False, True, False]


def test_out_of_order_and_no_plan_are_problems() -> None:
    doc = ktap.parse("ok 2 b\n")
    assert any("out of order" in p for p in doc.problems)
    assert any("no plan" in p for p in doc.problems)


def test_empty_input() -> None:
    doc = ktap.parse("")
    assert doc.results == [] and doc.plan is None and doc.flatten() == []


def test_each_result_knows_its_line() -> None:
    """The index of its result line in text.splitlines(): what ties it to when it came."""
    text = (DATA / "ktap_hmm_tests_nodevice.txt").read_text()
    lines = text.splitlines()
    for name, r in ktap.parse(text).flatten():
        assert lines[r.line].endswith(f"ok {r.number} {name}") or (
            lines[r.line].startswith(f"ok {r.number} {name} # SKIP")), (name, r.line)
    doc = ktap.parse("TAP version 13\n1..2\nok 1 a\n")
    assert [(r.name, r.line) for r in doc.results] == [("a", 2), ("#2", -1)]  # missing: none

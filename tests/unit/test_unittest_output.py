"""unittest -v output -> per-test verdicts, on recorded real output."""

from __future__ import annotations

from pathlib import Path

from harness.checks import unittest_output
from harness.checks.unittest_output import Verdict

DATA = Path(__file__).parent / "data"
# rdma-core 65.0's run_tests.py --dev rxe0 -v -k odp, Python 3.14, in a 7.2 guest
RXE = (DATA / "odp_tests_rxe_7.2.txt").read_text()
# python3.11 -m unittest -v of unittest_failures_py311.source.py.txt on the host
FAILURES = (DATA / "unittest_failures_py311.txt").read_text()


def test_rxe_run_every_verdict() -> None:
    run = unittest_output.parse(RXE)
    assert run.ran == 27 and len(run.results) == 27 and run.problems == []
    assert run.summary == "OK (skipped=12)"
    by_id = {r.id: r for r in run.results}
    assert by_id["tests.test_odp.OdpTestCase.test_odp_rc_traffic"].verdict == Verdict.OK
    xrc = by_id["tests.test_odp.OdpTestCase.test_odp_xrc_traffic"]
    assert (xrc.verdict, xrc.reason) == (Verdict.SKIP, "Create XRCD is not supported")
    assert sum(r.verdict == Verdict.SKIP for r in run.results) == 12


def test_docstring_on_its_own_line_before_the_verdict() -> None:
    run = unittest_output.parse(RXE)
    by_id = {r.id: r for r in run.results}
    # "test_mrex_odp_rc_traffic (...)\nTest ODP traffic with MREx ... ok"
    assert by_id["tests.test_odp.OdpTestCase.test_mrex_odp_rc_traffic"].verdict == Verdict.OK
    mkey = by_id["tests.test_mlx5_mkey.Mlx5MkeyTest.test_odp_mkey_list_new_api"]
    assert mkey.verdict == Verdict.SKIP
    assert mkey.reason == "Could not open mlx5 context (This is not an MLX5 device)"


def test_a_warning_between_verdicts_is_ignored() -> None:
    assert "ResourceWarning" in RXE
    assert unittest_output.parse(RXE).problems == []


def test_failures_errors_and_their_tracebacks() -> None:
    run = unittest_output.parse(FAILURES)
    by_name = {r.name: r for r in run.results}
    assert [r.name for r in run.results] == ["test_errors", "test_fails", "test_passes",
                                             "test_skips", "test_xfail"]
    assert by_name["test_errors"].verdict == Verdict.ERROR
    assert "OSError: [Errno 95] Operation not supported" in by_name["test_errors"].details
    assert by_name["test_fails"].verdict == Verdict.FAIL
    assert by_name["test_fails"].details.startswith("FAIL: test_fails (")
    assert "AssertionError: 1 != 2" in by_name["test_fails"].details
    assert by_name["test_xfail"].verdict == Verdict.XFAIL
    assert by_name["test_passes"].details == ""
    assert run.ran == 5
    assert run.summary == "FAILED (failures=1, errors=2, skipped=1, expected failures=1)"


def test_a_class_fixture_error_is_no_test_but_a_problem() -> None:
    run = unittest_output.parse(FAILURES)
    key = "tests.test_sample.BrokenSetup.setUpClass"
    assert key in run.other_errors
    assert "RuntimeError: no device" in run.other_errors[key]
    assert run.problems == [f"error outside a test: {key}"]


def test_cut_short_output() -> None:
    # a run that hit its timeout: no "Ran N tests" and a test without its verdict
    head = (RXE[:RXE.index("test_odp_rc_traffic (")]
            + "test_odp_rc_traffic (tests.x.Y.test_odp_rc_traffic) ... ")
    run = unittest_output.parse(head)
    assert 'no "Ran N tests" line: unittest did not finish' in run.problems
    assert any("tests.x.Y.test_odp_rc_traffic: no verdict" in p for p in run.problems)


def test_counts_that_do_not_add_up() -> None:
    lines = RXE.splitlines()
    dropped = "\n".join(line for line in lines if "test_odp_ud_traffic" not in line)
    run = unittest_output.parse(dropped)
    assert run.problems == ["unittest ran 27 tests but printed 26 verdicts"]


def test_old_python_names_tests_by_class() -> None:
    text = ("test_a (tests.test_odp.OdpTestCase) ... ok\n\n" + "-" * 70
            + "\nRan 1 test in 0.1s\n\nOK\n")
    run = unittest_output.parse(text)
    assert [r.id for r in run.results] == ["tests.test_odp.OdpTestCase.test_a"]
    assert run.problems == []


def test_nothing() -> None:
    run = unittest_output.parse("")
    assert run.results == [] and run.ran is None

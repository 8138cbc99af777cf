"""Scenarios SKIP, with the reason, what the booted kernel cannot do."""

from __future__ import annotations

from harness.core.results import Status
from harness.scenarios.kernel import REQUIRES, scenario_unmet, unmet
from harness.scenarios.smoke import driver_build_result
from harness.scenarios.svm import sub_test_status


def test_the_reason_names_the_option_and_the_kernel() -> None:
    stock = {"hmm_mirror", "thp"}
    for name in ("svm-migrate", "vram-pressure", "atomics"):
        assert scenario_unmet(name, stock, "Debian stock 6.1") == (
            "kernel built without CONFIG_DEVICE_PRIVATE (Debian stock 6.1)")
        assert scenario_unmet(name, stock | {"device_private"}, "6.12.107-1") is None
    for name in ("smoke", "hmm-tests", "svm-mirror", "svm-invalidate"):
        assert name not in REQUIRES and scenario_unmet(name, set(), "x") is None
    assert unmet(["gup_test"], [], "") == "kernel built without CONFIG_GUP_TEST"
    assert unmet(["something_new"], [], "k") == "kernel without something_new (k)"


def test_workload_lines_pass_skip_or_fail() -> None:
    assert sub_test_status({"test": "anon.read", "ok": True}) == Status.PASS
    assert sub_test_status({"test": "anon.atomic_add", "skip": "no exclusive"}) == Status.SKIP
    assert sub_test_status({"test": "anon.read", "ok": False}) == Status.FAIL
    # a line that says both, or an empty reason, is not a skip
    assert sub_test_status({"test": "x", "ok": False, "skip": "why"}) == Status.FAIL
    assert sub_test_status({"test": "x", "skip": ""}) == Status.FAIL
    assert sub_test_status({"test": "x"}) == Status.FAIL


def test_driver_build_warnings_fail_the_build_entry() -> None:
    ok = driver_build_result("7.2.13-1", ())
    assert ok.status == Status.PASS and "warning-free (W=1) against 7.2.13-1" in ok.log_excerpt
    bad = driver_build_result("6.1.192-2", ["hmm_gpu_svm.c:1:1: warning: x"])
    assert bad.status == Status.FAIL and "hmm_gpu_svm.c:1:1: warning: x" in bad.log_excerpt

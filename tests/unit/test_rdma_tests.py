"""odp-tests: which kernels run the rxe column, entries, and when a run is a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import scenarios
from harness.build.guest_debs import RDMA_TESTS_DIR
from harness.build.kernel import CONFIG_FEATURES, parse_fragment
from harness.checks import unittest_output
from harness.core import config
from harness.core.results import Status, TestResult
from harness.scenarios import columns, rdma_tests
from harness.scenarios.kernel import GuestKernel
from harness.scenarios.rdma_tests import HMM_NIC, RXE

DATA = Path(__file__).parent / "data"
RXE_OUT = (DATA / "odp_tests_rxe_7.2.txt").read_text()
DEVINFO = (DATA / "ibv_devinfo_rxe_7.2.txt").read_text()
FAILURES = (DATA / "unittest_failures_py311.txt").read_text()
RDMA = frozenset({"rdma_user", "rdma_odp", "rdma_rxe"})


def kernel(name: str, release: str, features: frozenset[str] = RDMA) -> GuestKernel:
    return GuestKernel(name=name, release=release, features=features)


def test_registered_and_in_the_default_run() -> None:
    assert isinstance(scenarios.create("odp-tests"), rdma_tests.OdpTests)
    assert "odp-tests" in config.load(None).scenarios
    assert f"{RDMA_TESTS_DIR}/run_tests.py" == rdma_tests.RUN_TESTS


def test_guest_kernels_are_built_with_rxe_and_odp(repo_root: Path) -> None:
    wants = parse_fragment(repo_root / "guest-images/kernel/hmm.config")
    for feature in RXE.needs:
        assert wants[CONFIG_FEATURES[feature]] == "y"


@pytest.mark.parametrize(("k", "why"), [
    (kernel("7.2.13-1", "7.2.13"), None),
    (kernel("6.12.117-1", "6.12.117"), "rxe has ODP from 6.15 (6.12.117-1)"),
    (kernel("6.1.192-3", "6.1.192"), "rxe has ODP from 6.15 (6.1.192-3)"),
    (kernel("Debian stock 6.1", "6.1.0-57-amd64", frozenset()),
     "rxe has ODP from 6.15 (Debian stock 6.1)"),
    (kernel("6.15.0", "6.15.0"), None),
    (kernel("7.2.13-1", "7.2.13", RDMA - {"rdma_rxe"}),
     "kernel built without rxe, the software RoCE (CONFIG_RDMA_RXE=y) (7.2.13-1)"),
    (kernel("tree:v7.3-rc1", "", RDMA - {"rdma_odp"}),
     "kernel built without RDMA on-demand paging (CONFIG_INFINIBAND_ON_DEMAND_PAGING=y) "
     "(tree:v7.3-rc1)"),
    (None, None),  # no kernel.json: run, and let the outcome speak
])
def test_which_kernels_run_the_rxe_column(k: GuestKernel | None, why: str | None) -> None:
    assert rdma_tests.column_unmet(RXE, k) == why


NIC_RUN = config.load_text("devices: [{type: hmm-gpu}, {type: hmm-nic}]\n", "t.yaml")
GPU_RUN = config.load_text("devices: [{type: hmm-gpu}]\n", "t.yaml")


@pytest.mark.parametrize(("k", "cfg", "why"), [
    (kernel("6.1.192-3", "6.1.192"), NIC_RUN, None),
    (kernel("6.12.117-1", "6.12.117", RDMA - {"rdma_rxe"}), NIC_RUN, None),
    (kernel("7.2.13-1", "7.2.13"), GPU_RUN,
     "no hmm-nic device in this run (devices: [{type: hmm-nic}])"),
    (kernel("Debian stock 6.1", "6.1.0-57-amd64", frozenset()), NIC_RUN,
     "kernel built without RDMA user verbs (CONFIG_INFINIBAND_USER_ACCESS=y) "
     "(Debian stock 6.1)"),
])
def test_which_runs_have_the_hmm_nic_column(k: GuestKernel, cfg: config.RunConfig,
                                            why: str | None) -> None:
    assert rdma_tests.column_unmet(HMM_NIC, k, cfg) == why


def test_hmm_nic_is_held_to_rxe() -> None:
    assert rdma_tests.COLUMNS == (HMM_NIC, RXE) and rdma_tests.REFERENCE is RXE
    assert HMM_NIC.device == "hmmnic0" and "insmod /opt/hmmlab/hmm_nic.ko;" in HMM_NIC.setup


def test_entries_from_the_recorded_rxe_run() -> None:
    run = unittest_output.parse(RXE_OUT)
    entries = rdma_tests.entries_of(RXE, run, "odp-tests-rxe.log")
    by_path = {e.path: e for e in entries}
    odp = {p: e for p, e in by_path.items() if p.startswith("odp-tests.rxe.test_odp.")}
    assert len(odp) == 23  # every test of rdma-core 65.0's tests/test_odp.py
    passed = sorted(p.rsplit(".", 1)[1] for p, e in odp.items() if e.status == Status.PASS)
    assert passed == sorted([
        "test_mrex_odp_qp_ex_rc_flush", "test_mrex_odp_rc_traffic",
        "test_odp_async_prefetch_rc_traffic", "test_odp_prefetch_async_no_page_fault_rc_traffic",
        "test_odp_prefetch_sync_no_page_fault_rc_traffic", "test_odp_qp_ex_rc_atomic_write",
        "test_odp_qp_ex_rc_flush", "test_odp_rc_atomic_cmp_and_swp",
        "test_odp_rc_atomic_fetch_and_add", "test_odp_rc_mixed_mr", "test_odp_rc_rdma_read",
        "test_odp_rc_rdma_write", "test_odp_rc_traffic", "test_odp_sync_prefetch_rc_traffic",
        "test_odp_ud_traffic"])
    implicit = by_path["odp-tests.rxe.test_odp.OdpTestCase.test_odp_implicit_rc_traffic"]
    assert (implicit.status, implicit.log_excerpt) == (Status.SKIP,
                                                      "ODP implicit is not supported")
    assert all(e.duration is None for e in entries)  # unittest -v gives none
    assert all(e.output_files == ["odp-tests-rxe.log"] for e in entries)
    assert rdma_tests.run_problems(run, 0) == []


def test_an_error_is_a_fail_with_its_traceback() -> None:
    run = unittest_output.parse(FAILURES)
    by_name = {e.path.rsplit(".", 1)[1]: e for e in rdma_tests.entries_of(RXE, run, "x.log")}
    assert by_name["test_errors"].status == Status.FAIL
    assert "Operation not supported" in by_name["test_errors"].log_excerpt
    assert by_name["test_errors"].extra == {"unittest": "ERROR"}
    assert by_name["test_fails"].status == Status.FAIL
    assert by_name["test_xfail"].status == Status.PASS
    assert by_name["test_skips"].status == Status.SKIP
    assert by_name["test_passes"].path == "odp-tests.rxe.test_sample.Sample.test_passes"
    # the setUpClass error makes the run itself a failure
    assert rdma_tests.run_problems(run, 1) == [
        "error outside a test: tests.test_sample.BrokenSetup.setUpClass"]


@pytest.mark.parametrize(("text", "rc", "problem"), [
    ("", 1, "no test ran"),
    ("----\nRan 0 tests in 0.000s\n\nNO TESTS RAN\n", 5, "no test ran"),
    ("test_a (tests.test_odp.T.test_a) ... skipped 'ODP is not supported - No ODP caps'\n"
     "----\nRan 1 test in 0.1s\n\nOK (skipped=1)\n", 0,
     "every test skipped (1): nothing was exercised"),
    ("test_a (tests.test_odp.T.test_a) ... ok\n----\nRan 1 test in 0.1s\n\nOK\n", 1,
     "run_tests.py exited with status 1 although no test failed"),
])
def test_a_run_that_exercised_nothing_fails(text: str, rc: int, problem: str) -> None:
    assert problem in rdma_tests.run_problems(unittest_output.parse(text), rc)


def test_rxe_device_as_recorded_is_fit() -> None:
    assert rdma_tests.device_problems(DEVINFO, "rxe0") == []


def test_rxe_without_odp_or_link_is_not() -> None:
    no_odp = DEVINFO.replace("general_odp_caps:\n\t\t\t\t\tODP_SUPPORT",
                             "general_odp_caps:\n\t\t\t\t\tNO SUPPORT")
    assert no_odp != DEVINFO
    assert rdma_tests.device_problems(no_odp, "rxe0") == [
        "rxe0 offers no ODP (general_odp_caps lacks ODP_SUPPORT)"]
    down = DEVINFO.replace("PORT_ACTIVE (4)", "PORT_DOWN (1)")
    assert rdma_tests.device_problems(down, "rxe0") == ["rxe0's port is not PORT_ACTIVE"]
    assert "ibv_devinfo does not list rxe1" in rdma_tests.device_problems(DEVINFO, "rxe1")


def test_table_per_column_and_an_empty_column() -> None:
    run = unittest_output.parse(RXE_OUT)
    entries = rdma_tests.entries_of(RXE, run, "x.log")
    entries.append(TestResult("odp-tests.rxe.run", Status.PASS))
    table = columns.side_by_side(entries, ["rxe", "hmm-nic"], "rxe", scenario="odp-tests")
    assert len(table["rows"]) == 27  # the run entry is not a test
    assert table["totals"]["rxe"]["PASS"] == 15 and table["totals"]["rxe"]["SKIP"] == 12
    row = next(r for r in table["rows"]
               if r["test"] == "test_odp.OdpTestCase.test_odp_rc_traffic")
    assert row == {"test": "test_odp.OdpTestCase.test_odp_rc_traffic", "rxe": "PASS",
                   "hmm-nic": "-"}
    assert columns.empty_columns(table, ["rxe", "hmm-nic"]) == ["hmm-nic"]
    # a later hmm-nic column is held to rxe
    parity = columns.parity(table, "odp-tests", "hmm-nic")
    assert parity.status == Status.FAIL
    assert parity.log_excerpt.startswith("15 tests pass on rxe but not on hmm-nic:")


def test_parity_names_what_hmm_nic_does_not_claim() -> None:
    rows = [("test_odp.OdpTestCase.test_odp_rc_traffic", "PASS", "PASS"),
            ("test_odp.OdpTestCase.test_odp_ud_traffic", "SKIP", "PASS"),
            ("test_odp.OdpTestCase.test_odp_qp_ex_rc_flush", "PASS", "PASS")]
    entries = [TestResult(f"odp-tests.{col}.{t}", Status(st))
               for t, nic, rxe in rows for col, st in (("hmm-nic", nic), ("rxe", rxe))]
    table = columns.side_by_side(entries, ["hmm-nic", "rxe"], "rxe", scenario="odp-tests")
    ok = columns.parity(table, "odp-tests", "hmm-nic",
                        excused=rdma_tests.EXCUSED["hmm-nic"])
    assert ok.status == Status.PASS
    assert "not compared, test_odp.OdpTestCase.test_odp_ud_traffic: hmm-nic has RC" \
        in ok.log_excerpt
    # FLUSH is no longer excused (hmm-nic has it): a SKIP there counts
    entries[4] = TestResult("odp-tests.hmm-nic.test_odp.OdpTestCase.test_odp_qp_ex_rc_flush",
                            Status.SKIP)
    table = columns.side_by_side(entries, ["hmm-nic", "rxe"], "rxe", scenario="odp-tests")
    flush = columns.parity(table, "odp-tests", "hmm-nic",
                           excused=rdma_tests.EXCUSED["hmm-nic"])
    assert flush.status == Status.FAIL
    assert "test_odp_qp_ex_rc_flush" in flush.log_excerpt
    entries[4] = TestResult("odp-tests.hmm-nic.test_odp.OdpTestCase.test_odp_qp_ex_rc_flush",
                            Status.PASS)
    # an excused test that FAILs (not SKIPs) on hmm-nic still counts
    entries[2] = TestResult("odp-tests.hmm-nic.test_odp.OdpTestCase.test_odp_ud_traffic",
                            Status.FAIL)
    table = columns.side_by_side(entries, ["hmm-nic", "rxe"], "rxe", scenario="odp-tests")
    bad = columns.parity(table, "odp-tests", "hmm-nic", excused=rdma_tests.EXCUSED["hmm-nic"])
    assert bad.status == Status.FAIL

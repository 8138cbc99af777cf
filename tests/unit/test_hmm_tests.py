"""hmm-tests results: failures, missing tests, the side-by-side table, what the kernel or
the driver cannot do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.build.cache import Cache
from harness.core.results import Status
from harness.guest.ssh import Arrival, MarkedStream, line_arrivals
from harness.scenarios.hmm_tests import (
    DRIVERS,
    cannot_pass,
    driver_unmet,
    expected_counts,
    expected_device_private,
    format_table,
    hmm_tests_source,
    parity,
    parse_run,
    side_by_side,
)
from harness.scenarios.kernel import GuestKernel

DATA = Path(__file__).parent / "data"


def statuses(entries) -> dict[str, str]:
    return {e.path: str(e.status) for e in entries}


def test_real_output_without_a_device_on_hmm_gpu() -> None:
    out = (DATA / "ktap_hmm_tests_nodevice.txt").read_text()
    entries, problems = parse_run("hmm-gpu", out)
    assert problems == [] and len(entries) == 58
    st = statuses(entries)
    # no expected failures: every device-private test that failed is a FAIL
    e = next(e for e in entries if e.path == "hmm-tests.hmm-gpu.hmm.hmm_device_private.migrate")
    assert e.status == Status.FAIL
    assert st["hmm-tests.hmm-gpu.hmm2.hmm2_device_private.snapshot"] == "FAIL"
    # coherent variants skip on their own
    assert st["hmm-tests.hmm-gpu.hmm.hmm_device_coherent.anon_read"] == "SKIP"
    fails = [p for p, s in st.items() if s == "FAIL"]
    assert len(fails) == 29
    assert "could not open hmm dmirror driver" in e.log_excerpt


def test_the_same_output_on_test_hmm_has_no_expected_failures() -> None:
    out = (DATA / "ktap_hmm_tests_nodevice.txt").read_text()
    entries, _ = parse_run("test_hmm", out)
    assert sum(1 for e in entries if e.status == Status.FAIL) == 29


def test_parity_names_the_tests_each_hmm_gpu_column_is_behind_on() -> None:
    out = "TAP version 13\n1..2\nok 1 hmm.hmm_device_private.migrate\n" \
          "ok 2 hmm.hmm_device_private.anon_read\n"
    gpu = out.replace("ok 1 hmm.hmm_device_private.migrate",
                      "not ok 1 hmm.hmm_device_private.migrate")
    dev = out.replace("ok 2 hmm.hmm_device_private.anon_read",
                      "ok 2 hmm.hmm_device_private.anon_read # SKIP no reason")
    entries = (parse_run("hmm-gpu", gpu)[0] + parse_run("hmm-gpu-devfault", dev)[0]
               + parse_run("test_hmm", out)[0])
    table = side_by_side(entries)
    r = parity(table, "hmm-gpu")
    assert (r.path, r.status) == ("hmm-tests.parity.hmm-gpu", Status.FAIL)
    assert r.log_excerpt == ("1 tests pass on test_hmm but not on hmm-gpu:\n"
                             "hmm.hmm_device_private.migrate (FAIL)")
    r = parity(table, "hmm-gpu-devfault")
    assert (r.path, r.status) == ("hmm-tests.parity.hmm-gpu-devfault", Status.FAIL)
    assert r.log_excerpt == ("1 tests pass on test_hmm but not on hmm-gpu-devfault:\n"
                             "hmm.hmm_device_private.anon_read (SKIP)")
    same = (parse_run("hmm-gpu", out)[0] + parse_run("hmm-gpu-devfault", out)[0]
            + parse_run("test_hmm", out)[0])
    for column in ("hmm-gpu", "hmm-gpu-devfault"):
        r = parity(side_by_side(same), column)
        assert r.status == Status.PASS, column
        assert r.log_excerpt == f"2 tests pass on test_hmm and on {column}"


def test_a_column_that_did_not_run_is_behind_on_everything() -> None:
    """hmm-tests crashed at once in a column: nothing there passed, parity says so."""
    out = "TAP version 13\n1..2\nok 1 hmm.p.a\nok 2 hmm.p.b\n"
    entries = parse_run("hmm-gpu", out)[0] + parse_run("test_hmm", out)[0]
    r = parity(side_by_side(entries), "hmm-gpu-devfault")
    assert r.status == Status.FAIL
    assert r.log_excerpt.endswith("hmm.p.a (-)\nhmm.p.b (-)")


def test_a_crash_names_the_tests_that_never_reported() -> None:
    out = """TAP version 13
1..3
# Starting 3 tests from 1 test cases.
#  RUN           hmm.hmm_device_private.open_close ...
#            OK  hmm.hmm_device_private.open_close
ok 1 hmm.hmm_device_private.open_close
#  RUN           hmm.hmm_device_private.anon_read ...
"""
    entries, _ = parse_run("hmm-gpu", out)
    st = statuses(entries)
    assert st["hmm-tests.hmm-gpu.hmm.hmm_device_private.open_close"] == "PASS"
    assert st["hmm-tests.hmm-gpu.hmm.hmm_device_private.anon_read"] == "FAIL"
    assert st["hmm-tests.hmm-gpu.test3"] == "FAIL"


def test_no_output_is_a_problem() -> None:
    entries, problems = parse_run("hmm-gpu", "Segmentation fault\n")
    assert entries == [] and problems == ["hmm-tests printed no test results"]


def test_side_by_side_table() -> None:
    out_gpu = "TAP version 13\n1..3\nok 1 hmm.p.anon_read\nnot ok 2 hmm.p.migrate\n" \
              "ok 3 hmm.c.anon_read # SKIP DEVICE_COHERENT not available\n"
    out_ref = "TAP version 13\n1..3\nok 1 hmm.p.anon_read\nok 2 hmm.p.migrate\n" \
              "ok 3 hmm.c.anon_read # SKIP DEVICE_COHERENT not available\n"
    entries = parse_run("hmm-gpu", out_gpu)[0] + parse_run("test_hmm", out_ref)[0]
    entries += parse_run("hmm-gpu-devfault", out_gpu.replace("not ok 2", "ok 2"))[0]
    t = side_by_side(entries)
    assert t["columns"] == ["hmm-gpu", "hmm-gpu-devfault", "test_hmm"]
    assert t["reference"] == "test_hmm"
    assert t["rows"] == [
        {"test": "hmm.p.anon_read", "hmm-gpu": "PASS", "hmm-gpu-devfault": "PASS",
         "test_hmm": "PASS"},
        {"test": "hmm.p.migrate", "hmm-gpu": "FAIL", "hmm-gpu-devfault": "PASS",
         "test_hmm": "PASS"},
        {"test": "hmm.c.anon_read", "hmm-gpu": "SKIP", "hmm-gpu-devfault": "SKIP",
         "test_hmm": "SKIP"}]
    assert t["totals"]["hmm-gpu"]["FAIL"] == 1 and t["totals"]["test_hmm"]["PASS"] == 2
    assert t["totals"]["hmm-gpu-devfault"]["PASS"] == 2
    lines = format_table(t).splitlines()
    assert lines[0].split() == ["test", "hmm-gpu", "hmm-gpu-devfault", "test_hmm"]
    assert lines[2].split() == ["hmm.p.migrate", "FAIL", "PASS", "PASS"]
    # columns line up under their headers, the long one included
    assert lines[2].index("PASS") == lines[0].index("hmm-gpu-devfault")
    assert lines[-2] == "hmm-gpu-devfault: 2 PASS, 1 SKIP"


# ---- what the kernel cannot do ---------------------------------------------------------

STOCK = GuestKernel(
    name="Debian stock 6.1", features=frozenset({"hmm_mirror"}),
    hmm_tests=("hmm.anon_read", "hmm.migrate"),
    hmm_tests_device_private=frozenset({"hmm.migrate"}),
    hmm_tests_variants={"hmm": ("hmm_device_private", "hmm_device_coherent")},
    hmm_tests_selectable=False)
BUILT = GuestKernel(name="7.2.13-1", features=frozenset({"device_private", "test_hmm"}),
                    hmm_tests=STOCK.hmm_tests,
                    hmm_tests_device_private=STOCK.hmm_tests_device_private)
GPU, DEVFAULT, REF = DRIVERS


def test_a_test_the_kernel_cannot_pass_is_a_skip_with_the_reason() -> None:
    out = "TAP version 13\n1..2\nok 1 hmm.hmm_device_private.anon_read\n" \
          "not ok 2 hmm.hmm_device_private.migrate\n"
    no_dp = replace(STOCK, hmm_tests_selectable=True)  # a newer harness without DP
    entries, _ = parse_run("hmm-gpu", out, cannot_pass(no_dp))
    st = statuses(entries)
    assert st["hmm-tests.hmm-gpu.hmm.hmm_device_private.anon_read"] == "PASS"
    mig = entries[1]
    assert mig.status == Status.SKIP
    assert mig.log_excerpt.startswith(
        "needs device-private memory: kernel built without CONFIG_DEVICE_PRIVATE "
        "(Debian stock 6.1) (ran anyway: FAIL")
    # the same output on a kernel that has it: a plain failure
    entries, _ = parse_run("hmm-gpu", out, cannot_pass(BUILT))
    assert entries[1].status == Status.FAIL


def test_a_6_1_harness_without_device_private_memory_is_not_run() -> None:
    why = driver_unmet(GPU, STOCK)
    assert why and "1 of its 2 tests need device-private memory: kernel built without " \
        "CONFIG_DEVICE_PRIVATE (Debian stock 6.1)" in why
    assert STOCK.hmm_test_names() == [
        "hmm.hmm_device_private.anon_read", "hmm.hmm_device_coherent.anon_read",
        "hmm.hmm_device_private.migrate", "hmm.hmm_device_coherent.migrate"]
    assert driver_unmet(REF, STOCK) == (
        "kernel built without CONFIG_TEST_HMM (no lib/test_hmm.ko) (Debian stock 6.1)")
    assert driver_unmet(GPU, BUILT) is None and driver_unmet(REF, BUILT) is None
    assert driver_unmet(GPU, None) is None


def test_a_6_1_setup_skip_printed_as_ok_is_a_skip() -> None:
    out = """TAP version 13
1..2
#  RUN           hmm.hmm_device_coherent.anon_read ...
could not open hmm dmirror driver (/dev/hmm_dmirror2)
#      SKIP      DEVICE_COHERENT not available
#            OK  hmm.hmm_device_coherent.anon_read
ok 1 hmm.hmm_device_coherent.anon_read
#  RUN           hmm.hmm_device_private.anon_read ...
#            OK  hmm.hmm_device_private.anon_read
ok 2 hmm.hmm_device_private.anon_read
"""
    entries, _ = parse_run("test_hmm", out)
    assert [str(e.status) for e in entries] == ["SKIP", "PASS"]
    assert entries[0].log_excerpt.startswith("DEVICE_COHERENT not available")


def test_parity_without_test_hmm_and_a_test_only_test_hmm_passes() -> None:
    r = parity({"rows": []}, "hmm-gpu-devfault", "no test_hmm.ko")
    assert (r.path, r.status, r.log_excerpt) == (
        "hmm-tests.parity.hmm-gpu-devfault", Status.SKIP, "nothing to compare: no test_hmm.ko")
    out_ref = "TAP version 13\n1..2\nok 1 hmm.p.anon_read\nok 2 hmm.p.migrate_anon_huge_fault\n"
    out_gpu = out_ref.replace("ok 2", "not ok 2")
    # nothing excuses hmm_gpu.ko: what test_hmm.ko passes and it does not is a FAIL
    assert cannot_pass(BUILT) == {}
    entries = parse_run("hmm-gpu", out_gpu, cannot_pass(BUILT))[0] + \
        parse_run("test_hmm", out_ref)[0]
    assert statuses(entries)["hmm-tests.hmm-gpu.hmm.p.migrate_anon_huge_fault"] == "FAIL"
    r = parity(side_by_side(entries), "hmm-gpu", excused=cannot_pass(BUILT))
    assert r.status == Status.FAIL
    assert "hmm.p.migrate_anon_huge_fault (FAIL)" in r.log_excerpt
    # what the kernel cannot do excuses every driver alike, named in the entry
    no_dp = replace(BUILT, features=frozenset({"test_hmm"}),
                    hmm_tests_device_private=frozenset({"hmm.migrate_anon_huge_fault"}))
    out_ref_skip = out_ref
    entries = parse_run("hmm-gpu", out_gpu, cannot_pass(no_dp))[0] + \
        parse_run("test_hmm", out_ref_skip)[0]
    r = parity(side_by_side(entries), "hmm-gpu", excused=cannot_pass(no_dp))
    assert r.status == Status.PASS
    assert "not compared, hmm.p.migrate_anon_huge_fault: needs device-private memory" \
        in r.log_excerpt


# ---- durations: measured from the stream, or absent -------------------------------------

def _reads(*chunks: tuple[float, str]) -> tuple[str, list[Arrival | None]]:
    """The output of a run whose stdout came in these reads, and its line arrivals."""
    s = MarkedStream()
    for t, text in chunks:
        s.feed(text.encode(), t)
    out = s.data.decode()
    return out, line_arrivals(out, s.marks)


def _durations(entries) -> dict[str, float | None]:
    return {e.path.rsplit(".", 1)[1]: e.duration for e in entries}


def test_a_test_lasts_from_its_run_line_to_its_result_line() -> None:
    """kselftest flushes "#  RUN x" before forking x; "ok x" comes out with the next
    RUN line (or at exit). Two tests are timed, a third came in one read with its RUN
    line (faster than the stream can tell, or buffered): no duration."""
    out, arrivals = _reads(
        (100.0, "TAP version 13\n1..3\n# Starting 3 tests from 1 test cases.\n"
                "#  RUN           hmm.p.open_close ...\n"),
        (100.25, "#            OK  hmm.p.open_close\nok 1 hmm.p.open_close\n"
                 "#  RUN           hmm.p.migrate ...\n"),
        (103.75, "#            OK  hmm.p.migrate\nok 2 hmm.p.migrate\n"
                 "#  RUN           hmm.p.fast ...\n#            OK  hmm.p.fast\n"
                 "ok 3 hmm.p.fast\n# PASSED: 3 / 3 tests passed.\n"),
    )
    entries, problems = parse_run("hmm-gpu", out, arrivals=arrivals)
    assert problems == []
    assert _durations(entries) == {"open_close": 0.25, "migrate": 3.5, "fast": None}
    assert [e.to_dict()["duration"] for e in entries] == [0.25, 3.5, None]


def test_no_stream_times_no_durations() -> None:
    out = "TAP version 13\n1..2\nok 1 hmm.p.a\nok 2 hmm.p.b\n"
    entries, _ = parse_run("hmm-gpu", out)
    assert [e.duration for e in entries] == [None, None]


def test_without_run_lines_a_test_starts_when_the_previous_result_came() -> None:
    out, arrivals = _reads((1.0, "TAP version 13\n1..3\nok 1 hmm.p.a\n"),
                           (3.0, "ok 2 hmm.p.b\n"), (3.5, "not ok 3 hmm.p.c\n"))
    entries, _ = parse_run("hmm-gpu", out, arrivals=arrivals)
    # the first has nothing to start from; none is a share of the run's 2.5 s
    assert _durations(entries) == {"a": None, "b": 2.0, "c": 0.5}


def test_tests_that_never_reported_have_no_duration() -> None:
    out, arrivals = _reads((1.0, "TAP version 13\n1..2\n#  RUN           hmm.p.a ...\n"),
                           (2.0, "ok 1 hmm.p.a\n#  RUN           hmm.p.b ...\n"))
    entries, _ = parse_run("hmm-gpu", out, arrivals=arrivals)
    assert [(e.path, e.status, e.duration) for e in entries] == [
        ("hmm-tests.hmm-gpu.hmm.p.a", Status.PASS, 1.0),
        ("hmm-tests.hmm-gpu.hmm.p.b", Status.FAIL, None)]


# ---- the columns ----------------------------------------------------------------------------

def test_columns_load_hmm_gpu_in_both_fault_modes() -> None:
    assert [d.label for d in DRIVERS] == ["hmm-gpu", "hmm-gpu-devfault", "test_hmm"]
    assert (GPU.module, DEVFAULT.module, REF.module) == ("hmm_gpu", "hmm_gpu", "test_hmm")
    assert GPU.insmod_args == "prefault=1" and DEVFAULT.insmod_args == "prefault=0"
    assert REF.insmod_args == ""
    # how sysfs shows the bool parameter back, which the load entry checks
    assert [p.sysfs for p in GPU.params + DEVFAULT.params] == ["Y", "N"]


def test_on_a_kernel_without_device_memory_both_hmm_gpu_columns_are_not_run() -> None:
    assert driver_unmet(DEVFAULT, STOCK) == driver_unmet(GPU, STOCK)
    assert driver_unmet(DEVFAULT, BUILT) is None


# --- expected counts, from the kernel's own hmm-tests.c -------------------------------

LINUX_SRC = Cache.default().path("linux-src")


def test_counts_every_test_f_once_per_variant() -> None:
    text = ("FIXTURE(hmm) {};\nFIXTURE_VARIANT_ADD(hmm, hmm_device_private) {};\n"
            "FIXTURE_VARIANT_ADD(hmm, hmm_device_coherent) {};\nFIXTURE(solo) {};\n"
            "TEST_F(hmm, open_close) {}\nTEST_F_TIMEOUT(hmm, big, 600) {}\n"
            "TEST_F(solo, one) {}\n")
    assert expected_counts(text) == {"hmm.hmm_device_private": 2,
                                     "hmm.hmm_device_coherent": 2, "solo": 1}


@pytest.mark.parametrize("series,want", [("6.1", 29), ("6.12", 29), ("7.2", 38)])
def test_device_private_counts_of_the_real_sources(series: str, want: int) -> None:
    trees = sorted(d for d in LINUX_SRC.glob(f"{series}.*")
                   if d.name.split(".")[:2] == series.split("."))
    if not trees:
        pytest.skip(f"no linux-source-{series} unpacked in {LINUX_SRC} (build that kernel)")
    for tree in trees:
        assert expected_device_private(tree) == want, tree
        text = hmm_tests_source(tree).read_text()
        counts = expected_counts(text)
        # the hmm2 fixture's three tests, in both variants
        assert counts["hmm2.hmm2_device_private"] == 3
        assert counts["hmm.hmm_device_coherent"] == want - 3

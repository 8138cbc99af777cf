"""End to end: the default run with hmm-tests and the SVM scenarios, and `hmmlab bench svm`.

Boots the packaged default configuration (three hmm-gpu devices, the third
with 8 MiB of VRAM; 2 GiB) once per module; a build failure makes these
tests ERROR rather than skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.build import Artifacts
from harness.cli import main
from harness.core import config
from harness.core.results import Results, Status
from harness.run import runner
from harness.scenarios.bench import format_figures
from harness.scenarios.hmm_tests import expected_counts, expected_device_private, hmm_tests_source

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def default_run(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Results:
    results_dir = tmp_path_factory.mktemp("e2e") / "default"
    res = runner.run(config.load(None), results_dir, artifacts=artifacts)
    print(f"results: {results_dir}")
    print(res.table())
    return res


def test_default_run_passes(default_run: Results) -> None:
    assert default_run.exit_code() == 0, default_run.failures()


COLUMNS = ["hmm-gpu", "hmm-gpu-devfault", "test_hmm"]


def test_hmm_tests_table_in_results_json(default_run: Results) -> None:
    data = json.loads((default_run.dir / "results.json").read_text())
    table = data["tables"]["hmm-tests"]
    assert table["columns"] == COLUMNS and table["reference"] == "test_hmm"
    rows = {r["test"]: r for r in table["rows"]}
    # every test of the booted kernel's own hmm-tests.c, once per variant
    counts = expected_counts(hmm_tests_source(
        Path(data["environment"]["kernel_source"])).read_text())
    assert len(rows) == sum(counts.values()), sorted(rows)
    private = expected_device_private(Path(data["environment"]["kernel_source"]))
    for name, r in rows.items():
        if ".hmm_device_coherent." in name or ".hmm2_device_coherent." in name:
            assert [r[c] for c in COLUMNS] == ["SKIP"] * 3, name  # no devices 2/3
    assert rows["hmm.hmm_device_private.migrate"]["test_hmm"] == "PASS"
    text = (default_run.dir / "hmm-tests-table.txt").read_text()
    assert text.split("\n", 1)[0].split() == ["test", *COLUMNS]
    for c in COLUMNS:
        assert (default_run.dir / f"hmm-tests-{c}.log").read_text().count("\nok ") >= private


@pytest.mark.parametrize(("column", "prefault"), [("hmm-gpu", "1"),
                                                  ("hmm-gpu-devfault", "0")])
def test_hmm_gpu_columns_load_the_driver_in_their_fault_mode(default_run: Results, column: str,
                                                             prefault: str) -> None:
    """Each hmm-gpu column reloads hmm_gpu.ko with its prefault value, checked in sysfs."""
    load = next(t for t in default_run.tests if t.path == f"hmm-tests.{column}.load")
    assert load.status == Status.PASS, load.log_excerpt
    assert f"insmod /opt/hmmlab/hmm_gpu.ko prefault={prefault}" in load.log_excerpt


def test_hmm_tests_durations_are_measured(default_run: Results) -> None:
    """Each test's time comes from the stream, not the run's total split evenly."""
    for c in COLUMNS:
        took = [t.duration for t in default_run.tests
                if t.path.startswith(f"hmm-tests.{c}.hmm")]
        measured = [d for d in took if d is not None]
        assert len(measured) >= len(took) // 2, (c, took)  # most come in reads of their own
        # not one share each: the tests' own times, from ms (a SKIP) to seconds
        assert len(set(measured)) >= 10 and max(measured) > 10 * min(measured), (c, took)


@pytest.mark.parametrize("column", ["hmm-gpu", "hmm-gpu-devfault"])
def test_every_device_private_hmm_test_passes_on_hmm_gpu(default_run: Results,
                                                         column: str) -> None:
    entries = [t for t in default_run.tests if t.path.startswith(f"hmm-tests.{column}.hmm")]
    assert len(entries) == 58
    for t in entries:
        if ".hmm_device_coherent." in t.path or ".hmm2_device_coherent." in t.path:
            assert t.status == Status.SKIP, t.path  # no devices 2 and 3
    failed = [f"{t.path}: {t.status}\n{t.log_excerpt[-600:]}" for t in entries
              if "_device_private." in t.path and t.status != Status.PASS]
    assert not failed, "\n\n".join(failed)
    assert default_run.status_of(f"hmm-tests.parity.{column}") == Status.PASS


@pytest.mark.parametrize("path", [
    "svm-mirror.anon.read", "svm-mirror.anon.refault", "svm-mirror.thp.madvise",
    "svm-mirror.thp.read", "svm-mirror.file.write", "svm-mirror.malloc.cmpxchg",
    "svm-mirror.untouched.read_zero", "svm-mirror.readonly.fill_refused",
    "svm-invalidate.remap", "svm-invalidate.dontneed", "svm-invalidate.mprotect",
    "svm-invalidate.fork", "svm-invalidate.chaos", "svm-invalidate.dmatrace",
    "smoke.dmatrace", "smoke.counters", "console.splat",
    "svm-migrate.to_dev", "svm-migrate.device_jobs", "svm-migrate.cpu_touch_half",
    "svm-migrate.device_read_all", "svm-migrate.migrate_again", "svm-migrate.to_sys",
    "svm-migrate.vram_stats",
    "vram-pressure.migrate", "vram-pressure.device_read", "vram-pressure.device_fill",
    "vram-pressure.cpu_verify", "vram-pressure.summary",
    "atomics.device_only", "atomics.shared", "atomics.cpu_own", "atomics.reader",
])
def test_entry_passes(default_run: Results, path: str) -> None:
    assert default_run.status_of(path) == Status.PASS, default_run.failures()


def test_invalidate_check_looked_at_real_va_dma(default_run: Results) -> None:
    e = next(t for t in default_run.tests if t.path == "svm-invalidate.dmatrace")
    stats = e.extra["invalidate_check"]
    assert sum(s["data_checked"] for s in stats.values()) > 100
    assert sum(s["invalidations"] for s in stats.values()) > 10


def _data(res: Results, path: str) -> dict[str, Any]:
    e = next(t for t in res.tests if t.path == path)
    return e.extra["data"]


def test_svm_migrate_figures(default_run: Results) -> None:
    jobs = _data(default_run, "svm-migrate.device_jobs")
    assert jobs["faults"] == 0, jobs  # jobs on VRAM need no device fault
    touch = _data(default_run, "svm-migrate.cpu_touch_half")
    assert touch["cpu_faults"] >= touch["touched_pages"] > 0, touch
    st = _data(default_run, "svm-migrate.vram_stats")
    assert st["pages_to_dev"] > 0 and st["pages_to_sys"] > 0 and st["cpu_faults"] > 0, st


def test_vram_pressure_evicts(default_run: Results) -> None:
    summary = _data(default_run, "vram-pressure.summary")
    assert summary["device"] == "/dev/hmm_gpu2" and summary["vram_size"] == 8 << 20, summary
    assert summary["working_set"] >= 2 * summary["vram_size"], summary
    assert summary["chunks_evicted"] > 0 and summary["pages_evicted"] > 0, summary
    assert summary["max_vram_used"] <= summary["vram_size"], summary
    data = json.loads((default_run.dir / "results.json").read_text())
    assert data["tables"]["vram-pressure"]["bytes_moved"] == summary["bytes_moved"] > 0


def test_atomics_exact_counts(default_run: Results) -> None:
    shared = _data(default_run, "atomics.shared")
    assert shared["final"] == shared["device_adds"] + shared["cpu_adds"], shared
    assert shared["device_adds"] > 0 and shared["cpu_adds"] > 0, shared
    assert shared["duplicate_olds"] == shared["missing_olds"] == 0, shared
    dev = _data(default_run, "atomics.device_only")
    assert dev["final"] == dev["device_adds"] > 0, dev


def test_bench_svm_prints_one_table_of_medians(tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """`hmmlab bench svm --rounds 2`: both drivers measured in each round (THP figures
    included), the table printed once, every round kept in bench.json."""
    results = tmp_path / "bench"
    code = main(["bench", "svm", "--rounds", "2", "--results", str(results)])
    out, err = capfd.readouterr()
    print(out)
    assert code == 0, out + err
    fig = json.loads((results / "bench.json").read_text())
    assert (out + err).count("targets met:") == 1, out + err  # it was logged as well
    assert out.count(format_figures(fig)) == 1
    assert fig["rounds"] == 2 and [r["round"] for r in fig["raw"]] == [1, 2]
    for raw in fig["raw"]:
        for c in ("hmm-gpu", "test_hmm"):
            line = raw[c]
            assert line["ok"] is True and line["thp_huge_bytes"] == line["size_bytes"], line
    for row in fig["rows"]:
        for c in ("hmm-gpu", "test_hmm"):
            assert len(row[c]["values"]) == 2 and all(v > 0 for v in row[c]["values"]), row
            assert row[c]["min"] <= row[c]["median"] <= row[c]["max"], row
        assert row["ratio"] > 0 and row["ratio_min"] <= row["ratio_max"], row
    metrics = {r["metric"] for r in fig["rows"]}
    assert {"thp_fault_pages_per_s", "thp_read_MBps", "thp_write_MBps",
            "migrate_MBps", "cpu_fault_us"} <= metrics
    doc = json.loads((results / "results.json").read_text())
    rounds = [t for t in doc["tests"] if t["path"].startswith("bench.round")]
    assert [t["path"] for t in rounds if not t["path"].endswith(".load")] == [
        "bench.round1.hmm-gpu", "bench.round1.test_hmm",
        "bench.round2.hmm-gpu", "bench.round2.test_hmm"]
    assert all(t["status"] == "PASS" and t["duration"] > 0 for t in rounds)


def test_odp_cross_vm_ran_between_two_guests(default_run: Results) -> None:
    """The default guest's nic2 is cabled to a second guest: odp-cross-vm boots it, and
    every step of the WRITE/READ traffic into its ODP memory passed, both traces audited
    (not skipped: the 6.12 kernel has user verbs and ODP)."""
    got = {t.path: t.status for t in default_run.tests if t.path.startswith("odp-cross-vm")}
    for step in ("peer.boot", "connect", "write", "peer.check", "read", "peer.change",
                 "read-changed", "write-again", "peer.check-again", "peer.console",
                 "dmatrace", "peer.dmatrace"):
        assert got.get(f"odp-cross-vm.{step}") == Status.PASS, (step, got)
    assert (default_run.dir / "peer" / "console.log").is_file()

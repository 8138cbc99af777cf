"""The matrix scheduler: job count, cell timeouts, rerun selection, merged
results and exit status; and, with real processes standing in for cells
(no guest), that a hung, crashing or unbuildable cell never stops the others."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.build import Artifacts
from harness.core.progress import Progress, duration, eta
from harness.matrix import expand as matrix
from harness.matrix.expand import Cell
from harness.matrix.scheduler import (
    SCENARIO_COMMANDS,
    BuildKey,
    CellOutcome,
    Scheduler,
    cell_tests,
    cell_timeout,
    default_jobs,
    mem_available_mib,
    merge,
    missing_scenarios,
    rerun_selection,
)
from harness.report.publish import table
from harness.scenarios import hmm_tests


def load(text: str, kernel_tree: str | None = None) -> matrix.Matrix:
    return matrix.load_text(textwrap.dedent(text), "m.yaml", kernel_tree)


TWO = """
    axes:
      kernel: ["6.1", "6.12"]
    base: {scenarios: [smoke, hmm-tests], cpus: 2, memory: 2048}
"""


def cell_doc(*entries: tuple[str, str], files: tuple[str, ...] = ("console.log",)
             ) -> dict[str, Any]:
    return {"version": 1, "environment": {"kernel_release": "6.12.107", "accel": "tcg",
                                          "qemu": "10.0.13"},
            "tests": [{"path": p, "status": s, "duration": 1.0, "log_excerpt": "",
                       "output_files": list(files)} for p, s in entries],
            "tables": {"hmm-tests": {"columns": ["hmm-gpu", "test_hmm"], "rows": []}}}


# ---- pure decisions ---------------------------------------------------------------------------

def test_default_jobs() -> None:
    cells = list(load(TWO).cells)
    assert default_jobs(2, 20000, cells) == (2, "2 cores, 1 per cell of 2 vCPUs")
    assert default_jobs(1, 20000, cells) == (1, "1 core, 1 per cell of 2 vCPUs")
    assert default_jobs(8, 20000, cells)[0] == 2  # only 2 cells
    many = list(matrix.load(None).cells)
    assert default_jobs(2, 20000, many)[0] == 2
    assert default_jobs(4, 20000, many)[0] == 4
    assert default_jobs(8, 5200, many) == (2, "5200 MiB available / 2560 MiB per cell")
    assert default_jobs(8, 100, many)[0] == 1
    assert default_jobs(8, None, many)[0] == 8  # 8 cells
    big = list(load("axes: {cpus: [4, 8]}").cells)
    assert default_jobs(8, 90000, big) == (2, "8 cores, 4 per cell of 8 vCPUs")


def test_mem_available() -> None:
    assert mem_available_mib("MemTotal: 24000000 kB\nMemAvailable:   20971520 kB\n") == 20480
    assert mem_available_mib("MemTotal: 1 kB\n") is None


def runner_budget(c: Cell) -> float:
    """The longest a cell's runner may take by its own timeouts: the boot, then each
    guest command a scenario runs (hmm-tests one per driver column) up to
    timeouts.scenario."""
    t = c.config.timeouts
    commands = sum(len(hmm_tests.DRIVERS) if sc == "hmm-tests" else 1
                   for sc in c.config.scenarios)
    return t.boot + commands * t.scenario


def test_a_cells_runner_times_out_before_the_scheduler_kills_it() -> None:
    """The scheduler's kill is the last resort: every cell's own timeouts end its
    runner first (which then writes its results), for the default matrix's cells
    and for cells with short and long timeouts."""
    cells = [*matrix.load(None).cells] + [load(f"axes: {{kernel: ['6.12']}}\nbase: {base}").cells[0]
                                         for base in (
        "{scenarios: [smoke, hmm-tests], timeouts: {boot: 10, scenario: 5}}",
        "{scenarios: [hmm-tests], timeouts: {boot: 900, scenario: 3600}}")]
    for c in cells:
        assert cell_timeout(c) > runner_budget(c), c.name


def test_cell_timeout_follows_the_cells_timeouts() -> None:
    def timeout(text: str) -> float:
        return cell_timeout(load(f"axes: {{kernel: ['6.12']}}\nbase: {text}").cells[0])

    base = timeout("{scenarios: [smoke], timeouts: {boot: 100, scenario: 50}}")
    assert timeout("{scenarios: [smoke], timeouts: {boot: 400, scenario: 50}}") > base
    assert timeout("{scenarios: [smoke], timeouts: {boot: 100, scenario: 500}}") > base
    assert timeout("{scenarios: [smoke, hmm-tests], timeouts: {boot: 100, scenario: 50}}") > base
    # hmm-tests runs once per driver column: the scheduler counts them all
    assert SCENARIO_COMMANDS["hmm-tests"] == len(hmm_tests.DRIVERS)


def test_build_keys() -> None:
    m = matrix.load(None)
    keys = list(dict.fromkeys(BuildKey.of(c) for c in m.cells))
    assert [k.label for k in keys] == ["6.1", "6.12", "7.2", "6.12-debug"]
    tree = matrix.load(None, kernel_tree="/src/my linux")
    assert {BuildKey.of(c).label for c in tree.cells} == {"tree-my_linux",
                                                          "tree-my_linux-debug"}


def test_rerun_selection() -> None:
    prev = {"kind": "matrix", "matrix": {"cells": [
        {"name": "a", "status": "PASS"}, {"name": "b", "status": "FAIL"},
        {"name": "c", "status": "ERROR"}, {"name": "d", "status": "MISS"},
        {"name": "e", "status": "SKIP"}]}}
    assert rerun_selection(prev) == ["b", "c", "d"]
    with pytest.raises(ValueError, match="not the results of a matrix run"):
        rerun_selection({"version": 1, "tests": []})


def outcome(cell: Cell, doc: dict[str, Any], secs: float = 10.0) -> CellOutcome:
    o = CellOutcome(cell, f"cells/{cell.name}", duration=secs, exit_status=0)
    o.tests = cell_tests(cell.name, o.dir, doc)
    o.tables = doc.get("tables", {})
    o.environment = doc["environment"]
    return o


def test_merge() -> None:
    m = load(TWO)
    a, b = m.cells
    oa = outcome(a, cell_doc(("boot", "PASS"), ("smoke.copy", "PASS"), ("hmm-tests.x", "SKIP")))
    ob = outcome(b, cell_doc(("boot", "PASS"), ("smoke.copy", "FAIL")))
    ob.tests += missing_scenarios(b, ob.tests, "the guest went away")
    doc = merge(m, [oa, ob], {"jobs": 1})
    assert doc["version"] == 2 and doc["kind"] == "matrix"
    assert doc["matrix"]["source"] == "m.yaml"
    assert doc["matrix"]["varying"] == ["kernel"]
    assert [c["name"] for c in doc["matrix"]["cells"]] == ["6.1", "6.12"]
    ca, cb = doc["matrix"]["cells"]
    assert ca == {"name": "6.1", "axes": a.axes, "dir": "cells/6.1", "status": "PASS",
                  "duration": 10.0, "summary": {"PASS": 2, "FAIL": 0, "ERROR": 0, "MISS": 0,
                                                "SKIP": 1},
                  "kernel": "6.1", "kernel_build": "", "kernel_release": "6.12.107",
                  "origin": "axes",
                  "exit_status": 0}
    assert cb["status"] == "FAIL"
    assert [t["path"] for t in doc["tests"]] == [
        "6.1.boot", "6.1.smoke.copy", "6.1.hmm-tests.x", "6.12.boot", "6.12.smoke.copy",
        "6.12.hmm-tests"]
    first = doc["tests"][0]
    assert first["cell"] == "6.1"
    assert first["output_files"] == ["cells/6.1/console.log"]
    miss = doc["tests"][-1]
    assert (miss["status"], miss["log_excerpt"]) == ("MISS", "not run: the guest went away")
    assert set(doc["tables"]["hmm-tests"]) == {"6.1", "6.12"}
    s = doc["summary"]
    assert (s["total"], s["PASS"], s["FAIL"], s["SKIP"], s["MISS"]) == (6, 3, 1, 1, 1)
    assert s["cells"] == {"total": 2, "PASS": 1, "FAIL": 1, "ERROR": 0, "MISS": 0, "SKIP": 0}
    assert s["exit_status"] == 2  # a MISS is an infrastructure problem
    assert "6.12  FAIL" in table(doc)


@pytest.mark.parametrize(("statuses", "code"), [
    (["PASS", "SKIP"], 0), (["PASS", "FAIL"], 1), (["FAIL", "ERROR"], 2), (["PASS", "MISS"], 2),
    (["SKIP", "SKIP"], 2),  # nothing was tested: not a pass
])
def test_merged_exit_status(statuses: list[str], code: int) -> None:
    m = load(TWO)
    o = outcome(m.cells[0], cell_doc(*((f"t{i}", s) for i, s in enumerate(statuses))))
    assert merge(m, [o], {})["summary"]["exit_status"] == code


def test_missing_scenarios_only_for_scenarios_without_entries() -> None:
    c = load(TWO).cells[0]
    tests = cell_tests(c.name, "cells/x", cell_doc(("smoke.copy", "PASS")))
    assert [t["path"] for t in missing_scenarios(c, tests, "why")] == ["6.1.hmm-tests"]


def test_progress_lines_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    p = Progress(total=3, jobs=1, clock=lambda: now[0], interval=15)
    with caplog.at_level(logging.INFO, logger="harness.matrix"):
        p.started("a")
        now[0] += 40
        p.finished("a", "PASS", {"PASS": 20, "SKIP": 2})
        p.started("b")
        now[0] += 10
        p.beat()
        now[0] += 5
        p.beat()
        p.finished("b", "FAIL", {"PASS": 1, "FAIL": 4}, ["x.y", "x.z", "q", "r"])
    assert [r.getMessage() for r in caplog.records] == [
        "cell a: started (1 running, 2 queued)",
        "cell a: PASS in 40s (22 tests: 20 PASS, 2 SKIP) [1/3]",
        "cell b: started (1 running, 1 queued)",
        "matrix: 1/3 done, running b 10s; 1 queued; ETA 1m10s",
        "cell b: FAIL in 15s (5 tests: 1 PASS, 4 FAIL); x.y, x.z, q and 1 more [2/3]",
    ]
    assert eta(0.0, {}, 2, [], 1) is None
    assert eta(10.0, {"a": 0.0}, 2, [30.0], 2) == (20.0 + 60.0) / 2
    assert duration(3725) == "1h02m" and duration(59.6) == "1m00s"


# ---- real processes standing in for cells ------------------------------------------------------

# A stand-in cell: writes results.json with the given entries, or hangs (with a
# child of its own, like QEMU), or dies without results.
FAKE_CELL = """
import json, os, subprocess, sys, time
d, mode = sys.argv[1], sys.argv[2]
if mode == "pass":
    tests = [{"path": p, "status": "PASS", "duration": 0.1, "log_excerpt": "",
              "output_files": ["console.log"]} for p in ("boot", "smoke.copy", "hmm-tests.x")]
    json.dump({"version": 1, "environment": {}, "tests": tests, "tables": {}},
              open(os.path.join(d, "results.json"), "w"))
    print("cell passed")
elif mode == "hang":
    child = subprocess.Popen(["sleep", "300"])
    open(os.path.join(d, "child.pid"), "w").write(str(child.pid))
    print("cell hangs", flush=True)
    time.sleep(300)
elif mode == "term":  # stopped by someone else's SIGTERM, before any results
    import signal
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
else:
    print("cell crashes: Traceback ...", flush=True)
    sys.exit(3)
"""


def fake_artifacts(key: BuildKey, logdir: Path) -> Artifacts:
    if key.kernel == "7.2":
        (logdir / "kernel.log").write_text("make: *** [vmlinux] Error 2\n")
        raise RuntimeError("kernel 7.2: make failed (see kernel.log)")
    return Artifacts(qemu=Path("/nonexistent/qemu"), qemu_datadirs=(), kernel_image=Path("/x"),
                     kernel_tree=Path("/x"), kernel_version="0", initrds=(), ssh_key=Path("/x"),
                     ssh_host_pubkey="")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[1].split()[0] != "Z"


def test_hung_crashing_and_unbuilt_cells_do_not_stop_the_others(tmp_path: Path) -> None:
    m = load("""
        axes:
          kernel: ["6.1", "6.12", "7.2"]
          iommu: ["off", intel-iommu]
        base: {scenarios: [smoke, hmm-tests]}
    """)
    modes = {"6.1": "pass", "6.1-iommu": "hang", "6.12": "crash", "6.12-iommu": "pass"}

    def command(cell: Cell, cell_dir: Path, artifacts: Path) -> list[str]:
        assert artifacts.name == "artifacts.pickle" and artifacts.exists()
        return [sys.executable, "-c", FAKE_CELL, str(cell_dir), modes[cell.name]]

    # The hung cell gets 3 s; the others a limit a loaded machine cannot reach, so
    # only the hung one can be killed.
    s = Scheduler(m, m.cells, tmp_path, jobs=2, jobs_reason="test", build=fake_artifacts,
                  command=command,
                  timeout=lambda c: 3.0 if modes.get(c.name) == "hang" else 600.0)
    # An earlier run's results in the same directory do not count for a cell that crashes.
    (tmp_path / "cells/6.12").mkdir(parents=True)
    (tmp_path / "cells/6.12/results.json").write_text(json.dumps(cell_doc(("boot", "PASS"))))
    doc = s.run()
    assert doc == json.loads((tmp_path / "results.json").read_text())
    status = {c["name"]: c["status"] for c in doc["matrix"]["cells"]}
    # README "Statuses": a cell killed (here past its timeout) never ran: MISS
    assert status == {"6.1": "PASS", "6.1-iommu": "MISS", "6.12": "ERROR",
                      "6.12-iommu": "PASS", "7.2": "ERROR", "7.2-iommu": "ERROR"}
    tests = {t["path"]: t for t in doc["tests"]}

    hung = tests["6.1-iommu.run"]
    assert hung["status"] == "MISS"
    assert hung["log_excerpt"].startswith("killed after ")
    assert "the cell's timeout (3s, from its timeouts) passed" in hung["log_excerpt"]
    assert tests["6.1-iommu.smoke"]["status"] == "MISS"
    # The cell's own child (its QEMU) went with it.
    assert not alive(int((tmp_path / "cells/6.1-iommu/child.pid").read_text()))

    crashed = tests["6.12.run"]
    assert crashed["status"] == "ERROR"
    assert "exited with status 3" in crashed["log_excerpt"]
    assert "cell crashes: Traceback" in crashed["log_excerpt"]
    assert crashed["output_files"] == ["cells/6.12/cell.log"]

    built = tests["7.2.build"]
    assert built["status"] == "ERROR"
    assert "kernel 7.2: make failed" in built["log_excerpt"]
    assert "build/7.2/kernel.log" in built["output_files"]
    assert tests["7.2-iommu.hmm-tests"]["status"] == "MISS"
    assert "the 7.2 build failed" in tests["7.2-iommu.hmm-tests"]["log_excerpt"]

    assert tests["6.1.smoke.copy"]["output_files"] == ["cells/6.1/console.log"]
    assert doc["summary"]["exit_status"] == 2
    assert doc["environment"]["builds"]["7.2"]["status"] == "ERROR"
    assert (tmp_path / "cells/6.1/cell.yaml").read_text() == m.cell("6.1").text
    assert (tmp_path / "cells/6.1/cell.log").read_text().strip() == "cell passed"
    assert (tmp_path / "matrix.yaml").read_text() == m.text
    assert (tmp_path / "build/6.1/artifacts.json").exists()
    # harness.report.report read the merged results: the MISS entries are JUnit errors.
    junit = (tmp_path / "junit.xml").read_text()
    assert 'name="6.1-iommu"' in junit and "not run" in junit
    assert (tmp_path / "index.html").exists()


EVERYTHING_EXCLUDED = """
    axes:
      kernel: ["6.1", "6.12"]
    exclude: [{kernel: "6.1"}, {kernel: "6.12"}]
    base: {scenarios: [smoke]}
"""


def test_a_matrix_without_cells_is_not_a_pass() -> None:
    m = load(EVERYTHING_EXCLUDED)
    assert m.cells == ()
    s = merge(m, [], {})["summary"]
    assert s["exit_status"] == 2
    assert s["reason"] == ("the matrix has no cells after exclude (all 2 combinations of its "
                           "axes dropped)")


def test_a_cell_that_only_skipped_is_not_a_pass() -> None:
    m = load(TWO)
    o = outcome(m.cells[0], cell_doc(("hmm-tests", "SKIP"), ("smoke", "SKIP")))
    doc = merge(m, [o], {})
    assert (doc["summary"]["exit_status"], doc["summary"]["reason"]) == (
        2, "every test was skipped (2 SKIP)")
    assert table(doc).splitlines()[-1] == "exit status 2: every test was skipped (2 SKIP)"


def test_hmmlab_run_of_a_matrix_without_cells_exits_2_and_says_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(textwrap.dedent(EVERYTHING_EXCLUDED))
    out = tmp_path / "results"
    assert cli.main(["run", str(path), "--results", str(out)]) == 2
    said = capsys.readouterr().out
    assert "exit status 2: the matrix has no cells after exclude" in said
    doc = json.loads((out / "results.json").read_text())
    assert doc["summary"]["exit_status"] == 2
    assert doc["summary"]["reason"].startswith("the matrix has no cells after exclude")
    assert (out / "index.html").exists()  # the report copes with no cells


def test_a_cell_stopped_by_sigterm_is_miss(tmp_path: Path) -> None:
    m = load("""
        axes:
          kernel: ["6.12"]
        base: {scenarios: [smoke]}
    """)

    def command(cell: Cell, cell_dir: Path, artifacts: Path) -> list[str]:
        return [sys.executable, "-c", FAKE_CELL, str(cell_dir), "term"]

    doc = Scheduler(m, m.cells, tmp_path, jobs=1, jobs_reason="test", build=fake_artifacts,
                    command=command, timeout=lambda c: 60.0).run()
    tests = {t["path"]: t["status"] for t in doc["tests"]}
    # interrupted (SIGTERM, Ctrl-C): never ran, not a harness crash
    assert tests == {"6.12.run": "MISS", "6.12.smoke": "MISS"}
    assert doc["summary"]["exit_status"] == 2

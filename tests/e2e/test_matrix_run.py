"""End to end: `hmmlab run MATRIX.yaml` boots real guests, one process per cell.

Small matrices of the 6.12 kernel with the smoke scenario: both cells pass
and the merged results.json joins them; a cell whose QEMU cannot start
ERRORs while the other passes, and --rerun-failed runs only that one; a cell
past its timeout is killed, QEMU included, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from procs import qemus_under

from harness.build import Artifacts

REPO = Path(__file__).resolve().parents[2]
HMMLAB_TIMEOUT = 900
# above the CLI's own timeout, so that one fires first with its output
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(HMMLAB_TIMEOUT + 300)]


def hmmlab(*args: str) -> tuple[int, str, float]:
    """Run the real CLI; (exit status, its output, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=HMMLAB_TIMEOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    took = time.monotonic() - t0
    print(p.stdout)
    print(f"hmmlab {' '.join(args)}: exit {p.returncode} in {took:.1f}s")
    return p.returncode, p.stdout, took


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def results(d: Path) -> dict[str, Any]:
    return json.loads((d / "results.json").read_text())


def why(doc: dict[str, Any]) -> str:
    bad = [t for t in doc["tests"] if t["status"] not in ("PASS", "SKIP")]
    return "\n".join(f"{t['path']}: {t['status']}: {t['log_excerpt'][-800:]}" for t in bad)



def test_two_cells_pass_and_merge(artifacts: Artifacts, tmp_path: Path) -> None:
    m = write(tmp_path / "two.yaml", """
        axes:
          kernel: ["6.12"]
          iommu: ["off", intel-iommu]
        base:
          scenarios: [smoke]
    """)
    out_dir = tmp_path / "results"
    code, out, took = hmmlab("run", str(m), "--results", str(out_dir))
    doc = results(out_dir)
    assert code == 0, why(doc)
    assert "cell 6.12: started" in out and "cell 6.12-iommu: PASS in" in out
    assert doc["version"] == 2 and doc["kind"] == "matrix"
    assert doc["matrix"]["source"] == str(m)
    assert doc["matrix"]["varying"] == ["iommu"]
    cells = {c["name"]: c for c in doc["matrix"]["cells"]}
    assert list(cells) == ["6.12", "6.12-iommu"]
    for name, cell in cells.items():
        d = out_dir / cell["dir"]
        assert cell["dir"] == f"cells/{name}"
        assert cell["status"] == "PASS" and cell["kernel"] == "6.12"
        assert cell["kernel_release"].startswith("6.12")
        assert cell["summary"]["PASS"] > 5 and cell["exit_status"] == 0
        own = results(d)
        assert own["config"]["iommu"] == cell["axes"]["iommu"]
        assert "hmmlab: ready" in (d / "console.log").read_text(errors="replace")
        assert (d / "cell.yaml").exists() and (d / "cell.log").exists()
        paths = [t["path"] for t in doc["tests"] if t["cell"] == name]
        assert paths == [f"{name}.{t['path']}" for t in own["tests"]]
        # where the cell's time went: the guest, smoke's trace check after it, the timeline
        t = own["timings"]
        assert t["checks_by"].keys() == {"smoke"} and t["checks_s"] == t["checks_by"]["smoke"]
        assert min(t["checks_s"], t["timeline_s"], t["guest_s"]) > 0
        assert t["guest_s"] + t["checks_s"] + t["timeline_s"] <= t["wall_s"]
    boot = next(t for t in doc["tests"] if t["path"] == "6.12-iommu.boot")
    assert boot["output_files"] == ["cells/6.12-iommu/console.log"]
    assert all((out_dir / f).exists() for t in doc["tests"] for f in t["output_files"])
    assert doc["summary"]["cells"]["PASS"] == 2 and doc["summary"]["exit_status"] == 0
    assert doc["environment"]["builds"]["6.12"]["status"] == "PASS"
    assert (out_dir / "run.log").stat().st_size > 0
    # The reports made from it (harness.report.report): JUnit for CI, a page for people.
    assert "6.12-iommu" in (out_dir / "index.html").read_text()
    assert 'name="6.12-iommu"' in (out_dir / "junit.xml").read_text()
    print(f"two-cell matrix: {took:.1f}s wall, cells "
          + ", ".join(f"{n} {c['duration']:.1f}s" for n, c in cells.items()))


def test_a_failing_cell_does_not_stop_the_other(artifacts: Artifacts, tmp_path: Path) -> None:
    m = write(tmp_path / "broken.yaml", """
        axes:
          kernel: ["6.12"]
          devices:
            good: [{type: hmm-gpu}]
            broken: [{type: hmm-gpu, props: {vram-size: lots}}]   # QEMU refuses it
        base:
          scenarios: [smoke]
    """)
    first = tmp_path / "first"
    code, _out, _t = hmmlab("run", str(m), "--results", str(first), "-j", "2")
    doc = results(first)
    status = {c["name"]: c["status"] for c in doc["matrix"]["cells"]}
    assert status == {"6.12": "PASS", "6.12-broken": "ERROR"}, why(doc)
    assert code == 2
    tests = {t["path"]: t for t in doc["tests"]}
    assert tests["6.12-broken.boot"]["status"] == "ERROR"
    assert "vram-size" in tests["6.12-broken.boot"]["log_excerpt"]
    assert tests["6.12.smoke.copy"]["status"] == "PASS"

    again = tmp_path / "again"
    code, _out, _t = hmmlab("run", "--rerun-failed", str(first), "--results", str(again))
    doc = results(again)
    assert code == 2
    assert [c["name"] for c in doc["matrix"]["cells"]] == ["6.12-broken"]
    assert doc["matrix"]["rerun_of"] == str(first)
    assert not (again / "cells" / "6.12").exists()


def test_a_cell_past_its_timeout_is_killed_with_its_qemu(artifacts: Artifacts,
                                                        tmp_path: Path) -> None:
    m = write(tmp_path / "slow.yaml", """
        axes:
          kernel: ["6.12"]
        base:
          scenarios: [smoke, hmm-tests]
    """)
    out_dir = tmp_path / "results"
    code, _out, _took = hmmlab("run", str(m), "--results", str(out_dir), "--cell-timeout", "5")
    doc = results(out_dir)
    assert code == 2
    tests = {t["path"]: t for t in doc["tests"]}
    run = tests["6.12.run"]
    assert run["status"] == "MISS", why(doc)
    # the scheduler's kill at the 5 s given, not the cell's own end, stopped it
    assert run["log_excerpt"].startswith("killed after ")
    assert "the cell's timeout (5s, from its timeouts) passed" in run["log_excerpt"]
    # hmm-tests was cut short (what it had done is kept) or never started (MISS).
    assert (tests.get("6.12.hmm-tests", {}).get("status") == "MISS"
            or any(p.startswith("6.12.hmm-tests.") for p in tests))
    # what ran before the kill keeps its status; the kill itself is MISS
    assert doc["matrix"]["cells"][0]["status"] in ("MISS", "FAIL", "ERROR")
    assert qemus_under(out_dir) == []


def test_an_interrupted_matrix_still_writes_its_results(artifacts: Artifacts,
                                                        tmp_path: Path) -> None:
    m = write(tmp_path / "two.yaml", """
        axes:
          kernel: ["6.12"]
          iommu: ["off", intel-iommu]
        base:
          scenarios: [smoke, hmm-tests]
    """)
    out_dir = tmp_path / "results"
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(m), "--results",
                          str(out_dir), "-j", "1"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout is not None
    seen = []
    for line in p.stdout:  # wait for the first cell's guest to be up
        seen.append(line)
        if "cell 6.12: started" in line:
            break
    deadline = time.monotonic() + 300
    while not qemus_under(out_dir):  # the cell's QEMU runs: the interrupt must end it too
        assert time.monotonic() < deadline, "the first cell's QEMU never started"
        time.sleep(0.2)
    p.terminate()  # what a CI job's timeout does
    rest, _ = p.communicate(timeout=120)
    print("".join(seen) + rest)
    assert p.returncode == 2
    doc = results(out_dir)
    assert doc["environment"]["interrupted"] is True
    cells = {c["name"]: c for c in doc["matrix"]["cells"]}
    assert cells["6.12"]["status"] in ("MISS", "FAIL", "ERROR")
    assert cells["6.12-iommu"]["status"] == "MISS"
    tests = {t["path"]: t for t in doc["tests"]}
    assert tests["6.12.run"]["status"] == "MISS"
    assert "interrupted" in tests["6.12.run"]["log_excerpt"]
    assert "before this cell started" in tests["6.12-iommu.run"]["log_excerpt"]
    assert tests["6.12-iommu.smoke"]["status"] == "MISS"
    assert qemus_under(out_dir) == []


def test_a_kernel_that_does_not_build_makes_its_cells_error(artifacts: Artifacts,
                                                            tmp_path: Path) -> None:
    m = write(tmp_path / "two.yaml", """
        axes:
          kernel: ["6.12"]
          iommu: ["off", intel-iommu]
        base:
          scenarios: [smoke]
    """)
    out_dir = tmp_path / "results"
    missing = tmp_path / "no-such-tree"
    code, _out, _t = hmmlab("run", str(m), "--kernel-tree", str(missing), "--results",
                            str(out_dir))
    doc = results(out_dir)
    assert code == 2
    assert [c["name"] for c in doc["matrix"]["cells"]] == ["no-such-tree",
                                                           "no-such-tree-iommu"]
    assert all(c["status"] == "ERROR" and c["kernel"] == f"tree:{missing}"
               for c in doc["matrix"]["cells"])
    tests = {t["path"]: t for t in doc["tests"]}
    build = tests["no-such-tree.build"]
    assert build["status"] == "ERROR" and str(missing) in build["log_excerpt"]
    assert "run.log" in build["output_files"]
    assert tests["no-such-tree-iommu.smoke"]["status"] == "MISS"
    assert doc["environment"]["builds"]["tree-no-such-tree"]["status"] == "ERROR"
    assert not list((out_dir / "cells").glob("*/console.log"))  # no guest was booted

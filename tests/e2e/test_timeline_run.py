"""End to end: a run writes timeline.pftrace, and it decodes into the run.

One hmm-gpu, smoke and svm-mirror (whose workloads make the device fault).
The test decodes the
timeline with Perfetto's protos and checks: the scenarios' slices are there,
the device's faults lie inside svm-mirror's slice on the virtual clock, and
each fault has a flow to the replay that released it. It prints how far the
first and last device event of each scenario lie from its edges: the bound
on how well the harness's times line up with the device's (see README).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from timeline_events import decode, slices

from harness.build import Artifacts
from harness.checks.dmatrace import Kind, read_kinds
from harness.core import config
from harness.core.results import Results
from harness.report import timeline
from harness.run import runner

pytestmark = pytest.mark.e2e

RUN = """\
devices:
  - type: hmm-gpu
scenarios: [smoke, svm-mirror]
"""


@pytest.fixture(scope="module")
def run(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Results:
    d = tmp_path_factory.mktemp("e2e")
    (d / "run.yaml").write_text(RUN)
    res = runner.run(config.load(d / "run.yaml"), d / "results", artifacts=artifacts)
    print(f"results: {res.dir}")
    print(res.table())
    return res


def test_the_run_writes_a_timeline_that_decodes_into_its_scenarios_and_faults(
        run: Results) -> None:
    assert run.exit_code() == 0, run.failures()
    path = run.dir / timeline.FILE_NAME
    assert path.is_file()
    env = json.loads((run.dir / "results.json").read_text())["environment"]["timeline"]
    assert env["bytes"] == path.stat().st_size and env["seconds"] > 0
    print("timeline:", env)

    tl = decode(path)
    spans = {b.name: (b.ts, end) for b, end in slices(tl.events)
             if b.track in ("scenarios", "run")}
    assert {"boot", "smoke", "svm-mirror"} <= spans.keys(), spans
    assert spans["boot"][1] <= spans["smoke"][0] < spans["smoke"][1] <= spans["svm-mirror"][0]

    trace = run.dir / "dmatrace-0.bin"
    faults = read_kinds(trace, [Kind.FAULT_WRITE])
    assert faults, "svm-mirror made the device fault"
    lo, hi = spans["svm-mirror"]
    assert all(lo <= f.timestamp_ns <= hi for f in faults)

    drawn = [(b, end) for b, end in slices(tl.events) if b.name == "fault"]
    assert len(drawn) == len(faults)
    for b, end in drawn:
        [flow] = b.flows
        release = [e for e in tl.events if flow in e.flows + e.ends_flows
                   and e.name in ("replay", "cancel")]
        assert len(release) == 1 and release[0].ts == end >= b.ts

    # alignment: each scenario's device activity against its edges
    cmds = read_kinds(trace, [Kind.CMD_FETCH, Kind.CPL_WRITE])
    for name in ("smoke", "svm-mirror"):
        s, e = spans[name]
        inside = [r.timestamp_ns for r in cmds if s <= r.timestamp_ns <= e]
        assert inside, name
        print(f"{name}: first device command {(inside[0] - s) / 1e6:.3f} ms after the "
              f"scenario's start, last {(e - inside[-1]) / 1e6:.3f} ms before its end")
    # nothing the device did after boot falls outside the scenarios (no misplaced edges)
    after_boot = [r.timestamp_ns for r in cmds if r.timestamp_ns > spans["boot"][1]]
    assert all(any(s <= t <= e for s, e in spans.values()) for t in after_boot)


def test_timeline_false_writes_none(artifacts: Artifacts, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("devices:\n  - type: hmm-gpu\nscenarios: [smoke]\n"
                                       "timeline: false\n")
    res = runner.run(config.load(tmp_path / "run.yaml"), tmp_path / "results",
                     artifacts=artifacts)
    assert res.exit_code() == 0, res.failures()
    assert (res.dir / "dmatrace-0.bin").is_file()
    assert not (res.dir / timeline.FILE_NAME).exists()
    assert "timeline" not in res.environment

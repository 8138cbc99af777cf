"""``bench-svm``: hmm-bench against hmm_gpu.ko and test_hmm.ko, round after round.

Not a test: it measures (mirror faults and bandwidth on 4 KiB and on THP
memory, one fault's round trip, migration bandwidth system -> device memory
-> system, the CPU fault-back of a migrated page). The same static binary
(the test_hmm "dmirror" uAPI only) runs, in each of ``rounds`` rounds, first
against our driver, then, after ``rmmod hmm_gpu``, against the kernel's
lib/test_hmm.ko: the two drivers take turns in the same guest, so a
disturbance of the shared machine hits both alike.

Per metric and driver the figures are the median over the rounds with their
min and max; the ratio (hmm-gpu / test_hmm) is the ratio of the medians,
with the min and max of the rounds' own ratios. Metrics the project tracks
have a target ratio and say whether the median meets it (:data:`METRICS`).

Entries ``bench.round<N>.<driver>.load`` and ``bench.round<N>.<driver>`` say
whether each measurement was taken; the figures (and every round's raw
hmm-bench JSON) go to ``bench.json`` in the results directory and to
``results.json`` (``tables["bench-svm"]``).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.config import DEFAULT_ROUNDS
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import (
    add_cmd_result,
    bench_rounds,
    guest_run,
    load_module,
    unload_module,
)
from harness.scenarios.hmm_tests import DRIVERS, HMM_GPU, NODES, TEST_HMM, Driver, HmmTests
from harness.scenarios.smoke import parse_workload_output

log = logging.getLogger(__name__)

BENCH = "/opt/hmmlab/bin/hmm-bench"
BENCH_DRIVERS = (HMM_GPU, TEST_HMM)  # measured, compared: first / second


@dataclass(frozen=True)
class Metric:
    key: str  # in hmm-bench's JSON
    label: str
    unit: str
    higher_is_better: bool
    # what the project tracks: the ratio of the medians (hmm-gpu / test_hmm) must
    # be at least this (higher is better) or at most this (lower is better)
    target: float | None = None

    def meets(self, ratio: float | None) -> bool | None:
        if self.target is None or ratio is None:
            return None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='}{self.target:.2f}x"


METRICS: tuple[Metric, ...] = (
    Metric("fault_pages_per_s", "pages faulted+mapped", "pages/s", True),
    Metric("read_MBps", "READ, mirrored", "MB/s", True),
    Metric("write_MBps", "WRITE, mirrored", "MB/s", True),
    Metric("thp_fault_pages_per_s", "pages faulted+mapped, THP", "pages/s", True),
    Metric("thp_read_MBps", "READ, mirrored, THP", "MB/s", True),
    Metric("thp_write_MBps", "WRITE, mirrored, THP", "MB/s", True),
    Metric("fault_latency_us", "fault round trip", "us", False, 1.5),
    Metric("migrate_to_dev_MBps", "migrate system->device", "MB/s", True),
    Metric("migrate_to_sys_MBps", "migrate device->system", "MB/s", True),
    # the target: a round trip's bandwidth (how the issue measured it), not each leg's
    Metric("migrate_MBps", "migrate, both directions", "MB/s", True, 2.0),
    Metric("cpu_fault_us", "CPU fault-back", "us", False, 1.5),
)

# One round: driver label -> its hmm-bench JSON line, or None when not measured.
Round = Mapping[str, Mapping[str, Any] | None]


def _value(obj: Mapping[str, Any] | None, key: str) -> float | None:
    v = obj.get(key) if obj else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {"median": statistics.median(got) if got else None,
            "min": min(got) if got else None, "max": max(got) if got else None,
            "values": list(values)}


def figures(rounds: Sequence[Round], metrics: Sequence[Metric] = METRICS,
            columns: Sequence[str] | None = None, what: str = "hmm-bench") -> dict[str, Any]:
    """bench.json's content from each round's hmm-bench JSON lines.

    Per metric and driver: the median, min and max over the rounds (and each
    round's value, None where it was not measured). ``ratio``: the ratio of the
    two medians; ``ratio_min``/``ratio_max``: the spread of the rounds' own
    ratios (rounds that measured both drivers).
    """
    first, second = columns or [d.label for d in BENCH_DRIVERS]
    rows = []
    for m in metrics:
        a = [_value(r.get(first), m.key) for r in rounds]
        b = [_value(r.get(second), m.key) for r in rounds]
        row: dict[str, Any] = {"metric": m.key, "label": m.label, "unit": m.unit,
                               "higher_is_better": m.higher_is_better,
                               first: _spread(a), second: _spread(b)}
        ma, mb = row[first]["median"], row[second]["median"]
        ratio = ma / mb if ma is not None and mb else None
        per_round = [x / y if x is not None and y else None for x, y in zip(a, b, strict=True)]
        spread = _spread(per_round)
        row.update({
            "ratio": ratio,
            "ratio_min": spread["min"], "ratio_max": spread["max"], "ratios": per_round,
            "target": ({"ratio": m.target, "at_least": m.higher_is_better}
                       if m.target is not None else None),
            "meets_target": m.meets(ratio),
            "target_text": m.target_text(),
        })
        rows.append(row)
    notes = sorted({str(obj["thp_note"]) for r in rounds for obj in r.values()
                    if obj and obj.get("thp_note")})
    return {"rounds": len(rounds), "columns": [first, second], "ratio": f"{first} / {second}",
            "what": what,
            "rows": rows, "notes": notes,
            "raw": [{"round": i + 1, **{k: (dict(v) if v else None) for k, v in r.items()}}
                    for i, r in enumerate(rounds)]}


def complete(fig: Mapping[str, Any]) -> bool:
    """Whether every round measured both drivers."""
    return bool(fig["raw"]) and all(r.get(c) for r in fig["raw"] for c in fig["columns"])


def _num(v: float | None, decimals: int) -> str:
    return "-" if v is None else f"{v:,.{decimals}f}"


def _decimals(spread: Mapping[str, Any]) -> int:
    """One decimal for small figures (latencies in us), none for large ones; the same
    for a median and its min and max."""
    top = max((abs(v) for v in (spread["median"], spread["max"]) if v is not None), default=0)
    return 1 if top < 100 else 0


def _spread_text(spread: Mapping[str, Any]) -> str:
    if spread["median"] is None:
        return "-"
    n = _decimals(spread)
    return (f"{_num(spread['median'], n)} "
            f"({_num(spread['min'], n)}-{_num(spread['max'], n)})")


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_figures(fig: Mapping[str, Any]) -> str:
    """The table ``hmmlab bench svm`` prints: median (min-max) per driver, the ratio of
    the medians (min-max of the rounds' ratios), the target and whether it is met."""
    cols = fig["columns"]
    table = [["metric", "unit", *(f"{c} median (min-max)" for c in cols),
              "ratio (min-max)", "target", "met"]]
    for r in fig["rows"]:
        met = r.get("meets_target")
        table.append([
            r["label"], r["unit"],
            *(_spread_text(r[c]) for c in cols),
            f"{_ratio(r['ratio'])} ({_ratio(r['ratio_min'])}-{_ratio(r['ratio_max'])})"
            if r["ratio"] is not None else "-",
            r.get("target_text", "-"),
            "-" if met is None else ("yes" if met else "NO"),
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {2, 3, 4}  # numbers
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    tracked = [r for r in fig["rows"] if r.get("target")]
    met = sum(1 for r in tracked if r.get("meets_target"))
    n = fig["rounds"]
    lines.append(f"{n} round{'s' if n != 1 else ''}, each {fig.get('what', 'hmm-bench')} on "
                 f"{cols[0]} then on "
                 f"{cols[1]} in the same guest; ratio = {fig['ratio']} of the medians "
                 "(min-max of the rounds' ratios)")
    lines.append(f"targets met: {met} of {len(tracked)}")
    lines += [f"note: {n}" for n in fig.get("notes", [])]
    return "\n".join(lines)


class BenchSvm:
    name = "bench-svm"
    args = "-s 64 -n 200 -r 4"

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        self.rounds = bench_rounds("bench-svm", rounds)

    def run(self, s: Session) -> None:
        rounds: list[dict[str, dict[str, Any] | None]] = []
        for i in range(1, self.rounds + 1):
            rounds.append({d.label: self._measure(s, i, d) for d in BENCH_DRIVERS})
        HmmTests.restore(s)
        fig = figures(rounds)
        s.results.tables["bench-svm"] = fig
        (s.run_dir / "bench.json").write_text(json.dumps(fig, indent=2) + "\n")
        # run.log only: `hmmlab bench` prints the table itself, once
        log.debug("bench svm:\n%s", format_figures(fig))

    def _measure(self, s: Session, i: int, d: Driver) -> dict[str, Any] | None:
        path = f"bench.round{i}.{d.label}"
        for module in dict.fromkeys(x.module for x in DRIVERS):
            unload_module(s, module)
        c = load_module(s, d.ko, d.module, NODES[:1], args=d.insmod_args)
        if not add_cmd_result(s, f"{path}.load", c):
            s.results.add_status(path, Status.SKIP, f"not measured: {path}.load did not pass")
            return None
        run = guest_run(s, f"{BENCH} -d {NODES[0]} {self.args}", s.cfg.timeouts.scenario)
        objs, _ = parse_workload_output(run.out)
        obj = objs[-1] if objs else {}
        ok = obj.get("ok") is True and not run.error
        status = Status.PASS if ok else (run.status_if_error if run.error else Status.FAIL)
        s.results.add(TestResult(path, status, run.seconds, run.text(), extra={"data": obj}))
        unload_module(s, d.module)
        return obj if ok else None

    def finish(self, s: Session) -> None:
        return None


def make() -> BenchSvm:
    return BenchSvm()

"""``bench-svm``: hmm-bench against hmm_gpu.ko and test_hmm.ko in one guest.

Not a test: it measures (mirror faults and bandwidth, migration bandwidth
system -> device memory -> system, the CPU fault-back of a migrated page).
The same static binary (the test_hmm "dmirror" uAPI only) runs against
our driver, then, after ``rmmod hmm_gpu``, against the kernel's
lib/test_hmm.ko. Entries ``bench.<driver>`` say whether a
measurement was taken; the figures go to ``bench.json`` in the results
directory and to ``results.json`` (``tables["bench-svm"]``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from harness.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import (
    BIN,
    HMM_GPU_KO,
    add_cmd_result,
    guest_run,
    load_module,
    unload_module,
)
from harness.scenarios.hmm_tests import HMM_GPU, NODES, TEST_HMM
from harness.scenarios.smoke import parse_workload_output

log = logging.getLogger(__name__)

DRIVERS = (HMM_GPU, TEST_HMM)  # measured side by side (not hmm-tests' devfault column)

BENCH = f"{BIN}/hmm-bench"
# metric key in hmm-bench's JSON -> (label, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "fault_pages_per_s": ("pages faulted+mapped", "pages/s", True),
    "read_MBps": ("READ, mirrored", "MB/s", True),
    "write_MBps": ("WRITE, mirrored", "MB/s", True),
    "fault_latency_us": ("fault round trip (median)", "us", False),
    "migrate_to_dev_MBps": ("migrate system->device", "MB/s", True),
    "migrate_to_sys_MBps": ("migrate device->system", "MB/s", True),
    "migrate_MBps": ("migrate, both directions", "MB/s", True),
    "cpu_fault_us": ("CPU fault-back (median)", "us", False),
}


def figures(per_driver: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """bench.json's content from each driver's hmm-bench JSON line."""
    cols = [d.label for d in DRIVERS]
    rows = []
    for key, (label, unit, higher) in METRICS.items():
        row: dict[str, Any] = {"metric": key, "label": label, "unit": unit,
                               "higher_is_better": higher}
        for c in cols:
            v = per_driver.get(c, {}).get(key)
            row[c] = float(v) if isinstance(v, int | float) else None
        a, b = row[cols[0]], row[cols[1]]
        row["ratio"] = round(a / b, 3) if a is not None and b else None
        rows.append(row)
    return {"columns": cols, "ratio": f"{cols[0]} / {cols[1]}", "rows": rows,
            "raw": per_driver}


def format_figures(fig: dict[str, Any]) -> str:
    cols = fig["columns"]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"

    lines = [f"{'metric':<28} {'unit':<8} " + " ".join(f"{c:>12}" for c in cols)
             + f" {'ratio':>8}"]
    for r in fig["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"{r['label']:<28} {r['unit']:<8} "
                     + " ".join(f"{num(r[c]):>12}" for c in cols) + f" {ratio:>8}")
    lines.append(f"ratio = {fig['ratio']}")
    return "\n".join(lines)


class BenchSvm:
    name = "bench-svm"
    args = "-s 64 -n 200 -r 4"

    def run(self, s: Session) -> None:
        per_driver: dict[str, dict[str, Any]] = {}
        for d in DRIVERS:
            for x in DRIVERS:
                if x is not d:
                    unload_module(s, x.module)
            c = load_module(s, d.ko, d.module, NODES[:1])
            if not add_cmd_result(s, f"bench.{d.label}.load", c):
                continue
            run = guest_run(s, f"{BENCH} -d {NODES[0]} {self.args}", s.cfg.timeouts.scenario)
            objs, _ = parse_workload_output(run.out)
            obj = objs[-1] if objs else {}
            ok = obj.get("ok") is True and not run.error
            if ok:
                per_driver[d.label] = obj
            status = Status.PASS if ok else (run.status_if_error if run.error else Status.FAIL)
            s.results.add(TestResult(f"bench.{d.label}", status, run.seconds, run.text(),
                                     extra={"data": obj}))
            unload_module(s, d.module)
        load_module(s, HMM_GPU_KO, "hmm_gpu", ("/dev/hmm_gpu0",))
        fig = figures(per_driver)
        s.results.tables["bench-svm"] = fig
        (s.run_dir / "bench.json").write_text(json.dumps(fig, indent=2) + "\n")
        log.info("bench svm:\n%s", format_figures(fig))

    def finish(self, s: Session) -> None:
        return None


def make() -> BenchSvm:
    return BenchSvm()

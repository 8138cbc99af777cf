"""Benchmark (figures, not a test) of trace decoding and checking, old path vs new.

    python -m harness.run.bench_trace [--runs N] [--old-max-mb M] FILE...

Per file and path, ``--runs`` times in a fresh child process: decode the trace and
run what a cell runs over it (the summary, the stale-translation audit, the VRAM
lifetime audit). The new path is the scenarios' :func:`~harness.checks.dmatrace.check_file`:
the file streamed frame by frame through the checks; "whole" decodes the whole trace
into memory first (``read_trace``, what the trace queries and plots use) and runs
the same checks over it. Printed: records/s (median, min-max), the child's peak RSS
(ru_maxrss less the RSS after the imports; it counts the pages of the mapped file
the new path touched) and, for
the new path, its peak heap (tracemalloc: numpy's arrays and the audits' tables),
both against the file's size. The old path (``tests/dmatrace_ref.py`` of the
checkout, the record-at-a-time decoder the tests use as their oracle) needs several
times the file's size of memory; it is skipped for files over ``--old-max-mb``, and
where there is no checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import tracefile

# the decoder before the rewrite, kept in the checkout's tests as the equivalence oracle
OLD = Path(__file__).resolve().parents[2] / "tests" / "dmatrace_ref.py"
TARGET_RATE = 20e6  # records/s, issue 12
CHILD_TIMEOUT = 3600  # s: the old path on a 200 MB trace takes minutes


def _child(path: Path, which: str, heap: bool) -> dict[str, Any]:
    """One decode + check pass, in this (fresh) process."""
    if which in ("new", "whole"):
        from harness.checks import dmatrace as mod
    else:
        spec = importlib.util.spec_from_file_location("dmatrace_ref", OLD)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclasses look their module up there
        spec.loader.exec_module(mod)
    # the interpreter and its imports are not the work's: measured from here
    base = _rss_now()
    if heap:
        tracemalloc.start()
    t0 = time.perf_counter()
    if which == "new":  # what the scenarios run: streamed, the trace never whole
        res = mod.check_file(path)
        t1 = time.perf_counter()
        assert res.invalidations is not None and res.vram is not None
        return {"seconds": t1 - t0, "records": res.summary.records,
                "phases": {"streamed": t1 - t0},
                "problems": res.invalidations.problem_count + res.vram.problem_count,
                "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base,
                "heap_peak": tracemalloc.get_traced_memory()[1] if heap else None,
                "checks_heap": tracemalloc.get_traced_memory()[1] if heap else None}
    if which == "whole":
        trace = mod.read_trace(path)
    else:  # the old decoder read raw files only: the frames decoded for it, timed with it
        trace = mod.decode(tracefile.read_bytes(path), mod.device_of(path))
    t1 = time.perf_counter()
    # what the checks hold at once beyond the decoded trace
    held = tracemalloc.get_traced_memory()[0] if heap else 0
    if heap:
        tracemalloc.reset_peak()
    mod.summarize(trace)
    t2 = time.perf_counter()
    if hasattr(mod, "audit"):  # both audits in one pass, as svm-race runs them
        inv, vram = mod.audit(trace.records)
        assert inv is not None and vram is not None
    else:
        inv = mod.check_invalidations(trace.records)
        vram = mod.check_vram_lifetime(trace.records)
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "records": len(trace.records),
            "phases": {"decode": t1 - t0, "summary": t2 - t1, "audits": t3 - t2},
            "problems": inv.problem_count + vram.problem_count,
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base,
            "heap_peak": tracemalloc.get_traced_memory()[1] if heap else None,
            "checks_heap": tracemalloc.get_traced_memory()[1] - held if heap else None}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run_child(path: Path, which: str, heap: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "harness.run.bench_trace", "--child", which, str(path)]
    if heap:
        cmd.append("--heap")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    return dict(json.loads(out.stdout.splitlines()[-1]))


@dataclass
class Figures:
    which: str
    rates: list[float]  # records/s per run
    maxrss: list[int]
    heap: list[int]
    records: int
    problems: int
    phases: list[dict[str, float]] = field(default_factory=list)  # seconds per run
    checks_heap: list[int] = field(default_factory=list)  # heap peak of the checks alone

    def line(self, size: int, decoded: int = 0) -> str:
        med = statistics.median(self.rates)
        text = (f"  {self.which}: {med / 1e6:7.2f} M records/s "
                f"({min(self.rates) / 1e6:.2f}-{max(self.rates) / 1e6:.2f}, "
                f"{len(self.rates)} runs), peak RSS +{statistics.median(self.maxrss) / 2**20:7.1f} "
                f"MiB = {statistics.median(self.maxrss) / size:.2f}x the file")
        if decoded:
            text += f" = {statistics.median(self.maxrss) / decoded:.2f}x the decoded trace"
        if self.heap:
            text += (f", peak heap {statistics.median(self.heap) / 2**20:.1f} MiB = "
                     f"{statistics.median(self.heap) / size:.2f}x")
        if self.phases:
            text += "\n    median s: " + ", ".join(
                f"{k} {statistics.median(p[k] for p in self.phases):.3f}" for k in self.phases[0])
        if self.checks_heap and decoded:
            peak = statistics.median(self.checks_heap)
            text += (f"\n    the checks' own peak heap {peak / 2**20:.1f} MiB = "
                     f"{peak / decoded:.2f}x the decoded trace ({decoded / 2**20:.1f} MiB; "
                     "target <= 1x)")
        return text


def measure(path: Path, which: str, runs: int) -> Figures:
    rates, rss, heap, phases, checks_heap = [], [], [], [], []
    rec = problems = 0
    for _ in range(runs):
        r = _run_child(path, which, heap=False)
        rates.append(r["records"] / r["seconds"])
        rss.append(r["maxrss"])
        phases.append(r["phases"])
        rec, problems = r["records"], r["problems"]
    if which != "old":  # tracemalloc slows the old path down many times
        r = _run_child(path, which, heap=True)
        heap.append(r["heap_peak"])
        checks_heap.append(r["checks_heap"])
    return Figures(which, rates, rss, heap, rec, problems, phases, checks_heap)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--old-max-mb", type=float, default=200)
    ap.add_argument("--child", choices=("old", "new", "whole"), help=argparse.SUPPRESS)
    ap.add_argument("--heap", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.files[0], args.child, args.heap)))
        return 0
    print(f"decode + summary + stale-translation and VRAM audits, {os.cpu_count()} CPUs; "
          f"target >= {TARGET_RATE / 1e6:.0f} M records/s, the checks' peak memory <= the decoded "
          "trace's size")
    for path in args.files:
        size = path.stat().st_size
        decoded = tracefile.stream_size(path)
        new = measure(path, "new", args.runs)
        print(f"{path} ({size / 2**20:.1f} MiB, {decoded / 2**20:.1f} MiB decoded, "
              f"{new.records} records)")
        print(new.line(size, decoded))
        whole = measure(path, "whole", args.runs)
        print(whole.line(size, decoded))
        print(f"  new/whole: {statistics.median(new.rates) / statistics.median(whole.rates):.2f}x "
              f"the rate, {statistics.median(new.maxrss) / statistics.median(whole.maxrss):.2f}x "
              f"the peak RSS; same problem count: {new.problems == whole.problems}")
        if not OLD.exists():
            print(f"  old: not run (no {OLD}: the benchmark runs from a checkout)")
        elif size <= args.old_max_mb * 2**20:
            old = measure(path, "old", args.runs)
            print(old.line(size))
            print(f"  new/old: {statistics.median(new.rates) / statistics.median(old.rates):.1f}x"
                  f" faster; same problem count: {new.problems == old.problems}")
        else:
            print(f"  old: not run (file over --old-max-mb {args.old_max_mb:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

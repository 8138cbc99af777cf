"""``hmmlab bench trace``: issue 12's five DMA-trace targets, before and after, in one table.

The figures, each next to what it was before the trace work and its target:

- decode + check rate: :mod:`harness.run.bench_trace` on the run's biggest
  hmm-gpu trace: the record-at-a-time decoder and audits the tests keep as
  their oracle (``tests/dmatrace_ref.py``: before) against the shipped ones
  (after), median (min-max) of ``runs`` fresh processes each. The old path
  reads raw streams only and needs several times their size of memory: it
  runs on the trace's first ``old_max_mb`` MB, decoded to a raw file (a rate
  per record, so comparable), and the table says so.
- peak memory of the checks against the trace's size: the same processes'
  peak RSS over the raw stream they read (the new path's peak heap in bench.json).
- on-disk trace: the stream's raw bytes (the format v2 file as the device
  wrote it before compression: before) against the files' bytes (after), over
  the run's traces.
- the 7.2 cell's post-run checks' share of its wall time: from the cell's
  ``timings`` in results.json when the run recorded them; else estimated (the
  ``.dmatrace`` entries' durations over the wall time the benchmark measured
  or the matrix recorded), and the table says which. Before: issue 12's
  "2 of 4 min".
- tracing on against off: the ``bench-trace`` scenario's guest (two hmm-gpus,
  one untraced): the median (min-max) of the rounds' wall-time ratios.

Without ``from_run`` it runs what it needs: a 7.2 guest with the GPU scenarios
(the default run's hmm-gpus and scenarios, as a matrix's 7.2 cell has them)
into ``<results>/cell``, then the on/off guest into ``<results>/onoff``. With
``from_run`` (a run or matrix results directory, or an earlier ``bench trace``
one) the trace figures come from that run's 7.2 cell and only the on/off
guest runs, unless that directory has an ``onoff/bench.json`` already.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.checks import dmatrace, tracefile
from harness.core.config import RunConfig, TimelineConfig
from harness.core.results import EXIT_FAIL, EXIT_INFRA, Results
from harness.report import disk
from harness.run import bench_trace

if TYPE_CHECKING:
    from harness.build import Artifacts

CELL_KERNEL = "7.2"  # the cell whose checks issue 12 timed: hmm-tests' THP benchmark's trace
GPU_SCENARIOS = ("smoke", "hmm-tests", "svm-mirror", "svm-invalidate", "svm-race",
                 "svm-migrate", "vram-pressure", "atomics", "svm-reclaim", "dmirror-edge")
CELL_DIR, ONOFF_DIR = "cell", "onoff"
BENCH_JSON = "bench.json"
OLD_MAX_MB = 200  # of raw stream for the old path (it needs several times that in memory)
GPU_TRACE = re.compile(r"dmatrace-\d+\.bin")

RATE_TARGET = bench_trace.TARGET_RATE  # records/s, at least
MEMORY_TARGET = 1.0  # peak memory / trace size, at most
DISK_TARGET = 0.25  # on disk / raw, at most
CHECKS_TARGET = 0.10  # checks / wall time, at most
ONOFF_TARGET = 1.1  # traced / untraced wall time, at most
# issue 12's starting point: "a 7.2 cell's post-run checks take 2 of its 4 min"
CHECKS_BEFORE: dict[str, Any] = {"checks_s": 120.0, "wall_s": 240.0,
                                 "source": "issue 12: \"2 of 4 min\""}
# before the writer thread (71dea0f) every record went through a write() under the
# big lock; that writer is gone, so there is no before to run. README's qtest figure
# from then (e22ec0a, 64 MiB VA jobs, device alone): +43 % READ_VA, +27 % WRITE_VA time
ONOFF_BEFORE = ("not measurable: the synchronous writer is gone (71dea0f); qtest then "
                "(README, e22ec0a): 1.27-1.43x")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    before: str
    after: str
    target: str
    met: bool | None


# ---- the run's files ----------------------------------------------------------------

def cell_config(cfg: RunConfig) -> RunConfig:
    """``cfg``'s hmm-gpus and GPU scenarios: the GPU part of a matrix cell."""
    return dataclasses.replace(
        cfg, devices=tuple(d for d in cfg.devices if d.type == "hmm-gpu"),
        scenarios=tuple(s for s in cfg.scenarios if s in GPU_SCENARIOS))


def onoff_config(cfg: RunConfig) -> RunConfig:
    """The on/off guest: two hmm-gpus, one untraced, and only the measurement (no
    timeline: nobody reads it, and it would cost the run a pass over the trace)."""
    from harness.scenarios.bench_trace import DEVICES, NAME

    return dataclasses.replace(cfg, devices=DEVICES, scenarios=(NAME,),
                               timeline=TimelineConfig(enabled=False))


def _doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def find_cell(run_dir: Path) -> tuple[Path, float | None]:
    """The 7.2 cell's directory in ``run_dir`` and its wall time if the matrix (or an
    earlier ``bench trace``) recorded one: a matrix's cell named 7.2 (else of kernel
    7.2, else the first), an earlier ``bench trace``'s cell, or a single run itself."""
    doc = _doc(run_dir / "results.json")
    if doc.get("kind") == "matrix":
        cells = [c for c in doc.get("matrix", {}).get("cells", []) if isinstance(c, dict)]
        best = (next((c for c in cells if c.get("name") == CELL_KERNEL), None)
                or next((c for c in cells
                         if c.get("axes", {}).get("kernel") == CELL_KERNEL), None)
                or (cells[0] if cells else None))
        if best is None:
            raise ValueError(f"{run_dir}: a matrix without cells")
        wall = best.get("duration")
        return (run_dir / str(best.get("dir") or f"cells/{best['name']}"),
                float(wall) if isinstance(wall, int | float) else None)
    if not doc and (run_dir / CELL_DIR / "results.json").is_file():
        # an earlier bench trace: the wall time it measured around its cell
        wall = _doc(run_dir / BENCH_JSON).get("checks", {}).get("wall_s")
        return run_dir / CELL_DIR, float(wall) if isinstance(wall, int | float) else None
    if not doc:
        raise ValueError(f"{run_dir}: no results.json (give a run's results directory)")
    return run_dir, None


def gpu_traces(cell_dir: Path) -> list[Path]:
    return sorted(p for p in cell_dir.glob("dmatrace-*.bin") if GPU_TRACE.fullmatch(p.name))


def biggest(traces: Sequence[Path]) -> Path | None:
    return max(traces, key=tracefile.stream_size, default=None)


def raw_prefix(path: Path, out: Path, max_bytes: int) -> int:
    """The first ``max_bytes`` of ``path``'s stream (header and whole records) into a
    raw file ``out``, for the old decoder, which reads no zstd; the bytes written."""
    limit = dmatrace.HDR_SIZE + max(0, max_bytes - dmatrace.HDR_SIZE) // dmatrace.REC_SIZE * \
        dmatrace.REC_SIZE
    written = 0
    with open(out, "wb") as fh:
        for piece in tracefile.iter_chunks(path):
            piece = piece[:limit - written]
            fh.write(piece)
            written += len(piece)
            if written >= limit:
                break
    return written


# ---- the figures -------------------------------------------------------------------

def _fig(f: bench_trace.Figures | None, raw: int) -> dict[str, Any] | None:
    if f is None:
        return None
    return {**dataclasses.asdict(f), "raw_bytes": raw,
            "rate": statistics.median(f.rates), "rate_min": min(f.rates),
            "rate_max": max(f.rates),
            "rss_over_size": statistics.median(f.maxrss) / raw if raw else None,
            "heap_over_size": statistics.median(f.heap) / raw if f.heap and raw else None}


def decode_figures(path: Path, runs: int, workdir: Path, old_max_mb: float = OLD_MAX_MB,
                   measure: Callable[[Path, str, int], bench_trace.Figures]
                   = bench_trace.measure) -> dict[str, Any]:
    """New path on the whole trace, old path on it or, if it is compressed or big, on a
    raw copy of its first ``old_max_mb`` MiB in ``workdir`` (removed after); each
    ``runs`` times."""
    raw = tracefile.stream_size(path)
    out: dict[str, Any] = {"trace": str(path), "file_bytes": path.stat().st_size,
                           "raw_bytes": raw, "runs": runs,
                           "new": _fig(measure(path, "new", runs), raw), "old": None}
    if not bench_trace.OLD.exists():
        out["old_note"] = f"not run: no {bench_trace.OLD} (the benchmark runs from a checkout)"
        return out
    limit = int(old_max_mb * 2**20)
    if not tracefile.is_compressed(path) and raw <= limit:
        out["old"] = _fig(measure(path, "old", runs), raw)
        return out
    with tempfile.TemporaryDirectory(prefix="old-path-", dir=workdir) as tmp:
        copy = Path(tmp) / path.name
        size = raw_prefix(path, copy, limit)
        out["old"] = _fig(measure(copy, "old", runs), size)
    if size < raw:
        out["old_note"] = (f"on the first {disk.size_text(size)} of the "
                           f"{disk.size_text(raw)} stream, decoded to a raw file (it reads "
                           "no zstd; a whole trace would need several times its size of "
                           "memory)")
    return out


def disk_figures(cell_dir: Path) -> dict[str, Any]:
    t = disk.traces(cell_dir)
    return {"files": t.files, "file_bytes": t.file_bytes, "raw_bytes": t.raw_bytes,
            "ratio": t.ratio}


def recorded_timings(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's ``timings`` (wall_s, guest_s, checks_s, timeline_s) when its run
    recorded them, at the top of results.json or in its environment."""
    for t in (doc.get("timings"), doc.get("environment", {}).get("timings")):
        if isinstance(t, dict) and t.get("wall_s") and t.get("checks_s") is not None:
            return t
    return None


def checks_figures(cell_dir: Path, wall_s: float | None) -> dict[str, Any]:
    """The post-run checks' share of the cell's wall time, and where it came from."""
    doc = _doc(cell_dir / "results.json")
    t = recorded_timings(doc)
    if t is not None:
        return {"checks_s": float(t["checks_s"]), "wall_s": float(t["wall_s"]),
                "timeline_s": t.get("timeline_s"), "guest_s": t.get("guest_s"),
                "share": float(t["checks_s"]) / float(t["wall_s"]),
                "source": "the cell's timings in results.json"}
    checks = sum(float(e.get("duration") or 0) for e in doc.get("tests", [])
                 if isinstance(e, dict) and str(e.get("path", "")).endswith(".dmatrace"))
    timeline = doc.get("environment", {}).get("timeline", {})
    out: dict[str, Any] = {"checks_s": checks, "wall_s": wall_s,
                           "timeline_s": timeline.get("seconds") if isinstance(
                               timeline, dict) else None,
                           "share": checks / wall_s if wall_s else None,
                           "source": "estimated: results.json has no timings; the .dmatrace "
                                     "entries' durations over the run's wall time"}
    if wall_s is None:
        out["source"] = "not recorded: results.json has no timings and no wall time"
    return out


# ---- the table -----------------------------------------------------------------------

def _met(value: float | None, target: float, at_most: bool) -> bool | None:
    if value is None:
        return None
    return value <= target if at_most else value >= target


def _rate(f: dict[str, Any] | None) -> str:
    if f is None:
        return "-"
    return (f"{f['rate'] / 1e6:.2f} ({f['rate_min'] / 1e6:.2f}-{f['rate_max'] / 1e6:.2f}) "
            "M rec/s")


def _x(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def rows(fig: dict[str, Any]) -> list[Row]:
    dec, dsk, chk, onoff = fig.get("decode"), fig["disk"], fig["checks"], fig.get("onoff")
    new, old = (dec or {}).get("new"), (dec or {}).get("old")
    out = [Row("rate", "decode+check rate", _rate(old), _rate(new),
               f">= {RATE_TARGET / 1e6:.0f} M rec/s",
               _met(new and new["rate"], RATE_TARGET, False))]
    new_mem = new and new["rss_over_size"]
    out.append(Row("memory", "checks' peak RSS / trace size",
                   _x(old and old["rss_over_size"]), _x(new_mem),
                   f"<= {MEMORY_TARGET:.2f}x", _met(new_mem, MEMORY_TARGET, True)))
    out.append(Row("disk", "trace on disk / raw",
                   f"{disk.size_text(dsk['raw_bytes'])} (1.00x)" if dsk["files"] else "-",
                   f"{disk.size_text(dsk['file_bytes'])} ({_x(dsk['ratio'])})"
                   if dsk["files"] else "-",
                   f"<= {DISK_TARGET:.2f}x", _met(dsk["ratio"], DISK_TARGET, True)))
    before = CHECKS_BEFORE["checks_s"] / CHECKS_BEFORE["wall_s"]
    after = chk.get("share")
    out.append(Row("checks", f"{CELL_KERNEL} cell: post-run checks / wall",
                   f"{before:.0%} (2 of 4 min)",
                   "-" if after is None else
                   f"{after:.1%} ({chk['checks_s']:.0f} of {chk['wall_s']:.0f} s)",
                   f"<= {CHECKS_TARGET:.0%}", _met(after, CHECKS_TARGET, True)))
    ratio = (onoff or {}).get("ratio") or {}
    med = ratio.get("median")
    out.append(Row("onoff", "tracing on / off (wall time)", "n/a (see note)",
                   "-" if med is None else
                   f"{med:.3f}x ({ratio['min']:.3f}-{ratio['max']:.3f})",
                   f"<= {ONOFF_TARGET:.1f}x", _met(med, ONOFF_TARGET, True)))
    return out


def format_table(fig: dict[str, Any]) -> str:
    table = [["target", "before", "after", "target", "met"]]
    for r in rows(fig):
        table.append([r.label, r.before, r.after, r.target,
                      "-" if r.met is None else ("yes" if r.met else "NO")])
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += notes(fig)
    return "\n".join(lines)


def notes(fig: dict[str, Any]) -> list[str]:
    out = []
    dec = fig.get("decode")
    if dec:
        out.append(f"trace: {dec['trace']} ({disk.size_text(dec['file_bytes'])} on disk, "
                   f"{disk.size_text(dec['raw_bytes'])} raw); {dec['runs']} "
                   f"run{'s' if dec['runs'] != 1 else ''} each in fresh processes; decode + "
                   "summary + stale-translation and VRAM audits")
        new = dec.get("new")
        if new:
            heap = new.get("heap_over_size")
            out.append(f"new path: {new['records']} records, {new['problems']} problems"
                       + (f", peak heap {_x(heap)} the raw size" if heap is not None else ""))
        old = dec.get("old")
        if old:
            out.append(f"old path: {old['records']} records of {disk.size_text(old['raw_bytes'])}"
                       f" (tests/dmatrace_ref.py)")
        if dec.get("old_note"):
            out.append(f"old path: {dec['old_note']}")
    else:
        out.append("decode: no hmm-gpu trace in the run")
    dsk = fig["disk"]
    out.append(f"disk: the cell's {dsk['files']} trace file{'s' if dsk['files'] != 1 else ''}; "
               "the cell's "
               f"results directory {disk.size_text(fig.get('cell_disk_bytes'))}")
    chk = fig["checks"]
    out.append(f"checks: {chk['source']}"
               + (f"; timeline {chk['timeline_s']:.1f} s besides"
                  if isinstance(chk.get("timeline_s"), int | float) else ""))
    onoff = fig.get("onoff")
    if onoff:
        cands = ", ".join(
            f"{c['name']} {c['records_per_s'] / 1e3:.0f}k rec/s"
            if c.get("records_per_s") is not None else f"{c['name']} did not run"
            for c in onoff.get("candidates", []))
        n = len(onoff.get("rounds", []))
        out.append(f"on/off: {onoff.get('workload')} (the most trace records per second of: "
                   f"{cands}), {n} rounds alternating which device goes first; traced "
                   f"{_spread_s(onoff.get('traced_s'))}, untraced "
                   f"{_spread_s(onoff.get('untraced_s'))}; records dropped: "
                   f"{onoff.get('dropped')}")
    else:
        out.append(f"on/off: not measured ({fig.get('onoff_note', 'no on/off run')})")
    out.append(f"on/off before: {ONOFF_BEFORE}")
    return out


def _spread_s(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"


def complete(fig: dict[str, Any]) -> bool:
    """Whether every figure's after was measured."""
    return all(r.after != "-" for r in rows(fig))


# ---- running it --------------------------------------------------------------------

def collect(cell_dir: Path, wall_s: float | None, runs: int, workdir: Path,
            onoff: dict[str, Any] | None, onoff_note: str = "") -> dict[str, Any]:
    """bench.json: every figure, from the cell's files and the on/off run's bench.json."""
    trace = biggest(gpu_traces(cell_dir))
    fig: dict[str, Any] = {
        "what": "trace-targets", "cell": str(cell_dir),
        "decode": decode_figures(trace, runs, workdir) if trace is not None else None,
        "disk": disk_figures(cell_dir),
        "cell_disk_bytes": disk.recorded(_doc(cell_dir / "results.json").get("environment", {})),
        "checks": checks_figures(cell_dir, wall_s),
        "onoff": onoff, "checks_before": CHECKS_BEFORE, "onoff_before": ONOFF_BEFORE,
    }
    if onoff_note:
        fig["onoff_note"] = onoff_note
    fig["rows"] = [dataclasses.asdict(r) for r in rows(fig)]
    return fig


def run_targets(cfg: RunConfig, results_dir: Path, build: Callable[[Path], Artifacts], *,
                runs: int, from_run: Path | None = None) -> tuple[dict[str, Any] | None, str, int]:
    """Run what is missing, measure, write bench.json; (figures, text to print, exit status)."""
    from harness.report import publish
    from harness.run import runner
    from harness.scenarios.bench_trace import BenchTrace

    results_dir.mkdir(parents=True, exist_ok=True)
    earlier = from_run / ONOFF_DIR / BENCH_JSON if from_run is not None else None
    artifacts = None
    if from_run is None or earlier is None or not earlier.is_file():  # a guest to boot
        try:
            artifacts = build(results_dir / "build-logs")
        except Exception as e:
            return None, f"build failed: {e}", EXIT_INFRA
    problems: list[Results] = []
    wall: float | None = None
    if from_run is None:
        cell_dir = results_dir / CELL_DIR
        t0 = time.monotonic()
        res = runner.run(cell_config(cfg), cell_dir, artifacts=artifacts)
        wall = time.monotonic() - t0
        publish.write_reports(cell_dir)
        if res.exit_code() == EXIT_INFRA:
            problems.append(res)
    else:
        try:
            cell_dir, wall = find_cell(from_run)
        except ValueError as e:
            return None, str(e), EXIT_INFRA
    onoff: dict[str, Any] | None = None
    note = ""
    if earlier is not None and earlier.is_file():
        onoff = _doc(earlier)
    else:
        onoff_dir = results_dir / ONOFF_DIR
        res = runner.run(onoff_config(cfg), onoff_dir, artifacts=artifacts,
                         scenarios=[BenchTrace(runs)])
        publish.write_reports(onoff_dir)
        onoff = _doc(onoff_dir / BENCH_JSON) or None
        if res.exit_code():
            problems.append(res)
            note = f"the on/off guest: exit status {res.exit_code()}"
    fig = collect(cell_dir, wall, runs, results_dir, onoff, note)
    (results_dir / BENCH_JSON).write_text(json.dumps(fig, indent=2) + "\n")
    text = format_table(fig)
    code = 0 if complete(fig) else EXIT_FAIL
    if any(r.exit_code() == EXIT_INFRA for r in problems):
        code = EXIT_INFRA
    for r in problems:
        text += "\n\n" + r.failures()
    return fig, text, code

"""``bench-odp``: perftest bandwidth on hmm-nic next to rxe, and hmm-nic's fault
round trip, round after round.

Not a test: it measures. The guest needs two cabled hmm-nics (``devices:
[{type: hmm-nic, link: nic1}, {type: hmm-nic}]``): perftest's server runs on
hmmnic0 and its client on hmmnic1, so every byte crosses the link between
the two devices. rxe (the kernel's software RoCE, on eth0) runs the same
commands with server and client on rxe0. In each round, for both columns:
``ib_write_bw`` and ``ib_read_bw``, with ``--odp`` and pinned, for 3 s of
which the first is not measured (``-D 3 --margin 1``): the ODP figures are
those of memory once faulted in (the first touch's faults are in the fault
round trip below); the figure is perftest's "BW average" in MiB/s. The
columns take turns in the same guest, so a disturbance of the shared
machine hits both alike.

Per metric and column: the median over the rounds with min and max; the
ratio hmm-nic / rxe of the medians with the min-max of the rounds' ratios
(:func:`harness.scenarios.bench.figures`). Targets: ODP bandwidth at least
3x rxe's (the device moves bytes as host code, rxe as TCG guest code); and,
on hmm-nic alone, ODP at least 0.9x pinned (``odp_over_pinned``, a row of
its own whose rxe column is rxe's own ratio).

Then, in each round and column, ``odp-lat.py`` (loopback QPs on the server
device, an ODP MR of 64 pages, one page per sample): the user-visible cost
of one ODP page fault (an 8-byte RDMA WRITE into a page nothing maps, less
the same WRITE once mapped) and of one ODP invalidation (madvise(DONTNEED)
of a page the device maps, less the same on memory no MR covers): the
driver's zap, fence and unmap on hmm-nic, rxe's software unmap on rxe.

Fault round trip, hmm-nic next to hmm-gpu (a second table): the
virtual-clock time in the DMA traces from a fault record's write to the
FAULT_REPLAY that answered it, per round, for the faults of that round's
odp-lat on hmm-nic and of ``hmm-bench -l`` on hmm-gpu (hmm_gpu.ko with
prefault=0, so the device faults: a 1-page READ of a fresh page per
sample). Both are one page faulted in on first touch; the device counters'
``faults-raised`` before and after each workload say which trace records
are whose. Target: hmm-nic's median at most 2x hmm-gpu's. The run-wide
figure ``fault_round_trip_us`` covers every hmm-nic fault of the run
(perftest's first touches too). Entries ``bench.round<N>.<column>.<test>``
say whether each figure was taken.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks import dmatrace
from harness.core.config import DEFAULT_ROUNDS, nic_links
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.bench import Metric, figures, format_figures
from harness.scenarios.common import HMM_GPU_KO, bench_rounds, guest_run, load_module
from harness.scenarios.kernel import guest_kernel
from harness.scenarios.rdma_tests import HMM_NIC, RXE, column_unmet

log = logging.getLogger(__name__)

NAME = "bench-odp"
SIZE = 65536  # bytes per message
ITERS = 400  # the perftest scenario's runs: a fixed count, first touch included
# the benchmark's: 3 s, the first second (ODP's first touch) not measured
DURATION = "-D 3 --margin 1"
PORT_BASE = 18515  # perftest's default port; one per measurement so none waits on TIME_WAIT
TESTS = ("write", "read")
MODES = ("odp", "pinned")
LAT = "/opt/hmmlab/bin/odp-lat.py"
LAT_SAMPLES = 100
GPU_BENCH = "/opt/hmmlab/bin/hmm-bench"
GPU_DMIRROR = "/dev/hmm_dmirror0"
GPU_SAMPLES = 100
FAULTS = "faults-raised"  # the device counter: one per fault record written
TRACE_SETTLE_S = 0.5  # the traces are flushed every 10 ms (dmatrace-flush-ms)


@dataclass(frozen=True)
class Pair:
    label: str
    server: str
    client: str
    setup: str


PAIRS = (Pair("hmm-nic", "hmmnic0", "hmmnic1", HMM_NIC.setup),
         Pair("rxe", "rxe0", "rxe0", RXE.setup))
COLUMNS = tuple(p.label for p in PAIRS)

METRICS: tuple[Metric, ...] = (
    Metric("write_odp_MiBps", "ib_write_bw --odp", "MiB/s", True, 3.0),
    Metric("read_odp_MiBps", "ib_read_bw --odp", "MiB/s", True, 3.0),
    Metric("write_pinned_MiBps", "ib_write_bw, pinned", "MiB/s", True),
    Metric("read_pinned_MiBps", "ib_read_bw, pinned", "MiB/s", True),
    Metric("write_odp_over_pinned", "write: ODP / pinned", "x", True),
    Metric("read_odp_over_pinned", "read: ODP / pinned", "x", True),
    Metric("fault_cost_us", "ODP fault of a page, user-visible", "us", False),
    Metric("invalidate_cost_us", "ODP invalidation of a page", "us", False),
    Metric("invalidate_us", "madvise(DONTNEED) of an ODP page", "us", False),
)
RT_COLUMNS = ("hmm-nic", "hmm-gpu")
RT_METRICS: tuple[Metric, ...] = (
    Metric("fault_rt_us", "fault round trip (record -> replay)", "us", False, 2.0),
    Metric("fault_rt_p99_us", "fault round trip, p99", "us", False),
)
ODP_OVER_PINNED_TARGET = 0.9  # on hmm-nic's own figures

_BW_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", re.M)


def parse_bw(text: str) -> float | None:
    """perftest's "BW average[MiB/sec]" from its result row, or None."""
    if "MiB/sec" not in text and "MB/sec" not in text:
        return None
    rows = _BW_ROW.findall(text)
    return float(rows[-1][3]) if rows else None


LISTEN_WAIT_S = 60  # for perftest's server to listen on its port (a TCG guest under load)
SERVER_MARK = "--- server"  # between the client's output and the server's


def wait_listen(port: int, pid: str, seconds: float = LISTEN_WAIT_S) -> str:
    """Shell (busybox) that waits until a TCP socket listens on ``port`` (state 0A in
    /proc/net/tcp or tcp6), the process ``pid`` is gone, or ``seconds`` have passed;
    it says so when it stops waiting for another reason than the listening socket."""
    polls = int(seconds * 10)
    return (f"n=0; until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | "
            f"awk '$4 == \"0A\" && $2 ~ /:{port:04X}$/ {{f = 1}} END {{exit !f}}'; do "
            f"kill -0 {pid} 2>/dev/null || {{ echo 'server gone before listening'; break; }}; "
            f"n=$((n + 1)); [ $n -ge {polls} ] && "
            f"{{ echo 'server not listening after {seconds:g} s'; break; }}; sleep 0.1; done")


def perftest(pair: Pair, test: str, mode: str, port: int, measure: str = f"-n {ITERS}") -> str:
    """Server in the background, the client once the server listens (not after a
    fixed sleep: on a loaded TCG guest the server's start can take longer and the
    client's connect is then refused). A client that failed leaves the server
    waiting for it: it is ended after 5 s rather than at its timeout."""
    odp = " --odp" if mode == "odp" else ""
    base = f"ib_{test}_bw -s {SIZE} {measure} -p {port}{odp}"
    return (f"timeout 100 {base} -d {pair.server} > /tmp/bench-srv.txt 2>&1 & srv=$!; "
            f"{wait_listen(port, '$srv')}; "
            f"timeout 100 {base} -d {pair.client} 127.0.0.1; rc=$?; "
            "[ $rc -ne 0 ] && { sleep 5; kill $srv 2>/dev/null; }; "
            f"wait $srv; src=$?; echo '{SERVER_MARK}'; cat /tmp/bench-srv.txt; "
            "[ $rc -eq 0 ] && [ $src -eq 0 ]")


def fault_trips(path: Path) -> list[float | None]:
    """One entry per fault record in the trace at ``path``, in order: the us from its
    write to the FAULT_REPLAY that answered it; None if it was cancelled or nothing
    answered it (yet)."""
    records = dmatrace.read_kinds(path, (dmatrace.Kind.FAULT_WRITE, dmatrace.Kind.EV_REPLAY,
                                         dmatrace.Kind.EV_CANCEL))
    out: list[float | None] = []
    pending: dict[int, tuple[int, int]] = {}  # index in out -> (token, write time)
    for r in records:
        if r.kind == dmatrace.Kind.FAULT_WRITE:
            pending[len(out)] = (r.aux, r.timestamp_ns)
            out.append(None)
        elif r.kind == dmatrace.Kind.EV_REPLAY:
            for i, (_, t) in pending.items():
                out[i] = (r.timestamp_ns - t) / 1000
            pending = {}
        elif r.kind == dmatrace.Kind.EV_CANCEL:
            pending = {i: v for i, v in pending.items() if v[0] != r.aux}
    return out


def fault_round_trips(traces: Sequence[Path]) -> list[float]:
    """Every answered fault's round trip in these traces, in us."""
    out: list[float] = []
    for path in traces:
        try:
            out += [t for t in fault_trips(path) if t is not None]
        except (OSError, dmatrace.TraceError) as e:
            log.warning("%s: %s", path, e)
    return out


def trip_figures(trips: Sequence[float | None]) -> dict[str, float | None] | None:
    """median and p99 of the answered ones, or None if none was."""
    got = [t for t in trips if t is not None]
    if not got:
        return None
    return {"fault_rt_us": statistics.median(got), "fault_rt_p99_us": percentile(got, 0.99),
            "faults": len(got)}


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def with_ratios(obj: dict[str, float | None]) -> dict[str, float | None]:
    for test in TESTS:
        odp, pinned = obj.get(f"{test}_odp_MiBps"), obj.get(f"{test}_pinned_MiBps")
        obj[f"{test}_odp_over_pinned"] = odp / pinned if odp is not None and pinned else None
    return obj


def odp_over_pinned_met(fig: dict[str, Any]) -> dict[str, bool | None]:
    """The 0.9x target, on hmm-nic's medians."""
    out = {}
    for r in fig["rows"]:
        if r["metric"].endswith("_odp_over_pinned"):
            m = r[COLUMNS[0]]["median"]
            out[r["metric"]] = None if m is None else m >= ODP_OVER_PINNED_TARGET
    return out


def format_odp(fig: dict[str, Any]) -> str:
    lines = [format_figures(fig)]
    for k, met in fig.get("odp_over_pinned_met", {}).items():
        lines.append(f"{k}: hmm-nic's median vs >={ODP_OVER_PINNED_TARGET:.2f}: "
                     + ("-" if met is None else ("yes" if met else "NO")))
    rt = fig.get("fault_round_trip")
    if rt:
        lines += ["", "fault round trip, one page on first touch: hmm-nic (odp-lat) next to "
                  "hmm-gpu (hmm-bench -l, prefault=0)", format_figures(rt)]
    for note in fig.get("fault_round_trip_notes", []):
        lines.append(f"note: {note}")
    f = fig.get("fault_round_trip_us")
    if f:
        lines.append(f"every hmm-nic fault of the run (perftest's too; record -> replay, "
                     f"{f['n']} faults): median {f['median']:.1f} us, p99 {f['p99']:.1f} us")
    return "\n".join(lines)


def last_json(text: str) -> dict[str, Any] | None:
    """The last JSON object line of a workload's output, or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def round_trip_figures(spans: Sequence[dict[str, tuple[int, int] | None]],
                       traces: dict[str, Path], devices: dict[str, str],
                       total: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """The per-round round-trip table (RT_COLUMNS) from each column's trace, cut by
    the rounds' ``spans`` of fault-record numbers; and notes on what could not be had.

    ``total(dev)`` is the device's fault-record count now; a trace holding a
    different number of records cannot be cut by the counts, so that column
    gets no figures (a note says so) rather than wrong ones."""
    notes: list[str] = []
    trips: dict[str, list[float | None]] = {}
    for col, path in traces.items():
        try:
            t = fault_trips(path)
        except (OSError, dmatrace.TraceError) as e:
            notes.append(f"{col}: trace {path.name}: {e}")
            continue
        n = total(devices[col])
        if n is not None and n != len(t):
            notes.append(f"{col}: {path.name} holds {len(t)} fault records, the device "
                         f"counted {n}: no per-round round trips")
            continue
        trips[col] = t
    if not any(any(sp.get(c) for sp in spans) for c in trips):
        return None, notes
    rounds = [{col: (trip_figures(trips[col][span[0]:span[1]])
                     if col in trips and (span := sp.get(col)) else None) for col in RT_COLUMNS}
              for sp in spans]
    return figures(rounds, RT_METRICS, RT_COLUMNS, what="fault round trip"), notes


class BenchOdp:
    name = NAME

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        self.rounds = bench_rounds(NAME, rounds)

    def run(self, s: Session) -> None:
        if ("nic0", "nic1") not in nic_links(s.cfg.devices):
            s.results.add_status(NAME, Status.SKIP,
                                 "needs two cabled hmm-nics: devices: [{type: hmm-nic, "
                                 "link: nic1}, {type: hmm-nic}]")
            return
        kernel = guest_kernel(s)
        usable = {p.label: column_unmet(col, kernel, s.cfg) is None
                  for p, col in zip(PAIRS, (HMM_NIC, RXE), strict=True)}
        for p, col in zip(PAIRS, (HMM_NIC, RXE), strict=True):
            if not usable[p.label]:
                s.results.add_status(f"bench.{p.label}", Status.SKIP,
                                     column_unmet(col, kernel, s.cfg) or "")
                continue
            c = guest_run(s, f"set -e; {p.setup}; ibv_devinfo -d {p.server} | head -3", 60)
            if not c.ok:
                s.results.add(TestResult(f"bench.{p.label}.setup", Status.FAIL, c.seconds,
                                         c.text()))
                usable[p.label] = False
        gpu = self._gpu_setup(s)
        rounds = []
        # per round and device: the range of its fault records the round's
        # workload wrote ([faults-raised before, after)), for the round trips
        spans: list[dict[str, tuple[int, int] | None]] = []
        port = PORT_BASE
        for i in range(1, self.rounds + 1):
            rnd: dict[str, dict[str, Any] | None] = {}
            span: dict[str, tuple[int, int] | None] = {}
            for p in PAIRS:
                if not usable[p.label]:
                    rnd[p.label] = None
                    continue
                obj: dict[str, float | None] = {}
                for test in TESTS:
                    for mode in MODES:
                        port += 1
                        obj[f"{test}_{mode}_MiBps"] = self._measure(
                            s, f"bench.round{i}.{p.label}.{test}_{mode}",
                            perftest(p, test, mode, port, DURATION))
                dev = "nic0" if p.label == "hmm-nic" else None
                before = self._faults(s, dev)
                obj.update(self._lat(s, f"bench.round{i}.{p.label}.odp_lat", p.server))
                span[p.label] = self._span(s, dev, before)
                rnd[p.label] = with_ratios(obj)
            if gpu:
                before = self._faults(s, "gpu0")
                self._gpu_lat(s, f"bench.round{i}.hmm-gpu.fault_latency")
                span["hmm-gpu"] = self._span(s, "gpu0", before)
            rounds.append(rnd)
            spans.append(span)
        fig = figures(rounds, METRICS, COLUMNS, what="perftest")
        fig["odp_over_pinned_met"] = odp_over_pinned_met(fig)
        time.sleep(TRACE_SETTLE_S)
        traces = {"hmm-nic": s.guest.files.nic_dmatrace(0), "hmm-gpu": s.guest.files.dmatrace(0)}
        fig["fault_round_trip"], fig["fault_round_trip_notes"] = round_trip_figures(
            spans, traces, {"hmm-nic": "nic0", "hmm-gpu": "gpu0"}, lambda d: self._faults(s, d))
        trips = fault_round_trips(sorted(s.run_dir.glob("dmatrace-nic*.bin")))
        fig["fault_round_trip_us"] = ({"n": len(trips), "median": statistics.median(trips),
                                       "p99": percentile(trips, 0.99)} if trips else None)
        s.results.tables[NAME] = fig
        (s.run_dir / "bench.json").write_text(json.dumps(fig, indent=2) + "\n")
        log.debug("bench odp:\n%s", format_odp(fig))

    @staticmethod
    def _faults(s: Session, dev: str | None) -> int | None:
        """Device ``dev``'s fault records so far (QMP), or None."""
        if dev is None:
            return None
        try:
            return int(s.guest.qom_get(dev, FAULTS))
        except Exception as e:  # a figure lost, not the run
            log.warning("qom-get %s %s: %s", dev, FAULTS, e)
            return None

    def _span(self, s: Session, dev: str | None, before: int | None) -> tuple[int, int] | None:
        after = self._faults(s, dev)
        return (before, after) if before is not None and after is not None else None

    @staticmethod
    def _lat(s: Session, path: str, device: str) -> dict[str, float | None]:
        """odp-lat's figures on ``device`` (an entry at ``path``); {} if it failed."""
        c = guest_run(s, f"python3 {LAT} -d {device} -n {LAT_SAMPLES}", 300)
        obj = last_json(c.out) if c.ok else None
        ok = bool(obj and obj.get("ok"))
        status = c.status_if_error if c.error else Status.PASS if ok else Status.FAIL
        keys = ("fault_cost_us", "invalidate_cost_us", "invalidate_us")
        got = {k: float(obj[k]) for k in keys if obj and isinstance(obj.get(k), int | float)}
        s.results.add(TestResult(path, status, c.seconds, c.text(), extra=dict(got)))
        return dict(got) if ok else {}

    @staticmethod
    def _gpu_setup(s: Session) -> bool:
        """hmm_gpu.ko in device-fault mode (prefault=0) for hmm-gpu's round trip."""
        if not any(d.type == "hmm-gpu" for d in s.cfg.devices):
            s.results.add_status("bench.hmm-gpu", Status.SKIP,
                                 "no hmm-gpu in this run (devices: [{type: hmm-gpu}])")
            return False
        c = load_module(s, HMM_GPU_KO, "hmm_gpu", (GPU_DMIRROR,), args="prefault=0")
        if c.ok:
            c = guest_run(s, "echo 0 > /sys/module/hmm_gpu/parameters/prefault", 30)
        s.results.add(TestResult("bench.hmm-gpu.setup", Status.PASS if c.ok else Status.FAIL,
                                 c.seconds, c.text()))
        return c.ok

    @staticmethod
    def _gpu_lat(s: Session, path: str) -> None:
        c = guest_run(s, f"{GPU_BENCH} -l -d {GPU_DMIRROR} -n {GPU_SAMPLES}", 300)
        obj = last_json(c.out) if c.ok else None
        ok = bool(obj and obj.get("ok"))
        status = c.status_if_error if c.error else Status.PASS if ok else Status.FAIL
        s.results.add(TestResult(path, status, c.seconds, c.text()))

    @staticmethod
    def _measure(s: Session, path: str, cmd: str) -> float | None:
        c = guest_run(s, cmd, 240)
        bw = parse_bw(c.out) if c.ok else None
        status = (c.status_if_error if c.error else Status.PASS if bw is not None
                  else Status.FAIL)
        s.results.add(TestResult(path, status, c.seconds, c.text(),
                                 extra={"MiBps": bw} if bw is not None else {}))
        return bw

    def finish(self, s: Session) -> None:
        return None


def make() -> BenchOdp:
    return BenchOdp()

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

The fault round trip is hmm-nic's, from its DMA traces: the virtual-clock
time from a fault record's write to the next FAULT_REPLAY of the same
device, over every ODP fault of the run (median and p99 in us). Entries
``bench.round<N>.<column>.<test>`` say whether each figure was taken.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import dmatrace
from harness.bench import DEFAULT_ROUNDS
from harness.config import nic_links
from harness.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.bench import Metric, figures, format_figures
from harness.scenarios.common import guest_run
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
)
ODP_OVER_PINNED_TARGET = 0.9  # on hmm-nic's own figures

_BW_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", re.M)


def parse_bw(text: str) -> float | None:
    """perftest's "BW average[MiB/sec]" from its result row, or None."""
    if "MiB/sec" not in text and "MB/sec" not in text:
        return None
    rows = _BW_ROW.findall(text)
    return float(rows[-1][3]) if rows else None


def perftest(pair: Pair, test: str, mode: str, port: int, measure: str = f"-n {ITERS}") -> str:
    odp = " --odp" if mode == "odp" else ""
    base = f"ib_{test}_bw -s {SIZE} {measure} -p {port}{odp}"
    return (f"timeout 100 {base} -d {pair.server} > /tmp/bench-srv.txt 2>&1 & srv=$!; "
            f"sleep 1; timeout 100 {base} -d {pair.client} 127.0.0.1; rc=$?; "
            "wait $srv; src=$?; echo '--- server'; cat /tmp/bench-srv.txt; "
            "[ $rc -eq 0 ] && [ $src -eq 0 ]")


def fault_round_trips(traces: Sequence[Path]) -> list[float]:
    """Each fault record's write to the next FAULT_REPLAY of its device, in us."""
    out: list[float] = []
    for path in traces:
        try:
            trace = dmatrace.read_trace(path)
        except (OSError, dmatrace.TraceError) as e:
            log.warning("%s: %s", path, e)
            continue
        pending: list[int] = []
        for r in trace.records:
            if r.kind == dmatrace.Kind.FAULT_WRITE:
                pending.append(r.timestamp_ns)
            elif r.kind == dmatrace.Kind.EV_REPLAY and pending:
                out += [(r.timestamp_ns - t) / 1000 for t in pending]
                pending = []
    return out


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
    f = fig.get("fault_round_trip_us")
    if f:
        lines.append(f"hmm-nic fault round trip (record -> replay, {f['n']} faults): "
                     f"median {f['median']:.1f} us, p99 {f['p99']:.1f} us")
    return "\n".join(lines)


class BenchOdp:
    name = NAME

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        if rounds < 1:
            raise ValueError(f"{NAME}: rounds must be at least 1, got {rounds}")
        self.rounds = rounds

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
        rounds = []
        port = PORT_BASE
        for i in range(1, self.rounds + 1):
            rnd: dict[str, dict[str, Any] | None] = {}
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
                rnd[p.label] = with_ratios(obj)
            rounds.append(rnd)
        fig = figures(rounds, METRICS, COLUMNS, what="perftest")
        fig["odp_over_pinned_met"] = odp_over_pinned_met(fig)
        trips = fault_round_trips(sorted(s.run_dir.glob("dmatrace-nic*.bin")))
        # the traces are flushed while QEMU runs; what is on disk now is most of it
        fig["fault_round_trip_us"] = ({"n": len(trips), "median": statistics.median(trips),
                                       "p99": percentile(trips, 0.99)} if trips else None)
        s.results.tables[NAME] = fig
        (s.run_dir / "bench.json").write_text(json.dumps(fig, indent=2) + "\n")
        log.debug("bench odp:\n%s", format_odp(fig))

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

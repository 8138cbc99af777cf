"""One clock for the guest's ftrace and the device's trace: guest mono ns -> QEMU virtual ns.

The driver reads its clock (ktime_get_mono_fast_ns, what ftrace's ``mono``
trace_clock prints) and writes the value to hmm-gpu's CLOCK_SYNC_LO/HI
registers; the device writes an EV_CLOCK_SYNC record stamped with QEMU's
virtual clock at the HI write, the value in ``va``, and the driver's
``hmm_gpu_clock_sync`` tracepoint prints the same value (``guest_ns``) and
how long the two writes took (``rtt_ns``). Each value found on both sides is
a pair (guest ns, virtual ns); a least-squares line through the pairs maps
any guest time onto the virtual clock.

Only the pairs whose writes were quick go into the line: ``rtt_ns`` at most
the median. An MMIO write traps into QEMU and may wait there for its big
lock (tens of us to ms under TCG on a loaded host), and the device stamps
the HI write only then: a slow write's stamp is late by an unknown part of
its round trip and would pull the line (docs/device-abi.md, "clock sync",
measures this). The harness writes ``clock_sync`` several times at each
scenario edge so that there are quick ones.

The two clocks can also step against each other: under TCG the guest's TSC
is the host's plus an offset QEMU raises when it sees the host TSC go
backwards (a vCPU thread moved to a host CPU whose TSC lags), and a
12 ms step was seen in a 160 s run. So the offsets of the quick pairs are
cut into segments where they jump (more than :data:`STEP_NS`, and
:data:`DRIFT` per ns between them, beyond the run's median drift), a line
is fitted per segment, and each step is reported
with the guest-time window it happened in (events inside that window may
be off by the step).

How well it lines up (:class:`Alignment`): the residuals of the pairs used
about the line (median, p95, max; and of every pair, for comparison), the
bound the writes put on the offset (the driver read its clock up to
``rtt_ns`` before the device stamped it: half of it is the error of a
constant taken from the middle), and the ftrace text's own resolution
(1 us) for every other event.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.checks.dmatrace import Kind
from harness.checks.ftrace import US, Event

# the device's record of a sync (docs/device-abi.md): va = the guest clock written,
# aux = the device's sequence number
EV_CLOCK_SYNC = int(Kind.EV_CLOCK_SYNC)
SYNC_EVENT = "hmm_gpu_clock_sync"
STEP_NS = 20_000  # an offset change this much beyond the drift is a step
# how far the rates may wander from the run's median drift (measured: the
# drift itself is 0.1-1 ppm, its changes smaller)
DRIFT = 2e-6
RATE_GAP_NS = 100_000_000  # pairs this far apart estimate the drift


@dataclass(frozen=True)
class Pair:
    dev: str  # pci_name() of the device
    guest_ns: int
    virtual_ns: int
    rtt_ns: int  # the driver's: clock after the HI write minus guest_ns


@dataclass(frozen=True)
class Alignment:
    """How well guest and device events line up, in ns of guest time."""

    pairs: int  # every pair found
    pairs_used: int  # the quick ones the line goes through
    rtt_cut_ns: int  # used: rtt_ns at most this (the median)
    slope: float  # virtual ns per guest ns (the first segment's)
    offset_ns: int  # virtual = slope * (guest - origin) + offset at origin
    origin_ns: int
    residual_median_ns: float  # |residual| of the pairs used
    residual_p95_ns: float
    residual_max_ns: float
    residual_all_median_ns: float  # |residual| of every pair about the same line
    residual_all_max_ns: float
    rtt_half_median_ns: float  # the used writes' bound on the constant offset
    rtt_half_max_ns: float
    resolution_ns: int = US  # ftrace's text: microseconds
    unmatched_driver: int = 0  # driver syncs with no device record (and vice versa)
    unmatched_device: int = 0
    # a step between segments: {"after_ns", "before_ns" (guest: the window it
    # happened in), "step_ns" (the change of virtual - guest)}
    steps: tuple[dict[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [dict(st) for st in self.steps]
        d["slope_ppm"] = round((self.slope - 1.0) * 1e6, 3)
        for k in ("residual_median_ns", "residual_p95_ns", "residual_max_ns",
                  "residual_all_median_ns", "residual_all_max_ns", "rtt_half_median_ns",
                  "rtt_half_max_ns"):
            d[k] = round(d[k], 1)
        return d

    def text(self) -> str:
        steps = "".join(f"; a step of {st['step_ns'] / 1e6:+.3f} ms between guest "
                        f"{st['after_ns'] / 1e9:.3f} s and {st['before_ns'] / 1e9:.3f} s"
                        for st in self.steps)
        return (f"{self.pairs_used} of {self.pairs} clock-sync pairs (rtt <= "
                f"{self.rtt_cut_ns / 1000:.1f} us): |residual| median "
                f"{self.residual_median_ns:.0f} ns, p95 {self.residual_p95_ns:.0f} ns, max "
                f"{self.residual_max_ns:.0f} ns (all pairs: median "
                f"{self.residual_all_median_ns:.0f} ns, max {self.residual_all_max_ns:.0f} ns); "
                f"write rtt/2 median {self.rtt_half_median_ns:.0f} ns, max "
                f"{self.rtt_half_max_ns:.0f} ns; slope {(self.slope - 1.0) * 1e6:+.1f} ppm; "
                f"ftrace text resolution {self.resolution_ns} ns; {len(self.steps) + 1} "
                f"segment{'s' if self.steps else ''}{steps}")


@dataclass(frozen=True)
class Segment:
    """One line: virtual = offset + slope * (guest - origin), from guest ``start``."""

    start: int  # guest ns it applies from (the first segment: from the beginning)
    origin: int
    offset: int
    slope: float

    def at(self, guest_ns: int) -> int:
        return self.offset + round(self.slope * (guest_ns - self.origin))


@dataclass(frozen=True)
class ClockMap:
    """Guest mono ns -> virtual ns (a line per segment), and how well it holds."""

    alignment: Alignment
    segments: tuple[Segment, ...] = ()

    def to_virtual(self, guest_ns: int) -> int:
        if self.segments:
            i = bisect.bisect_right([sg.start for sg in self.segments], guest_ns) - 1
            return self.segments[max(i, 0)].at(guest_ns)
        a = self.alignment
        return round(a.offset_ns + a.slope * (guest_ns - a.origin_ns))


def driver_syncs(events: Iterable[Event]) -> list[tuple[str, int, int]]:
    """(dev, guest_ns, rtt_ns) of each ``hmm_gpu_clock_sync`` event."""
    out = []
    for e in events:
        if e.name == SYNC_EVENT and "guest_ns" in e.fields:
            out.append((e.fields.get("dev", ""), e.int_field("guest_ns"), e.int_field("rtt_ns")))
    return out


def pairs(driver: Sequence[tuple[str, int, int]],
          device: dict[str, Sequence[tuple[int, int]]]) -> tuple[list[Pair], int, int]:
    """Join the driver's syncs with the devices' EV_CLOCK_SYNC records (``device``:
    dev -> (virtual ns, guest ns written) each) on (dev, the value written).

    Returns the pairs and how many syncs of either side found no partner (a
    sync the ring buffer lost, or one written before tracing was on)."""
    by_value: dict[tuple[str, int], int] = {}
    for dev, recs in device.items():
        for virtual, guest in recs:
            by_value[(dev, guest)] = virtual
    out: list[Pair] = []
    used: set[tuple[str, int]] = set()
    for dev, guest, rtt in driver:
        key = (dev, guest)
        if key in by_value and key not in used:
            used.add(key)
            out.append(Pair(dev, guest, by_value[key], rtt))
    return out, len(driver) - len(out), len(by_value) - len(used)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares y = slope * x + icept (slope 1 through a single point)."""
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, icept = np.polyfit(x, y, 1)
        return float(slope), float(icept)
    return 1.0, float(np.mean(y - x))


def fit(ps: Sequence[Pair], unmatched_driver: int = 0, unmatched_device: int = 0
        ) -> ClockMap | None:
    """A line per segment through the quick pairs (``rtt_ns`` at most the median);
    None without any pair."""
    if not ps:
        return None
    cut = int(statistics.median(p.rtt_ns for p in ps))
    quick = sorted((p for p in ps if p.rtt_ns <= cut), key=lambda p: p.guest_ns)
    # segments: where the offset jumps beyond what the drift explains
    # the drift: the median rate of the offset between pairs far enough apart (a
    # step is in few of them)
    rates = [((b.virtual_ns - b.guest_ns) - (a.virtual_ns - a.guest_ns))
             / (b.guest_ns - a.guest_ns) for a, b in itertools.pairwise(quick)
             if b.guest_ns - a.guest_ns >= RATE_GAP_NS]
    drift = statistics.median(rates) if rates else 0.0
    groups: list[list[Pair]] = [[quick[0]]]
    steps: list[dict[str, int]] = []
    for prev, p in itertools.pairwise(quick):
        gap = p.guest_ns - prev.guest_ns
        d_off = (p.virtual_ns - p.guest_ns) - (prev.virtual_ns - prev.guest_ns)
        if abs(d_off - drift * gap) > STEP_NS + DRIFT * gap:
            steps.append({"after_ns": prev.guest_ns, "before_ns": p.guest_ns, "step_ns": d_off})
            groups.append([])
        groups[-1].append(p)
    segments = []
    for i, grp in enumerate(groups):
        origin, v0 = grp[0].guest_ns, grp[0].virtual_ns
        # centred on the segment's first pair, in float64: ns stay exact over days
        x = np.array([p.guest_ns - origin for p in grp], np.float64)
        y = np.array([p.virtual_ns - v0 for p in grp], np.float64)
        slope, icept = _line(x, y)
        segments.append(Segment(grp[0].guest_ns if i else -(1 << 62), origin,
                                v0 + round(icept), slope))
    m = ClockMap(Alignment(0, 0, 0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
                 tuple(segments))

    def resid(pairs: Sequence[Pair]) -> np.ndarray:
        return np.array([abs(m.to_virtual(p.guest_ns) - p.virtual_ns) for p in pairs],
                        np.float64)

    used, every = resid(quick), resid(ps)
    rtt = [p.rtt_ns / 2 for p in quick]
    first = segments[0]
    a = Alignment(
        pairs=len(ps), pairs_used=len(quick), rtt_cut_ns=cut, slope=first.slope,
        offset_ns=first.offset, origin_ns=first.origin,
        residual_median_ns=float(np.median(used)),
        residual_p95_ns=float(np.percentile(used, 95)), residual_max_ns=float(used.max()),
        residual_all_median_ns=float(np.median(every)), residual_all_max_ns=float(every.max()),
        rtt_half_median_ns=float(statistics.median(rtt)), rtt_half_max_ns=float(max(rtt)),
        unmatched_driver=unmatched_driver, unmatched_device=unmatched_device,
        steps=tuple(steps))
    return ClockMap(a, tuple(segments))

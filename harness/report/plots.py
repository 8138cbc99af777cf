"""Plots of a cell's DMA traces for the HTML report, drawn by matplotlib as inline SVG.

Per cell (its ``dmatrace-*.bin`` files, one per device): DMA bytes over time
per device and record kind, faults / replays / cancels / TLB invalidations
over time, VRAM occupancy (from the MIGRATE copy engine's records) and the
fault latency (fault record to the replay or cancel that released its job).

Bounded on traces of any size: the records are read as a numpy array (a
memory map), walked in chunks of :data:`CHUNK` records, and binned into
:data:`BINS` time bins before anything is drawn, so a plot has at most a few
hundred points per line whatever the trace holds. Time is the devices'
QEMU virtual clock, from the cell's first record.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind

CHUNK = 1 << 18  # records per step: 16 MiB of trace, ~10 MiB of temporary columns
BINS = 300  # time bins per plot
TRACE_GLOB = "dmatrace-*.bin"
TIMELINE = "timeline.pftrace"  # another step writes it; linked when present
PAGE = 1 << dmatrace.PAGE_SHIFT

# What the plots call each kind: the DMA kinds (not VRAM: device-internal, no bus traffic)
DMA_KINDS = (Kind.CMD_FETCH, Kind.CPL_WRITE, Kind.DATA, Kind.CTX_FETCH, Kind.PTW,
             Kind.FAULT_WRITE, Kind.COPY_LIST)
EVENTS = {Kind.FAULT_WRITE: "faults", Kind.EV_REPLAY: "replays", Kind.EV_CANCEL: "cancels",
          Kind.EV_TLB_INV: "TLB invalidations"}
NKINDS = 256  # every value the kind byte can take: an unknown kind is counted apart
TIME_AXIS = "time (s, QEMU virtual clock)"

def read_records(path: Path) -> tuple[str, np.ndarray]:
    """The one place the report reads a trace: (device, records) where records is
    dmatrace's structured array (REC_DTYPE columns; a view of the mapped file, or
    of the decoded zstd frames). Raises dmatrace.TraceError for what is not a trace."""
    device = dmatrace.device_of(path)
    return device, dmatrace.read_trace(path, device).rows


def device_label(path: Path) -> str:
    """dmatrace-0.bin -> "hmm-gpu 0", dmatrace-nic1.bin -> "hmm-nic 1"."""
    tail = path.name.removeprefix("dmatrace-").removesuffix(".bin")
    if tail.startswith("nic"):
        return f"{dmatrace.NIC} {tail[3:]}"
    return f"{dmatrace.GPU} {tail}"


@dataclass
class Series:
    """One trace file, reduced to what the plots draw."""

    label: str
    device: str
    records: int
    first_ns: int
    dma: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> bytes per bin
    events: dict[str, np.ndarray] = field(default_factory=dict)  # what -> count per bin
    vram_pages: np.ndarray | None = None  # pages in VRAM at each bin's end; None: no MIGRATE
    latency_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    unresolved: int = 0  # fault records with no replay or cancel after them


def fault_latencies(f_idx: np.ndarray, f_ts: np.ndarray, f_tok: np.ndarray,
                    r_idx: np.ndarray, r_ts: np.ndarray, c_idx: np.ndarray,
                    c_ts: np.ndarray, c_tok: np.ndarray) -> tuple[np.ndarray, int]:
    """Latency of each fault record (record index, time, token): to the first
    EV_REPLAY after it (a replay hands every stalled job back) or the first
    EV_CANCEL of its token after it, whichever comes first. Returns the
    latencies (ns) of the faults that ended, and how many did not."""
    n = len(f_idx)
    end_idx = np.full(n, np.iinfo(np.int64).max, np.int64)
    end_ts = np.zeros(n, np.int64)
    if len(r_idx):
        p = np.searchsorted(r_idx, f_idx, side="right")
        ok = p < len(r_idx)
        end_idx[ok] = r_idx[p[ok]]
        end_ts[ok] = r_ts[p[ok]]
    if len(c_idx):
        # (token, index) as one sortable key: tokens are 16 bits, indices < 2^40
        ckey = (c_tok.astype(np.int64) << 40) | c_idx
        order = np.argsort(ckey, kind="stable")
        ckey = ckey[order]
        fkey = (f_tok.astype(np.int64) << 40) | f_idx
        p = np.searchsorted(ckey, fkey, side="right")
        hit = p < len(ckey)
        hit[hit] = (ckey[p[hit]] >> 40) == f_tok[hit].astype(np.int64)
        cidx = np.where(hit, c_idx[order][np.minimum(p, len(ckey) - 1)], end_idx)
        earlier = hit & (cidx < end_idx)
        end_idx[earlier] = cidx[earlier]
        end_ts[earlier] = c_ts[order][p[earlier]]
    done = end_idx != np.iinfo(np.int64).max
    return end_ts[done] - f_ts[done].astype(np.int64), int(n - done.sum())


class VramPages:
    """Which VRAM pages hold data, followed over a trace's MIGRATE copies chunk by
    chunk: a copy into a page fills it, a copy out frees it; a page copied out
    twice (a migration that could not complete leaves it in VRAM) or filled
    twice counts once. Memory: one byte per VRAM page, whatever the trace."""

    def __init__(self) -> None:
        self.state = np.zeros(0, np.int8)  # VRAM page number -> holds data

    def deltas(self, pages: np.ndarray, copied_in: np.ndarray) -> np.ndarray:
        """Per copy, in trace order: +1 a page filled, -1 a page freed, 0 no change."""
        if len(pages) == 0:
            return np.zeros(0, np.int64)
        top = int(pages.max()) + 1
        if top > len(self.state):
            self.state = np.concatenate([self.state, np.zeros(top - len(self.state), np.int8)])
        order = np.argsort(pages, kind="stable")
        p = pages[order]
        cur = copied_in[order].astype(np.int8)
        same = p[1:] == p[:-1]
        prev = np.empty_like(cur)
        prev[1:] = cur[:-1]
        first = np.concatenate([[True], ~same])
        prev[first] = self.state[p[first]]  # a page's first copy in this chunk
        last = np.concatenate([~same, [True]])
        self.state[p[last]] = cur[last]
        out = np.empty(len(cur), np.int64)
        out[order] = cur.astype(np.int64) - prev
        return out


def reduce_trace(path: Path, device: str, recs: np.ndarray, t0: int, width: int,
                 chunk: int = CHUNK) -> Series:
    """Bin one trace's records: ``t0`` is the cell's first timestamp, ``width`` the
    bin width in ns. Walks the records in chunks; keeps per record only the few
    fault, replay and cancel records (a few per thousand)."""
    n = len(recs)
    by_kind = np.zeros(NKINDS * BINS, np.float64)  # bytes
    counts = np.zeros(NKINDS * BINS, np.int64)
    keep: dict[str, list[np.ndarray]] = {k: [] for k in (
        "f_idx", "f_ts", "f_tok", "r_idx", "r_ts", "c_idx", "c_ts", "c_tok")}
    vram = VramPages()
    vram_bins = np.zeros(BINS, np.int64)  # pages filled minus freed, per bin
    migrated = False
    dma = np.zeros(256, bool)
    dma[[int(k) for k in DMA_KINDS]] = True
    for lo in range(0, n, chunk):
        c = recs[lo:lo + chunk]
        ts = np.asarray(c["timestamp_ns"])
        kind = np.asarray(c["kind"]).astype(np.intp)
        b = np.minimum((ts - np.uint64(t0)) // np.uint64(width), BINS - 1).astype(np.intp)
        key = kind * BINS + b
        counts += np.bincount(key, minlength=NKINDS * BINS)
        m = dma[kind]
        by_kind += np.bincount(key[m], weights=np.asarray(c["len"])[m].astype(np.float64),
                               minlength=NKINDS * BINS)
        for k, pre in ((Kind.FAULT_WRITE, "f"), (Kind.EV_REPLAY, "r"), (Kind.EV_CANCEL, "c")):
            idx = np.flatnonzero(kind == k)
            keep[f"{pre}_idx"].append(idx + lo)
            keep[f"{pre}_ts"].append(ts[idx])
            if pre != "r":
                keep[f"{pre}_tok"].append(np.asarray(c["aux"])[idx])
        if device == dmatrace.GPU:
            # the copy engine: DATA READ fills VRAM page aux >> 12, WRITE empties it
            d = np.asarray(c["dir"])
            mig = ((kind == Kind.DATA) & (np.asarray(c["engine"]) == Engine.MIGRATE)
                   & (np.asarray(c["result"]) == 0) & ((d == Dir.READ) | (d == Dir.WRITE)))
            if mig.any():
                migrated = True
                npages = np.maximum(np.asarray(c["len"])[mig] // PAGE, 1).astype(np.intp)
                # a multi-page copy (a 2 MiB page) is one record: one entry per 4 KiB page
                first = np.repeat((np.asarray(c["aux"])[mig] >> dmatrace.PAGE_SHIFT)
                                  .astype(np.int64), npages)
                within = np.arange(len(first)) - np.repeat(np.cumsum(npages) - npages, npages)
                delta = vram.deltas(first + within, np.repeat(d[mig] == Dir.READ, npages))
                vram_bins += np.bincount(np.repeat(b[mig], npages), weights=delta,
                                         minlength=BINS).astype(np.int64)
    cat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in keep.items()}
    s = Series(device_label(path), device, n, int(recs[0]["timestamp_ns"]) if n else t0)
    bytes_2d = by_kind.reshape(NKINDS, BINS)
    counts_2d = counts.reshape(NKINDS, BINS)
    for k in DMA_KINDS:
        if bytes_2d[k].any():
            s.dma[k.name] = bytes_2d[k]
    for k, what in EVENTS.items():
        if counts_2d[k].any():
            s.events[what] = counts_2d[k]
    if len(cat["f_idx"]):
        s.latency_ns, s.unresolved = fault_latencies(
            cat["f_idx"].astype(np.int64), cat["f_ts"], cat["f_tok"],
            cat["r_idx"].astype(np.int64), cat["r_ts"].astype(np.int64),
            cat["c_idx"].astype(np.int64), cat["c_ts"].astype(np.int64), cat["c_tok"])
    if migrated:
        s.vram_pages = np.cumsum(vram_bins)
    return s


@dataclass(frozen=True)
class Plot:
    id: str  # what it shows: dma, events, vram, latency
    title: str
    svg: str  # an <svg> element, ready to inline
    caption: str


@dataclass
class CellPlots:
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timeline: str | None = None  # path of timeline.pftrace relative to the cell dir
    traces: int = 0
    records: int = 0
    trace_bytes: int = 0
    seconds: float = 0.0  # what reading and drawing took


def cell_plots(cell_dir: Path, prefix: str = "p") -> CellPlots:
    """The plots of the traces in ``cell_dir``; ``prefix`` makes the SVGs' element ids
    unique on a page holding several cells' plots."""
    start = time.monotonic()
    out = CellPlots()
    if (cell_dir / TIMELINE).is_file():
        out.timeline = TIMELINE
    loaded: list[tuple[Path, str, np.ndarray]] = []
    for path in sorted(cell_dir.glob(TRACE_GLOB)):
        try:
            device, recs = read_records(path)
        except (dmatrace.TraceError, OSError, ValueError) as e:
            out.notes.append(f"{path.name}: no plots: {e}")
            continue
        out.traces += 1
        out.trace_bytes += path.stat().st_size
        if len(recs) == 0:
            out.notes.append(f"{path.name}: no records")
            continue
        loaded.append((path, device, recs))
    if not loaded:
        if out.traces == 0 and not out.notes:
            out.notes.append("No DMA trace in this cell (no device, or tracing was off).")
        out.seconds = time.monotonic() - start
        return out
    # One time axis for the cell: its devices share QEMU's virtual clock.
    t0 = min(int(r["timestamp_ns"][0]) for _, _, r in loaded)
    t1 = max(int(r["timestamp_ns"][-1]) for _, _, r in loaded)
    width = max(1, -(-(t1 - t0 + 1) // BINS))
    series = [reduce_trace(p, d, r, t0, width) for p, d, r in loaded]
    del loaded  # drop the memory maps
    out.records = sum(s.records for s in series)
    out.plots, notes = draw(series, width, prefix)
    out.notes.extend(notes)
    out.seconds = time.monotonic() - start
    return out


# ---- drawing ---------------------------------------------------------------------

def draw(series: list[Series], width: int, prefix: str) -> tuple[list[Plot], list[str]]:
    """matplotlib figures of the reduced series, as SVG; and notes on what had no data."""
    from matplotlib.figure import Figure  # slow to import: only when there is a trace

    bin_s = width / 1e9
    x = (np.arange(BINS) + 0.5) * bin_s
    plots: list[Plot] = []
    notes: list[str] = []
    per = f"{bin_s * 1e3:.3g} ms"

    with_dma = [s for s in series if s.dma]
    if with_dma:
        fig = Figure(figsize=(8, 1.2 + 1.9 * len(with_dma)), layout="constrained")
        axes = fig.subplots(len(with_dma), 1, sharex=True, squeeze=False)[:, 0]
        for ax, s in zip(axes, with_dma, strict=True):
            for kind, b in s.dma.items():
                ax.plot(x, np.where(b > 0, b / bin_s / 2**20, np.nan), label=kind,
                        drawstyle="steps-mid", lw=1.2,
                        marker=".", ms=3)  # an isolated bin shows as a dot
            _log(ax, "y")
            ax.set_title(s.label, fontsize=9, loc="left")
            ax.set_ylabel("DMA (MiB/s)")
            ax.legend(fontsize=7, ncols=4, loc="upper right")
        axes[-1].set_xlabel(TIME_AXIS)
        fig.suptitle("DMA bytes over time, per device and record kind", fontsize=10)
        plots.append(Plot("dma", "DMA over time", _svg(fig, f"{prefix}-dma"),
                          f"Bytes the devices read or wrote, per {per} bin, log scale "
                          "(VRAM accesses are device-internal, not shown)."))
    with_events = [s for s in series if s.events]
    if with_events:
        fig = Figure(figsize=(8, 1.2 + 1.7 * len(with_events)), layout="constrained")
        axes = fig.subplots(len(with_events), 1, sharex=True, squeeze=False)[:, 0]
        for ax, s in zip(axes, with_events, strict=True):
            for what, n in s.events.items():
                ax.plot(x, np.where(n > 0, n / bin_s, np.nan), label=what,
                        drawstyle="steps-mid", lw=1.2,
                        marker=".", ms=3)  # an isolated bin shows as a dot
            _log(ax, "y")
            ax.set_title(s.label, fontsize=9, loc="left")
            ax.set_ylabel("events per second")
            ax.legend(fontsize=7, ncols=4, loc="upper right")
        axes[-1].set_xlabel(TIME_AXIS)
        fig.suptitle("Faults and invalidations over time", fontsize=10)
        plots.append(Plot("events", "Faults and invalidations", _svg(fig, f"{prefix}-events"),
                          f"Fault records the devices wrote, replays, cancels and completed "
                          f"TLB invalidations, per {per} bin, log scale."))
    else:
        notes.append("No faults or invalidations in the traces.")
    with_vram = [s for s in series if s.vram_pages is not None]
    if with_vram:
        fig = Figure(figsize=(8, 2.8), layout="constrained")
        ax = fig.add_subplot()
        for s in with_vram:
            assert s.vram_pages is not None
            ax.plot(x + bin_s / 2, s.vram_pages * PAGE / 2**20, label=s.label,
                    drawstyle="steps-post", lw=1.2)
        ax.set_xlabel(TIME_AXIS)
        ax.set_ylabel("VRAM in use (MiB)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        fig.suptitle("VRAM occupancy", fontsize=10)
        plots.append(Plot("vram", "VRAM occupancy", _svg(fig, f"{prefix}-vram"),
                          "Pages holding data in device memory: a MIGRATE copy into VRAM "
                          "fills a page, a copy out frees it (pages filled before the trace "
                          "began are not counted)."))
    else:
        notes.append("No VRAM migrations in the traces.")
    with_faults = [s for s in series if len(s.latency_ns)]
    if with_faults:
        fig = Figure(figsize=(8, 2.8), layout="constrained")
        ax = fig.add_subplot()
        allv = np.concatenate([s.latency_ns for s in with_faults]) / 1e3
        lo, hi = max(float(allv.min()), 0.1), max(float(allv.max()), 1.0)
        edges = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 10, 40).tolist()
        for s in with_faults:
            ax.hist(np.clip(s.latency_ns / 1e3, lo, None), bins=edges, histtype="step",
                    lw=1.4, label=f"{s.label} ({len(s.latency_ns)} faults, median "
                    f"{np.median(s.latency_ns) / 1e3:.0f} µs)")
        _log(ax, "x")
        ax.set_xlabel("fault latency (µs, fault record to replay or cancel)")
        ax.set_ylabel("faults")
        ax.legend(fontsize=7)
        fig.suptitle("Fault latency", fontsize=10)
        unresolved = sum(s.unresolved for s in series)
        plots.append(Plot("latency", "Fault latency", _svg(fig, f"{prefix}-latency"),
                          "From the fault record the device wrote to the replay that handed "
                          "its job back or the cancel of its token"
                          + (f"; {unresolved} faults had neither before the trace ended."
                             if unresolved else ".")))
    elif any(s.unresolved for s in series):
        notes.append(f"{sum(s.unresolved for s in series)} faults, none replayed or "
                     "cancelled before the trace ended.")
    else:
        notes.append("No device faults in the traces.")
    return plots, notes


def _log(ax: Any, which: str) -> None:
    """A log scale labelled 0.01, 10, 1e+04: matplotlib's default labels are
    mathtext, whose parsing is most of the drawing time."""
    from matplotlib import ticker

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^")]+)')


def _svg(fig: Any, prefix: str) -> str:
    """The figure as an ``<svg>`` element: text as text (searchable, selectable,
    small), element ids prefixed so several SVGs can share one page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # no XML prolog or DOCTYPE inside HTML
    text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)

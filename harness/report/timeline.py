"""One Perfetto timeline per run: ``timeline.pftrace`` (open it in ui.perfetto.dev).

Tracks, all on QEMU's virtual clock (QEMU_CLOCK_VIRTUAL ns, what the DMA
trace records carry):

- per device trace file (``dmatrace-N.bin`` = hmm-gpu N, ``dmatrace-nicN.bin``
  = hmm-nic N): commands as slices from their fetch to their completion
  (MIGRATE commands, the ones that read a copy list, on a track of their
  own), faults as slices from the fault record's write to the REPLAY or
  CANCEL that ended them, REPLAY/CANCEL and TLB invalidations as instants,
  DMA bytes per time bin as counters, and with ``dmas`` every DMA as an
  instant (there are millions on a big run: off by default);
- flows from each fault to the replay (or cancel) that released it and on
  to the job's first page walk after it (its retry);
- the harness: boot and every scenario, from the runner's host clock
  mapped onto the virtual clock (:class:`VirtualClock`);
- with the guest's ftrace (run file ``ftrace:``), the guest's tracks
  (harness.report.timeline_guest), its faults' service joined to the
  device's fault flows.

Bounded on huge traces: the trace is read in chunks off a memory map, DMA
is binned, and at most ``max_commands`` command slices per device are
written (the rest are counted in the device's ``timeline`` instant).
"""

from __future__ import annotations

import bisect
import heapq
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
    CounterDescriptor,
    TracePacket,
    TrackDescriptor,
    TrackEvent,
)
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Kind
from harness.report import timeline_guest
from harness.report.timeline_guest import DeviceFault, GuestTrace

__all__ = ["GuestTrace", "Span", "TimelineStats", "VirtualClock", "Writer", "laned", "write"]

FILE_NAME = "timeline.pftrace"
SEQ_ID = 1  # one writer, one packet sequence
MAX_COMMANDS = 100_000  # command slices per device; a 7.2 cell's GPU runs ~600k
MAX_BINS = 2000  # counter samples per series: enough to see phases, small on disk
MIN_BIN_NS = 100_000
CHUNK_RECORDS = 1 << 20  # records per read (64 MiB of v2 records)


# ---- the one adapter onto the DMA trace decoder --------------------------------------



@dataclass
class TraceFile:
    """A DMA trace file's records, read in chunks as numpy structured arrays.

    The one place this module touches the trace format: dmatrace decodes it
    (a view of the mapped file, or of the decoded zstd frames).
    """

    path: Path
    device: str
    rows: np.ndarray

    @classmethod
    def open(cls, path: Path) -> TraceFile:
        device = dmatrace.device_of(path)
        return cls(path, device, dmatrace.read_trace(path, device).rows)

    @property
    def records(self) -> int:
        return len(self.rows)

    def chunks(self, size: int = CHUNK_RECORDS) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first record, records) over the whole file; a truncated
        last record is left out."""
        for first in range(0, self.records, size):
            yield first, self.rows[first:first + size]

    def span(self) -> tuple[int, int] | None:
        """Timestamps of the first and last record (the device writes them in
        time order), None for an empty trace."""
        if self.records == 0:
            return None
        return int(self.rows["timestamp_ns"][0]), int(self.rows["timestamp_ns"][-1])


@dataclass
class Scan:
    """One pass over a trace: the sparse records, DMA bytes per time bin."""

    index: np.ndarray  # record numbers of ``records``
    records: np.ndarray  # copies of the records of the kinds asked for
    lo: int = 0  # the first bin's start (ns)
    bin_ns: int = 0
    nbins: int = 0
    bytes: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)  # (kind,
    # engine, dir) -> bytes per bin of the DATA and VRAM records


def _table(kinds: Sequence[int]) -> np.ndarray:
    """A lookup table by kind byte: faster than np.isin over millions of records."""
    t = np.zeros(256, bool)
    t[list(kinds)] = True
    return t


def scan(tf: TraceFile, kinds: Sequence[int]) -> Scan:
    """Select the records of ``kinds`` and bin the DMA bytes, in one read of the file."""
    want, moved = _table(kinds), _table([Kind.DATA, Kind.VRAM])
    span = tf.span()
    lo, hi = span or (0, 0)
    bin_ns = max(MIN_BIN_NS, -(-(hi - lo + 1) // MAX_BINS))
    nbins = (hi - lo) // bin_ns + 1
    idx: list[np.ndarray] = []
    out: list[np.ndarray] = []
    sums: dict[tuple[int, int, int], np.ndarray] = {}
    for first, recs in tf.chunks():
        k = recs["kind"]
        hit = np.flatnonzero(want[k])
        idx.append(hit + first)
        out.append(recs[hit])
        sub = recs[moved[k]]
        del recs, k
        # clipped: a record out of time order lands in the first or last bin
        b = np.clip((sub["timestamp_ns"].astype(np.int64) - lo) // bin_ns, 0, nbins - 1)
        key = ((sub["kind"].astype(np.int32) << 16) | (sub["engine"].astype(np.int32) << 8)
               | sub["dir"].astype(np.int32))
        for kv in np.unique(key).tolist():
            m = key == kv
            got = np.bincount(b[m], weights=sub["len"][m].astype(np.float64), minlength=nbins)
            k3 = (kv >> 16, (kv >> 8) & 0xFF, kv & 0xFF)
            sums[k3] = sums[k3] + got if k3 in sums else got
    if not out:
        return Scan(np.zeros(0, np.int64), tf.rows[:0])
    return Scan(np.concatenate(idx), np.concatenate(out), lo, bin_ns, nbins, sums)


# ---- clocks ------------------------------------------------------------------------

@dataclass(frozen=True)
class VirtualClock:
    """Host CLOCK_MONOTONIC ns -> QEMU_CLOCK_VIRTUAL ns.

    Without icount QEMU's virtual clock is the host's CLOCK_MONOTONIC plus an
    offset, which QEMU sets when the VM starts running (``cont``: 0 then, as
    the harness starts QEMU with -S) and moves while it is stopped. QEMU
    sends its RESUME (and STOP) event a few microseconds before it starts
    (stops) the clock, with a wall-clock timestamp (µs); one (wall, monotonic)
    pair the runner sampled near the start turns those into monotonic times.
    ``runs``: (monotonic ns when it started running, virtual ns then).
    """

    runs: tuple[tuple[int, int], ...]
    stops: tuple[int, ...]  # monotonic ns of each STOP after runs[i] (or none yet)

    @classmethod
    def from_qmp_events(cls, events_file: Path, wall_ns: int, mono_ns: int) -> VirtualClock:
        """From ``qmp-events.jsonl`` and a (time.time_ns(), time.monotonic_ns()) pair."""
        runs: list[tuple[int, int]] = []
        stops: list[int] = []
        virtual = 0
        for line in events_file.read_text().splitlines():
            try:
                ev = json.loads(line)
                stamp = ev["timestamp"]
                wall = stamp["seconds"] * 10**9 + stamp["microseconds"] * 1000
            except (ValueError, KeyError, TypeError):
                continue
            mono = wall - wall_ns + mono_ns
            if ev.get("event") == "RESUME" and len(stops) == len(runs):
                runs.append((mono, virtual))
            elif ev.get("event") == "STOP" and len(stops) < len(runs):
                stops.append(mono)
                virtual += mono - runs[-1][0]
        return cls(tuple(runs), tuple(stops))

    def to_virtual(self, mono_ns: int) -> int | None:
        """The virtual time at host monotonic ``mono_ns``; None before QEMU first ran."""
        i = bisect.bisect_right([m for m, _v in self.runs], mono_ns) - 1
        if i < 0:
            return None
        start, virtual = self.runs[i]
        end = self.stops[i] if i < len(self.stops) else mono_ns
        return virtual + min(mono_ns, end) - start


@dataclass(frozen=True)
class Span:
    """Something the harness did, in host CLOCK_MONOTONIC ns."""

    name: str
    start_ns: int
    end_ns: int
    track: str = "scenarios"  # the harness track it goes on
    args: dict[str, str] = field(default_factory=dict)


@dataclass
class TimelineStats:
    """What :func:`write` wrote, for results.json."""

    path: str = FILE_NAME
    bytes: int = 0
    seconds: float = 0.0
    devices: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    guest: dict[str, Any] = field(default_factory=dict)  # the guest's tracks, alignment

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "devices": self.devices, "notes": self.notes,
                **({"guest": self.guest} if self.guest else {})}


# ---- writing -----------------------------------------------------------------------

class _Writer:
    """Tracks and events onto a streaming trace builder."""

    def __init__(self, out: IO[bytes]) -> None:
        self.builder = StreamingTraceProtoBuilder(out)
        self._uuid = 0
        self._first = True
        self.flow = 0
        self.faults: dict[str, list[DeviceFault]] = {}  # trace file -> its drawn faults

    def _packet(self) -> TracePacket:
        p = self.builder.create_packet()
        p.trusted_packet_sequence_id = SEQ_ID
        if self._first:  # a sequence's first packet says its state starts here
            p.sequence_flags = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            self._first = False
        return p

    def track(self, name: str, parent: int | None = None, counter_unit: int | None = None,
              rank: int | None = None) -> int:
        self._uuid += 1
        p = self._packet()
        d: TrackDescriptor = p.track_descriptor
        d.uuid = self._uuid
        d.name = name
        if parent is not None:
            d.parent_uuid = parent
        if rank is not None:  # keep the order tracks are written in
            d.child_ordering = TrackDescriptor.EXPLICIT
            d.sibling_order_rank = rank
        if counter_unit is not None:
            d.counter.unit = counter_unit
        self.builder.write_packet(p)
        return self._uuid

    def event(self, track: int, ts: int, kind: int, name: str = "",
              args: dict[str, Any] | None = None, flows: Sequence[int] = (),
              ends_flows: Sequence[int] = (), value: int | None = None) -> None:
        p = self._packet()
        p.timestamp = max(0, int(ts))
        e: TrackEvent = p.track_event
        e.type = kind
        e.track_uuid = track
        if name:
            e.name = name
        if value is not None:
            e.counter_value = int(value)
        e.flow_ids.extend(flows)
        e.terminating_flow_ids.extend(ends_flows)
        for k, v in (args or {}).items():
            a = e.debug_annotations.add()
            a.name = k
            if isinstance(v, bool | str):
                a.string_value = str(v)
            elif isinstance(v, int):
                a.int_value = v if v < 1 << 63 else v - (1 << 64)
            else:
                a.string_value = str(v)
        self.builder.write_packet(p)

    def slice(self, track: int, start: int, end: int, name: str,
              args: dict[str, Any] | None = None, flows: Sequence[int] = ()) -> None:
        self.event(track, start, TrackEvent.TYPE_SLICE_BEGIN, name, args, flows)
        self.event(track, max(start, end), TrackEvent.TYPE_SLICE_END)

    def instant(self, track: int, ts: int, name: str, args: dict[str, Any] | None = None,
                flows: Sequence[int] = (), ends_flows: Sequence[int] = ()) -> None:
        self.event(track, ts, TrackEvent.TYPE_INSTANT, name, args, flows, ends_flows)

    def counter(self, track: int, ts: int, value: int) -> None:
        self.event(track, ts, TrackEvent.TYPE_COUNTER, value=value)


def _lanes(spans: Sequence[tuple[int, int]]) -> list[int]:
    """A lane per span (sorted by start) so that spans on one lane do not overlap:
    Perfetto nests the slices of one track, and commands and faults overlap
    without nesting."""
    free: list[tuple[int, int]] = []  # (end, lane)
    lanes: list[int] = []
    count = 0
    for start, end in spans:
        if free and free[0][0] <= start:
            _e, lane = heapq.heappop(free)
        else:
            lane, count = count, count + 1
        lanes.append(lane)
        heapq.heappush(free, (end, lane))
    return lanes


def _laned(w: _Writer, parent: int, name: str, rank: int,
           items: Sequence[tuple[int, int, Callable[[int], None]]]) -> None:
    """Write ``items`` (start, end, emit(track)) on as many lanes under a track
    ``name`` as their overlap needs; each lane's events in time order."""
    if not items:
        return
    items = sorted(items, key=lambda t: (t[0], t[1]))
    lanes = _lanes([(s, e) for s, e, _f in items])
    group = w.track(name, parent, rank=rank)
    tracks = [w.track(f"{name} {i}" if i else name, group, rank=i) for i in range(max(lanes) + 1)]
    for (_s, _e, emit), lane in zip(items, lanes, strict=True):
        emit(tracks[lane])


def _device_name(path: Path) -> str:
    m = re.fullmatch(r"dmatrace-(nic)?(\d+)\.bin", path.name)
    if not m:
        return path.stem
    return f"{dmatrace.NIC if m.group(1) else dmatrace.GPU} {m.group(2)}"


def _engine(device: str, value: int) -> str:
    try:
        return dmatrace.ENGINES[device](value).name
    except ValueError:
        return f"?{value}"


def _device(w: _Writer, tf: TraceFile, rank: int, dmas: bool, max_commands: int) -> dict[str, int]:
    """Every track of one device trace file; returns what it wrote."""
    stats = {"records": tf.records}
    root = w.track(f"{_device_name(tf.path)} ({tf.path.name})", rank=rank)
    sparse = (Kind.CMD_FETCH, Kind.CPL_WRITE, Kind.COPY_LIST, Kind.FAULT_WRITE,
              Kind.EV_REPLAY, Kind.EV_CANCEL, Kind.EV_TLB_INV)
    sc = scan(tf, [int(k) for k in sparse])
    idx, recs = sc.index, sc.records
    kinds = recs["kind"]
    ts = recs["timestamp_ns"].astype(np.int64)
    first_ns = int(ts[0]) if len(ts) else 0

    # commands: fetch .. completion, per command id (ids repeat once completed)
    open_cmd: dict[int, tuple[int, int, bool]] = {}  # cmd id -> (start, ctx, migrate)
    cmds: list[tuple[int, int, int, int, bool]] = []  # start, end, cmd, ctx, migrate
    dropped = 0
    sel = np.flatnonzero(np.isin(kinds, [Kind.CMD_FETCH, Kind.CPL_WRITE, Kind.COPY_LIST]))
    fetch, copy_list = int(Kind.CMD_FETCH), int(Kind.COPY_LIST)  # plain ints: a hot loop
    sel_ts, sel_cmd = ts[sel].tolist(), recs["cmd_id"][sel].tolist()
    sel_ctx = recs["ctx"][sel].tolist()
    for k, when, cmd, ctx in zip(kinds[sel].tolist(), sel_ts, sel_cmd, sel_ctx, strict=True):
        if k == fetch:
            open_cmd[cmd] = (when, ctx, False)
        elif k == copy_list:
            if cmd in open_cmd:
                start, ctx0, _m = open_cmd[cmd]
                open_cmd[cmd] = (start, ctx0, True)
        elif cmd in open_cmd:
            start, ctx0, migrate = open_cmd.pop(cmd)
            if len(cmds) < max_commands:
                cmds.append((start, when, cmd, ctx0, migrate))
            else:
                dropped += 1
    stats["commands"] = len(cmds)
    stats["commands_not_drawn"] = dropped
    stats["commands_open_at_end"] = len(open_cmd)

    def cmd_item(c: tuple[int, int, int, int, bool]) -> tuple[int, int, Callable[[int], None]]:
        start, end, cmd, ctx, migrate = c
        name = "migrate" if migrate else "command"
        return start, end, lambda t: w.slice(t, start, end, name, {"cmd_id": cmd, "ctx": ctx})

    _laned(w, root, "commands", 0, [cmd_item(c) for c in cmds if not c[4]])
    _laned(w, root, "migrations", 1, [cmd_item(c) for c in cmds if c[4]])

    # faults: record write .. the first REPLAY after it (a replay lets every
    # stalled job walk again) or the CANCEL of its token
    open_faults: dict[int, int] = {}  # token -> fault number
    faults: list[dict[str, int]] = []
    releases: list[tuple[int, str, list[int], dict[str, int]]] = []  # ts, what, faults, args
    for i in np.flatnonzero(np.isin(kinds, [Kind.FAULT_WRITE, Kind.EV_REPLAY,
                                            Kind.EV_CANCEL])).tolist():
        k, r = kinds[i], recs[i]
        if k == Kind.FAULT_WRITE:
            open_faults[int(r["aux"])] = len(faults)
            faults.append({"start": int(ts[i]), "end": -1, "cmd_id": int(r["cmd_id"]),
                           "ctx": int(r["ctx"]), "va": int(r["va"]), "token": int(r["aux"]),
                           "index": int(idx[i]), "flow": 0})
        elif k == Kind.EV_REPLAY:
            done = list(open_faults.values())
            open_faults.clear()
            releases.append((int(ts[i]), "replay", done, {"jobs": int(r["aux"])}))
        else:
            gone = open_faults.pop(int(r["aux"]), None)
            releases.append((int(ts[i]), "cancel", [] if gone is None else [gone],
                             {"token": int(r["aux"]), "cmd_id": int(r["cmd_id"]),
                              "va": int(r["va"])}))
        if k != Kind.FAULT_WRITE:
            for n in releases[-1][2]:
                faults[n]["end"] = int(ts[i])
                faults[n]["release"] = len(releases) - 1
    retries = _retries(tf, faults, releases)
    stats["faults"] = len(faults)
    stats["faults_open_at_end"] = len(open_faults)
    for f in faults:
        w.flow += 1
        f["flow"] = w.flow
    w.faults[tf.path.name] = [DeviceFault(f["start"], f["end"], f["token"], f["flow"])
                              for f in faults]

    def fault_item(f: dict[str, int]) -> tuple[int, int, Callable[[int], None]]:
        end = f["end"] if f["end"] >= 0 else max(f["start"], int(ts[-1]))
        how = "open at the end" if f["end"] < 0 else releases[f["release"]][1]
        args = {"va": f"0x{f['va']:x}", "cmd_id": f["cmd_id"], "ctx": f["ctx"],
                "token": f["token"], "ended_by": how}
        return f["start"], end, lambda t: w.slice(t, f["start"], end, "fault", args,
                                                  [f["flow"]])

    _laned(w, root, "faults", 2, [fault_item(f) for f in faults])
    events = w.track("fault replay/cancel", root, rank=3)
    retried = {n for n, _t in retries.items()}
    for when, what, done, args in releases:
        flows = [faults[n]["flow"] for n in done]
        w.instant(events, when, what, {**args, "faults": len(done)},
                  flows=[f for n, f in zip(done, flows, strict=True) if n in retried],
                  ends_flows=[f for n, f in zip(done, flows, strict=True) if n not in retried])
    if retries:
        retry_track = w.track("fault retry (first walk after the replay)", root, rank=4)
        for n, when in sorted(retries.items(), key=lambda t: t[1]):
            f = faults[n]
            w.instant(retry_track, when, "retry", {"cmd_id": f["cmd_id"], "ctx": f["ctx"]},
                      ends_flows=[f["flow"]])

    tlb = w.track("TLB invalidations", root, rank=5)
    for i in np.flatnonzero(kinds == Kind.EV_TLB_INV).tolist():
        r = recs[i]
        span = "all" if int(r["aux"]) == dmatrace.ALL else f"0x{int(r['aux']):x}"
        w.instant(tlb, int(ts[i]), "TLB invalidate",
                  {"va": f"0x{int(r['va']):x}", "len": span, "ctx": int(r["ctx"]),
                   "cmd_id": int(r["cmd_id"])})
    stats["tlb_invalidations"] = int(np.count_nonzero(kinds == Kind.EV_TLB_INV))

    _counters(w, tf.device, sc, root)
    stats["bin_ns"] = sc.bin_ns
    if dmas:
        stats["dmas"] = _dmas(w, tf, root)
    w.instant(root, first_ns, "timeline", {k: v for k, v in stats.items()})
    return stats


def _retries(tf: TraceFile, faults: list[dict[str, int]],
             releases: list[tuple[int, str, list[int], dict[str, int]]]) -> dict[int, int]:
    """Fault number -> time of its job's first page walk after the replay that
    released it (its retry), where the trace has one."""
    want: dict[tuple[int, int], list[int]] = {}  # (cmd, ctx) -> fault numbers
    for n, f in enumerate(faults):
        if "release" in f and releases[f["release"]][1] == "replay":
            want.setdefault((f["cmd_id"], f["ctx"]), []).append(n)
    if not want:
        return {}
    cmds = np.fromiter({c for c, _x in want}, np.uint64)
    walks_i: list[np.ndarray] = []
    walks: list[np.ndarray] = []
    for first, recs in tf.chunks():
        ptw = np.flatnonzero(recs["kind"] == Kind.PTW)
        hit = ptw[np.isin(recs["cmd_id"][ptw], cmds)]
        walks_i.append(hit + first)
        walks.append(recs[["timestamp_ns", "cmd_id", "ctx"]][hit].copy())
        del recs
    wi, wr = np.concatenate(walks_i), np.concatenate(walks)
    by_job: dict[tuple[int, int], list[int]] = {}
    for j, (c, x) in enumerate(zip(wr["cmd_id"].tolist(), wr["ctx"].tolist(), strict=True)):
        if (c, x) in want:
            by_job.setdefault((c, x), []).append(j)
    out: dict[int, int] = {}
    for key, pending in want.items():
        rows = by_job.get(key, [])
        row_idx = [int(wi[j]) for j in rows]
        for n in pending:
            f = faults[n]
            # the first walk of that job at or after the replay's time, after its fault
            k = bisect.bisect_right(row_idx, f["index"])
            released = releases[f["release"]][0]
            while k < len(rows) and int(wr["timestamp_ns"][rows[k]]) < released:
                k += 1
            if k < len(rows):
                out[n] = int(wr["timestamp_ns"][rows[k]])
    return out


def _counters(w: _Writer, device: str, sc: Scan, root: int) -> None:
    """DMA bytes per time bin, one counter track per engine and direction (and
    device-internal VRAM accesses)."""
    if not sc.bytes:
        return
    group = w.track("DMA bytes per bin", root, rank=6)
    for rank, (kind, engine, dr) in enumerate(sorted(sc.bytes)):
        label = "VRAM access" if kind == Kind.VRAM else "DMA"
        dname = Dir(dr).name.lower() if dr in set(Dir) else f"?{dr}"
        name = f"{label} {_engine(device, engine)} {dname} (bytes/{sc.bin_ns // 1000} µs)"
        t = w.track(name, group, counter_unit=CounterDescriptor.UNIT_SIZE_BYTES, rank=rank)
        values = sc.bytes[(kind, engine, dr)].astype(np.int64)
        # a sample where the value changes: a long idle stretch costs two
        for i in np.flatnonzero(np.diff(values, prepend=-1) != 0).tolist():
            w.counter(t, sc.lo + i * sc.bin_ns, int(values[i]))
        w.counter(t, sc.lo + sc.nbins * sc.bin_ns, 0)


def _dmas(w: _Writer, tf: TraceFile, root: int) -> int:
    """Every DATA and VRAM record as an instant, in trace order."""
    t = w.track("DMAs", root, rank=7)
    moved = _table([Kind.DATA, Kind.VRAM])
    count = 0
    for _first, recs in tf.chunks():
        for r in recs[moved[recs["kind"]]]:
            what = "VRAM" if r["kind"] == Kind.VRAM else "DMA"
            w.instant(t, int(r["timestamp_ns"]),
                      f"{what} {_engine(tf.device, int(r['engine']))} "
                      f"{Dir(int(r['dir'])).name.lower()}",
                      {"addr": f"0x{int(r['addr']):x}", "len": int(r["len"]),
                       "cmd_id": int(r["cmd_id"]), "ctx": int(r["ctx"]),
                       "va": f"0x{int(r['va']):x}" if "va" in r.dtype.names else "",
                       "result": int(r["result"])})
            count += 1
        del recs
    return count


def write(results_dir: Path, spans: Sequence[Span] = (), clock: VirtualClock | None = None,
          traces: Sequence[Path] | None = None, dmas: bool = False,
          max_commands: int = MAX_COMMANDS, out: Path | None = None,
          guest: GuestTrace | None = None) -> TimelineStats:
    """Write ``results_dir/timeline.pftrace`` from the run's device traces
    (``dmatrace-*.bin`` there unless ``traces``), the harness's ``spans``
    (host monotonic ns, mapped with ``clock``) and the guest's ftrace."""
    import time

    t0 = time.monotonic()
    stats = TimelineStats()
    path = out or results_dir / FILE_NAME
    if traces is None:
        traces = sorted(results_dir.glob("dmatrace-*.bin"),
                        key=lambda p: (len(p.name), p.name))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        w = _Writer(f)
        harness_root = w.track("harness", rank=0)
        by_track: dict[str, int] = {}
        if spans and clock is None:
            stats.notes.append("no clock mapping: harness spans left out")
            spans = ()
        for s in spans:
            assert clock is not None
            start, end = clock.to_virtual(s.start_ns), clock.to_virtual(s.end_ns)
            if start is None and end is not None:  # begun before QEMU ran (boot)
                start = 0
            if start is None or end is None:
                stats.notes.append(f"{s.name}: before QEMU ran, left out")
                continue
            if s.track not in by_track:
                by_track[s.track] = w.track(s.track, harness_root, rank=len(by_track))
            w.slice(by_track[s.track], start, end, s.name, s.args)
        for rank, p in enumerate(traces, start=1):
            try:
                tf = TraceFile.open(p)
            except (dmatrace.TraceError, OSError) as e:
                stats.notes.append(f"{p.name}: {e}")
                continue
            stats.devices[p.name] = _device(w, tf, rank, dmas, max_commands)
        if guest is not None:
            try:
                stats.guest = timeline_guest.add(w, guest, traces, w.faults, len(traces) + 1)
            except OSError as e:
                stats.notes.append(f"{guest.path.name}: {e}")
    tmp.replace(path)
    stats.path = path.name
    stats.bytes = path.stat().st_size
    stats.seconds = time.monotonic() - t0
    return stats


# for the guest's tracks (timeline_guest): the writer and the laning, by public names
Writer = _Writer
laned = _laned

"""The guest's tracks of timeline.pftrace: its kernel's ftrace, on QEMU's virtual clock.

From ``ftrace.txt`` (harness.guest.ftrace) and the device traces' clock-sync
records (harness.checks.clocksync maps guest mono ns onto the virtual clock):

- per hmm-gpu the driver saw (``dev=`` of its tracepoints, matched to a
  ``dmatrace-N.bin`` by the PCI devfn in the trace's header): fault service
  as slices from ``hmm_gpu_fault_begin`` to ``hmm_gpu_fault_end`` (token,
  action), each joined by a flow to the device's fault record before it
  (same token, the nearest one before) and to the REPLAY or CANCEL that
  released it (which may come first: one REPLAY releases every stalled
  job); migrations as slices (begin .. end on one thread);
  notifier invalidations, evictions, device-exclusive grants and the clock
  syncs as instants with their fields;
- the kernel's events, a track per trace system (migrate, exceptions, tlb,
  ...), each event an instant with its fields; an event nobody here knows
  is kept the same way, on an ``other`` track;
- the scenarios as the guest saw them (the harness's trace_marker lines).

An ``alignment`` instant on the guest's root track, and the stats, carry
how well the two clocks line up (:class:`harness.checks.clocksync.Alignment`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.checks import clocksync, dmatrace, ftrace

if TYPE_CHECKING:
    from harness.report.timeline import Writer

DRIVER = "hmm_gpu"
MAX_ARGS = 8  # fields shown per kernel event
# how far (guest time, ns) a driver's fault_begin may map before its device fault
# record and still be joined to it: well above the measured misalignment (~1 us)
JOIN_SLACK_NS = 20_000
_PAIRED = ("hmm_gpu_fault_begin", "hmm_gpu_fault_end", "hmm_gpu_migrate_begin",
           "hmm_gpu_migrate_end")
_PCI_RE = re.compile(r"^(?:[0-9a-f]{4}:)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


@dataclass(frozen=True)
class GuestTrace:
    """What the run collected: ftrace.txt and the events set_event listed at the end
    (``system:event``; names the system of each event)."""

    path: Path
    enabled: tuple[str, ...] = ()


@dataclass
class DeviceFault:
    """A fault record the device tracks drew (timeline._device), for the flows."""

    start: int  # virtual ns of the record
    end: int  # of the REPLAY/CANCEL that released it, -1: none
    token: int
    flow: int


def devfn_of(pci_name: str) -> int | None:
    """``0000:00:04.0`` -> devfn 0x20 (what the DMA trace's header carries)."""
    m = _PCI_RE.match(pci_name.strip().lower())
    if not m:
        return None
    return (int(m.group(2), 16) << 3) | int(m.group(3))


def device_syncs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(virtual ns, guest ns written) of a trace's EV_CLOCK_SYNC records."""
    sel = rows[rows["kind"] == clocksync.EV_CLOCK_SYNC]
    return list(zip(sel["timestamp_ns"].astype(np.int64).tolist(),
                    sel["va"].astype(np.int64).tolist(), strict=True))


def _pairs_by_key(events: Sequence[ftrace.Event], begin: str, end: str,
                  key: Callable[[ftrace.Event], tuple[Any, ...]]
                  ) -> list[tuple[ftrace.Event, ftrace.Event | None]]:
    """Begin/end events paired by ``key`` (the latest open begin of that key)."""
    open_: dict[tuple[Any, ...], list[ftrace.Event]] = defaultdict(list)
    out: list[tuple[ftrace.Event, ftrace.Event | None]] = []
    index: dict[int, int] = {}
    for e in events:
        if e.name == begin:
            index[id(e)] = len(out)
            out.append((e, None))
            open_[key(e)].append(e)
        elif e.name == end and open_[key(e)]:
            b = open_[key(e)].pop()
            out[index[id(b)]] = (b, e)
    return out


def join_faults(device: Sequence[DeviceFault], begins: Sequence[tuple[int, int]],
                slack_ns: int = JOIN_SLACK_NS) -> dict[int, int]:
    """Driver fault_begin number -> the device fault (index) it serviced.

    ``begins``: (virtual ns, token) of each fault_begin. Each device fault,
    in time order, takes the first begin of its token not yet taken at or
    after its record (less ``slack_ns`` of misalignment) and before the
    device next uses that token. Not bounded by the fault's release: one
    REPLAY lets every stalled job walk again, so the driver may take a
    record off the ring after the replay that released it already."""
    by_token: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for n, (ts, token) in enumerate(begins):
        by_token[token].append((ts, n))
    for lst in by_token.values():
        lst.sort()
    order = sorted(range(len(device)), key=lambda k: device[k].start)
    reuse: dict[int, int] = {}  # device fault -> when its token is next used
    last: dict[int, int] = {}
    for i in reversed(order):
        f = device[i]
        if f.token in last:
            reuse[i] = last[f.token]
        last[f.token] = f.start
    taken: set[int] = set()
    out: dict[int, int] = {}
    for i in order:
        f = device[i]
        for ts, n in by_token.get(f.token, []):
            if n in taken or ts < f.start - slack_ns:
                continue
            if i in reuse and ts >= reuse[i] - slack_ns:
                break
            taken.add(n)
            out[n] = i
            break
    return out


def _args(e: ftrace.Event, limit: int = MAX_ARGS) -> dict[str, Any]:
    args: dict[str, Any] = dict(list(e.fields.items())[:limit])
    if not e.fields:
        args["text"] = e.text[:200]
    args.update({"task": f"{e.task}-{e.pid}", "cpu": e.cpu})
    return args


def _driver_tracks(w: Writer, g: int, mine: Sequence[ftrace.Event],
                   dev_faults: Sequence[DeviceFault], v: Callable[[int], int]) -> int:
    """One device's driver tracks under ``g``; returns how many fault services were
    joined to a device fault."""
    from harness.report.timeline import laned  # the device tracks' laning

    service = _pairs_by_key(mine, "hmm_gpu_fault_begin", "hmm_gpu_fault_end",
                            lambda e: (e.fields.get("token"),))
    join = join_faults(dev_faults, [(v(b.ts_ns), b.int_field("token")) for b, _e in service])

    def slice_item(b: ftrace.Event, e: ftrace.Event | None, name: str, args: dict[str, Any],
                   flows: list[int]) -> tuple[int, int, Callable[[int], None]]:
        start = v(b.ts_ns)
        end = v(e.ts_ns) if e is not None else start
        return start, end, lambda tr: w.slice(tr, start, end, name, args, flows)

    items = []
    for n, (b, e) in enumerate(service):
        done = ({"ret": e.fields.get("ret", ""), "action": e.fields.get("action", "")}
                if e is not None else {"action": "no fault_end"})
        flows = [dev_faults[join[n]].flow] if n in join else []
        items.append(slice_item(b, e, "fault service", {**_args(b), **done}, flows))
    laned(w, g, "fault service", 0, items)
    items = []
    for b, e in _pairs_by_key(mine, "hmm_gpu_migrate_begin", "hmm_gpu_migrate_end",
                              lambda e: (e.pid,)):
        done = {"cpages": e.fields.get("cpages", ""), "ret": e.fields.get("ret", "")} if e else {}
        items.append(slice_item(b, e, f"migrate {b.fields.get('dir', '?')}",
                                {**_args(b), **done}, []))
    laned(w, g, "migrate", 1, items)
    by_name: dict[str, list[ftrace.Event]] = defaultdict(list)
    for e in mine:
        if e.name not in _PAIRED:
            by_name[e.name.removeprefix(DRIVER + "_")].append(e)
    for r, (name, evs) in enumerate(sorted(by_name.items()), start=2):
        t = w.track(name, g, rank=r)
        for e in evs:
            what = f"invalidate {e.fields.get('event', '?')}" if name == "invalidate" else name
            w.instant(t, v(e.ts_ns), what, _args(e))
    return len(join)


def add(w: Writer, guest: GuestTrace, traces: Sequence[Path],
        faults: dict[str, list[DeviceFault]], rank: int) -> dict[str, Any]:
    """Write the guest's tracks; returns their stats (alignment included)."""
    stats: dict[str, Any] = {"file": guest.path.name, "notes": []}
    with guest.path.open(errors="replace") as f:
        parsed = ftrace.parse(f)
    events = parsed.events
    stats["events"] = len(events)
    stats["lost_in_text"] = sum(parsed.lost.values())

    # device side: devfn -> trace file, and each device's clock-sync records
    by_devfn: dict[int, Path] = {}
    device_recs: dict[int, list[tuple[int, int]]] = {}
    for p in traces:
        if dmatrace.device_of(p) != dmatrace.GPU:
            continue
        try:
            trace = dmatrace.read_trace(p)
        except (dmatrace.TraceError, OSError) as err:
            stats["notes"].append(f"{p.name}: {err}")
            continue
        by_devfn[trace.header.devfn] = p
        device_recs[trace.header.devfn] = device_syncs(trace.rows)
    devs = sorted({e.fields["dev"] for e in events
                   if e.name.startswith(DRIVER + "_") and "dev" in e.fields})
    file_of: dict[str, Path] = {}
    for d in devs:
        fn = devfn_of(d)
        if fn is not None and fn in by_devfn:
            file_of[d] = by_devfn[fn]
        else:
            stats["notes"].append(f"{d}: no device trace with its devfn")
    rev = {p: fn for fn, p in by_devfn.items()}
    recs: dict[str, Sequence[tuple[int, int]]] = {d: device_recs[rev[p]]
                                                   for d, p in file_of.items()}
    ps, un_drv, un_dev = clocksync.pairs(clocksync.driver_syncs(events), recs)
    cmap = clocksync.fit(ps, un_drv, un_dev)
    if cmap is None:
        stats["notes"].append("no clock-sync pair (driver tracepoint + device record): "
                              "guest tracks not drawn")
        return stats
    stats["alignment"] = cmap.alignment.to_dict()
    stats["alignment_text"] = cmap.alignment.text()
    v = cmap.to_virtual

    root = w.track(f"guest ({guest.path.name})", rank=rank)
    w.instant(root, v(ps[0].guest_ns), "clock alignment",
              {"text": cmap.alignment.text(), **{k: str(x) for k, x in
                                                 cmap.alignment.to_dict().items()}})

    marks = list(ftrace.markers(events))
    if marks:
        t = w.track("scenarios (guest marks)", root, rank=0)
        begun: dict[str, int] = {}
        for name, edge, ts in marks:
            if edge == "begin":
                begun[name] = ts
            elif name in begun:
                w.slice(t, v(begun.pop(name)), v(ts), name)

    system_of = {e.split(":", 1)[1]: e.split(":", 1)[0] for e in guest.enabled if ":" in e}
    drv = [e for e in events if e.name.startswith(DRIVER + "_")]
    joined = 0
    for i, dev in enumerate(devs):
        label = f"{dmatrace.GPU} {file_of[dev].name}" if dev in file_of else "no trace"
        g = w.track(f"hmm_gpu.ko {dev} ({label})", root, rank=1 + i)
        joined += _driver_tracks(w, g, [e for e in drv if e.fields.get("dev") == dev],
                                 faults.get(file_of[dev].name, []) if dev in file_of else [], v)
    stats["faults_joined"] = joined
    stats["faults_device"] = sum(len(faults.get(p.name, [])) for p in set(file_of.values()))
    stats["fault_services"] = sum(1 for e in drv if e.name == "hmm_gpu_fault_begin")

    # the kernel's events, a track per trace system
    kernel: dict[str, list[ftrace.Event]] = defaultdict(list)
    for e in events:
        if e.name.startswith(DRIVER + "_") and "dev" in e.fields:
            continue
        if e.name == ftrace.MARKER_EVENT and ftrace.MARKER_RE.match(e.text.strip()):
            continue
        kernel[system_of.get(e.name, "other")].append(e)
    if kernel:
        k = w.track("kernel", root, rank=1 + len(devs))
        for r, (system, evs) in enumerate(sorted(kernel.items())):
            t = w.track(system, k, rank=r)
            for e in evs:
                w.instant(t, v(e.ts_ns), e.name, _args(e))
    stats["by_system"] = {s: len(evs) for s, evs in sorted(kernel.items())}
    return stats

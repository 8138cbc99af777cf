"""Reading a timeline.pftrace back with Perfetto's own protos, for the timeline tests
(tests/unit, tests/e2e): tests/ is on sys.path through its conftest.py."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

BEGIN, END = TrackEvent.TYPE_SLICE_BEGIN, TrackEvent.TYPE_SLICE_END
INSTANT, COUNTER = TrackEvent.TYPE_INSTANT, TrackEvent.TYPE_COUNTER


@dataclass
class Ev:
    ts: int
    type: int
    track: str  # the track's name
    name: str
    args: dict[str, object]
    flows: list[int]
    ends_flows: list[int]
    value: int = 0
    uuid: int = 0  # the track's


@dataclass
class Decoded:
    tracks: dict[int, str] = field(default_factory=dict)  # uuid -> name
    parents: dict[int, int] = field(default_factory=dict)
    events: list[Ev] = field(default_factory=list)  # in file order

    def on(self, prefix: str) -> list[Ev]:
        return [e for e in self.events if e.track.startswith(prefix)]


def decode(path: Path) -> Decoded:
    trace = Trace()
    trace.ParseFromString(path.read_bytes())
    out = Decoded()
    for p in trace.packet:
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            out.tracks[d.uuid] = d.name
            if d.HasField("parent_uuid"):
                out.parents[d.uuid] = d.parent_uuid
        elif p.HasField("track_event"):
            e = p.track_event
            args: dict[str, object] = {
                a.name: a.int_value if a.HasField("int_value") else a.string_value
                for a in e.debug_annotations}
            out.events.append(Ev(p.timestamp, e.type, out.tracks[e.track_uuid], e.name, args,
                                 list(e.flow_ids), list(e.terminating_flow_ids),
                                 e.counter_value, e.track_uuid))
    return out


def slices(events: list[Ev]) -> list[tuple[Ev, int]]:
    """(begin event, end time) of the slices on each track, pairing begin/end per track."""
    stack: dict[int, list[Ev]] = defaultdict(list)
    out = []
    for e in events:
        if e.type == BEGIN:
            stack[e.uuid].append(e)
        elif e.type == END:
            out.append((stack[e.uuid].pop(), e.ts))
    assert not any(stack.values()), "a slice was never ended"
    return out

"""timeline.pftrace: written from real DMA traces, decoded back with Perfetto's protos.

The traces under data/ are real: dmatrace-svm-7.2.bin is hmm-gpu 1's whole
trace of a 7.2 matrix cell (svm scenarios: faults replayed), and
dmatrace-cancel-excerpt.bin is 600 records of a 6.1 cell's hmm-gpu 0 trace
around a burst of FAULT_CANCELs (the header, then records 387000..387600).
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest
from timeline_events import COUNTER, Decoded, decode, slices

from harness.checks.dmatrace import Kind, read_kinds, read_trace
from harness.core import config
from harness.report import timeline

DATA = Path(__file__).parent / "data"
SVM = DATA / "dmatrace-svm-7.2.bin"
CANCEL = DATA / "dmatrace-cancel-excerpt.bin"


@pytest.fixture(scope="module")
def svm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Decoded, timeline.TimelineStats]:
    run = tmp_path_factory.mktemp("run")  # a results directory, as the runner has it
    (run / "dmatrace-1.bin").write_bytes(SVM.read_bytes())
    stats = timeline.write(run)
    assert stats.path == timeline.FILE_NAME and stats.bytes > 0
    return decode(run / timeline.FILE_NAME), stats


def test_a_fault_its_replay_and_retry_are_joined_by_a_flow_in_order(svm):
    tl, _stats = svm
    # the trace's first fault: token 1, cmd 262144, va 0x7f0c7a755000, its record
    # written at 35915152587; the next REPLAY (2 jobs) at 35915763793
    faults = [(b, end) for b, end in slices(tl.events) if b.name == "fault"]
    assert len(faults) == 9  # FAULT_WRITE records in the trace
    first, end = next((b, end) for b, end in faults if b.args["token"] == 1)
    assert first.ts == 35915152587 and end == 35915763793
    assert first.args["cmd_id"] == 262144 and first.args["va"] == "0x7f0c7a755000"
    assert first.args["ended_by"] == "replay"
    assert first.track.startswith("faults")
    # on a lane of the faults track of the device's own track
    uuid = first.uuid
    up = [tl.tracks[tl.parents[uuid]], tl.tracks[tl.parents[tl.parents[uuid]]]]
    assert up == ["faults", "hmm-gpu 1 (dmatrace-1.bin)"]
    [flow] = first.flows

    replay = [e for e in tl.events if flow in e.flows and e.name == "replay"]
    assert len(replay) == 1
    assert replay[0].ts == 35915763793 and replay[0].args["jobs"] == 2
    retry = [e for e in tl.events if flow in e.ends_flows]
    assert len(retry) == 1 and retry[0].name == "retry"
    assert retry[0].args["cmd_id"] == 262144
    # the retry is the job's first page walk after the replay
    walks = [r for r in read_kinds(SVM, [Kind.PTW])
             if r.cmd_id == 262144 and r.timestamp_ns >= replay[0].ts]
    assert retry[0].ts == walks[0].timestamp_ns
    assert first.ts < replay[0].ts <= retry[0].ts
    # and in the file: begin, then the replay, then the retry
    order = [tl.events.index(e) for e in (first, replay[0], retry[0])]
    assert order == sorted(order)


def test_every_fault_ends_at_the_replay_after_it(svm):
    tl, stats = svm
    replays = [r.timestamp_ns for r in read_kinds(SVM, [Kind.EV_REPLAY])]
    for b, end in slices(tl.events):
        if b.name == "fault":
            assert end == min(t for t in replays if t >= b.ts)
    assert stats.devices["dmatrace-1.bin"]["faults_open_at_end"] == 0


def test_commands_tlb_invalidations_and_dma_counters_match_the_trace(svm):
    tl, stats = svm
    trace = read_trace(SVM)
    fetched = sum(1 for r in trace.records if r.kind == Kind.CMD_FETCH)
    cmds = [b for b, _e in slices(tl.events) if b.name in ("command", "migrate")]
    assert len(cmds) == fetched == stats.devices["dmatrace-1.bin"]["commands"] == 74
    migrates = {r.cmd_id for r in trace.records if r.kind == Kind.COPY_LIST}
    assert {b.args["cmd_id"] for b in cmds if b.name == "migrate"} == migrates
    # commands overlap: no track holds two slices at once (Perfetto would nest them)
    for track in {b.uuid for b in cmds}:
        spans = sorted((b.ts, e) for b, e in slices(tl.events) if b.uuid == track)
        assert all(a[1] <= b[0] for a, b in pairwise(spans))
    tlb = [e for e in tl.events if e.track == "TLB invalidations"]
    assert len(tlb) == sum(1 for r in trace.records if r.kind == Kind.EV_TLB_INV) == 28
    # the counters add up to the DMA the trace moved, per engine and direction
    counted: dict[str, int] = defaultdict(int)
    for e in tl.events:
        if e.type == COUNTER:
            counted[e.track] += e.value
    assert counted
    dma = sum(r.len for r in trace.records if r.kind in (Kind.DATA, Kind.VRAM))
    assert sum(counted.values()) == dma


def test_a_cancelled_fault_ends_at_its_cancel_and_the_flow_there(tmp_path):
    out = tmp_path / timeline.FILE_NAME
    timeline.write(tmp_path, traces=[CANCEL], out=out)
    tl = decode(out)
    cancels = {r.aux: r for r in read_kinds(CANCEL, [Kind.EV_CANCEL])}
    faults = {b.args["token"]: (b, end) for b, end in slices(tl.events) if b.name == "fault"}
    assert len(faults) == 55
    ended = [t for t, (b, _e) in faults.items() if b.args["ended_by"] == "cancel"]
    assert ended
    for token in ended:
        b, end = faults[token]
        assert end == cancels[token].timestamp_ns
        [flow] = b.flows
        [stop] = [e for e in tl.events if flow in e.ends_flows]
        assert stop.name == "cancel" and stop.args["token"] == token and stop.ts == end


def test_individual_dmas_only_when_asked(tmp_path, svm):
    tl, _stats = svm
    assert not tl.on("DMAs")
    out = tmp_path / timeline.FILE_NAME
    stats = timeline.write(tmp_path, traces=[SVM], out=out, dmas=True)
    dmas = decode(out).on("DMAs")
    data = [r for r in read_trace(SVM).records if r.kind in (Kind.DATA, Kind.VRAM)]
    assert len(dmas) == len(data) == stats.devices[SVM.name]["dmas"]
    assert [e.ts for e in dmas] == [r.timestamp_ns for r in data]


def test_commands_beyond_the_cap_are_counted_not_drawn(tmp_path):
    out = tmp_path / timeline.FILE_NAME
    stats = timeline.write(tmp_path, traces=[SVM], out=out, max_commands=10)
    assert stats.devices[SVM.name]["commands"] == 10
    assert stats.devices[SVM.name]["commands_not_drawn"] == 64
    assert len([b for b, _e in slices(decode(out).events)
                if b.name in ("command", "migrate")]) == 10


def test_harness_spans_are_placed_on_the_virtual_clock(tmp_path):
    # QEMU's RESUME at wall 1000.000100 s, STOP at 1005 s, RESUME at 1007 s; the
    # runner sampled wall 1000 s = monotonic 50 s
    events = tmp_path / "qmp-events.jsonl"
    lines = [("RESUME", 1000, 100), ("SHUTDOWN", 1001, 0), ("STOP", 1005, 0),
             ("RESUME", 1007, 0)]
    events.write_text("".join(json.dumps({"event": n, "timestamp": {
        "seconds": s, "microseconds": us}}) + "\n" for n, s, us in lines))
    clock = timeline.VirtualClock.from_qmp_events(events, 1000 * 10**9, 50 * 10**9)
    s = 10**9
    assert clock.to_virtual(50 * s) is None  # before QEMU ran
    assert clock.to_virtual(51 * s) == s - 100_000
    assert clock.to_virtual(56 * s) == 5 * s - 100_000  # stopped: the clock stood still
    assert clock.to_virtual(58 * s) == 5 * s - 100_000 + s
    spans = [timeline.Span("boot", 49 * s, 51 * s, "run"),
             timeline.Span("smoke", 51 * s, 52 * s, args={"smoke.fill": "PASS"})]
    out = tmp_path / timeline.FILE_NAME
    timeline.write(tmp_path, spans, clock, traces=[], out=out)
    got = {b.name: (b.ts, end, b.track, b.args) for b, end in slices(decode(out).events)}
    assert got == {"boot": (0, s - 100_000, "run", {}),
                   "smoke": (s - 100_000, 2 * s - 100_000, "scenarios", {"smoke.fill": "PASS"})}


def test_the_run_file_option():
    assert config.load(None).timeline == config.TimelineConfig(enabled=True, dmas=False)
    assert not config.load_text("timeline: false\n").timeline.enabled
    assert config.load_text("timeline: {dmas: true}\n").timeline == config.TimelineConfig(
        True, True)
    with pytest.raises(config.ConfigError, match=r"<string>:1: timeline.dma: unknown key"):
        config.load_text("timeline: {dma: true}\n")
    with pytest.raises(config.ConfigError, match="expected true, false or a mapping"):
        config.load_text("timeline: 3\n")

"""odp-rc / odp-implicit: when they SKIP, and what hmm-nic's trace must show."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

import pytest

from harness import scenarios
from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Kind, NicEngine, TraceRecord
from harness.core import config
from harness.core.results import Results, Status
from harness.scenarios import Session, odp
from harness.scenarios.kernel import GuestKernel

GIB = 1 << 30
FAR = 64 * GIB
STRADDLE = 128 * GIB - 4 * 4096
RESPONDER = 1 << 63


def rec(kind: Kind, va: int = 0, engine: int = NicEngine.MMU, ctx: int = 1,
        cmd: int = 0, aux: int = 0, direction: Dir = Dir.WRITE, addr: int = 0,
        length: int = 64, level: int = 0) -> TraceRecord:
    return TraceRecord(timestamp_ns=0, addr=addr, len=length, cmd_id=cmd, ctx=ctx,
                       engine=NicEngine(engine), kind=kind, dir=direction, result=0, va=va,
                       aux=aux, level=level)


def fault(va: int, responder: bool = False) -> TraceRecord:
    return rec(Kind.FAULT_WRITE, va=va, cmd=RESPONDER if responder else 0)


def busy(*extra: TraceRecord) -> list[TraceRecord]:
    """A window where ODP did its job: a fault, its replay, an invalidation and
    payload on both sides."""
    return [fault(FAR), rec(Kind.EV_REPLAY, ctx=0, aux=1),
            rec(Kind.DATA, engine=NicEngine.REQ, direction=Dir.READ),
            rec(Kind.DATA, engine=NicEngine.RESP),
            rec(Kind.EV_TLB_INV, va=FAR, aux=4096), *extra]


def test_both_are_registered_and_in_the_default_run() -> None:
    for name in ("odp-rc", "odp-implicit"):
        sc = scenarios.create(name)
        assert isinstance(sc, odp.OdpWorkload) and sc.name == name
        assert sc.script == f"/opt/hmmlab/bin/{name}.py"
    default = config.load(None).scenarios
    assert default.index("odp-tests") < default.index("odp-rc") < default.index("odp-implicit")


class _NoSSH:
    def run(self, *a: Any, **kw: Any) -> None:
        raise AssertionError("a scenario that SKIPs must not run anything in the guest")


def _session(tmp_path: Path, devices: str, features: tuple[str, ...]) -> Session:
    cfg = config.load_text(f"devices: {devices}\n", "run.yaml")
    s = Session(cfg, tmp_path, cast(Any, None), cast(Any, _NoSSH()), Results(tmp_path / "r"))
    s.state["guest_kernel"] = GuestKernel("7.2.13", frozenset(features), "7.2.13")
    return s


def test_skips_without_a_hmm_nic_device(tmp_path: Path) -> None:
    s = _session(tmp_path, "[{type: hmm-gpu}]", ("rdma_user", "rdma_odp"))
    odp.make("odp-rc").run(s)
    (entry,) = s.results.tests
    assert (entry.path, entry.status) == ("odp-rc", Status.SKIP)
    assert "no hmm-nic device in this run" in entry.log_excerpt


def test_skips_on_a_kernel_without_odp(tmp_path: Path) -> None:
    s = _session(tmp_path, "[{type: hmm-nic}]", ("rdma_user",))
    odp.make("odp-implicit").run(s)
    (entry,) = s.results.tests
    assert (entry.path, entry.status) == ("odp-implicit", Status.SKIP)
    assert "CONFIG_INFINIBAND_ON_DEMAND_PAGING" in entry.log_excerpt


def test_window_is_the_records_written_meanwhile() -> None:
    h, r = dmatrace.HDR_SIZE, dmatrace.REC_SIZE
    assert odp.window_of(h + 10 * r, h + 25 * r) == odp.Window(10, 25)
    assert odp.window_of(0, h + 3 * r) == odp.Window(0, 3)  # the header was not there yet
    assert odp.window_of(h + 5 * r, h + 5 * r) == odp.Window(5, 5)  # nothing happened
    assert odp.window_of(h + 5 * r + 7, h + 9 * r + 63) == odp.Window(5, 9)  # part records
    assert odp.window_of(h + 9 * r, 0) == odp.Window(9, 9)  # the file went away: empty


def test_regions_come_from_the_workload_lines() -> None:
    objs = [{"test": "traffic", "ok": True,
             "regions": [{"name": "far-64g", "addr": FAR, "length": 32768},
                         {"name": "bad", "addr": "x"}]},
            {"test": "x", "skip": "why"}]
    (reg,) = odp.regions_of(objs)
    assert reg == odp.Region("traffic", "far-64g", FAR, 32768)
    assert list(reg.children) == [64]
    assert list(odp.Region("t", "s", STRADDLE, 32768).children) == [127, 128]
    assert reg.holds(FAR + 32767) and not reg.holds(FAR + 32768)


def test_activity_counts_and_attributes_faults() -> None:
    regions = [odp.Region("traffic", "far-64g", FAR, 32768)]
    act = odp.NicActivity.of(busy(fault(FAR + 8192, responder=True), fault(5 * GIB)), regions)
    assert (act.faults, act.responder_faults, act.replays, act.invalidations) == (3, 1, 1, 1)
    assert (act.req_data, act.resp_data, act.cancels) == (1, 1, 0)
    assert act.region_faults == {"traffic/far-64g": [FAR, FAR + 8192]}
    assert odp.activity_problems(act) == []
    assert act.to_dict()["region_faults"] == {"traffic/far-64g": 2}
    assert "3 faults (1 on the responder's side)" in act.format()


def test_no_fault_no_replay_no_invalidation_is_a_failure() -> None:
    act = odp.NicActivity.of([rec(Kind.CMD_FETCH, engine=NicEngine.QUEUE)], [])
    problems = "\n".join(odp.activity_problems(act))
    assert "no FAULT_WRITE" in problems and "no EV_REPLAY" in problems
    assert "no EV_TLB_INV" in problems and "payload DMA: 0 by the requester" in problems
    assert odp.activity_problems(odp.NicActivity.of([], [])) == [
        "the device traced nothing while the workload ran"]


def test_a_cancelled_fault_is_a_failure() -> None:
    act = odp.NicActivity.of(busy(rec(Kind.EV_CANCEL, aux=7)), [])
    (problem,) = odp.activity_problems(act)
    assert problem.startswith("1 faults cancelled (EV_CANCEL)")


def test_every_child_a_buffer_spans_must_have_faulted() -> None:
    regions = [odp.Region("traffic", "straddle-128g", STRADDLE, 32768),
               odp.Region("after-dontneed", "straddle-128g", STRADDLE, 32768)]
    only_below = odp.NicActivity.of(busy(fault(STRADDLE)), regions)
    (problem,) = odp.children_problems(only_below, regions, "traffic")
    assert "within GiB 128" in problem and "straddle-128g" in problem
    both = odp.NicActivity.of(busy(fault(STRADDLE), fault(128 * GIB)), regions)
    assert odp.children_problems(both, regions, "traffic") == []


def test_a_fault_on_bytes_prefetched_with_flush_is_a_failure() -> None:
    pf = odp.PREFETCH_FLUSH
    regions = [odp.Region(pf, f"{pf}.prefetch-a", 3 << 40, 32768),
               odp.Region("prefetch.prefetch", "prefetch.prefetch.prefetch-a", 2 << 40, 32768)]
    # faults after an asynchronous or a read prefetch are allowed
    act = odp.NicActivity.of(busy(fault(2 << 40)), regions)
    assert odp.prefetch_problems(act, regions) == []
    act = odp.NicActivity.of(busy(fault((3 << 40) + 4096, responder=True)), regions)
    (problem,) = odp.prefetch_problems(act, regions)
    assert "1 faults in prefetch.prefetch_write.flush.prefetch-a" in problem
    assert f"first at {(3 << 40) + 4096:#x}" in problem


def _raw(r: TraceRecord) -> bytes:
    return struct.pack(dmatrace.REC_FORMAT, r.timestamp_ns, r.addr, r.len, r.cmd_id, r.va,
                       r.aux, r.ctx, int(r.engine), int(r.kind), int(r.dir), r.result,
                       r.level, bytes(7))


def _finish(tmp_path: Path, earlier: list[TraceRecord], window: list[TraceRecord],
            later: list[TraceRecord]) -> Any:
    header = struct.pack(dmatrace.HDR_FORMAT, dmatrace.TRACE_MAGIC, 2, dmatrace.REC_SIZE,
                         2 << 3, 0)
    before = header + b"".join(map(_raw, earlier))
    during = b"".join(map(_raw, window))
    (tmp_path / odp.TRACE).write_bytes(before + during + b"".join(map(_raw, later)))
    s = _session(tmp_path, "[{type: hmm-nic}]", ("rdma_user", "rdma_odp"))
    s.state["odp-rc.objs"] = [{"test": "dontneed", "ok": True, "regions": []}]
    s.state["odp-rc.window"] = (len(before), len(before + during))
    odp.make("odp-rc").finish(s)
    (entry,) = s.results.tests
    assert entry.path == "odp-rc.dmatrace"
    return entry


def test_finish_judges_only_the_workloads_window(tmp_path: Path) -> None:
    # an earlier scenario's cancel and a later module unload are not this one's
    entry = _finish(tmp_path, [rec(Kind.EV_CANCEL, aux=1)], busy(),
                    [rec(Kind.EV_CANCEL, aux=2)])
    assert entry.status == Status.PASS, entry.log_excerpt
    assert entry.extra["activity"]["cancels"] == 0 and entry.extra["window"] == [1, 6]
    assert "1 faults" in entry.log_excerpt


def test_finish_fails_payload_through_a_translation_older_than_its_invalidation(
        tmp_path: Path) -> None:
    page = 0x7F000000
    walk = rec(Kind.PTW, va=FAR, level=0, direction=Dir.READ, length=8,
               aux=page | dmatrace.PTE_VALID | dmatrace.PTE_READ | dmatrace.PTE_WRITE)
    dma = rec(Kind.DATA, va=FAR, engine=NicEngine.REQ, addr=page, length=64)
    ok = _finish(tmp_path, [], busy(walk, dma), [])
    assert ok.status == Status.PASS, ok.log_excerpt
    stale = _finish(tmp_path, [], busy(walk, rec(Kind.EV_TLB_INV, va=FAR, aux=4096), dma), [])
    assert stale.status == Status.FAIL and "stale translation" in stale.log_excerpt


@pytest.mark.parametrize(("devices", "features", "why"), [
    ("[{type: hmm-nic}, {type: hmm-nic}]", ("rdma_user", "rdma_odp"), "two cabled hmm-nics"),
    ("[{type: hmm-nic, link: nic1}, {type: hmm-nic}]", ("rdma_user",),
     "CONFIG_INFINIBAND_ON_DEMAND_PAGING"),
])
def test_perftest_skips(tmp_path: Path, devices: str, features: tuple[str, ...],
                        why: str) -> None:
    from harness.scenarios import perftest

    s = _session(tmp_path, devices, features)
    perftest.make().run(s)
    (entry,) = s.results.tests
    assert (entry.path, entry.status) == ("perftest", Status.SKIP)
    assert why in entry.log_excerpt

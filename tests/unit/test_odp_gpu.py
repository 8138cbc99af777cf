"""odp-gpu: when it SKIPs, and how hmm-nic's faults meet hmm-gpu's copies out of VRAM."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

from harness import scenarios
from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind, NicEngine, TraceRecord
from harness.core import config
from harness.core.results import Results, Status
from harness.scenarios import Session, odp, odp_gpu
from harness.scenarios.kernel import GuestKernel

G = 0x7F0000000000  # the workload's buffer in VRAM
H = 0x7E0000000000
PAGE = 4096
REGIONS = [odp.Region("read-remote", "gpu", G, 64 * PAGE)]
FEATURES = ("rdma_user", "rdma_odp", "device_private")
BOTH = "[{type: hmm-gpu}, {type: hmm-nic}]"


def nrec(kind: Kind, t: int, va: int = 0, engine: int = NicEngine.MMU, ctx: int = 1,
         aux: int = 0, direction: Dir = Dir.WRITE, addr: int = 0, level: int = 0,
         length: int = 64) -> TraceRecord:
    return TraceRecord(timestamp_ns=t, addr=addr, len=length, cmd_id=1 << 63, ctx=ctx,
                       engine=NicEngine(engine), kind=kind, dir=direction, result=0, va=va,
                       aux=aux, level=level)


def copy(t: int, bus: int, out: bool = True, vram_off: int = 0) -> TraceRecord:
    """hmm-gpu's MIGRATE page copy: out of VRAM (to ``bus``) or into it."""
    return TraceRecord(timestamp_ns=t, addr=bus, len=PAGE, cmd_id=7, ctx=1,
                       engine=Engine.MIGRATE, kind=Kind.DATA,
                       dir=Dir.WRITE if out else Dir.READ, result=0, aux=vram_off)


def leaf(t: int, va: int, pa: int) -> TraceRecord:
    return nrec(Kind.PTW, t, va=va, direction=Dir.READ, length=8, level=0,
                aux=pa | dmatrace.PTE_VALID | dmatrace.PTE_READ | dmatrace.PTE_WRITE)


def nic_fault(t_fault: int, t_replay: int, va: int, pa: int | None) -> list[TraceRecord]:
    """A responder fault at ``va``, its replay, and the walk that maps ``pa`` after it."""
    out = [nrec(Kind.FAULT_WRITE, t_fault, va=va), nrec(Kind.EV_REPLAY, t_replay, ctx=0, aux=1)]
    if pa is not None:
        out.append(leaf(t_replay, va, pa))
    return out


def test_registered_and_in_the_default_run_after_odp_implicit() -> None:
    sc = scenarios.create("odp-gpu")
    assert isinstance(sc, odp_gpu.OdpGpuWorkload) and sc.name == "odp-gpu"
    assert sc.script == "/opt/hmmlab/bin/odp-gpu.py"
    default = config.load(None).scenarios
    assert default.index("odp-implicit") + 1 == default.index("odp-gpu")


class _NoSSH:
    def run(self, *a: Any, **kw: Any) -> None:
        raise AssertionError("a scenario that SKIPs must not run anything in the guest")


def _session(tmp_path: Path, devices: str = BOTH, features: tuple[str, ...] = FEATURES,
             iommu: str = "off") -> Session:
    cfg = config.load_text(f"devices: {devices}\niommu: \"{iommu}\"\n", "run.yaml")
    s = Session(cfg, tmp_path, cast(Any, None), cast(Any, _NoSSH()), Results(tmp_path / "r"))
    s.state["guest_kernel"] = GuestKernel("7.2.13", frozenset(features), "7.2.13")
    return s


def _skip_reason(tmp_path: Path, **kw: Any) -> str:
    s = _session(tmp_path, **kw)
    odp_gpu.make("odp-gpu").run(s)
    (entry,) = s.results.tests
    assert (entry.path, entry.status) == ("odp-gpu", Status.SKIP)
    return entry.log_excerpt


def test_skips_without_either_device(tmp_path: Path) -> None:
    assert "no hmm-gpu device in this run" in _skip_reason(tmp_path, devices="[{type: hmm-nic}]")
    assert "no hmm-nic device in this run" in _skip_reason(tmp_path, devices="[{type: hmm-gpu}]")


def test_skips_on_a_kernel_without_what_it_needs(tmp_path: Path) -> None:
    why = _skip_reason(tmp_path, features=("rdma_user", "rdma_odp"))
    assert why == "kernel built without CONFIG_DEVICE_PRIVATE (7.2.13)"
    why = _skip_reason(tmp_path, features=("rdma_user", "device_private"))
    assert "CONFIG_INFINIBAND_ON_DEMAND_PAGING" in why
    why = _skip_reason(tmp_path, features=("rdma_odp", "device_private"))
    assert "CONFIG_INFINIBAND_USER_ACCESS" in why


def test_g_regions_and_pages_back_come_from_the_workload_lines() -> None:
    region = [{"name": "gpu", "addr": G, "length": 65536, "mr": 1},
              {"name": "host", "addr": H, "length": 65536, "mr": 2}]
    objs = [{"test": "migrate", "ok": True, "pages_back_by_nic": 0, "regions": region},
            {"test": "read-remote", "ok": True, "pages_back_by_nic": 37, "regions": region},
            {"test": "atomics", "ok": False, "pages_back_by_nic": 3, "regions": region},
            {"test": "gpu-busy", "ok": True, "pages_back_by_nic": "x"},
            {"test": "write-remote", "skip": "not offered"}]
    (g,) = odp_gpu.g_regions(objs)
    assert (g.name, g.addr, g.length) == ("gpu", G, 65536)
    assert odp_gpu.pages_back(objs) == 40


def test_a_copy_out_during_the_fault_into_the_page_the_nic_maps_is_matched() -> None:
    pa = 0x7E9BE000
    nic = [nrec(Kind.FAULT_WRITE, 10, va=H),  # not on G: no window
           nrec(Kind.EV_REPLAY, 20, ctx=0, aux=1),
           *nic_fault(100, 200, G + 0x423, pa)]
    gpu = [copy(50, 0x1000),  # before the fault: a CPU's migrate_to_ram
           copy(150, pa),
           copy(160, 0x2000, out=False),  # a copy in (the GPU's own work)
           copy(250, 0x3000)]  # after the replay
    cx = odp_gpu.correlate(nic, gpu, REGIONS)
    assert cx.to_dict() == {"g_faults": 1, "unreplayed": 0, "copies_out": 3, "copies_in": 1,
                            "copies_out_during_nic_faults": 1, "copies_out_matched": 1,
                            "unserved_faults": 0}
    assert odp_gpu.crossing_problems(cx, back=1, same_addresses=True) == []
    assert "1 of them while the NIC waited" in cx.format()


def test_a_copy_out_into_another_page_is_not_matched() -> None:
    nic = nic_fault(100, 200, G, 0x7E9BE000)
    cx = odp_gpu.correlate(nic, [copy(150, 0x5000)], REGIONS)
    assert (cx.during, cx.matched) == (1, 0)
    (problem,) = odp_gpu.crossing_problems(cx, back=1, same_addresses=True)
    assert problem.startswith("only 0 of hmm-gpu's copies out of VRAM")
    # behind a vIOMMU the two devices' bus addresses are not comparable
    assert odp_gpu.crossing_problems(cx, back=1, same_addresses=False) == []


def test_overlapping_faults_count_each_copy_once() -> None:
    # two faults pending at once (requester and responder), one replay frees both
    nic = [nrec(Kind.FAULT_WRITE, 100, va=G), nrec(Kind.FAULT_WRITE, 110, va=G + PAGE),
           nrec(Kind.EV_REPLAY, 200, ctx=0, aux=2), leaf(200, G, 0xA000),
           leaf(200, G + PAGE, 0xB000)]
    cx = odp_gpu.correlate(nic, [copy(120, 0xA000), copy(130, 0xB000)], REGIONS)
    assert (cx.g_faults, cx.during, cx.matched, cx.unserved) == (2, 2, 2, [])


def test_a_fault_the_gpu_did_nothing_for_and_too_few_copies_fail() -> None:
    nic = [*nic_fault(100, 200, G, 0xA000), *nic_fault(300, 400, G + PAGE, 0xB000),
           nrec(Kind.FAULT_WRITE, 500, va=G + 2 * PAGE)]  # never replayed
    cx = odp_gpu.correlate(nic, [copy(150, 0xA000)], REGIONS)
    assert (cx.g_faults, cx.unreplayed, cx.during, cx.unserved) == (3, 1, 1, [(1 + 2, G + PAGE)])
    problems = "\n".join(odp_gpu.crossing_problems(cx, back=2, same_addresses=True))
    assert "1 faults on G with no EV_REPLAY" in problems
    assert "bring 2 pages of G back from VRAM, but hmm-gpu copied only 1" in problems
    assert f"1 faults on G saw no copy out of VRAM before their replay (first: record 3, " \
           f"va {G + PAGE:#x})" in problems
    (nothing,) = odp_gpu.crossing_problems(odp_gpu.correlate([], [], REGIONS), 0, True)
    assert nothing == "hmm-nic never faulted on G, the buffer in VRAM"


def _raw(r: TraceRecord) -> bytes:
    return struct.pack(dmatrace.REC_FORMAT, r.timestamp_ns, r.addr, r.len, r.cmd_id, r.va,
                       r.aux, r.ctx, int(r.engine), int(r.kind), int(r.dir), r.result,
                       r.level, bytes(7))


def _write(path: Path, earlier: list[TraceRecord], window: list[TraceRecord]) -> tuple[int, int]:
    header = struct.pack(dmatrace.HDR_FORMAT, dmatrace.TRACE_MAGIC, 2, dmatrace.REC_SIZE,
                         2 << 3, 0)
    before = header + b"".join(map(_raw, earlier))
    path.write_bytes(before + b"".join(map(_raw, window)))
    return len(before), path.stat().st_size


def _finish(tmp_path: Path, nic: list[TraceRecord], gpu: list[TraceRecord],
            back: int, iommu: str = "off") -> Any:
    s = _session(tmp_path, iommu=iommu)
    # an earlier scenario's cancel and copies are outside the windows
    early_nic = [nrec(Kind.EV_CANCEL, 1, aux=1), *nic_fault(2, 3, G, 0x9000)]
    s.state["odp-gpu.windows"] = [_write(tmp_path / odp.TRACE, early_nic, nic),
                                  _write(tmp_path / odp_gpu.GPU_TRACE, [copy(2, 0x1000)], gpu)]
    s.state["odp-gpu.objs"] = [
        {"test": "read-remote", "ok": True, "pages_back_by_nic": back,
         "regions": [{"name": "gpu", "addr": G, "length": 64 * PAGE, "mr": 1}]}]
    odp_gpu.make("odp-gpu").finish(s)
    (entry,) = s.results.tests
    assert entry.path == "odp-gpu.dmatrace"
    return entry


def _busy_nic(pa: int) -> list[TraceRecord]:
    """ODP at work: the fault on G, an invalidation, payload both ways after the replay."""
    return [nrec(Kind.EV_TLB_INV, 90, va=G, aux=PAGE), *nic_fault(100, 200, G, pa),
            nrec(Kind.DATA, 200, engine=NicEngine.RESP, va=G, addr=pa, direction=Dir.READ),
            nrec(Kind.DATA, 200, engine=NicEngine.REQ, va=H, addr=0x4000),
            leaf(90, H, 0x4000)]


def test_finish_passes_when_the_nic_fault_made_the_gpu_copy_out(tmp_path: Path) -> None:
    nic = _busy_nic(0xA000)
    nic = [nic[-1], *nic[:-1]]  # H's walk first
    entry = _finish(tmp_path, nic, [copy(150, 0xA000)], back=1)
    assert entry.status == Status.PASS, entry.log_excerpt
    assert entry.extra["crossing"]["copies_out_matched"] == 1
    assert entry.extra["windows"] == {odp.TRACE: [4, 11], odp_gpu.GPU_TRACE: [1, 2]}
    assert entry.output_files == [odp.TRACE, odp_gpu.GPU_TRACE]


def test_finish_fails_without_a_copy_out_during_the_fault(tmp_path: Path) -> None:
    nic = _busy_nic(0xA000)
    nic = [nic[-1], *nic[:-1]]
    entry = _finish(tmp_path, nic, [copy(250, 0xA000)], back=1)
    assert entry.status == Status.FAIL
    assert "copied only 0 pages out while the NIC waited" in entry.log_excerpt


def test_finish_is_an_error_without_the_gpu_trace(tmp_path: Path) -> None:
    s = _session(tmp_path)
    s.state["odp-gpu.windows"] = [(0, 0), (0, 0)]
    s.state["odp-gpu.objs"] = [{"test": "migrate", "ok": True}]
    _write(tmp_path / odp.TRACE, [], [])
    odp_gpu.make("odp-gpu").finish(s)
    (entry,) = s.results.tests
    assert entry.status == Status.ERROR and odp_gpu.GPU_TRACE in entry.log_excerpt

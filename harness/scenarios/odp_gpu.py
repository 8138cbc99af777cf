"""odp-gpu: an ODP MR over memory hmm-gpu migrated into its VRAM.

``/opt/hmmlab/bin/odp-gpu.py`` (guest-images/workloads) migrates a buffer G
into the GPU's memory through /dev/hmm_dmirror0 (test_hmm's uAPI on
hmm_gpu.ko), registers an ODP MR over it on hmmnic0 and has the NIC read
and write it in RC loopback (RDMA READ and WRITE, SEND and RECV, atomics,
G on either side), migrating G's pages back to VRAM before each operation
so the NIC's faults recur, while a thread keeps the GPU busy with work of
its own. The NIC's fault reaches hmm_range_fault(), which meets a
device-private page and calls hmm_gpu.ko's migrate_to_ram. Every byte and
where each page is (SNAPSHOT) are checked in the guest; entries
``odp-gpu.<phase>``.

After QEMU has exited, ``odp-gpu.dmatrace`` reads both devices' traces over
the records they wrote while the workload ran (:func:`odp.window_of`):
hmm-nic's (``dmatrace-nic0.bin``) must show ODP at work
(:func:`odp.activity_problems`), with faults on G, and hmm-gpu's
(``dmatrace-0.bin``, /dev/hmm_dmirror0's device) copies out of VRAM while
the NIC waits for those faults (between a FAULT_WRITE on G and the next
EV_REPLAY, on QEMU's virtual clock, which both devices stamp with): at
least one copy per page the workload saw the NIC bring back. The workload's
GPU thread frees its VRAM pages by munmap, never copying them out, and the
main thread waits for the completion, so no other copy out can fall in
those windows. Without a vIOMMU both devices see guest physical addresses,
and each such copy's destination must be the page the NIC then mapped (its
leaf walk of the faulting address after the replay). Both traces also get
the stale-translation check (:func:`harness.checks.dmatrace.check_invalidations`)
and hmm-gpu's the VRAM lifetime check
(:func:`harness.checks.dmatrace.check_vram_lifetime`).

SKIPs without a hmm-gpu or a hmm-nic device in the run, or on a kernel
without device-private memory, RDMA user verbs or ODP. Loads hmm_gpu.ko
and hmm_nic.ko as needed and unloads hmm_nic.ko after the workload
(hmm_gpu.ko stays, as the other GPU scenarios leave it).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind, TraceRecord, Translation
from harness.checks.tracefile import stream_size
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import BIN, HMM_GPU_KO, add_cmd_result, guest_run, load_module
from harness.scenarios.kernel import guest_kernel, scenario_unmet
from harness.scenarios.odp import (
    DEVICE,
    SETTLE,
    NicActivity,
    OdpWorkload,
    Region,
    activity_problems,
    load_hmm_nic,
    regions_of,
    window_of,
)
from harness.scenarios.odp import TRACE as NIC_TRACE
from harness.scenarios.rdma_tests import HMM_NIC, SETUP_TIMEOUT, column_unmet
from harness.scenarios.svm import sub_test_status

NAME = "odp-gpu"
GPU_TRACE = "dmatrace-0.bin"  # the run's first hmm-gpu: /dev/hmm_dmirror0
MIRROR = "/dev/hmm_dmirror0"
ARGS = f"-d {DEVICE} -m {MIRROR} -n 20"
G = "gpu"  # the workload's name for the buffer it migrates to VRAM
PAGE_MASK = ~0xFFF
_PAGE_MASK64 = np.uint64(PAGE_MASK & dmatrace.ALL)


@dataclass
class Crossing:
    """The NIC's faults on G against the GPU's copies out of VRAM meanwhile."""

    g_faults: int = 0  # hmm-nic FAULT_WRITE records on G
    unreplayed: int = 0  # of those, with no EV_REPLAY after them in the window
    copies_out: int = 0  # hmm-gpu MIGRATE DATA records, VRAM -> system memory
    copies_in: int = 0
    during: int = 0  # copies out between a fault on G and its replay
    matched: int = 0  # of those, into the page the NIC then mapped at the faulting VA
    # faults on G in whose window the GPU copied nothing out (record index, va)
    unserved: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"g_faults": self.g_faults, "unreplayed": self.unreplayed,
                "copies_out": self.copies_out, "copies_in": self.copies_in,
                "copies_out_during_nic_faults": self.during,
                "copies_out_matched": self.matched, "unserved_faults": len(self.unserved)}

    def format(self) -> str:
        return (f"hmm-nic faulted {self.g_faults} times on G; hmm-gpu copied {self.copies_out} "
                f"pages out of VRAM ({self.copies_in} in), {self.during} of them while the "
                f"NIC waited for a fault on G, {self.matched} into the very page the NIC "
                "mapped at the faulting address after its replay")


def g_regions(objs: Iterable[Mapping[str, Any]]) -> list[Region]:
    """The workload's G buffer(s), each once."""
    out: list[Region] = []
    for r in regions_of(objs):
        if r.name == G and not any((o.addr, o.length) == (r.addr, r.length) for o in out):
            out.append(r)
    return out


def pages_back(objs: Iterable[Mapping[str, Any]]) -> int:
    """Pages of G the workload saw the NIC's faults bring back from VRAM."""
    total = 0
    for o in objs:
        try:
            total += int(o.get("pages_back_by_nic") or 0)
        except (TypeError, ValueError):
            continue
    return total


def correlate(nic: Sequence[TraceRecord] | np.ndarray, gpu: Sequence[TraceRecord] | np.ndarray,
              regions: Sequence[Region]) -> Crossing:
    """Which of the GPU's copies out of VRAM happened while the NIC waited for a
    fault on G: a FAULT_WRITE whose ``va`` is in G until the next EV_REPLAY
    (the device replays every stalled request at once), by the records'
    timestamps (QEMU's virtual clock in both traces). A copy's destination
    is "matched" when the NIC's first leaf walk of the faulting page after
    that replay maps it to the same bus address.

    The traces are scanned with numpy; the faults, replays and copies out (few)
    are walked in Python."""
    cx = Crossing()
    g_rows, n_rows = dmatrace.rows_of(gpu), dmatrace.rows_of(nic)
    copy = ((g_rows["kind"] == Kind.DATA) & (g_rows["engine"] == Engine.MIGRATE)
            & (g_rows["result"] == 0))
    out_at = np.flatnonzero(copy & (g_rows["dir"] == Dir.WRITE))
    cx.copies_in = int(np.count_nonzero(copy & (g_rows["dir"] == Dir.READ)))
    pages = g_rows["addr"][out_at] & _PAGE_MASK64
    outs = sorted(zip(g_rows["timestamp_ns"][out_at].tolist(), out_at.tolist(),
                      pages.tolist(), strict=True))
    cx.copies_out = len(outs)
    times = [t for t, _, _ in outs]
    # (fault record index, fault time, page) waiting for a replay
    pending: list[tuple[int, int, int]] = []
    # (fault index, fault time, page, replay index, replay time)
    windows: list[tuple[int, int, int, int, int]] = []
    kind = n_rows["kind"]
    for i in np.flatnonzero((kind == Kind.FAULT_WRITE) | (kind == Kind.EV_REPLAY)).tolist():
        r = n_rows[i]
        ts, va = int(r["timestamp_ns"]), int(r["va"])
        if r["kind"] == Kind.FAULT_WRITE and any(g.holds(va) for g in regions):
            cx.g_faults += 1
            pending.append((i, ts, va & PAGE_MASK))
        elif r["kind"] == Kind.EV_REPLAY and pending:
            windows += [(fi, ft, page, i, ts) for fi, ft, page in pending]
            pending = []
    cx.unreplayed = len(pending)
    during: set[int] = set()
    matched: set[int] = set()
    for fi, ft, page, ri, rt in windows:
        lo, hi = bisect.bisect_left(times, ft), bisect.bisect_right(times, rt)
        if lo == hi:
            cx.unserved.append((fi, page))
            continue
        during.update(outs[k][1] for k in range(lo, hi))
        pa = _mapped_after(n_rows, ri, page)
        if pa is not None:
            matched.update(outs[k][1] for k in range(lo, hi) if outs[k][2] == pa)
    cx.during, cx.matched = len(during), len(matched)
    return cx


def _mapped_after(nic: np.ndarray, start: int, page: int) -> int | None:
    """The bus address of ``page`` in the NIC's first leaf walk of it after record
    ``start``, or None (a chunked numpy scan for the walks of the page)."""
    for lo in range(start, len(nic), dmatrace.CHUNK):
        c = nic[lo:lo + dmatrace.CHUNK]
        for i in np.flatnonzero((c["kind"] == Kind.PTW) & (c["result"] == 0) & (
                (c["va"] & _PAGE_MASK64) == np.uint64(page))).tolist():
            r = dmatrace.Records(c[i:i + 1])[0]
            leaf = dmatrace.leaf_of(r)
            if isinstance(leaf, Translation):
                return leaf.pa + (page - leaf.va) if not leaf.vram else None
            if leaf is None:
                return None
    return None


def crossing_problems(cx: Crossing, back: int, same_addresses: bool) -> list[str]:
    """What says the NIC's faults did not make the GPU copy pages out of VRAM.

    ``back``: pages the workload saw the NIC bring back; ``same_addresses``:
    both devices see guest physical addresses (no vIOMMU)."""
    problems = []
    if cx.g_faults == 0:
        problems.append("hmm-nic never faulted on G, the buffer in VRAM")
    if cx.unreplayed:
        problems.append(f"{cx.unreplayed} faults on G with no EV_REPLAY after them")
    if back and cx.during < back:
        problems.append(
            f"the workload saw the NIC bring {back} pages of G back from VRAM, but hmm-gpu "
            f"copied only {cx.during} pages out while the NIC waited for a fault on G")
    if back and same_addresses and cx.matched < back:
        problems.append(
            f"only {cx.matched} of hmm-gpu's copies out of VRAM during the NIC's faults went "
            f"to the page the NIC then mapped at the faulting address ({back} pages came "
            "back): the NIC mapped other memory than the page migrate_to_ram filled")
    if cx.unserved:
        fi, page = cx.unserved[0]
        problems.append(f"{len(cx.unserved)} faults on G saw no copy out of VRAM before their "
                        f"replay (first: record {fi}, va {page:#x})")
    return problems


class OdpGpuWorkload(OdpWorkload):
    def __init__(self, name: str = NAME) -> None:
        super().__init__(name)
        self.script = f"{BIN}/{name}.py"

    def run(self, s: Session) -> None:
        why = self.unmet(s)
        if why:
            s.results.add_status(self.name, Status.SKIP, why)
            return
        gpu = load_module(s, HMM_GPU_KO, "hmm_gpu", (MIRROR,))
        if not gpu.ok:
            add_cmd_result(s, f"{self.name}.driver", gpu,
                           extra_problem=f"hmm_gpu.ko did not load or made no {MIRROR}")
            return
        if not load_hmm_nic(s, self.name):
            return
        traces = (s.run_dir / NIC_TRACE, s.run_dir / GPU_TRACE)
        before = [stream_size(p) for p in traces]
        cmd = (f"python3 {self.script} {ARGS} 2>/tmp/{self.name}.err; "
               f"rc=$?; cat /tmp/{self.name}.err >&2; exit $rc")
        run = guest_run(s, cmd, s.cfg.timeouts.scenario)
        time.sleep(SETTLE)
        s.state[f"{self.name}.windows"] = [(b, stream_size(p)) for b, p in zip(before, traces,
                                                                         strict=True)]
        self._results(s, run)
        teardown = guest_run(s, HMM_NIC.teardown, SETUP_TIMEOUT)
        if not teardown.ok:
            add_cmd_result(s, f"{self.name}.teardown", teardown)

    def unmet(self, s: Session) -> str | None:
        if not any(d.type == "hmm-gpu" for d in s.cfg.devices):
            return "no hmm-gpu device in this run (devices: [{type: hmm-gpu}, {type: hmm-nic}])"
        kernel = guest_kernel(s)
        why = column_unmet(HMM_NIC, kernel, s.cfg)
        if why or kernel is None:
            return why
        return scenario_unmet(self.name, kernel.features, kernel.name)

    def finish(self, s: Session) -> None:
        objs = s.state.get(f"{self.name}.objs")
        sizes = s.state.get(f"{self.name}.windows")
        if not objs or sizes is None or all(sub_test_status(o) == Status.SKIP for o in objs):
            return
        t0 = time.monotonic()
        path_name = f"{self.name}.dmatrace"
        files = [NIC_TRACE, GPU_TRACE]
        windows = []
        for (before, after), name, device in zip(sizes, files, (dmatrace.NIC, dmatrace.GPU),
                                                 strict=True):
            try:
                trace = dmatrace.read_trace(s.run_dir / name, device)
            except (OSError, dmatrace.TraceError) as e:
                s.results.add_status(path_name, Status.ERROR, f"{name}: {e}")
                return
            w = window_of(before, after, rec_size=trace.header.rec_size)
            windows.append((trace.records[w.first:w.end], w))
        (nic, nic_w), (gpu, gpu_w) = windows
        regions = g_regions(objs)
        act = NicActivity.of(nic, regions)
        cx = correlate(nic, gpu, regions)
        nic_audit = dmatrace.check_invalidations(nic)
        gpu_audit, vram = dmatrace.audit(gpu)  # one pass for both
        assert gpu_audit is not None and vram is not None
        back = pages_back(objs)
        problems = (activity_problems(act)
                    + crossing_problems(cx, back, s.cfg.iommu == "off")
                    + [f"{NIC_TRACE}: stale translation: {p}" for p in nic_audit.problems]
                    + [f"{GPU_TRACE}: stale translation: {p}" for p in gpu_audit.problems]
                    + [f"{GPU_TRACE}: {p}" for p in vram.problems])
        if not regions:
            problems.append("the workload reported no G buffer: nothing to look for")
        text = "\n".join([*problems[:50], cx.format(), act.format(),
                          f"records {nic_w.first}..{nic_w.end} of {NIC_TRACE}, "
                          f"{gpu_w.first}..{gpu_w.end} of {GPU_TRACE}",
                          f"{NIC_TRACE}: {nic_audit.format()}",
                          f"{GPU_TRACE}: {gpu_audit.format()}",
                          f"{GPU_TRACE}: {vram.format()}"])
        s.results.add(TestResult(
            path_name, Status.FAIL if problems else Status.PASS, time.monotonic() - t0, text,
            files, {"crossing": cx.to_dict(), "pages_back_by_nic": back,
                    "activity": act.to_dict(), "invalidate_check": {
                        NIC_TRACE: nic_audit.to_dict(), GPU_TRACE: gpu_audit.to_dict()},
                    "vram": vram.to_dict(),
                    "windows": {NIC_TRACE: [nic_w.first, nic_w.end],
                                GPU_TRACE: [gpu_w.first, gpu_w.end]}}))




def make(name: str = NAME) -> OdpGpuWorkload:
    return OdpGpuWorkload(name)

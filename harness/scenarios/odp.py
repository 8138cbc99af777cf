"""odp-rc and odp-implicit: our own pyverbs ODP workloads on hmm-nic.

``odp-rc``: ``/opt/hmmlab/bin/odp-rc.py`` (guest-images/workloads): explicit
ODP MRs, SEND/RECV, RDMA WRITE, RDMA READ, CMP_AND_SWP and FETCH_AND_ADD in
loopback on hmmnic0, in phases where MADV_DONTNEED, munmap + remap,
mprotect and fork change the memory around each operation, or a thread
changes the MRs' other pages while they run. ``odp-implicit``:
``odp-implicit.py``: one implicit ODP MR (addr 0, SIZE_MAX), traffic between
buffers from 64 GiB to 64 TiB apart and across a 1 GiB child boundary, and
ibv_advise_mr PREFETCH / PREFETCH_WRITE with and without FLAG_FLUSH before
each operation. Every byte moved is checked in the guest; entries
``<scenario>.<phase or sub-test>``.

The device side, after QEMU has exited: the records of hmm-nic's DMA trace
(``dmatrace-nic0.bin``) that the device wrote while the workload ran (the
file's size before and after it: :func:`window_of`) must show ODP at work,
``<scenario>.dmatrace``: fault records, replays, TLB invalidations, payload
on both the requester and the responder, no fault the driver cancelled
(every access of these workloads is valid), and no payload DMA through a
translation older than the invalidation covering it
(:func:`harness.checks.dmatrace.check_invalidations`). odp-implicit's buffers must
each have faulted in every 1 GiB (every implicit child) they span, and
``odp-implicit.dmatrace.prefetch-flush``: an operation whose bytes were
prefetched with PREFETCH_WRITE and FLAG_FLUSH just before (synchronously,
writable) must not fault on them.

Both SKIP without a hmm-nic device in the run, or on a kernel without RDMA
user verbs and ODP (as odp-tests' hmm-nic column does); hmm_nic.ko is
loaded if needed and unloaded after the workload.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.checks import dmatrace
from harness.checks.dmatrace import Kind, NicEngine, TraceRecord
from harness.checks.tracefile import stream_size
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import BIN, Cmd, add_cmd_result, guest_run
from harness.scenarios.kernel import guest_kernel
from harness.scenarios.rdma_tests import HMM_NIC, SETUP_TIMEOUT, column_unmet
from harness.scenarios.smoke import parse_workload_output, reported_seconds
from harness.scenarios.svm import sub_test_status

log = logging.getLogger(__name__)

DEVICE = "hmmnic0"
ARGS = {"odp-rc": "-n 20", "odp-implicit": "-n 3"}
TRACE = "dmatrace-nic0.bin"  # the run's first hmm-nic: hmmnic0
# The device writes its trace at most dmatrace-flush-ms (10) after it ran.
SETTLE = 0.5
CHILD_SHIFT = 30  # hmm_nic.ko's implicit children: 1 GiB
PREFETCH_FLUSH = "prefetch.prefetch_write.flush"  # the sub-test that must not fault


@dataclass(frozen=True)
class Window:
    """Records [first, end) of a trace: what the device did meanwhile."""

    first: int
    end: int


def window_of(size_before: int, size_after: int,
              rec_size: int = dmatrace.REC_SIZE) -> Window:
    """The records a trace file gained between two sizes (the device writes whole
    records after a header; a size inside the header is the start)."""
    def index(size: int) -> int:
        return max(0, size - dmatrace.HDR_SIZE) // rec_size
    return Window(index(size_before), max(index(size_before), index(size_after)))


@dataclass(frozen=True)
class Region:
    """A buffer a workload reported: which sub-test, where."""

    test: str
    name: str
    addr: int
    length: int

    @property
    def children(self) -> range:
        """The implicit children (1 GiB each) the buffer spans."""
        return range(self.addr >> CHILD_SHIFT, ((self.addr + self.length - 1) >> CHILD_SHIFT) + 1)

    def holds(self, va: int) -> bool:
        return self.addr <= va < self.addr + self.length


def regions_of(objs: Iterable[Mapping[str, Any]]) -> list[Region]:
    out = []
    for obj in objs:
        for r in obj.get("regions") or ():
            try:
                out.append(Region(str(obj["test"]), str(r["name"]), int(r["addr"]),
                                  int(r["length"])))
            except (KeyError, TypeError, ValueError):
                continue
    return out


@dataclass
class NicActivity:
    """What hmm-nic's trace says the device did in a window."""

    records: int = 0
    faults: int = 0
    responder_faults: int = 0
    replays: int = 0
    cancels: int = 0
    invalidations: int = 0
    req_data: int = 0
    resp_data: int = 0
    mrs: set[int] = field(default_factory=set)  # contexts (MR indices) that faulted
    # fault VAs per region (keyed by "test/name")
    region_faults: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Sequence[TraceRecord] | np.ndarray,
           regions: Sequence[Region]) -> NicActivity:
        """Counted over the window's rows with numpy; only the fault records (few)
        become Python ints, for the regions' lists."""
        rows = dmatrace.rows_of(records)
        a = cls(records=len(rows))
        for reg in regions:
            a.region_faults.setdefault(f"{reg.test}/{reg.name}", [])
        kind, eng = rows["kind"], rows["engine"]
        faults = rows[kind == Kind.FAULT_WRITE]
        a.faults = len(faults)
        a.responder_faults = int(np.count_nonzero(faults["cmd_id"] >> np.uint64(63)))
        a.mrs = set(np.unique(faults["ctx"]).tolist())
        a.replays = int(np.count_nonzero(kind == Kind.EV_REPLAY))
        a.cancels = int(np.count_nonzero(kind == Kind.EV_CANCEL))
        a.invalidations = int(np.count_nonzero(kind == Kind.EV_TLB_INV))
        data = kind == Kind.DATA
        a.req_data = int(np.count_nonzero(data & (eng == NicEngine.REQ)))
        a.resp_data = int(np.count_nonzero(data & (eng == NicEngine.RESP)))
        vas = faults["va"]
        for reg in regions:
            if not 0 <= reg.addr <= dmatrace.ALL:
                continue
            inside = vas >= np.uint64(reg.addr)
            if reg.addr + reg.length <= dmatrace.ALL:
                inside &= vas < np.uint64(reg.addr + reg.length)
            a.region_faults[f"{reg.test}/{reg.name}"].extend(vas[inside].tolist())
        return a

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "faults": self.faults,
                "responder_faults": self.responder_faults, "replays": self.replays,
                "cancels": self.cancels, "tlb_invalidations": self.invalidations,
                "requester_data": self.req_data, "responder_data": self.resp_data,
                "mrs_faulted": sorted(self.mrs),
                "region_faults": {k: len(v) for k, v in self.region_faults.items()}}

    def format(self) -> str:
        return (f"{self.records} trace records while the workload ran: {self.faults} faults "
                f"({self.responder_faults} on the responder's side) in {len(self.mrs)} MRs, "
                f"{self.replays} replays, {self.cancels} cancels, {self.invalidations} TLB "
                f"invalidations, {self.req_data} requester and {self.resp_data} responder "
                "payload DMAs")


def activity_problems(act: NicActivity) -> list[str]:
    """What says ODP was not at work, or went wrong, in the window."""
    problems = []
    if act.records == 0:
        problems.append("the device traced nothing while the workload ran")
        return problems
    if act.faults == 0:
        problems.append("no FAULT_WRITE record: the device never faulted on an ODP MR")
    if act.replays == 0:
        problems.append("no EV_REPLAY: the driver never resolved a fault")
    if act.invalidations == 0:
        problems.append("no EV_TLB_INV: no invalidation reached the device")
    if act.req_data == 0 or act.resp_data == 0:
        problems.append(f"payload DMA: {act.req_data} by the requester, {act.resp_data} by "
                        "the responder; both should move data")
    if act.cancels:
        problems.append(f"{act.cancels} faults cancelled (EV_CANCEL): the driver could not "
                        "map a page that every access here may reach")
    return problems


def children_problems(act: NicActivity, regions: Sequence[Region], test: str) -> list[str]:
    """Each of ``test``'s buffers faulted in every 1 GiB child it spans."""
    problems = []
    for reg in regions:
        if reg.test != test:
            continue
        seen = {va >> CHILD_SHIFT for va in act.region_faults.get(f"{reg.test}/{reg.name}", ())}
        missing = [c for c in reg.children if c not in seen]
        if missing:
            problems.append(f"{test}: no fault in {reg.name} ({reg.addr:#x}+{reg.length:#x}) "
                            f"within GiB {', '.join(map(str, missing))}: the device never "
                            "faulted there, so no implicit child was made")
    return problems


def prefetch_problems(act: NicActivity, regions: Sequence[Region],
                      test: str = PREFETCH_FLUSH) -> list[str]:
    """No fault on bytes just prefetched with PREFETCH_WRITE and FLAG_FLUSH."""
    problems = []
    for reg in regions:
        if reg.test != test:
            continue
        vas = act.region_faults.get(f"{reg.test}/{reg.name}", [])
        if vas:
            problems.append(
                f"{len(vas)} faults in {reg.name} ({reg.addr:#x}+{reg.length:#x}), first at "
                f"{vas[0]:#x}, although ibv_advise_mr(PREFETCH_WRITE, "
                "IBV_ADVISE_MR_FLAG_FLUSH) of every byte each operation touched returned "
                "just before it: the synchronous prefetch did not map them all")
    return problems


def load_hmm_nic(s: Session, name: str) -> bool:
    """hmm_nic.ko loaded and hmmnic0 there; else a ``<name>.driver`` FAIL entry."""
    setup = guest_run(s, f"set -e; {HMM_NIC.setup}; [ -e /sys/class/infiniband/{DEVICE} ]",
                      SETUP_TIMEOUT)
    if not setup.ok:
        add_cmd_result(s, f"{name}.driver", setup,
                       extra_problem=f"hmm_nic.ko did not load or made no {DEVICE}")
    return setup.ok


class OdpWorkload:
    def __init__(self, name: str) -> None:
        self.name = name
        self.script = f"{BIN}/{name}.py"

    def run(self, s: Session) -> None:
        why = column_unmet(HMM_NIC, guest_kernel(s), s.cfg)
        if why:
            s.results.add_status(self.name, Status.SKIP, why)
            return
        if not load_hmm_nic(s, self.name):
            return
        trace = s.run_dir / TRACE
        before = stream_size(trace)
        cmd = (f"python3 {self.script} -d {DEVICE} {ARGS[self.name]} 2>/tmp/{self.name}.err; "
               f"rc=$?; cat /tmp/{self.name}.err >&2; exit $rc")
        run = guest_run(s, cmd, s.cfg.timeouts.scenario)
        time.sleep(SETTLE)
        s.state[f"{self.name}.window"] = (before, stream_size(trace))
        self._results(s, run)
        teardown = guest_run(s, HMM_NIC.teardown, SETUP_TIMEOUT)
        if not teardown.ok:
            add_cmd_result(s, f"{self.name}.teardown", teardown)

    def _results(self, s: Session, run: Cmd) -> None:
        out_file = s.run_dir / f"{self.name}.stdout"
        err_file = s.run_dir / f"{self.name}.stderr"
        out_file.write_text(run.out)
        err_file.write_text(run.err)
        files = [out_file.name, err_file.name]
        objs, other = parse_workload_output(run.out)
        s.state[f"{self.name}.objs"] = objs
        if run.error:
            s.results.add(TestResult(f"{self.name}.run", run.status_if_error, run.seconds,
                                     run.text(), files))
        elif not objs:
            s.results.add(TestResult(f"{self.name}.run", Status.FAIL, run.seconds,
                                     "the workload reported no sub-test\n" + run.text(), files))
        for obj in objs:
            status = sub_test_status(obj)
            brief = {k: v for k, v in obj.items() if k != "regions"}
            msg = str(obj["skip"]) if status == Status.SKIP else json.dumps(brief)
            if status == Status.FAIL and run.err.strip():
                msg += "\nstderr:\n" + run.err[-1500:]
            s.results.add(TestResult(f"{self.name}.{obj['test']}", status,
                                     reported_seconds(obj), msg, files, {"data": obj}))
        if objs and not run.error and run.rc != 0 and all(
                sub_test_status(o) != Status.FAIL for o in objs):
            s.results.add(TestResult(f"{self.name}.exit", Status.FAIL, None,
                                     f"exit status {run.rc} although every sub-test passed\n"
                                     + "\n".join(other[-20:]), files))

    def finish(self, s: Session) -> None:
        objs = s.state.get(f"{self.name}.objs")
        sizes = s.state.get(f"{self.name}.window")
        if not objs or sizes is None or all(sub_test_status(o) == Status.SKIP for o in objs):
            return
        t0 = time.monotonic()
        path = s.run_dir / TRACE
        path_name = f"{self.name}.dmatrace"
        try:
            trace = dmatrace.read_trace(path, dmatrace.NIC)
        except (OSError, dmatrace.TraceError) as e:
            s.results.add_status(path_name, Status.ERROR, f"{path.name}: {e}")
            return
        before, after = sizes
        w = window_of(before, after, rec_size=trace.header.rec_size)
        records = trace.records[w.first:w.end]
        regions = regions_of(objs)
        act = NicActivity.of(records, regions)
        audit = dmatrace.check_invalidations(records)
        problems = activity_problems(act) + [f"stale translation: {p}" for p in audit.problems]
        if self.name == "odp-implicit":
            passed = {o["test"] for o in objs if sub_test_status(o) == Status.PASS}
            if "traffic" in passed:
                problems += children_problems(act, regions, "traffic")
            if PREFETCH_FLUSH in passed:
                pf = prefetch_problems(act, regions)
                s.results.add(TestResult(
                    f"{path_name}.prefetch-flush", Status.FAIL if pf else Status.PASS,
                    None, "\n".join(pf) or "no fault on the prefetched bytes "
                    f"({sum(1 for r in regions if r.test == PREFETCH_FLUSH)} buffers)",
                    [path.name]))
        text = "\n".join([*problems[:50], act.format(),
                          f"records {w.first}..{w.end} of {path.name}", audit.format()])
        s.results.add(TestResult(path_name, Status.FAIL if problems else Status.PASS,
                                 time.monotonic() - t0, text, [path.name],
                                 {"activity": act.to_dict(), "invalidate_check": audit.to_dict(),
                                  "window": [w.first, w.end]}))




def make(name: str) -> OdpWorkload:
    return OdpWorkload(name)

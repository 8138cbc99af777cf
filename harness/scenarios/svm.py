"""Shared virtual memory scenarios on the native uAPI (HMM_GPU_IOC_SVM_*).

``svm-mirror``: ``/opt/hmmlab/bin/svm-mirror`` runs device jobs (READ,
WRITE, FILL, COPY, atomics) on malloc'd, anonymous, tmpfs-file and THP
memory and checks the data and the fault counts (the first job on a range
faults, a second one does not). Entries ``svm-mirror.<kind>.<op>``.

``svm-invalidate``: ``/opt/hmmlab/bin/svm-invalidate -t 3`` runs device
jobs while other threads munmap/mmap, mprotect, madvise(DONTNEED) and fork
(the child writes: COW); every defined outcome is checked (e.g. after
DONTNEED the device reads zeros). Entries ``svm-invalidate.<op>``, and,
after QEMU has exited, ``svm-invalidate.dmatrace``: over every device's
trace, each data DMA of a VA job used a translation the device walked after
the last TLB invalidation covering that address in that context
(:func:`harness.checks.dmatrace.check_invalidations`).

``svm-race``: ``/opt/hmmlab/bin/svm-race``: device FILL/READ jobs, CPU reads,
migrations to VRAM and back and fork()s on the same 64 pages at once, for
``RACE_SECONDS``, every value verified (a device write lost to a page the
process no longer owns shows up as an older value; one that reaches a page a
forked child shares changes the child's copy). The driver's
``race_delay_us`` parameter widens the windows between hmm_range_fault() and
the page-table update in which a migration of the same page must force a
retry, and between the context's and a fault's own notifier calls. After
QEMU has exited, ``svm-race.dmatrace`` runs the invalidation check above
and :func:`harness.checks.dmatrace.check_vram_lifetime` (no leaf walk or VA job
reached a VRAM page after its data was copied out).

``svm-reclaim``: ``/opt/hmmlab/bin/svm-reclaim``: pages freed lazily
(MADV_FREE, so clean) are written by the device through a writable mapping
that took no CPU write fault, then reclaimed (MADV_PAGEOUT): the device's
data must survive, i.e. the driver marks a page dirty when its writable
mapping of it goes. Where the kernel has swap and a built-in RAM disk, swap
is turned on for the run (``/dev/ram0``) and a swap-out, swap-in, device
write, swap-out round trip is checked as well (``-s``).

``dmirror-edge``: ``/opt/hmmlab/bin/dmirror-edge`` on /dev/hmm_dmirror0:
test_hmm-uAPI sequences that once hung the driver or gave another answer
than the kernel's semantics (a WRITE over pages in VRAM and never-touched
pages, a device write to a read-only or copy-on-write page in VRAM,
MIGRATE_TO_DEV over a page already in VRAM), each in its own process with a
deadline. Entries ``dmirror-edge.<case>``.

All load hmm_gpu.ko if it is not loaded yet. A workload line ``{"test": ...,
"skip": "why"}`` (what this kernel cannot do: device atomics without
device-exclusive entries) is a SKIP entry with that reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.checks import dmatrace
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import (
    BIN,
    HMM_GPU_KO,
    add_cmd_result,
    guest_run,
    load_module,
)
from harness.scenarios.kernel import guest_kernel, skip_unsupported, unmet
from harness.scenarios.smoke import parse_workload_output, reported_seconds

INVALIDATE_SECONDS = 3
RACE_SECONDS = 8
RACE_DELAY_US = 200
SWAP_DEV = "/dev/ram0"
SWAP_NEEDS = ("swap", "ramdisk")
RACE_PARAM = "/sys/module/hmm_gpu/parameters/race_delay_us"
ARGS = {
    "svm-invalidate": f"-d /dev/hmm_gpu0 -t {INVALIDATE_SECONDS}",
    "svm-race": f"-d /dev/hmm_gpu0 -t {RACE_SECONDS} -p 64 -w 2 -c 1 -m 1 -f 1",
    "dmirror-edge": "-d /dev/hmm_dmirror0 -t 30",
}
# scenario -> the trace checks its finish() runs over every device's trace
TRACE_CHECKS = {
    "svm-invalidate": ("invalidate",),
    "svm-race": ("invalidate", "vram"),
}


def _brief(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def sub_test_status(obj: dict[str, Any]) -> Status:
    """A workload's JSON line: ``"ok": true`` passes, ``"skip": "why"`` (what this
    kernel cannot do) skips, anything else fails."""
    if obj.get("ok") is True:
        return Status.PASS
    if isinstance(obj.get("skip"), str) and obj["skip"] and "ok" not in obj:
        return Status.SKIP
    return Status.FAIL


class SvmWorkload:
    def __init__(self, name: str) -> None:
        self.name = name
        self.binary = f"{BIN}/{name}"
        self.args = ARGS.get(name, "-d /dev/hmm_gpu0")

    def run(self, s: Session) -> None:
        if skip_unsupported(s, self.name):
            return
        c = load_module(s, HMM_GPU_KO, "hmm_gpu", ("/dev/hmm_gpu0",))
        if not c.ok:
            add_cmd_result(s, f"{self.name}.driver", c)
            s.results.add_status(self.name, Status.SKIP, "not run: hmm_gpu.ko did not load")
            return
        out_file = s.run_dir / f"{self.name}.stdout"
        # 2>&1 would interleave with the JSON lines: keep stderr apart.
        cmd = f"{self.binary} {self.args} 2>/tmp/{self.name}.err; rc=$?; " \
              f"cat /tmp/{self.name}.err >&2; exit $rc"
        if self.name == "svm-reclaim" and self._can_swap(s):
            cmd = cmd.replace(f"{self.binary} {self.args}", f"{self.binary} {self.args} -s")
            cmd = f"mkswap {SWAP_DEV} >/dev/null && swapon {SWAP_DEV} || exit 13; ( {cmd} ); " \
                  f"rc=$?; swapoff {SWAP_DEV} || rc=14; exit $rc"
        if self.name == "svm-race":
            cmd = f"echo {RACE_DELAY_US} > {RACE_PARAM} || exit 12; ( {cmd} ); rc=$?; " \
                  f"echo 0 > {RACE_PARAM}; exit $rc"
        run = guest_run(s, cmd, s.cfg.timeouts.scenario)
        out_file.write_text(run.out)
        (s.run_dir / f"{self.name}.stderr").write_text(run.err)
        files = [out_file.name, f"{self.name}.stderr"]
        objs, other = parse_workload_output(run.out)
        s.state[f"{self.name}.objs"] = objs
        if run.error:
            s.results.add(TestResult(f"{self.name}.run", run.status_if_error, run.seconds,
                                     run.text(), files))
        if not objs:
            if not run.error:
                s.results.add(TestResult(f"{self.name}.run", Status.FAIL, run.seconds,
                                         "the workload reported no sub-test\n" + run.text(),
                                         files))
            return
        kernel = guest_kernel(s)
        for obj in objs:
            status = sub_test_status(obj)
            msg = _brief(obj)
            if status == Status.SKIP:
                msg = f"{obj['skip']} ({kernel.name})" if kernel else str(obj["skip"])
            if status == Status.FAIL and run.err.strip():
                msg += "\nstderr:\n" + run.err[-1500:]
            s.results.add(TestResult(f"{self.name}.{obj['test']}", status,
                                     reported_seconds(obj), msg, files, {"data": obj}))
        if run.rc != 0 and not run.error and all(
                sub_test_status(o) != Status.FAIL for o in objs):
            s.results.add(TestResult(f"{self.name}.exit", Status.FAIL, None,
                                     f"exit status {run.rc} although every sub-test passed\n"
                                     + "\n".join(other[-20:]), files))

    @staticmethod
    def _can_swap(s: Session) -> bool:
        k = guest_kernel(s)
        return k is not None and unmet(SWAP_NEEDS, k.features, k.name) is None

    def finish(self, s: Session) -> None:
        checks = TRACE_CHECKS.get(self.name)
        if not checks or not s.state.get(f"{self.name}.objs"):
            return
        t0 = time.monotonic()
        traces = sorted(s.run_dir.glob("dmatrace-*.bin"))
        if not traces:
            s.results.add_status(f"{self.name}.dmatrace", Status.ERROR, "no DMA trace written")
            return
        problems: list[str] = []
        texts: list[str] = []
        stats: dict[str, Any] = {}
        checked = 0
        for path in traces:
            try:
                both = _audits(s, path)
            except dmatrace.TraceError as e:
                problems.append(f"{path.name}: {e}")
                continue
            if both[2] < 2:
                problems.append(f"{path.name}: trace version {both[2]} has no "
                                "VA/PTW records (the device predates ABI 1.1)")
                continue
            out = both[0] if "invalidate" in checks else None
            vram = both[1] if "vram" in checks else None
            if out is not None:
                checked += out.data_checked
                stats.setdefault(path.name, {})["invalidate"] = out.to_dict()
                texts.append(f"{path.name}: {out.format()}")
                problems.extend(f"{path.name}: {p}" for p in out.problems)
            if vram is not None:
                stats.setdefault(path.name, {})["vram"] = vram.to_dict()
                texts.append(f"{path.name}: {vram.format()}")
                problems.extend(f"{path.name}: {p}" for p in vram.problems)
        if not problems and checked == 0:
            problems.append("no DATA record of a VA job in any trace: nothing was checked")
        s.results.add(TestResult(
            f"{self.name}.dmatrace", Status.FAIL if problems else Status.PASS,
            time.monotonic() - t0, "\n".join([*problems[:50], *texts]),
            [p.name for p in traces], {"invalidate_check": {
                k: v.get("invalidate") for k, v in stats.items()}, "checks": stats}))


def _audits(s: Session, path: Path
            ) -> tuple[dmatrace.InvalidateCheck, dmatrace.VramCheck, int]:
    """Both audits of a finished trace and its version, once per run: every scenario
    that checks the file gets the same answers, and one pass gives both. Streamed from
    the file (check_file): the decoded trace of a long run is never whole in memory."""
    cache = s.state.setdefault("svm.audits", {})
    if path not in cache:
        got = dmatrace.check_file(path)
        assert got.invalidations is not None and got.vram is not None
        cache[path] = (got.invalidations, got.vram, got.header.version)
    return cache[path]


def make(name: str) -> SvmWorkload:
    return SvmWorkload(name)

"""The smoke scenario: load the driver, run hmm-gpu-smoke, check the DMA trace.

Entries: ``driver.build`` (the W=1 warnings the payload build printed for
hmm_gpu.ko against this kernel: none allowed), ``driver.load``,
``smoke.prepare`` (only when prepare commands are given), ``smoke.<sub-test>``
(one per JSON line the workload prints), ``smoke.counters`` (device
counters over QMP) and ``smoke.dmatrace`` (every data DMA within the
mappings the workload reported, bytes moved equal to the requests).

What each entry's status is follows from the guest's output alone: the
functions :func:`driver_load_result`, :func:`prepare_result`,
:func:`workload_results`, :func:`workload_interrupted`,
:func:`counters_result` and :func:`dmatrace_result` decide it from data;
:class:`Smoke` only gathers that data from the guest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.checks import dmatrace
from harness.core.results import Event, Status, TestResult, status_for
from harness.guest.ssh import SSHAborted, SSHError, SSHTimeout
from harness.scenarios import Session
from harness.scenarios.common import cut_off_status, finished_trace
from harness.scenarios.kernel import guest_kernel

log = logging.getLogger(__name__)

DRIVER = "/opt/hmmlab/hmm_gpu.ko"
DEVNODE = "/dev/hmm_gpu0"
WORKLOAD = "/opt/hmmlab/bin/hmm-gpu-smoke"
LOAD_TIMEOUT = 60.0

Objs = list[dict[str, Any]]


def parse_workload_output(stdout: str) -> tuple[Objs, list[str]]:
    """JSON objects with a "test" key, one per line; other lines are returned apart."""
    objs: Objs = []
    other: list[str] = []
    for line in stdout.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                other.append(line)
                continue
            if isinstance(obj, dict) and "test" in obj:
                objs.append(obj)
                continue
        other.append(line)
    return objs, other


def _brief(obj: dict[str, Any]) -> str:
    """A sub-test's JSON line without its (long) map list."""
    short = {k: v for k, v in obj.items() if k != "maps"}
    if "maps" in obj:
        short["maps"] = f"{len(obj['maps'])} entries"
    return json.dumps(short)


# ---- decisions (pure) ----------------------------------------------------------------

def driver_build_result(kernel_name: str, warnings: Sequence[str]) -> TestResult:
    """``driver.build``: hmm_gpu.ko must build warning-free (W=1) against every kernel."""
    if warnings:
        return TestResult("driver.build", Status.FAIL, None,
                          f"{len(warnings)} W=1 warnings building hmm_gpu.ko against "
                          f"{kernel_name}:\n" + "\n".join(warnings))
    return TestResult("driver.build", Status.PASS, None,
                      f"hmm_gpu.ko built warning-free (W=1) against {kernel_name}")


def driver_load_result(
    driver: str, rc: int, out: str, err: str, node: str, dmesg: str, duration: float,
    output_files: Sequence[str] = (),
) -> TestResult:
    """``driver.load`` from ``insmod``'s status and output, the ``ls -l`` of the
    device node afterwards and the kernel log."""
    insmod = f"$ insmod {driver}\n{out}{err}"
    relevant = [ln for ln in dmesg.splitlines() if "hmm" in ln.lower()]
    text = "\n".join([insmod.strip(), node.strip(), *relevant[-30:]])
    problems = []
    if rc != 0:
        problems.append(f"insmod exited with status {rc}")
    if DEVNODE not in node or "No such file" in node:
        problems.append(f"{DEVNODE} does not exist after insmod")
    return TestResult(
        "driver.load", Status.FAIL if problems else Status.PASS, duration,
        "\n".join([*problems, text]).strip(), list(output_files),
    )


def prepare_result(transcript: Sequence[tuple[str, int, str]], duration: float) -> TestResult:
    """``smoke.prepare`` from (command, exit status, output) of each command run:
    ERROR (the workload could not be run as asked) at the first that failed."""
    text = "\n".join(f"$ {cmd}\n{out}".rstrip() for cmd, _rc, out in transcript)
    bad = [(cmd, rc) for cmd, rc, _ in transcript if rc != 0]
    if bad:
        cmd, rc = bad[0]
        return TestResult("smoke.prepare", status_for(Event.SETUP_FAILED), duration,
                          f"`{cmd}` exited with status {rc}\n{text}")
    return TestResult("smoke.prepare", Status.PASS, duration, text)


def reported_seconds(obj: Mapping[str, Any]) -> float | None:
    """A sub-test's duration as its workload measured it (``elapsed_ns``), else None.

    Sub-tests of one workload may run at once (svm-invalidate, atomics) and
    report together, so neither the workload's total nor the time between two
    of its lines is one sub-test's duration.
    """
    ns = obj.get("elapsed_ns")
    return ns / 1e9 if isinstance(ns, int | float) and not isinstance(ns, bool) else None


def workload_results(
    cmd: str, rc: int, out: str, err: str, duration: float, output_files: Sequence[str] = (),
) -> tuple[Objs, list[TestResult]]:
    """The sub-tests the workload reported and an entry for each.

    A sub-test passes when its line says ``"ok": true``. No sub-test at all is
    ``smoke.run`` FAIL; a non-zero exit status although every sub-test passed
    is ``smoke.exit`` FAIL.
    """
    files = list(output_files)
    objs, other = parse_workload_output(out)
    if not objs:
        return objs, [TestResult(
            "smoke.run", Status.FAIL, duration,
            f"{cmd} exited with status {rc} and reported no sub-test\n"
            f"stdout:\n{out[-1500:]}\nstderr:\n{err[-1500:]}", files)]
    entries = []
    for obj in objs:
        ok = obj.get("ok") is True
        msg = _brief(obj)
        if not ok and err.strip():
            msg += "\nstderr:\n" + err[-1500:]
        entries.append(TestResult(
            f"smoke.{obj['test']}", Status.PASS if ok else Status.FAIL,
            reported_seconds(obj), msg, files,
        ))
    if rc != 0 and all(o.get("ok") is True for o in objs):
        entries.append(TestResult(
            "smoke.exit", Status.FAIL, None,
            f"{cmd} exited with status {rc} although every sub-test passed\n"
            + "\n".join(other[-20:]) + err[-1500:], files))
    return objs, entries


def workload_interrupted(
    error: SSHTimeout | SSHAborted, splat: bool, duration: float,
    output_files: Sequence[str] = (), guest_gone: str | None = None,
) -> tuple[Objs, TestResult]:
    """The workload did not finish: ``smoke.run`` FAIL (it ran past its budget,
    or the guest died under it: :func:`~harness.scenarios.common.cut_off_status`),
    and the sub-tests it reported before."""
    status = cut_off_status(error, guest_gone, splat)
    partial = error.stdout.decode(errors="replace")
    objs, _ = parse_workload_output(partial)
    return objs, TestResult("smoke.run", status, duration, f"{error}\n{partial[-2000:]}",
                            list(output_files))


def counters_result(
    counters: Mapping[str, int | str] | None, objs: Sequence[Mapping[str, Any]],
    guest_gone: str | None = None,
) -> TestResult:
    """``smoke.counters`` from the device's counters (None: not read).

    FAIL on DMA or guest errors, or fewer completed commands than the workload
    reported; MISS when the guest died before they could be read (the guest
    was unusable: never checked); ERROR when QMP could not read them.
    """
    path = "smoke.counters"
    if not counters and guest_gone:
        return TestResult(path, status_for(Event.GUEST_UNUSABLE),
                          log_excerpt=f"not read: {guest_gone} before the end of the run")
    if not counters:
        return TestResult(path, status_for(Event.HARNESS_ERROR),
                          log_excerpt="device counters could not be read over QMP")
    bad = {k: v for k, v in counters.items() if isinstance(v, str)}
    if bad:
        return TestResult(path, status_for(Event.HARNESS_ERROR),
                          log_excerpt=f"qom-get failed: {json.dumps(bad)}")
    problems = []
    for name in ("dma-errors", "guest-errors"):
        if counters.get(name, 0) != 0:
            problems.append(f"{name} = {counters[name]}, expected 0")
    ncmds = sum(int(o.get("ncmds", 0)) for o in objs)
    if int(counters.get("cmds-completed", 0)) < ncmds:
        problems.append(f"cmds-completed = {counters['cmds-completed']}, the workload "
                        f"reported {ncmds} commands")
    return TestResult(path, Status.FAIL if problems else Status.PASS,
                      log_excerpt="\n".join([*problems, json.dumps(counters)]))


def dmatrace_result(
    trace: dmatrace.Trace, objs: Sequence[Mapping[str, Any]], duration: float,
    output_files: Sequence[str] = (), only_first: bool = False,
) -> TestResult:
    """``smoke.dmatrace``: every data DMA of the transfers that moved data lies
    within the mappings they reported, and moved the bytes they asked for.

    ``only_first``: later scenarios used the device too (context ids are
    reused), so smoke's commands are the first ones, on bus addresses."""
    files = list(output_files)
    summary = dmatrace.summarize(trace)
    # Requests that moved data: error sub-tests report ncmds 0 and no DMA.
    movers = [o for o in objs if o.get("maps") and o.get("ncmds", 1) not in (0, "0")]
    try:
        expectations = [dmatrace.expectation_from_result(o) for o in movers]
    except (KeyError, ValueError, TypeError) as e:
        return TestResult("smoke.dmatrace", Status.FAIL, duration,
                          f"the workload's maps are malformed: {e}", files)
    problems = (dmatrace.check_trace(expectations, trace, only_first=only_first)
                if expectations else
                ["the workload reported no DMA maps to check the trace against"])
    text = "\n".join([*problems[:50], summary.format()])
    return TestResult(
        "smoke.dmatrace", Status.FAIL if problems else Status.PASS,
        duration, text, files, {"trace": summary.to_dict()},
    )


# ---- the scenario ------------------------------------------------------------------------

@dataclass
class Smoke:
    """Load ``driver``, run ``prepare`` then ``workload`` in the guest.

    ``workload`` is a shell command line (e.g. with ``-s 4K`` for small
    transfers) printing the smoke JSON lines; ``prepare`` are shell commands
    run once the driver is loaded and before the workload (e.g. a fault to
    inject through the driver's debugfs); any that exits non-zero stops the
    scenario. The registry's ``smoke`` is ``Smoke()``.
    """

    driver: str = DRIVER
    workload: str = WORKLOAD
    prepare: tuple[str, ...] = ()

    name = "smoke"

    # -- in the running guest --

    def run(self, s: Session) -> None:
        kernel = guest_kernel(s)
        if kernel is not None:
            s.results.add(driver_build_result(kernel.name, kernel.driver_warnings))
        if not self._load_driver(s):
            s.results.add_status("smoke", Status.SKIP, "not run: driver.load did not pass")
            return
        if self.prepare and not self._prepare(s):
            s.results.add_status("smoke", Status.SKIP, "not run: smoke.prepare did not pass")
            return
        self._workload(s)

    def _ssh(self, s: Session, cmd: str, timeout: float) -> tuple[int, str, str]:
        rc, out, err = s.ssh.run(cmd, timeout, abort=s.guest.exit_reason)
        return rc, out, err

    def _splat(self, s: Session) -> bool:
        return bool(s.guest.console and s.guest.console.splats())

    def _cut_off(self, s: Session, e: SSHError) -> Status:
        return cut_off_status(e, s.guest.exit_reason(), self._splat(s))

    def _load_driver(self, s: Session) -> bool:
        t0 = time.monotonic()
        dmesg_file = s.run_dir / "driver-load.dmesg"
        try:
            rc, out, err = self._ssh(s, f"insmod {self.driver}", LOAD_TIMEOUT)
            if s.ftrace is not None:  # its trace events exist from now on
                s.ftrace.module_loaded()
            # devtmpfs creates the node during probe; allow a moment anyway
            # (not when insmod failed: no node is coming then).
            wait = (f"for i in 1 2 3 4 5; do [ -c {DEVNODE} ] && break; sleep 1; done; "
                    if rc == 0 else "")
            _, node, _ = self._ssh(s, f"{wait}ls -l /dev/hmm_gpu* 2>&1", LOAD_TIMEOUT)
            _, dmesg, _ = self._ssh(s, "dmesg", LOAD_TIMEOUT)
        except SSHError as e:
            s.results.add(TestResult("driver.load", self._cut_off(s, e),
                                     time.monotonic() - t0, str(e)))
            return False
        dmesg_file.write_text(dmesg)
        result = s.results.add(driver_load_result(
            self.driver, rc, out, err, node, dmesg, time.monotonic() - t0, [dmesg_file.name]))
        return result.status == Status.PASS

    def _prepare(self, s: Session) -> bool:
        t0 = time.monotonic()
        transcript: list[tuple[str, int, str]] = []
        for cmd in self.prepare:
            try:
                rc, out, err = self._ssh(s, cmd, LOAD_TIMEOUT)
            except SSHError as e:
                s.results.add(TestResult("smoke.prepare", self._cut_off(s, e),
                                         time.monotonic() - t0, f"`{cmd}`: {e}"))
                return False
            transcript.append((cmd, rc, out + err))
            if rc != 0:
                break
        result = s.results.add(prepare_result(transcript, time.monotonic() - t0))
        return result.status == Status.PASS

    def _workload(self, s: Session) -> None:
        t0 = time.monotonic()
        timeout = s.cfg.timeouts.scenario
        out_file, err_file = s.run_dir / "smoke.stdout", s.run_dir / "smoke.stderr"
        files = [out_file.name, err_file.name]
        try:
            rc, out, err = self._ssh(s, self.workload, timeout)
        except (SSHTimeout, SSHAborted) as e:
            out_file.write_bytes(e.stdout)
            err_file.write_bytes(e.stderr)
            s.state["objs"], entry = workload_interrupted(
                e, self._splat(s), time.monotonic() - t0, files, s.guest.exit_reason())
            s.results.add(entry)
            return
        except SSHError as e:
            s.results.add(TestResult("smoke.run", self._cut_off(s, e), time.monotonic() - t0,
                                     str(e)))
            return
        took = time.monotonic() - t0
        # Counters now: later scenarios (SVM faults, cancels) move them too.
        if not s.guest.exit_reason():
            gpu0 = s.guest.counters().get("gpu0") or {}
            # a value that is a string is a QMP error text: not read
            if gpu0 and not any(isinstance(v, str) for v in gpu0.values()):
                s.state["counters"] = gpu0
        out_file.write_text(out)
        err_file.write_text(err)
        s.state["objs"], entries = workload_results(self.workload, rc, out, err, took, files)
        for entry in entries:
            s.results.add(entry)

    # -- after the guest has shut down --

    def finish(self, s: Session) -> None:
        objs: Objs = s.state.get("objs") or []
        if not objs:
            return
        counters = s.state.get("counters") or s.results.devices.get("gpu0")
        s.results.add(counters_result(counters, objs,
                                      s.state.get("guest_gone")))
        self._check_trace(s, objs)

    def _check_trace(self, s: Session, objs: Objs) -> None:
        t0 = time.monotonic()
        path = s.run_dir / "dmatrace-0.bin"
        if not path.exists():
            s.results.add(TestResult("smoke.dmatrace", status_for(Event.HARNESS_ERROR), None,
                                     f"{path.name} was not written", []))
            return
        try:
            trace = finished_trace(s, path)
        except dmatrace.TraceError as e:
            s.results.add(TestResult("smoke.dmatrace", Status.FAIL, time.monotonic() - t0,
                                     f"{path.name}: {e}", [path.name]))
            return
        # When scenarios that use the MMU ran after smoke, only the trace up
        # to their first activity is smoke's.
        names = list(s.results.config.get("scenarios") or s.cfg.scenarios)
        first = len(names) > 1 and names[0] == self.name
        s.results.add(dmatrace_result(trace, objs, time.monotonic() - t0, [path.name],
                                      only_first=first))


def make() -> Smoke:
    return Smoke()

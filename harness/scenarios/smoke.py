"""The smoke scenario: load the driver, run hmm-gpu-smoke, check the DMA trace.

Entries: ``driver.load``, ``smoke.<sub-test>`` (one per JSON line the
workload prints), ``smoke.counters`` (device counters over QMP) and
``smoke.dmatrace`` (every data DMA within the mappings the workload
reported, bytes moved equal to the requests).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from harness import dmatrace
from harness.results import Status, TestResult
from harness.scenarios import Session
from harness.ssh import SSHAborted, SSHError, SSHTimeout

log = logging.getLogger(__name__)

DRIVER = "/opt/hmmlab/hmm_gpu.ko"
DEVNODE = "/dev/hmm_gpu0"
WORKLOAD = "/opt/hmmlab/bin/hmm-gpu-smoke"
LOAD_TIMEOUT = 60.0


def parse_workload_output(stdout: str) -> tuple[list[dict[str, Any]], list[str]]:
    """JSON objects with a "test" key, one per line; other lines are returned apart."""
    objs: list[dict[str, Any]] = []
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


class Smoke:
    name = "smoke"

    # -- in the running guest --

    def run(self, s: Session) -> None:
        if not self._load_driver(s):
            s.results.add_status("smoke", Status.SKIP, "not run: driver.load did not pass")
            return
        self._workload(s)

    def _ssh(self, s: Session, cmd: str, timeout: float) -> tuple[int, str, str]:
        rc, out, err = s.ssh.run(cmd, timeout, abort=s.guest.exit_reason)
        return rc, out, err

    def _load_driver(self, s: Session) -> bool:
        t0 = time.monotonic()
        path = "driver.load"
        dmesg_file = s.run_dir / "driver-load.dmesg"
        try:
            rc, out, err = self._ssh(s, f"insmod {DRIVER}", LOAD_TIMEOUT)
            insmod = f"$ insmod {DRIVER}\n{out}{err}"
            # devtmpfs creates the node during probe; allow a moment anyway.
            _, node, _ = self._ssh(
                s, f"for i in 1 2 3 4 5; do [ -c {DEVNODE} ] && break; sleep 1; done; "
                   f"ls -l /dev/hmm_gpu* 2>&1", LOAD_TIMEOUT)
            _, dmesg, _ = self._ssh(s, "dmesg", LOAD_TIMEOUT)
        except (SSHTimeout, SSHAborted, SSHError) as e:
            status = Status.FAIL if s.guest.console and s.guest.console.splats() else Status.ERROR
            s.results.add(TestResult(path, status, time.monotonic() - t0, str(e)))
            return False
        dmesg_file.write_text(dmesg)
        relevant = [ln for ln in dmesg.splitlines() if "hmm" in ln.lower()]
        excerpt = "\n".join([insmod.strip(), node.strip(), *relevant[-30:]])
        problems = []
        if rc != 0:
            problems.append(f"insmod exited with status {rc}")
        if DEVNODE not in node or "No such file" in node:
            problems.append(f"{DEVNODE} does not exist after insmod")
        status = Status.FAIL if problems else Status.PASS
        s.results.add(TestResult(
            path, status, time.monotonic() - t0,
            "\n".join([*problems, excerpt]).strip(), [dmesg_file.name],
        ))
        return status == Status.PASS

    def _workload(self, s: Session) -> None:
        t0 = time.monotonic()
        timeout = s.cfg.timeouts.scenario
        out_file, err_file = s.run_dir / "smoke.stdout", s.run_dir / "smoke.stderr"
        files = [out_file.name, err_file.name]
        try:
            rc, out, err = self._ssh(s, WORKLOAD, timeout)
        except (SSHTimeout, SSHAborted) as e:
            out_file.write_bytes(e.stdout)
            err_file.write_bytes(e.stderr)
            splat = bool(s.guest.console and s.guest.console.splats())
            status = Status.FAIL if isinstance(e, SSHAborted) and splat else Status.ERROR
            partial = e.stdout.decode(errors="replace")
            s.state["objs"], _ = parse_workload_output(partial)
            s.results.add(TestResult("smoke.run", status, time.monotonic() - t0,
                                     f"{e}\n{partial[-2000:]}", files))
            return
        except SSHError as e:
            s.results.add(TestResult("smoke.run", Status.ERROR, time.monotonic() - t0, str(e)))
            return
        took = time.monotonic() - t0
        # Counters now: later scenarios (SVM faults, cancels) move them too.
        if not s.guest.exit_reason():
            s.state["counters"] = s.guest.counters().get("gpu0")
        out_file.write_text(out)
        err_file.write_text(err)
        objs, other = parse_workload_output(out)
        s.state["objs"] = objs
        if not objs:
            s.results.add(TestResult(
                "smoke.run", Status.FAIL, took,
                f"{WORKLOAD} exited with status {rc} and reported no sub-test\n"
                f"stdout:\n{out[-1500:]}\nstderr:\n{err[-1500:]}", files))
            return
        each = took / len(objs)
        for obj in objs:
            ok = obj.get("ok") is True
            msg = _brief(obj)
            if not ok and err.strip():
                msg += "\nstderr:\n" + err[-1500:]
            ns = obj.get("elapsed_ns")
            s.results.add(TestResult(
                f"smoke.{obj['test']}", Status.PASS if ok else Status.FAIL,
                ns / 1e9 if isinstance(ns, int | float) else each, msg, files,
            ))
        if rc != 0 and all(o.get("ok") is True for o in objs):
            s.results.add(TestResult(
                "smoke.exit", Status.FAIL, 0.0,
                f"{WORKLOAD} exited with status {rc} although every sub-test passed\n"
                + "\n".join(other[-20:]) + err[-1500:], files))

    # -- after the guest has shut down --

    def finish(self, s: Session) -> None:
        objs: list[dict[str, Any]] = s.state.get("objs") or []
        if not objs:
            return
        self._check_counters(s, objs)
        self._check_trace(s, objs)

    def _check_counters(self, s: Session, objs: list[dict[str, Any]]) -> None:
        counters = s.state.get("counters") or s.results.devices.get("gpu0")
        if not counters and s.state.get("guest_gone"):
            s.results.add_status("smoke.counters", Status.SKIP,
                                 f"not read: {s.state['guest_gone']} before the end of the run")
            return
        if not counters:
            s.results.add_status("smoke.counters", Status.ERROR,
                                 "device counters could not be read over QMP")
            return
        bad = {k: v for k, v in counters.items() if isinstance(v, str)}
        if bad:
            s.results.add_status("smoke.counters", Status.ERROR,
                                 f"qom-get failed: {json.dumps(bad)}")
            return
        problems = []
        for name in ("dma-errors", "guest-errors"):
            if counters.get(name, 0) != 0:
                problems.append(f"{name} = {counters[name]}, expected 0")
        ncmds = sum(int(o.get("ncmds", 0)) for o in objs)
        if counters.get("cmds-completed", 0) < ncmds:
            problems.append(f"cmds-completed = {counters['cmds-completed']}, the workload "
                            f"reported {ncmds} commands")
        s.results.add_status(
            "smoke.counters", Status.FAIL if problems else Status.PASS,
            "\n".join([*problems, json.dumps(counters)]),
        )

    def _check_trace(self, s: Session, objs: list[dict[str, Any]]) -> None:
        t0 = time.monotonic()
        path = s.run_dir / "dmatrace-0.bin"
        files = [path.name]
        if not path.exists():
            s.results.add(TestResult("smoke.dmatrace", Status.ERROR, 0.0,
                                     f"{path.name} was not written", []))
            return
        try:
            trace = dmatrace.read_trace(path)
        except dmatrace.TraceError as e:
            s.results.add(TestResult("smoke.dmatrace", Status.FAIL, time.monotonic() - t0,
                                     f"{path.name}: {e}", files))
            return
        summary = dmatrace.summarize(trace)
        # Requests that moved data: error sub-tests report ncmds 0 and no DMA.
        movers = [o for o in objs if o.get("maps") and o.get("ncmds", 1) not in (0, "0")]
        try:
            expectations = [dmatrace.expectation_from_result(o) for o in movers]
        except (KeyError, ValueError, TypeError) as e:
            s.results.add(TestResult("smoke.dmatrace", Status.FAIL, time.monotonic() - t0,
                                     f"the workload's maps are malformed: {e}", files))
            return
        # Later scenarios use the device too (context ids are reused): smoke's
        # commands are the first ones on bus addresses (no va) in its contexts.
        later = s.cfg.scenarios.index(self.name) < len(s.cfg.scenarios) - 1
        problems = (dmatrace.check_trace(expectations, trace, only_first=later)
                    if expectations else
                    ["the workload reported no DMA maps to check the trace against"])
        text = "\n".join([*problems[:50], summary.format()])
        s.results.add(TestResult(
            "smoke.dmatrace", Status.FAIL if problems else Status.PASS,
            time.monotonic() - t0, text, files, {"trace": summary.to_dict()},
        ))


def make() -> Smoke:
    return Smoke()

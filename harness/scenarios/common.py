"""Helpers shared by scenarios: guest commands, kernel modules, device nodes."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from harness.checks import dmatrace
from harness.core.results import Event, Status, TestResult, interruption, status_for
from harness.guest.ssh import Mark, SSHAborted, SSHError, SSHTimeout
from harness.guest.vm import GuestError
from harness.scenarios import Session

BIN = "/opt/hmmlab/bin"
HMM_GPU_KO = "/opt/hmmlab/hmm_gpu.ko"
TEST_HMM_KO = "/opt/hmmlab/test_hmm.ko"
MODULE_TIMEOUT = 60.0
BLOCKED_TASKS = "blocked-tasks.txt"  # harness.vm.LaunchFiles.blocked_tasks


@dataclass
class Cmd:
    """One command's outcome in the guest (``error`` set when it could not finish)."""

    cmd: str
    rc: int = -1
    out: str = ""
    err: str = ""
    error: str = ""  # timeout, QEMU gone, SSH failure
    status_if_error: Status = Status.ERROR  # see cut_off_status
    seconds: float = 0.0
    out_marks: tuple[Mark, ...] = ()  # when stdout came (harness.guest.ssh.line_arrivals)
    # after a timeout: the guest kernel's blocked tasks with their stacks (sysrq-w)
    dump: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.rc == 0

    def text(self, limit: int = 3000) -> str:
        body = f"$ {self.cmd}\n{self.out}{self.err}".rstrip()
        if self.error:
            body += f"\n({self.error})"
        elif self.rc != 0:
            body += f"\n(exit status {self.rc})"
        if not self.dump:
            return body[-limit:]
        # the stacks say where it hung: they get their own share of the excerpt
        dump = (f"\nthe guest kernel's blocked tasks at the timeout (sysrq-w, also in "
                f"{BLOCKED_TASKS}):\n")
        dump += self.dump[:limit]
        return body[-limit:] + dump


def bench_rounds(name: str, rounds: int) -> int:
    """A benchmark scenario's round count, checked."""
    if rounds < 1:
        raise ValueError(f"{name}: rounds must be at least 1, got {rounds}")
    return rounds


def cut_off_status(error: SSHError | GuestError, guest_gone: str | None, splat: bool) -> Status:
    """The status of a guest command or test step that ``error`` cut off.

    ``guest_gone``: why the guest under test is gone (its
    ``exit_reason()``), if it is; ``splat``: its console shows one. A hang
    past the budget and a guest that died under the test are the software's
    failure; a QEMU (a peer's, say) that would not start or an SSH link that
    broke under a guest still running quietly are the harness's.
    """
    if isinstance(error, GuestError) and not guest_gone and not splat:
        return status_for(Event.QEMU_START_FAILED)
    return status_for(interruption(
        timed_out=isinstance(error, SSHTimeout),
        guest_gone=isinstance(error, SSHAborted) or bool(guest_gone), splat=splat))


def guest_run(s: Session, cmd: str, timeout: float) -> Cmd:
    """Run ``cmd`` in the guest; never raises for timeouts, QEMU exits or SSH errors."""
    t0 = time.monotonic()
    c = Cmd(cmd)
    try:
        r = s.ssh.run(cmd, timeout, abort=s.guest.exit_reason)
        c.rc, c.out, c.err, c.out_marks = r.rc, r.stdout, r.stderr, r.stdout_marks
    except SSHError as e:
        if isinstance(e, SSHTimeout | SSHAborted):
            c.out, c.err = e.stdout.decode(errors="replace"), e.stderr.decode(errors="replace")
            c.out_marks = e.stdout_marks
        c.error = str(e)
        c.dump = e.dump if isinstance(e, SSHTimeout) else ""
        splat = bool(s.guest.console and s.guest.console.splats())
        c.status_if_error = cut_off_status(e, s.guest.exit_reason(), splat)
    c.seconds = time.monotonic() - t0
    return c


def module_loaded(s: Session, name: str) -> bool:
    c = guest_run(s, f"grep -q '^{name} ' /proc/modules", MODULE_TIMEOUT)
    return c.ok


def load_module(s: Session, ko: str, name: str, nodes: tuple[str, ...],
                wait: float = 10.0, args: str = "") -> Cmd:
    """insmod ``ko`` (with module parameters ``args``) unless ``name`` is loaded; then
    wait for ``nodes`` to appear.

    The returned command is ok only if the module is loaded and every node exists.
    """
    checks = " && ".join(f"[ -c {shlex.quote(n)} ]" for n in nodes) or "true"
    script = (
        f"grep -q '^{name} ' /proc/modules || insmod {shlex.quote(ko)} {args} || exit 10; "
        f"i=0; while ! ( {checks} ); do i=$((i+1)); [ $i -gt {int(wait * 10)} ] && break; "
        "sleep 0.1; done; "
        f"ls -l {' '.join(shlex.quote(n) for n in nodes)} 2>&1; {checks} || exit 11"
    )
    c = guest_run(s, script, MODULE_TIMEOUT)
    if s.ftrace is not None:
        s.ftrace.module_loaded()
    c.cmd = f"insmod {' '.join(x for x in (ko, args) if x)} (and wait for {', '.join(nodes)})"
    return c


def unload_module(s: Session, name: str) -> Cmd:
    if s.ftrace is not None:  # rmmod of a traced module empties the trace buffer
        s.ftrace.before_unload(name)
    return guest_run(s, f"! grep -q '^{name} ' /proc/modules || rmmod {name}", MODULE_TIMEOUT)


def add_cmd_result(s: Session, path: str, c: Cmd, files: list[str] | None = None,
                   extra_problem: str = "") -> bool:
    """A PASS/FAIL/ERROR entry for one guest command; returns whether it passed."""
    if c.error:
        status = c.status_if_error
    elif c.rc != 0 or extra_problem:
        status = Status.FAIL
    else:
        status = Status.PASS
    text = "\n".join(x for x in (extra_problem, c.text()) if x)
    files = list(files or [])
    if c.dump:
        files += [f for f in (BLOCKED_TASKS, "console.log") if f not in files]
    s.results.add(TestResult(path, status, c.seconds, text, files))
    return status == Status.PASS


def finished_trace(s: Session, path: Path) -> dmatrace.Trace:
    """The DMA trace at ``path``, decoded once per run for every scenario's finish (the
    file is whole once QEMU has exited). Raises dmatrace.TraceError as read_trace."""
    cache: dict[Path, dmatrace.Trace] = s.state.setdefault("finished_traces", {})
    if path not in cache:
        cache[path] = dmatrace.read_trace(path)
    return cache[path]

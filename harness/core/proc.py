"""Subprocess helpers: every external command has a timeout and a log.

Each command runs in a session (so a process group) of its own, and a
timeout or an interrupt kills the whole group: ``make`` and the compilers it
started, not ``make`` alone. Also here, shared by every process the harness
starts: :func:`sigterm_interrupts` (SIGTERM unwinds like Ctrl-C) and
:func:`die_with_parent` (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# After SIGTERM, how long a group gets before SIGKILL (make removes its
# half-written targets on SIGTERM).
KILL_GRACE = 3.0


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """A signal handler: the signal unwinds the main thread like Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """During the block SIGTERM (a CI job's timeout, the scheduler ending a cell) raises
    KeyboardInterrupt, so the code's own cleanup runs: guests end, results.json is
    written."""
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies, however the
    parent dies (SIGKILL included). Returns False where prctl is missing.

    The kernel sends it when the *thread* that forked this process ends: start such
    processes from a thread that lives as long as they should (the main thread).
    """
    prctl = _prctl()
    if prctl is None:
        return False
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), sig)
    return True


def pdeathsig_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for Popen: the child gets ``sig`` when the harness dies. libc is
    looked up here, in the parent: the child only makes the call."""
    prctl = _prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig)

    return preexec


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """End ``proc``'s process group (it leads one: start_new_session): SIGTERM, then
    SIGKILL to whatever is left after ``grace``; reap ``proc``."""
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break  # nobody left in the group
        if sig == signal.SIGTERM:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    # the leader is gone; its children may not be yet (SIGKILL'd above if so)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _wait_group(proc: subprocess.Popen[bytes], timeout: float,
                input_bytes: bytes | None) -> tuple[bytes, bytes]:
    """``proc.communicate`` within ``timeout``; on a timeout or an interrupt the whole
    group is killed before the exception goes on."""
    try:
        out, err = proc.communicate(input=input_bytes, timeout=timeout)
    except BaseException:
        kill_group(proc)
        raise
    return out or b"", err or b""


class CommandError(RuntimeError):
    """A command failed; the message names it and points at its log."""

    def __init__(self, argv: Sequence[str], rc: int | None, logfile: Path | None, tail: str):
        self.argv = list(argv)
        self.rc = rc
        self.logfile = logfile
        self.tail = tail
        what = "timed out" if rc is None else f"exited with status {rc}"
        where = f" (full log: {logfile})" if logfile else ""
        super().__init__(f"`{shlex.join(argv)}` {what}{where}\n{tail}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    logfile: Path | None = None,
    check: bool = True,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command with a hard timeout.

    With ``logfile`` its stdout and stderr go (appended) to that file, and a
    failure reports the file and its last lines; without it, output is
    captured and returned.
    """
    args = [os.fspath(a) for a in argv]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    log.debug("run: %s (cwd=%s)", shlex.join(args), cwd)
    start = time.monotonic()
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as fh:
            fh.write(f"\n$ {shlex.join(args)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                args, cwd=cwd, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                out, err = _wait_group(proc, timeout, input_bytes)
            except subprocess.TimeoutExpired as e:
                raise CommandError(args, None, logfile, _tail(logfile)) from e
            cp = subprocess.CompletedProcess(args, proc.returncode, out, err)
        if check and cp.returncode != 0:
            raise CommandError(args, cp.returncode, logfile, _tail(logfile))
    else:
        proc = subprocess.Popen(
            args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, err = _wait_group(proc, timeout, input_bytes)
        except subprocess.TimeoutExpired as e:
            raise CommandError(args, None, None, "") from e
        cp = subprocess.CompletedProcess(args, proc.returncode, out, err)
        if check and cp.returncode != 0:
            tail = (cp.stdout + cp.stderr).decode(errors="replace")[-3000:]
            raise CommandError(args, cp.returncode, None, tail)
    log.debug("done in %.1fs: %s", time.monotonic() - start, args[0])
    return cp


def run_with_progress(
    argv: Sequence[str | os.PathLike[str]],
    *,
    label: str,
    timeout: float,
    logfile: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    interval: float = 15.0,
) -> None:
    """Run a long build step, logging everything and printing a heartbeat.

    Every ``interval`` seconds one line goes to the logger with the elapsed
    time and the command's latest output line (ninja's ``[n/N]`` or kbuild's
    ``CC file``), so a person or a CI log sees the step is alive.
    """
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    last_beat = start
    last_line = ""
    with open(logfile, "ab") as fh:
        fh.write(f"\n$ {shlex.join(args)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        assert proc.stdout is not None
        # Poll rather than iterate: a step that hangs silently must still hit
        # its timeout, and a quiet one (a long link) still gets heartbeats.
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        pending = b""
        try:
            while True:
                now = time.monotonic()
                if now - start > timeout:
                    raise subprocess.TimeoutExpired(args, timeout)
                if now - last_beat >= interval:
                    last_beat = now
                    log.info("%s: %ds, %s", label, now - start, last_line[:100])
                if not sel.select(timeout=1.0):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                fh.write(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in reversed(lines):
                    if raw.strip():
                        last_line = raw.decode(errors="replace").strip()
                        break
            rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired as e:
            kill_group(proc)
            raise CommandError(args, None, logfile, _tail(logfile)) from e
        except BaseException:
            kill_group(proc)
            raise
        finally:
            sel.close()
            proc.stdout.close()
    if rc != 0:
        raise CommandError(args, rc, logfile, _tail(logfile))
    log.info("%s: done in %ds", label, time.monotonic() - start)

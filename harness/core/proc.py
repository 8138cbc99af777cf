"""Subprocess helpers: every external command has a timeout and a log."""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


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
            try:
                cp = subprocess.run(
                    args, cwd=cwd, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                    timeout=timeout, input=input_bytes,
                    stdin=None if input_bytes is not None else subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired as e:
                raise CommandError(args, None, logfile, _tail(logfile)) from e
        if check and cp.returncode != 0:
            raise CommandError(args, cp.returncode, logfile, _tail(logfile))
    else:
        try:
            cp = subprocess.run(
                args, cwd=cwd, env=full_env, capture_output=True, timeout=timeout,
                input=input_bytes, stdin=None if input_bytes is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise CommandError(args, None, None, "") from e
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
            stdin=subprocess.DEVNULL,
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
            proc.kill()
            proc.wait()
            raise CommandError(args, None, logfile, _tail(logfile)) from e
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            sel.close()
    if rc != 0:
        raise CommandError(args, rc, logfile, _tail(logfile))
    log.info("%s: done in %ds", label, time.monotonic() - start)

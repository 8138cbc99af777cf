"""SSH to a guest (paramiko): pinned host key, key auth, commands with timeouts.

The guest runs dropbear, which has no SFTP server: files go over ``cat``.
"""

from __future__ import annotations

import base64
import bisect
import codecs
import logging
import select
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

log = logging.getLogger(__name__)

# Called while waiting; returns a reason to give up (e.g. "QEMU exited") or None.
AbortCheck = Callable[[], str | None]

# After the connection drops under a command, how long to wait for the abort
# check to say why (QEMU closes its sockets before it can be reaped).
ABORT_GRACE = 5.0


class SSHError(RuntimeError):
    """Could not connect, or a command could not be carried out."""


# One read of a command's stdout: (time.monotonic() when it came, characters of
# the decoded stdout received up to and including it).
Mark = tuple[float, int]


@dataclass(frozen=True)
class Arrival:
    """When a line of output reached the host, and in which read (0, 1, ...)."""

    time: float
    read: int


def line_arrivals(text: str, marks: Sequence[Mark]) -> list[Arrival | None]:
    """When each line of ``text.splitlines()`` arrived: the first read after which
    the whole line (its terminator included) had been received.

    ``marks`` are a command's stdout reads (:attr:`CommandResult.stdout_marks`);
    a line no read covers (decoded only when the stream ended) is None. Lines
    that came in the same read cannot be told apart in time.
    """
    ends: list[int] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        ends.append(pos)
    counts = [n for _, n in marks]
    out: list[Arrival | None] = []
    for end in ends:
        i = bisect.bisect_left(counts, end)
        out.append(Arrival(marks[i][0], i) if i < len(marks) else None)
    return out


class MarkedStream:
    """A command's stdout as it comes: the bytes, and a :data:`Mark` per read."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.marks: list[Mark] = []
        # decodes as it comes only to count characters as data.decode() will have them
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = 0

    def feed(self, data: bytes, now: float) -> None:
        self.data += data
        self._chars += len(self._decoder.decode(data))
        self.marks.append((now, self._chars))


class SSHTimeout(SSHError):
    def __init__(self, cmd: str, timeout: float, stdout: bytes, stderr: bytes,
                 marks: Sequence[Mark] = (), dump: str = "") -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_marks = tuple(marks)
        self.dump = dump  # what SSHClient.on_timeout gave: the guest kernel's stacks
        super().__init__(f"`{cmd}` did not finish within {timeout:.0f}s")


class SSHAborted(SSHError):
    def __init__(self, cmd: str, reason: str, stdout: bytes, stderr: bytes,
                 marks: Sequence[Mark] = ()) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_marks = tuple(marks)
        super().__init__(f"`{cmd}` aborted: {reason}")


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str
    # every read of stdout as it streamed in (see line_arrivals)
    stdout_marks: tuple[Mark, ...] = ()

    def __iter__(self):  # rc, out, err = client.run(...)
        return iter((self.rc, self.stdout, self.stderr))


def host_key_from_line(line: str) -> paramiko.PKey:
    """A public key from an OpenSSH ``"ssh-ed25519 AAAA... [comment]"`` line."""
    parts = line.split()
    if len(parts) < 2:
        raise SSHError(f"not an OpenSSH public key line: {line!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        key = paramiko.PKey.from_type_string(parts[0], blob)
    except Exception as e:  # paramiko raises several types here
        raise SSHError(f"cannot parse host key {parts[0]} {parts[1][:16]}...: {e}") from e
    if key.asbytes() != blob:  # paramiko reads past a truncated blob without complaint
        raise SSHError(f"truncated or malformed host key {parts[0]} {parts[1][:16]}...")
    return key


def load_client_key(path: Path) -> paramiko.PKey:
    """The private key in ``path`` (OpenSSH or PEM format, unencrypted)."""
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise SSHError(f"cannot load the client key {path}: {e}") from e


class SSHClient:
    """One connection to a guest's sshd through the slirp host forward."""

    def __init__(
        self,
        host: str,
        port: int,
        key_file: Path,
        host_pubkey: str,
        user: str = "root",
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_file = Path(key_file)
        self.host_key = host_key_from_line(host_pubkey)
        self._client: paramiko.SSHClient | None = None
        # called with the command when one times out, before anything is closed; what it
        # returns (the guest's blocked tasks, harness.vm) goes into SSHTimeout.dump
        self.on_timeout: Callable[[str], str] | None = None

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        client.get_host_keys().add(name, self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def connect(self, deadline: float, abort: AbortCheck | None = None) -> None:
        """Connect, retrying with backoff until ``deadline`` (time.monotonic()).

        slirp accepts the TCP connection before the guest's sshd listens, so
        early attempts fail in the banner exchange; those are retried. A host
        key mismatch is never retried.
        """
        pkey = load_client_key(self.key_file)
        delay = 0.5
        attempt = 0
        last: Exception | None = None
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise SSHError(
                    f"could not connect to {self.user}@{self.host}:{self.port} "
                    f"after {attempt - 1} attempts: {last}"
                )
            if abort is not None and (why := abort()):
                raise SSHError(f"gave up connecting: {why}")
            client = self._new_client()
            step = max(1.0, min(15.0, left))
            try:
                client.connect(
                    self.host, self.port, username=self.user, pkey=pkey,
                    look_for_keys=False, allow_agent=False,
                    timeout=step, banner_timeout=step, auth_timeout=step,
                    channel_timeout=step,
                )
            except paramiko.BadHostKeyException as e:
                client.close()
                raise SSHError(
                    f"host key mismatch for {self.host}:{self.port}: the guest offered "
                    f"{e.key.get_name()} {e.key.get_base64()[:24]}..., expected the pinned "
                    f"{self.host_key.get_name()} {self.host_key.get_base64()[:24]}..."
                ) from e
            except paramiko.AuthenticationException as e:
                client.close()
                raise SSHError(f"authentication as {self.user} with {self.key_file} failed") from e
            except (paramiko.SSHException, OSError, EOFError) as e:
                client.close()
                last = e
                log.debug("ssh attempt %d: %s", attempt, e)
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.6, 5.0)
                continue
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(5)
            self._client = client
            log.debug("ssh: connected to %s:%d after %d attempts", self.host, self.port, attempt)
            return

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise SSHError("not connected")
        return self._client

    def _channel(self, timeout: float) -> paramiko.Channel:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError("the SSH connection is closed")
        try:
            return transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError(f"cannot open an SSH session: {e}") from e

    def _drain(
        self, chan: paramiko.Channel, cmd: str, timeout: float, abort: AbortCheck | None
    ) -> tuple[int, bytes, bytes, list[Mark]]:
        """Read stdout and stderr until the command exits and both streams end.

        Each stdout read is timed (a :data:`Mark`): when a test prints its
        result line is when the host learns it finished.
        """
        deadline = time.monotonic() + timeout
        stdout, err = MarkedStream(), bytearray()
        last_abort_check = 0.0
        while True:
            busy = False
            if chan.recv_ready():
                stdout.feed(chan.recv(65536), time.monotonic())
                busy = True
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                busy = True
            if chan.exit_status_ready() and not chan.recv_ready() and not (
                chan.recv_stderr_ready()
            ):
                # Exit status came; pick up anything still in flight, then stop.
                if chan.eof_received or chan.closed:
                    break
                if time.monotonic() > deadline:
                    break
            now = time.monotonic()
            if now > deadline:
                # before the channel closes: that may end the command, and its state
                dump = self._timed_out(cmd)
                chan.close()
                raise SSHTimeout(cmd, timeout, bytes(stdout.data), bytes(err), stdout.marks,
                                 dump)
            if abort is not None and now - last_abort_check > 1.0:
                last_abort_check = now
                if why := abort():
                    chan.close()
                    raise SSHAborted(cmd, why, bytes(stdout.data), bytes(err), stdout.marks)
            if not busy:
                # woken as soon as output comes (so its arrival is timed to the
                # millisecond), else every 20 ms to look at the exit status
                select.select([chan], [], [], 0.02)
        rc = chan.recv_exit_status()
        chan.close()
        if rc == -1 and not self.connected:
            # No exit status and the connection is gone: the guest (or sshd)
            # went away under the command, which did not finish.
            why = self._await_abort(abort, ABORT_GRACE)
            if why:
                raise SSHAborted(cmd, why, bytes(stdout.data), bytes(err), stdout.marks)
            raise SSHError(f"`{cmd}`: the SSH connection was lost before the command finished")
        return rc, bytes(stdout.data), bytes(err), stdout.marks

    def _timed_out(self, cmd: str) -> str:
        if self.on_timeout is None:
            return ""
        try:
            return self.on_timeout(cmd)
        except Exception as e:  # the timeout is the news; a failed dump must not hide it
            log.warning("dump after `%s` timed out: %s", cmd, e)
            return ""

    @property
    def connected(self) -> bool:
        """Whether the connection is up (not whether the guest still answers over it)."""
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    @staticmethod
    def _await_abort(abort: AbortCheck | None, grace: float) -> str | None:
        """``abort``'s reason, waiting up to ``grace`` seconds for one (QEMU exiting)."""
        if abort is None:
            return None
        deadline = time.monotonic() + grace
        while not (why := abort()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return why

    def run(
        self, cmd: str, timeout: float, abort: AbortCheck | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``cmd`` in the guest's shell; returns (rc, stdout, stderr).

        Raises :class:`SSHTimeout` after ``timeout`` seconds and
        :class:`SSHAborted` when ``abort`` gives a reason (QEMU died); a
        connection lost under the command is :class:`SSHAborted` when
        ``abort`` then gives a reason, else :class:`SSHError`. A command
        that ends without an exit status (killed by a signal) has rc -1.
        """
        log.debug("ssh: %s", cmd)
        chan = self._channel(min(timeout, 30.0))
        chan.settimeout(min(timeout, 30.0))
        try:
            chan.exec_command(cmd)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
        except (TimeoutError, paramiko.SSHException, OSError) as e:
            chan.close()
            raise SSHError(f"`{cmd}`: {e}") from e
        rc, out, err, marks = self._drain(chan, cmd, timeout, abort)
        log.debug("ssh: rc=%d (%d bytes out, %d err)", rc, len(out), len(err))
        return CommandResult(rc, out.decode(errors="replace"), err.decode(errors="replace"),
                             tuple(marks))

    def put(self, local: Path, remote: str, timeout: float = 60.0, mode: str | None = None) -> None:
        """Copy a file into the guest with ``cat > remote`` (no SFTP on dropbear)."""
        data = Path(local).read_bytes()
        cmd = f"cat > {shlex.quote(remote)}"
        if mode:
            cmd += f" && chmod {shlex.quote(mode)} {shlex.quote(remote)}"
        rc, _out, err = self.run(cmd, timeout, stdin=data)
        if rc != 0:
            raise SSHError(f"copying {local} to the guest's {remote} failed (rc {rc}): {err}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SSHClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The SSH client against the guest's dropbear (through QEMU's slirp host forward).

Most tests share one booted guest; connecting while the guest boots and a
guest dying under a command get guests of their own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.guest.ssh import SSHAborted, SSHClient, SSHError, SSHTimeout, line_arrivals
from harness.guest.vm import AccelChoice, Guest, GuestImage

pytestmark = pytest.mark.e2e

MiB = 1 << 20
LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"


@dataclass
class Booted:
    guest: Guest
    artifacts: Artifacts

    def client(self, key: Path | None = None, pinned: str | None = None) -> SSHClient:
        a = self.artifacts
        return SSHClient("127.0.0.1", self.guest.ssh_port, key or a.ssh_key,
                         pinned or a.ssh_host_pubkey)

    def connect(self, within: float = 30) -> SSHClient:
        c = self.client()
        c.connect(time.monotonic() + within)
        return c


def guest_for(artifacts: Artifacts, accel: AccelChoice, run_dir: Path) -> Guest:
    return Guest(config.load_text("devices: []\n", "test.yaml"),
                 GuestImage.from_artifacts(artifacts), run_dir, accel)


@pytest.fixture(scope="module")
def booted(artifacts: Artifacts, accel: AccelChoice,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    with guest_for(artifacts, accel, tmp_path_factory.mktemp("ssh-guest")) as guest:
        guest.wait_ready()
        yield Booted(guest, artifacts)


@pytest.fixture
def ssh(booted: Booted) -> Iterator[SSHClient]:
    with booted.connect() as c:
        yield c


def test_run_returns_rc_stdout_stderr(ssh: SSHClient) -> None:
    rc, out, err = ssh.run("echo out; echo err >&2; exit 3", timeout=10)
    assert (rc, out, err) == (3, "out\n", "err\n")
    assert tuple(ssh.run("uname -s", timeout=10)) == (0, "Linux\n", "")


def test_stdin_reaches_the_command(ssh: SSHClient) -> None:
    assert ssh.run("wc -c", timeout=10, stdin=b"x" * 100_000).stdout.strip() == "100000"


def test_large_output_on_both_streams_does_not_hang(ssh: SSHClient) -> None:
    """4 MiB on each stream at once: more than an SSH window, so both must be drained."""
    cmd = ("yes 0123456789abcdef | head -c 4194304 >&2 & "
           "yes fedcba9876543210 | head -c 4194304; wait")
    res = ssh.run(cmd, timeout=300)  # a deadlock would end in SSHTimeout, not a result
    assert res.rc == 0
    assert (len(res.stdout), len(res.stderr)) == (4 * MiB, 4 * MiB)
    assert res.stdout == ("fedcba9876543210\n" * (4 * MiB // 17 + 1))[:4 * MiB]
    assert res.stderr == ("0123456789abcdef\n" * (4 * MiB // 17 + 1))[:4 * MiB]


def test_when_each_line_arrived(ssh: SSHClient) -> None:
    """Lines printed apart reach the host apart, in order, each in its own read: what
    hmm-tests' per-test durations are made of. Load may delay a line, never bring it
    early, so only the lower bounds are tight (less the delay of the earlier line)."""
    res = ssh.run("echo a; sleep 0.3; echo b; sleep 2; echo c", timeout=120)
    a, b, c = line_arrivals(res.stdout, res.stdout_marks)
    assert a and b and c and len({a.read, b.read, c.read}) == 3
    assert a.time < b.time < c.time, (a, b, c)
    assert c.time - b.time > 1.5 and c.time - b.time > b.time - a.time, (a, b, c)
    with pytest.raises(SSHTimeout) as exc:  # a command cut short keeps its marks
        ssh.run("echo x; sleep 2; echo y; sleep 300", timeout=20)
    x, y = line_arrivals(exc.value.stdout.decode(), exc.value.stdout_marks)
    assert x and y and x.read != y.read and y.time - x.time > 1.5, (x, y)


def test_timeout(ssh: SSHClient) -> None:
    """The command's timeout ends it, long before the command would end itself."""
    t0 = time.monotonic()
    with pytest.raises(SSHTimeout, match="did not finish within 2s") as exc:
        ssh.run("echo partial; echo more >&2; sleep 600", timeout=2)
    assert 2 <= time.monotonic() - t0 < 300
    assert (exc.value.stdout, exc.value.stderr) == (b"partial\n", b"more\n")
    assert ssh.run("echo still here", timeout=10).stdout == "still here\n"  # connection kept


def test_abort(ssh: SSHClient) -> None:
    """The abort check is asked while the command runs; its first reason ends the
    command (an SSHAborted, not the SSHTimeout of the command's own timeout)."""
    asked: list[float] = []

    def abort() -> str | None:
        asked.append(time.monotonic())
        return "QEMU exited with status 0" if len(asked) == 3 else None

    with pytest.raises(SSHAborted, match="aborted: QEMU exited with status 0") as exc:
        ssh.run("echo started; sleep 600", timeout=600, abort=abort)
    assert len(asked) == 3  # not asked again once it gave a reason
    assert exc.value.stdout == b"started\n"


def test_put(ssh: SSHClient, tmp_path: Path) -> None:
    data = bytes(range(256)) * 2048 + os.urandom(MiB)  # every byte value, 1.5 MiB
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    ssh.run("mkdir -p '/tmp/a dir'", timeout=10)
    ssh.put(src, "/tmp/a dir/x.bin", mode="0750")
    out = ssh.run("sha256sum '/tmp/a dir/x.bin' | cut -d' ' -f1; stat -c %a '/tmp/a dir/x.bin'",
                  timeout=30).stdout
    assert out.split() == [hashlib.sha256(data).hexdigest(), "750"]


def test_put_into_a_missing_directory_fails(ssh: SSHClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(SSHError, match=r"copying .* failed"):
        ssh.put(tmp_path / "f", "/no/such/dir/f")


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("ssh attempt")]


def test_host_key_mismatch_is_rejected_at_once(booted: Booted, other_ed25519_key: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A different pinned key (say, from another rootfs build) is never retried."""
    caplog.set_level(logging.DEBUG, logger="harness.guest.ssh")
    c = booted.client(pinned=other_ed25519_key.with_suffix(".pub").read_text())
    with pytest.raises(SSHError, match="host key mismatch"):
        c.connect(time.monotonic() + 600)
    assert retries(caplog) == []


def test_wrong_client_key_is_rejected(booted: Booted, other_ed25519_key: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="harness.guest.ssh")
    c = booted.client(key=other_ed25519_key)
    with pytest.raises(SSHError, match=r"authentication as root with .* failed"):
        c.connect(time.monotonic() + 600)
    assert retries(caplog) == []


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port bound (so nobody else takes it) but not listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_gives_up_at_the_deadline(artifacts: Artifacts, refused_port: int) -> None:
    c = SSHClient("127.0.0.1", refused_port, artifacts.ssh_key, artifacts.ssh_host_pubkey)
    t0 = time.monotonic()
    with pytest.raises(SSHError, match=r"could not connect to root@127.0.0.1:\d+ after "
                                       r"[2-9]\d* attempts: .*Unable to connect to port"):
        c.connect(time.monotonic() + 3)
    assert 3 <= time.monotonic() - t0 < 60  # retried until the deadline, then gave up


def test_abort_while_connecting(artifacts: Artifacts, refused_port: int) -> None:
    c = SSHClient("127.0.0.1", refused_port, artifacts.ssh_key, artifacts.ssh_host_pubkey)
    reasons = iter([None, "QEMU exited with status 1"])  # a third call would raise
    t0 = time.monotonic()
    with pytest.raises(SSHError, match="gave up connecting: QEMU exited with status 1"):
        c.connect(time.monotonic() + 600, abort=lambda: next(reasons))
    assert time.monotonic() - t0 < 300  # the abort, not the deadline, ended it


# ---- guests of their own ------------------------------------------------------------------

def test_connect_while_the_guest_boots(artifacts: Artifacts, accel: AccelChoice,
                                       tmp_path: Path) -> None:
    """Connecting right after QEMU starts waits out the boot (slirp holds or drops the
    connection until dropbear listens) and succeeds."""
    with guest_for(artifacts, accel, tmp_path) as guest:
        assert guest.console is not None and not guest.console.ready.is_set()
        with guest.ssh(artifacts.ssh_key, artifacts.ssh_host_pubkey, 60) as c:
            assert c.run("echo hi", timeout=10).stdout == "hi\n"
        assert guest.console.ready.is_set()


DROPBEAR = "/usr/sbin/dropbear -s -r /etc/dropbear/dropbear_ed25519_host_key -p 22 " \
    "-P /run/dropbear.pid"  # as guest-images/rootfs/overlay/etc/init.d/rcS starts it


def test_connect_retries_until_sshd_listens(booted: Booted, ssh: SSHClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """With sshd stopped the guest refuses the forwarded connection; connect retries
    until sshd listens again (restarted 2 s later)."""
    ssh.run("kill $(cat /run/dropbear.pid)", timeout=10)
    try:
        ssh.run(f"setsid sh -c 'sleep 2; {DROPBEAR}' </dev/null >/dev/null 2>&1 &", 10)
        caplog.set_level(logging.DEBUG, logger="harness.guest.ssh")
        t0 = time.monotonic()
        with booted.connect(within=30) as c:
            took = time.monotonic() - t0
            assert c.run("echo hi", timeout=10).stdout == "hi\n"
    finally:  # whatever happened, leave sshd running for the other tests
        ssh.run(f"pidof dropbear >/dev/null && [ -e /run/dropbear.pid ] || {DROPBEAR}", 10)
    attempts = [r for r in caplog.records if r.getMessage().startswith("ssh attempt")]
    assert attempts and took >= 1.5, (took, [r.getMessage() for r in attempts])


def test_guest_dying_under_a_command_aborts_it(artifacts: Artifacts, accel: AccelChoice,
                                               tmp_path: Path) -> None:
    with guest_for(artifacts, accel, tmp_path) as guest:
        guest.wait_ready()
        with guest.ssh(artifacts.ssh_key, artifacts.ssh_host_pubkey, 60) as c:
            # the abort ends it (SSHAborted), long before the timeout would (SSHTimeout)
            with pytest.raises(SSHAborted, match="aborted: QEMU exited") as exc:
                c.run(f"echo going; sleep 0.5; echo PANIC > {LKDTM}; sleep 600", timeout=600,
                      abort=guest.exit_reason)
            assert exc.value.stdout == b"going\n"
            with pytest.raises(SSHError):  # the connection is gone for good
                c.run("true", timeout=5)


def test_connection_lost_without_abort_check_is_an_error(artifacts: Artifacts,
                                                         accel: AccelChoice,
                                                         tmp_path: Path) -> None:
    """No exit status and no reason given: an error, never an rc of -1."""
    with guest_for(artifacts, accel, tmp_path) as guest:
        guest.wait_ready()
        with guest.ssh(artifacts.ssh_key, artifacts.ssh_host_pubkey, 60) as c, \
                pytest.raises(SSHError, match="connection was lost") as exc:
            c.run(f"echo PANIC > {LKDTM}; sleep 60", timeout=60)
        assert not isinstance(exc.value, SSHAborted | SSHTimeout)


def test_command_killed_by_a_signal_has_rc_minus_1(ssh: SSHClient) -> None:
    """dropbear sends no exit status for it; the connection stays up."""
    assert ssh.run("kill -9 $$", timeout=10).rc == -1
    assert ssh.run("echo ok", timeout=10).stdout == "ok\n"

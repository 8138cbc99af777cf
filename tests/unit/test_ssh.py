"""The SSH client against an in-process paramiko server standing in for dropbear."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from harness.ssh import SSHAborted, SSHClient, SSHError, SSHTimeout, host_key_from_line


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key.get_base64() == self.client_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_exec, args=(channel, command.decode()), daemon=True).start()
        return True


def _exec(chan: paramiko.Channel, cmd: str) -> None:
    proc = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr

    def pump_in() -> None:
        while True:
            data = chan.recv(65536)
            if not data:
                break
            proc.stdin.write(data)
        proc.stdin.close()

    def pump(src: Any, send: Any) -> None:
        for chunk in iter(lambda: src.read1(65536), b""):
            send(chunk)

    threads = [threading.Thread(target=pump_in, daemon=True),
               threading.Thread(target=pump, args=(proc.stdout, chan.sendall), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, chan.sendall_stderr), daemon=True)]
    for t in threads:
        t.start()
    rc = proc.wait()
    threads[1].join()
    threads[2].join()
    chan.send_exit_status(rc)
    chan.shutdown_write()
    chan.close()


class FakeGuest:
    """Listens on 127.0.0.1; ``delay`` seconds of closing connections first (slirp)."""

    def __init__(self, host_key: paramiko.PKey, client_key: paramiko.PKey, delay: float = 0.0):
        self.host_key, self.client_key = host_key, client_key
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.ready_at = time.monotonic() + delay
        self.transports: list[paramiko.Transport] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if time.monotonic() < self.ready_at:
                conn.close()  # like slirp before sshd listens
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            t.start_server(server=_Server(self.client_key))
            self.transports.append(t)

    def close(self) -> None:
        self.sock.close()
        for t in self.transports:
            t.close()


Keys = tuple[paramiko.PKey, paramiko.PKey, Path]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    host = paramiko.RSAKey.generate(2048)
    client = paramiko.RSAKey.generate(2048)
    client.write_private_key_file(str(d / "id"))
    return host, client, d / "id"


def publine(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()} host@guest"


@pytest.fixture
def guest(keys: Keys) -> Iterator[FakeGuest]:
    g = FakeGuest(keys[0], keys[1])
    yield g
    g.close()


def connect(
    guest: FakeGuest, keys: Keys, pinned: str | None = None, within: float = 10
) -> SSHClient:
    c = SSHClient("127.0.0.1", guest.port, keys[2], pinned or publine(keys[0]))
    c.connect(time.monotonic() + within)
    return c


def test_run_returns_rc_stdout_stderr(guest: FakeGuest, keys: Keys) -> None:
    with connect(guest, keys) as c:
        rc, out, err = c.run("echo out; echo err >&2; exit 3", timeout=10)
        assert (rc, out, err) == (3, "out\n", "err\n")


def test_large_output_on_both_streams_does_not_hang(guest: FakeGuest, keys: Keys) -> None:
    with connect(guest, keys) as c:
        res = c.run("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2", timeout=30)
        assert res.rc == 0 and len(res.stdout) == 3000000 and len(res.stderr) == 3000000


def test_timeout(guest: FakeGuest, keys: Keys) -> None:
    with connect(guest, keys) as c:
        t0 = time.monotonic()
        with pytest.raises(SSHTimeout) as exc:
            c.run("echo partial; sleep 20", timeout=1)
        assert time.monotonic() - t0 < 5
        assert exc.value.stdout == b"partial\n"


def test_abort(guest: FakeGuest, keys: Keys) -> None:
    with connect(guest, keys) as c, pytest.raises(SSHAborted, match="QEMU exited"):
        c.run("sleep 20", timeout=30, abort=lambda: "QEMU exited with status 0")


def test_put(guest: FakeGuest, keys: Keys, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    dst = tmp_path / "dst dir"
    dst.mkdir()
    with connect(guest, keys) as c:
        c.put(src, str(dst / "x.bin"), mode="0755")
    assert (dst / "x.bin").read_bytes() == src.read_bytes()
    assert (dst / "x.bin").stat().st_mode & 0o777 == 0o755


def test_host_key_mismatch_is_rejected_at_once(guest: FakeGuest, keys: Keys) -> None:
    other = paramiko.RSAKey.generate(2048)
    t0 = time.monotonic()
    with pytest.raises(SSHError, match="host key mismatch"):
        connect(guest, keys, pinned=publine(other), within=20)
    assert time.monotonic() - t0 < 10


def test_wrong_client_key(keys: Keys, tmp_path: Path) -> None:
    g = FakeGuest(keys[0], paramiko.RSAKey.generate(2048))
    try:
        with pytest.raises(SSHError, match="authentication"):
            connect(g, keys)
    finally:
        g.close()


def test_retries_until_sshd_listens(keys: Keys) -> None:
    g = FakeGuest(keys[0], keys[1], delay=2.0)
    try:
        with connect(g, keys, within=20) as c:
            assert c.run("echo hi", timeout=10).stdout == "hi\n"
    finally:
        g.close()


def test_gives_up_at_the_deadline(keys: Keys) -> None:
    g = FakeGuest(keys[0], keys[1], delay=60.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(SSHError, match="could not connect"):
            connect(g, keys, within=2)
        assert time.monotonic() - t0 < 8
    finally:
        g.close()


def test_host_key_line_parsing() -> None:
    key = paramiko.RSAKey.generate(1024)
    assert host_key_from_line(publine(key)).get_base64() == key.get_base64()
    with pytest.raises(SSHError):
        host_key_from_line("garbage")
    with pytest.raises(SSHError):
        host_key_from_line("ssh-ed25519 !!!notbase64")


def test_openssh_ed25519_client_key(tmp_path: Path) -> None:
    """The rootfs builder makes its client key with ssh-keygen: load that format."""
    import shutil

    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")],
                   check=True, timeout=30)
    client = paramiko.PKey.from_path(tmp_path / "id")
    host = paramiko.RSAKey.generate(2048)
    g = FakeGuest(host, client)
    try:
        c = SSHClient("127.0.0.1", g.port, tmp_path / "id", publine(host))
        c.connect(time.monotonic() + 10)
        assert c.run("echo ok", timeout=10).stdout == "ok\n"
        c.close()
    finally:
        g.close()

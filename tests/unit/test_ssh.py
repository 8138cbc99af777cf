"""Parsing in the SSH client: pinned host key lines and client key files.

Everything that talks to an sshd is tested against a booted guest's dropbear
in tests/e2e/test_ssh_guest.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from harness.guest.ssh import (
    Arrival,
    CommandResult,
    MarkedStream,
    SSHError,
    host_key_from_line,
    line_arrivals,
    load_client_key,
)


def ssh_keygen(path: Path, kind: str = "ed25519") -> Path:
    bits = ["-b", "1024"] if kind == "rsa" else []  # quick to make
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", "test", "-f",
                    str(path)], check=True, timeout=60)
    return path


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_host_key_line_parsing(tmp_path: Path, kind: str) -> None:
    key = ssh_keygen(tmp_path / "id", kind)
    line = (tmp_path / "id.pub").read_text()  # "ssh-ed25519 AAAA... test\n"
    pub = host_key_from_line(line)
    assert pub.get_name() == line.split()[0]
    assert pub.get_base64() == line.split()[1]
    assert pub == load_client_key(key)  # the public half of that private key
    assert host_key_from_line(" ".join(line.split()[:2])) == pub  # no comment: fine


@pytest.mark.parametrize("line", ["garbage", "", "ssh-ed25519 !!!notbase64",
                                  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",  # truncated
                                  "ssh-nope AAAAC3NzaC1lZDI1NTE5"])
def test_bad_host_key_lines(line: str) -> None:
    with pytest.raises(SSHError):
        host_key_from_line(line)


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_client_keys_made_by_ssh_keygen(tmp_path: Path, kind: str) -> None:
    """The rootfs builder makes its client key with ssh-keygen (OpenSSH format)."""
    key = load_client_key(ssh_keygen(tmp_path / "id", kind))
    assert isinstance(key, paramiko.PKey) and key.can_sign()
    assert key.get_base64() == (tmp_path / "id.pub").read_text().split()[1]


@pytest.mark.parametrize(("content", "why"), [
    (None, "No such file"),
    (b"hello\n", "cannot load"),
    (b"", "cannot load"),
])
def test_unloadable_client_key(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "id"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SSHError, match=why) as exc:
        load_client_key(path)
    assert str(path) in str(exc.value)


def test_command_result_unpacks() -> None:
    rc, out, err = CommandResult(3, "out\n", "err\n")
    assert (rc, out, err) == (3, "out\n", "err\n")


# ---- when output arrived -----------------------------------------------------------------

def _stream(*reads: tuple[float, bytes]) -> MarkedStream:
    s = MarkedStream()
    for t, data in reads:
        s.feed(data, t)
    return s


def test_each_line_arrives_with_the_read_that_completed_it() -> None:
    s = _stream((1.0, b"a\nb"), (2.5, b"c\n"), (4.0, b"d\ne\n"), (6.0, b"tail"))
    text = s.data.decode()
    assert line_arrivals(text, s.marks) == [
        Arrival(1.0, 0), Arrival(2.5, 1), Arrival(4.0, 2), Arrival(4.0, 2), Arrival(6.0, 3)]


def test_counts_characters_as_decode_will_have_them() -> None:
    """A UTF-8 character split across reads, and bytes that are not UTF-8."""
    s = _stream((1.0, "é\nx".encode()[:1]), (2.0, "é\nx".encode()[1:] + b"\n"),
                (3.0, b"\xff\xfe bad\n"), (4.0, "µs\n".encode()))
    text = bytes(s.data).decode(errors="replace")
    assert s.marks[-1][1] == len(text)
    assert line_arrivals(text, s.marks) == [
        Arrival(2.0, 1), Arrival(2.0, 1), Arrival(3.0, 2), Arrival(4.0, 3)]


def test_a_line_no_read_covers_has_no_arrival() -> None:
    # marks stop short of the text (it was decoded after the last read)
    assert line_arrivals("a\nb\n", [(1.0, 2)]) == [Arrival(1.0, 0), None]
    assert line_arrivals("a\n", []) == [None]
    assert line_arrivals("", [(1.0, 0)]) == []

"""harness.core.files with the real cpio, gzip and flock."""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.files import atomic_write, flock, pack_cpio, replacing

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio here")


def newc_entries(archive: bytes) -> list[tuple[str, int]]:
    """(name, mode) of each entry of a newc cpio, read from its headers."""
    out, pos = [], 0
    while True:
        head = archive[pos:pos + 110]
        assert head[:6] == b"070701", f"not a newc header at {pos}"
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, mode))


def stage(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("hello\n")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "root").mkdir()
    os.chmod(root / "root", 0o700)
    (root / "bin").mkdir()
    (root / "bin/sh").symlink_to("busybox")
    return root


@needs_cpio
def test_the_same_tree_packs_to_the_same_bytes(tmp_path: Path) -> None:
    root = stage(tmp_path / "root")
    log = tmp_path / "pack.log"
    pack_cpio(root, tmp_path / "a.cpio.gz", log, overlay=False)
    for p in root.rglob("*"):
        os.utime(p, (12345, 12345), follow_symlinks=False)
    (root / "etc/motd").write_text("hello\n")  # rewritten: a new mtime, maybe a new inode
    pack_cpio(root, tmp_path / "b.cpio.gz", log, overlay=False)
    assert (tmp_path / "a.cpio.gz").read_bytes() == (tmp_path / "b.cpio.gz").read_bytes()
    assert "--reproducible | gzip -9n" in log.read_text()


@needs_cpio
def test_a_rootfs_starts_with_dot_and_keeps_its_modes(tmp_path: Path) -> None:
    root = stage(tmp_path / "root")
    pack_cpio(root, tmp_path / "r.cpio.gz", tmp_path / "log", overlay=False)
    entries = newc_entries(gzip.decompress((tmp_path / "r.cpio.gz").read_bytes()))
    assert entries[0][0] == "."
    modes = {n: m & 0o7777 for n, m in entries}
    assert (modes["tmp"], modes["root"]) == (0o1777, 0o700)
    assert [n for n, _ in entries] == [".", *sorted(n for n, _ in entries[1:])]


@needs_cpio
def test_an_overlay_has_no_dot_and_0755_directories(tmp_path: Path) -> None:
    root = stage(tmp_path / "root")
    pack_cpio(root, tmp_path / "o.cpio.gz", tmp_path / "log", overlay=True)
    entries = dict(newc_entries(gzip.decompress((tmp_path / "o.cpio.gz").read_bytes())))
    assert "." not in entries
    assert {entries[d] & 0o7777 for d in ("etc", "tmp", "root", "bin")} == {0o755}


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    p = tmp_path / "results.json"
    atomic_write(p, "old\n")
    atomic_write(p, b"new\n")
    assert p.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_no_scratch(tmp_path: Path) -> None:
    p = tmp_path / "junit.xml"
    atomic_write(p, "old\n")
    with pytest.raises(RuntimeError), replacing(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["junit.xml"]


def test_flock_excludes_another_open_file_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "qemu.lock"
    waited: list[bool] = []
    # flock locks belong to the open file: a second open() contends like
    # another process would.
    with (flock(lock, waiting=lambda: waited.append(True)), open(lock, "a") as other,
          pytest.raises(BlockingIOError)):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)
    assert waited == []


def test_flock_says_when_it_waits(tmp_path: Path) -> None:
    lock = tmp_path / "apt.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        waited: list[float] = []
        with flock(lock, waiting=lambda: waited.append(time.monotonic())):
            got = time.monotonic()
        assert len(waited) == 1 and got >= waited[0]
        assert holder.wait(timeout=30) == 0  # it let go by exiting
    finally:
        holder.kill()
        holder.wait(timeout=30)


# another process holds the lock for half a second
HOLD = """
import fcntl, sys, time
fh = open(sys.argv[1], "a")
fcntl.flock(fh, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(0.5)
"""

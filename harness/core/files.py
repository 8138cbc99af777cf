"""Files the harness writes: atomically, under an inter-process lock, as an initramfs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from harness.core.proc import run

log = logging.getLogger(__name__)

CPIO_TIMEOUT = 300


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a scratch path that replaces ``path`` when the block succeeds.

    A reader never sees half a file: it finds the old one or the new one. A
    failed block leaves ``path`` as it was and no scratch file behind.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def disk_bytes(root: Path, skip: Sequence[str] = ()) -> int:
    """What a directory tree takes on disk: allocated blocks, as du counts them;
    the top-level files named in ``skip`` left out."""
    total = 0
    for p in root.rglob("*"):
        if p.parent == root and p.name in skip:
            continue
        try:
            total += p.lstat().st_blocks * 512
        except OSError:  # gone meanwhile (a file QEMU or a scenario removed)
            continue
    return total


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; ``path``."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


@contextlib.contextmanager
def flock(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created, with its directory) for the block.

    ``waiting`` is called once if another process holds it, before waiting for it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pack_cpio(root: Path, out: Path, logfile: Path, *, overlay: bool,
              timeout: float = CPIO_TIMEOUT) -> None:
    """``root`` as a gzip -9n newc cpio owned by root, reproducibly: names sorted,
    every mtime 0, ``--reproducible`` inode numbers, so the same tree gives the
    same bytes.

    ``overlay``: an archive the launcher appends to the rootfs. It has no "."
    entry, which would change the mode of the guest's / when unpacked over it,
    and its directories are 0755. Otherwise (the rootfs itself) "." comes first
    and every mode is as staged (/tmp 1777, /root 0700).
    """
    paths = sorted(root.rglob("*"))
    for p in paths:
        if overlay and p.is_dir():
            os.chmod(p, 0o755)
    for p in (*paths, root):
        os.utime(p, (0, 0), follow_symlinks=False)
    names = [f"./{p.relative_to(root).as_posix()}" for p in paths]
    listing = "".join(f"{n}\n" for n in (names if overlay else [".", *names])).encode()
    with open(logfile, "ab") as fh:
        fh.write(f"\n$ cpio -o -H newc --owner=0:0 --reproducible | gzip -9n > {out}\n".encode())
    archive = run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible"],
                  cwd=root, timeout=timeout, input_bytes=listing).stdout
    out.write_bytes(run(["gzip", "-9n"], timeout=timeout, input_bytes=archive).stdout)
    log.debug("cpio %s: %d files, %d bytes", out, len(paths), out.stat().st_size)

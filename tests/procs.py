"""Processes of a run, found in /proc, for the tests that check none outlives it
(tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

from pathlib import Path


def qemus_under(d: Path) -> list[int]:
    """Live (not zombie) QEMU processes whose command line names ``d``: a run's or a
    cell's QEMU does (-D, -chardev under its results directory)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(d) in cmd and "qemu" in cmd and state != "Z":
            out.append(int(proc.name))
    return out

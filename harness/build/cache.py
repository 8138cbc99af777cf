"""Content-addressed artifact cache (default ``~/.cache/hmmlab``)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.core.files import flock

log = logging.getLogger(__name__)

SOURCE_ENV = "HMMLAB_SOURCE"


class SourceNotFound(RuntimeError):
    """The hmmlab source tree (guest-images/, qemu-devices/) is needed and not found."""


def _is_source(d: Path) -> bool:
    return (d / "guest-images").is_dir() and (d / "qemu-devices").is_dir()


def find_source_root(cwd: Path | None = None) -> Path:
    """The tree holding guest-images/ and qemu-devices/, which the builders read.

    $HMMLAB_SOURCE if set; else the checkout this harness runs from (the
    devices and drivers must match this very code); else the first directory
    from ``cwd`` up that holds both (an installed harness run inside a checkout).
    """
    env = os.environ.get(SOURCE_ENV)
    if env:
        root = Path(env).expanduser().resolve()
        if not _is_source(root):
            raise SourceNotFound(f"{SOURCE_ENV}={env}: no guest-images/ and qemu-devices/ there")
        return root
    here = Path(__file__).resolve().parents[2]
    if _is_source(here):
        return here
    start = (cwd or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if _is_source(d):
            return d
    raise SourceNotFound(
        "this needs the hmmlab source tree (guest-images/ and qemu-devices/), which is "
        f"not around {start}: run hmmlab from inside a checkout, or set "
        f"{SOURCE_ENV}=/path/to/hmmlab")


def __getattr__(name: str) -> Path:
    # REPO_ROOT is looked up when a builder is imported, not with this module:
    # commands that need no source (--help, matrix list, trace) work without one.
    if name == "REPO_ROOT":
        return find_source_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_cache_dir() -> Path:
    env = os.environ.get("HMMLAB_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "hmmlab"


class InputHash:
    """Accumulates the inputs of an artifact into one short hex key."""

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256(kind.encode())

    def text(self, label: str, value: str) -> InputHash:
        self._h.update(f"\0{label}\0{len(value)}\0".encode())
        self._h.update(value.encode())
        return self

    def file(self, path: Path, label: str | None = None) -> InputHash:
        data = path.read_bytes()
        self._h.update(f"\0file\0{label or path.name}\0{len(data)}\0".encode())
        self._h.update(data)
        return self

    def tree(self, root: Path, files: Iterable[Path] | None = None) -> InputHash:
        """Hash every regular file below ``root`` (or the given ones), by relative path."""
        paths = sorted(files if files is not None else (p for p in root.rglob("*") if p.is_file()))
        for p in paths:
            rel = p.relative_to(root).as_posix()
            if "__pycache__" in rel:
                continue
            self.file(p, label=rel)
        return self

    def hexdigest(self, n: int = 16) -> str:
        return self._h.hexdigest()[:n]


@dataclass(frozen=True)
class Cache:
    root: Path

    @classmethod
    def default(cls) -> Cache:
        return cls(default_cache_dir())

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @contextmanager
    def lock(self, name: str):
        """Hold an exclusive inter-process lock while building artifact kind ``name``.

        Two runs (or a run and a test session) may want the same artifact at
        once; the second waits and then finds it cached instead of building
        into the same directory.
        """
        def waiting() -> None:
            log.info("waiting for another hmmlab process to finish building %s", name)

        with flock(self.root / "locks" / f"{name}.lock", waiting):
            yield

    @contextmanager
    def building(self, final: Path):
        """Yield a scratch directory that becomes ``final`` only if the block succeeds.

        An interrupted or failed build leaves ``final`` absent, so a later run
        never mistakes a half-built artifact for a finished one.
        """
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

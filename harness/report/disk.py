"""How much disk a run took, for the report: per cell and for the whole results directory.

Per cell: what the run recorded (``environment.disk_bytes`` of the cell's own
results.json: allocated blocks of its directory when it ended, as ``du``
counts them) and its DMA traces (``dmatrace-*.bin``, a peer guest's too),
each file's size on disk next to the bytes of trace stream it holds (its
decoded size: what the file took before the device compressed it). For the
run: the results directory as it is now (the page aside), and the sum of the
cells' traces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks import tracefile
from harness.core.files import disk_bytes

TRACE_GLOB = "dmatrace-*.bin"
INDEX_HTML = "index.html"  # the report page (harness.report.report.INDEX_HTML)


@dataclass(frozen=True)
class TraceDisk:
    files: int = 0
    file_bytes: int = 0  # their sizes
    raw_bytes: int = 0  # the trace stream they hold (decoded size)

    def __add__(self, other: TraceDisk) -> TraceDisk:
        return TraceDisk(self.files + other.files, self.file_bytes + other.file_bytes,
                         self.raw_bytes + other.raw_bytes)

    @property
    def ratio(self) -> float | None:
        """On disk / raw: 1.0 for uncompressed traces."""
        return self.file_bytes / self.raw_bytes if self.raw_bytes else None


@dataclass(frozen=True)
class DiskUse:
    recorded: int | None  # environment.disk_bytes; None when the run did not record it
    traces: TraceDisk


def traces(directory: Path) -> TraceDisk:
    """The DMA traces under ``directory`` (a file that is no trace counts as raw)."""
    total = TraceDisk()
    for path in sorted(directory.rglob(TRACE_GLOB)):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        try:
            raw = tracefile.stream_size(path)
        except (OSError, tracefile.TraceFileError):
            raw = size  # unreadable: shown as it lies on disk
        total = total + TraceDisk(1, size, raw)
    return total


def recorded(environment: dict[str, Any]) -> int | None:
    value = environment.get("disk_bytes")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def cell_disk(cell_dir: Path, environment: dict[str, Any] | None = None) -> DiskUse:
    """A cell's disk use; ``environment`` is its results.json's (read from
    ``cell_dir/results.json`` when not given)."""
    if environment is None:
        try:
            doc = json.loads((cell_dir / "results.json").read_text())
            environment = doc.get("environment") if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            environment = {}
    return DiskUse(recorded(environment if isinstance(environment, dict) else {}),
                   traces(cell_dir))


def run_disk(results_dir: Path, cells: Iterable[DiskUse]) -> DiskUse:
    """The whole results directory now (but the page itself, which an earlier report
    may have left and this one replaces), and every cell's traces."""
    total = TraceDisk()
    for c in cells:
        total = total + c.traces
    return DiskUse(disk_bytes(results_dir, skip=(INDEX_HTML,)), total)


def size_text(n: int | None) -> str:
    """Bytes in decimal units, like the rest of the page (MB = 10^6 bytes)."""
    if n is None:
        return "not recorded"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def traces_text(t: TraceDisk) -> str:
    if not t.files:
        return "no DMA trace"
    ratio = f" ({t.ratio:.2f}x)" if t.ratio is not None else ""
    return (f"DMA traces {size_text(t.file_bytes)} on disk for {size_text(t.raw_bytes)} of "
            f"records{ratio}, {t.files} file{'s' if t.files != 1 else ''}")

"""Results of one run: ``results.json`` and the exit status.

Test entries follow KCIDB: a dotted ``path`` (``boot``, ``driver.load``,
``smoke.copy``...), a ``status``, ``duration``, ``log_excerpt`` and
``output_files``. ``duration`` is seconds that were measured for that entry,
or None (JSON null) when nothing measured it: a verdict computed from other
data, a test that never ran, a sub-test whose time its program did not
report. It is never a share of some larger time.

Exit status follows tuxrun: 2 when an infrastructure error (an ERROR or MISS
entry) got in the way, else 1 when a test failed, else 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.core.files import atomic_write

log = logging.getLogger(__name__)

RESULTS_VERSION = 1
EXCERPT_MAX = 4000

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_INFRA = 2


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"  # infrastructure: the test could not be carried out
    MISS = "MISS"  # never ran: its matrix cell was not built, was killed or aborted
    SKIP = "SKIP"


# KCIDB's roll-up order: a group of entries has the status of its first here.
ROLLUP_ORDER = (Status.FAIL, Status.ERROR, Status.MISS, Status.PASS, Status.SKIP)


def rollup(statuses: list[Status] | set[Status]) -> Status:
    """The status of a group of entries (a matrix cell); MISS when there are none."""
    present = set(statuses)
    return next((s for s in ROLLUP_ORDER if s in present), Status.MISS)


@dataclass
class TestResult:
    __test__ = False  # not a pytest class

    path: str
    status: Status
    duration: float | None = None  # measured seconds, or None: see the module doc
    log_excerpt: str = ""
    output_files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "status": str(self.status),
            "duration": None if self.duration is None else round(self.duration, 3),
            "log_excerpt": excerpt(self.log_excerpt),
            "output_files": list(self.output_files),
        }
        d.update(self.extra)
        return d


def _took(seconds: float | None, fmt: str, absent: str = "") -> str:
    """``seconds`` formatted with ``fmt``, or ``absent`` when nothing measured it."""
    return absent if seconds is None else fmt % seconds


def excerpt(text: str, limit: int = EXCERPT_MAX) -> str:
    """The end of ``text`` (where the failure usually is), at most ``limit`` chars."""
    if len(text) <= limit:
        return text
    return "[...]\n" + text[-limit:]


def default_results_dir(base: Path | None = None) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    root = (base or Path.cwd()) / "results"
    path = root / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def exit_code(tests: list[TestResult]) -> int:
    return exit_code_of({t.status for t in tests})


def exit_code_of(statuses: set[Status]) -> int:
    if statuses & {Status.ERROR, Status.MISS}:
        return EXIT_INFRA
    if Status.FAIL in statuses:
        return EXIT_FAIL
    return EXIT_PASS


@dataclass
class Results:
    """Collects test entries and writes ``results.json`` into ``dir``."""

    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    tests: list[TestResult] = field(default_factory=list)
    # Side-by-side reports scenarios add (e.g. "hmm-tests": test x driver).
    tables: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, result: TestResult) -> TestResult:
        level = logging.INFO if result.status in (Status.PASS, Status.SKIP) else logging.WARNING
        log.log(level, "%s: %s%s", result.path, result.status, _took(result.duration, " (%.1fs)"))
        self.tests.append(result)
        return result

    def add_status(self, path: str, status: Status, message: str = "", **kw: Any) -> TestResult:
        return self.add(TestResult(path, status, log_excerpt=message, **kw))

    def has(self, path: str) -> bool:
        return any(t.path == path for t in self.tests)

    def status_of(self, path: str) -> Status | None:
        for t in self.tests:
            if t.path == path:
                return t.status
        return None

    def exit_code(self) -> int:
        return exit_code(self.tests)

    def summary(self) -> dict[str, Any]:
        counts = {str(s): 0 for s in Status}
        for t in self.tests:
            counts[str(t.status)] += 1
        return {
            "total": len(self.tests),
            **counts,
            "exit_status": self.exit_code(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RESULTS_VERSION,
            "config": self.config,
            "environment": self.environment,
            "devices": self.devices,
            "tests": [t.to_dict() for t in self.tests],
            "tables": self.tables,
            "summary": self.summary(),
        }

    def write(self) -> Path:
        """Write ``results.json`` atomically (a reader never sees half a file)."""
        path = self.dir / "results.json"
        return atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    def failures(self, tail: int = 1500) -> str:
        """Every entry that is neither PASS nor SKIP, with the end of its log."""
        bad = [t for t in self.tests if t.status not in (Status.PASS, Status.SKIP)]
        return "\n\n".join(f"{t.path}: {t.status}\n{t.log_excerpt[-tail:]}" for t in bad) + (
            f"\n(results in {self.dir})")

    def table(self) -> str:
        """A short human summary: one line per test, then the totals."""
        width = max((len(t.path) for t in self.tests), default=4)
        lines = [f"{t.path:<{width}}  {t.status!s:<5}  {_took(t.duration, '%7.1fs', '       -')}"
                 for t in self.tests]
        s = self.summary()
        lines.append(
            f"{s['total']} tests: {s['PASS']} passed, {s['FAIL']} failed, "
            f"{s['ERROR']} errors, {s['SKIP']} skipped"
            + (f", {s['MISS']} missing" if s["MISS"] else "")
        )
        return "\n".join(lines)

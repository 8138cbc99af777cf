"""Results of one run: ``results.json`` and the exit status.

Test entries follow KCIDB: a dotted ``path`` (``boot``, ``driver.load``,
``smoke.copy``...), a ``status``, ``duration``, ``log_excerpt`` and
``output_files``. ``duration`` is seconds that were measured for that entry,
or None (JSON null) when nothing measured it: a verdict computed from other
data, a test that never ran, a sub-test whose time its program did not
report. It is never a share of some larger time.

Which status an event gets is decided in one place, :func:`status_for` (the
README's "Statuses"); the exit status and why in one other, :func:`verdict`:
after tuxrun, 2 when an infrastructure error (an ERROR or MISS entry) got in
the way, or nothing was tested (no entry at all, or every entry a SKIP), else
1 when a test failed, else 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Iterable
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


class Event(StrEnum):
    """What happened to a test; :func:`status_for` says which status that is."""

    # PASS
    HELD = "the test ran and what it checks held"
    # FAIL: the software under test did something wrong
    CHECK_FAILED = "a check failed"
    SPLAT = "the kernel printed a splat, oops or panic"
    COMMAND_HUNG = "a command in the booted guest ran past its budget"
    GUEST_HUNG = "the watchdog killed a guest that stopped responding"
    GUEST_DIED = "the guest died during the test (kernel panic, QEMU exited or aborted)"
    DEVICE_ERROR = "the device reported an error the test did not expect"
    # ERROR: the harness or the host could not carry out the test
    BUILD_FAILED = "a build failed"
    QEMU_START_FAILED = "QEMU could not start"
    NEVER_CAME_UP = "the guest never came up and its console shows no splat"
    SSH_FAILED = "SSH could not be set up or broke"
    HARNESS_ERROR = "the harness failed (an internal error, a file or reading it missing)"
    SETUP_FAILED = "a set-up step the test needs (not what it checks) failed"
    # MISS: never ran
    NOT_BUILT = "its matrix cell was not built"
    KILLED = "its matrix cell was killed, or its process ended before it"
    INTERRUPTED = "the run was interrupted (SIGTERM, Ctrl-C)"
    GUEST_UNUSABLE = "an earlier step left the guest unusable"
    # SKIP
    UNSUPPORTED = "it cannot run here (a kernel feature, device or tool is absent)"


_STATUS_OF: dict[Event, Status] = {
    Event.HELD: Status.PASS,
    **dict.fromkeys((Event.CHECK_FAILED, Event.SPLAT, Event.COMMAND_HUNG, Event.GUEST_HUNG,
                     Event.GUEST_DIED, Event.DEVICE_ERROR), Status.FAIL),
    **dict.fromkeys((Event.BUILD_FAILED, Event.QEMU_START_FAILED, Event.NEVER_CAME_UP,
                     Event.SSH_FAILED, Event.HARNESS_ERROR, Event.SETUP_FAILED), Status.ERROR),
    **dict.fromkeys((Event.NOT_BUILT, Event.KILLED, Event.INTERRUPTED, Event.GUEST_UNUSABLE),
                    Status.MISS),
    Event.UNSUPPORTED: Status.SKIP,
}


def status_for(event: Event) -> Status:
    """The status of a test that ``event`` happened to: the one rule every path uses."""
    return _STATUS_OF[event]


def interruption(*, timed_out: bool, guest_gone: bool, splat: bool) -> Event:
    """What cut off a guest command or a test step that did not finish.

    ``timed_out``: it ran past its budget; ``guest_gone``: QEMU exited, the
    kernel panicked or the watchdog killed the guest meanwhile; ``splat``: the
    kernel printed one. Anything else (the SSH connection broke under a
    guest that still runs, quietly) is the harness's.
    """
    if timed_out:
        return Event.COMMAND_HUNG
    if guest_gone:
        return Event.GUEST_DIED
    if splat:
        return Event.SPLAT
    return Event.SSH_FAILED


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


@dataclass(frozen=True)
class Verdict:
    """A run's exit status and, unless it is 0, why in one line."""

    exit_status: int
    reason: str = ""


def _n(counts: Counter[Status], status: Status) -> str:
    return f"{counts[status]} {status}"


def verdict(statuses: Iterable[Status], nothing: str = "no test ran") -> Verdict:
    """The exit status of a run whose entries have ``statuses`` (one per entry).

    ``nothing`` is the reason when there is no entry at all (a matrix says
    why it has no cells). A run that tested nothing (no entry, or SKIPs only)
    is 2, never 0: a CI job must not pass on it.
    """
    counts = Counter(statuses)
    if not counts:
        return Verdict(EXIT_INFRA, nothing)
    infra = [_n(counts, s) for s in (Status.ERROR, Status.MISS) if counts[s]]
    if infra:
        return Verdict(EXIT_INFRA, " and ".join(infra)
                       + ": the harness or host got in the way, or tests never ran")
    if counts[Status.SKIP] == counts.total():
        return Verdict(EXIT_INFRA, f"every test was skipped ({_n(counts, Status.SKIP)})")
    if counts[Status.FAIL]:
        return Verdict(EXIT_FAIL, f"{_n(counts, Status.FAIL)}: a test failed")
    return Verdict(EXIT_PASS)


def exit_code(tests: list[TestResult]) -> int:
    return verdict(t.status for t in tests).exit_status


def exit_code_of(statuses: Iterable[Status]) -> int:
    return verdict(statuses).exit_status


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
    # where the cell's time went (seconds): wall_s, guest_s (boot to QEMU's end),
    # checks_s (the scenarios' post-run checks, per scenario in checks_by), timeline_s
    timings: dict[str, Any] = field(default_factory=dict)

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

    def verdict(self) -> Verdict:
        return verdict(t.status for t in self.tests)

    def exit_code(self) -> int:
        return self.verdict().exit_status

    def summary(self) -> dict[str, Any]:
        counts = {str(s): 0 for s in Status}
        for t in self.tests:
            counts[str(t.status)] += 1
        v = self.verdict()
        return {
            "total": len(self.tests),
            **counts,
            "exit_status": v.exit_status,
            **({"reason": v.reason} if v.exit_status else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RESULTS_VERSION,
            "config": self.config,
            "environment": self.environment,
            "devices": self.devices,
            "tests": [t.to_dict() for t in self.tests],
            "tables": self.tables,
            "timings": self.timings,
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
        if s.get("reason"):
            lines.append(f"exit status {s['exit_status']}: {s['reason']}")
        return "\n".join(lines)

"""Live progress of a matrix run: one log line per state change, a heartbeat.

Plain lines (no terminal control), so a CI log reads like a terminal::

    [00:41.0] cell 6.12-iommu: started (2 running, 4 queued)
    [01:20.3] cell 6.12: PASS in 39s (208 tests: 180 PASS, 28 SKIP)
    [01:35.3] matrix: 1/7 done, running 6.12-iommu 54s, 7.2 14s; 4 queued; ETA 3m10s
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("harness.matrix")

HEARTBEAT = 15.0


def duration(seconds: float) -> str:
    """``42s``, ``3m10s``, ``1h02m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def count(n: int, noun: str) -> str:
    """``1 cell``, ``2 cells``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def eta(now: float, running: Mapping[str, float], queued: int, durations: Sequence[float],
        jobs: int) -> float | None:
    """Seconds until the last cell ends, from the mean time of those done so far.

    ``running`` maps each running cell to when it started. None until a cell
    has finished (nothing to go by).
    """
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    left = sum(max(mean - (now - t0), 0.0) for t0 in running.values()) + queued * mean
    return left / max(jobs, 1)


@dataclass
class Progress:
    total: int
    jobs: int
    clock: Callable[[], float] = time.monotonic
    interval: float = HEARTBEAT
    logger: logging.Logger = log
    running: dict[str, float] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    done: int = 0
    last_beat: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def queued(self) -> int:
        return self.total - self.done - len(self.running)

    def say(self, text: str) -> None:
        self.logger.info("%s", text)

    def started(self, name: str) -> None:
        self.running[name] = self.clock()
        self.say(f"cell {name}: started ({len(self.running)} running, {self.queued()} queued)")

    def finished(self, name: str, status: str, counts: Mapping[str, int],
                 bad: Sequence[str] = (), ran: bool = True) -> None:
        t0 = self.running.pop(name, None)
        took = self.clock() - t0 if t0 is not None else 0.0
        self.done += 1
        if ran and t0 is not None:
            self.durations.append(took)
        total = sum(counts.values())
        what = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        text = f"cell {name}: {status}"
        if t0 is not None:
            text += f" in {duration(took)}"
        text += f" ({total} tests: {what})" if total else " (no tests)"
        if bad:
            text += "; " + ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3
                                                 else "")
        text += f" [{self.done}/{self.total}]"
        self.say(text)

    def beat(self) -> None:
        """The heartbeat line, once per interval."""
        now = self.clock()
        if now - self.last_beat < self.interval:
            return
        self.last_beat = now
        run = ", ".join(f"{n} {duration(now - t0)}" for n, t0 in self.running.items())
        text = f"matrix: {self.done}/{self.total} done"
        if run:
            text += f", running {run}"
        if self.queued():
            text += f"; {self.queued()} queued"
        left = eta(now, self.running, self.queued(), self.durations, self.jobs)
        text += f"; ETA {duration(left)}" if left is not None else ""
        self.say(text)

"""The guest kernel's ftrace text (``/sys/kernel/tracing/trace``) as events.

One line per event::

    svm-mirror-312   [001] d..1.   41.123456: hmm_gpu_fault_begin: dev=0000:00:04.0 token=3 ...

(task-pid, CPU, the irq/preempt flags, which some kernels leave out, the
timestamp in seconds with microseconds, the event's name and its TP_printk
text). The harness sets ``trace_clock`` to ``mono``, so the timestamp is the
guest's CLOCK_MONOTONIC (ktime_get_mono_fast_ns) printed to the microsecond.
Comment lines (``#``), the ring buffer's ``[LOST N EVENTS]`` lines (counted)
and the harness's own scenario headers in ftrace.txt (``# hmmlab: ...``) are
not events. An event this module does not know is kept as it is (name,
text, whatever ``key=value`` pairs its text has): nothing is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

US = 1000  # ns: the text's resolution

# the harness's trace_marker lines: "hmmlab: <scenario> begin|end"
MARKER_EVENT = "tracing_mark_write"
MARKER_RE = re.compile(r"^hmmlab: (?P<name>\S+) (?P<edge>begin|end)$")
# ftrace.txt's header before each scenario's text
SECTION_RE = re.compile(r"^# hmmlab: scenario (?P<name>\S+)$")

_LINE_RE = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+"
    r"(?:\(\s*[\d-]+\)\s+)?"  # tgid column (options/record-tgid)
    r"\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s\d]\S*)\s+)?"  # irq-info flags, e.g. "d..1." (not a timestamp)
    r"(?P<secs>\d+)\.(?P<frac>\d+):\s+"
    r"(?P<name>[\w.-]+):\s?(?P<text>.*)$")
_LOST_RE = re.compile(r"^CPU:(?P<cpu>\d+) \[LOST (?P<n>\d+) EVENTS\]")
_FIELD_RE = re.compile(r"(\w+)=(\S*)")


@dataclass(slots=True)
class Event:
    ts_ns: int  # guest CLOCK_MONOTONIC, to the microsecond
    cpu: int
    task: str
    pid: int
    name: str
    text: str  # the event's printed fields, as printed
    fields: dict[str, str] = field(default_factory=dict)  # its key=value pairs
    section: str = ""  # the scenario whose text it came in (ftrace.txt's headers)

    def int_field(self, key: str, default: int = 0) -> int:
        """A field as an integer (decimal or 0x hex); ``default`` if absent or not one."""
        try:
            return int(self.fields[key], 0)
        except (KeyError, ValueError):
            return default


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    lost: dict[int, int] = field(default_factory=dict)  # CPU -> events the buffer lost
    unparsed: list[str] = field(default_factory=list)  # lines that are none of the above

    def by_name(self, *names: str) -> list[Event]:
        want = set(names)
        return [e for e in self.events if e.name in want]


def parse_line(line: str) -> Event | None:
    """One event line, or None if the line is not one."""
    m = _LINE_RE.match(line)
    if m is None:
        return None
    frac = m.group("frac")
    # "123.456789": six digits of microseconds (nine with a ns clock)
    ns = int(m.group("secs")) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
    text = m.group("text")
    return Event(ns, int(m.group("cpu")), m.group("task").strip(), int(m.group("pid")),
                 m.group("name"), text, dict(_FIELD_RE.findall(text)))


def parse(lines: Iterable[str]) -> Parsed:
    """Every event of a trace text (or of ftrace.txt, scenario headers and all)."""
    out = Parsed()
    section = ""
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("#"):
            m = SECTION_RE.match(line)
            if m:
                section = m.group("name")
            continue
        ev = parse_line(line)
        if ev is not None:
            ev.section = section
            out.events.append(ev)
            continue
        lost = _LOST_RE.match(line)
        if lost:
            cpu = int(lost.group("cpu"))
            out.lost[cpu] = out.lost.get(cpu, 0) + int(lost.group("n"))
        elif not line.startswith("##### CPU"):  # "##### CPU 1 buffer started ####"
            out.unparsed.append(line)
    return out


def parse_text(text: str) -> Parsed:
    return parse(text.splitlines())


def markers(events: Iterable[Event]) -> Iterator[tuple[str, str, int]]:
    """The harness's trace_marker lines: (scenario, "begin" or "end", guest ns)."""
    for e in events:
        if e.name == MARKER_EVENT:
            m = MARKER_RE.match(e.text.strip())
            if m:
                yield m.group("name"), m.group("edge"), e.ts_ns


# ---- per-CPU ring buffer statistics (per_cpu/cpuN/stats) ----------------------------

STAT_KEYS = ("entries", "overrun", "commit overrun", "dropped events", "read events")


def parse_stats(text: str) -> dict[str, int]:
    """per_cpu/cpuN/stats: ``key: value`` lines, the integer ones."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            try:
                out[key.strip()] = int(value.strip())
            except ValueError:
                continue  # "oldest event ts:  41.123456" and the like
    return out


def lost_of(stats: dict[str, int]) -> int:
    """Events one CPU's buffer lost: overwritten (overrun), lost while a commit was
    in progress, or dropped (a full buffer when it does not overwrite)."""
    return stats.get("overrun", 0) + stats.get("commit overrun", 0) + stats.get(
        "dropped events", 0)

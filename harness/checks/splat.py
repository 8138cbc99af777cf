"""Kernel splat detection on the serial console (after syzkaller's pkg/report).

Feed console lines to :class:`SplatScanner` as they arrive; it recognises
the start of a kernel report (``BUG:``, ``WARNING:``, ``Oops``, ``Kernel
panic``, lockdep's ``WARNING: possible circular locking dependency``, hung
tasks, RCU stalls, soft and hard lockups...), collects the report up to the
end of its trace and gives it a short title that stays the same when the
same bug fires again (no addresses, PIDs or durations), such as
``BUG: KASAN: slab-use-after-free in dmirror_fops``, ``WARNING in
hmm_gpu_probe`` or ``INFO: task hung in hmm_gpu_wait``.

User space shares the console (init's messages, anything written to
/dev/console), and a program may well print ``WARNING: ...`` or ``BUG: ...``.
The kernel's lines carry a printk prefix (hmmlab guests boot with
``printk.time=1``: ``[   12.345678] ``); user space's do not. A report whose
first line has no prefix counts only once a ``CPU: N PID: N`` line without a
prefix follows (a console without printk times, such as the kernel docs'
examples); otherwise it is dropped, and a prefixed report start ends it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_REPORT_LINES = 300

# "[    1.234567] ", optionally followed by a caller id "[    T1] " / "[    C0] ".
_PREFIX_RE = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s?)?(?:\[\s*[TC]\d+\]\s?)?")

# Report starts, matched at the start of the message (after the timestamp).
# Primary starts always begin a new report; secondary ones (the "Oops" line
# after "BUG: kernel NULL pointer dereference", "invalid opcode" after
# "kernel BUG at", a panic after an oops) join a report already open.
# pr_fmt prefixes some reports carry ("watchdog: BUG: soft lockup", "rcu: INFO: ...").
_SUBSYS = r"(?:(?:watchdog|rcu|kernel): )?"
_PRIMARY = re.compile(
    r"^" + _SUBSYS + r"(?:"
    r"BUG:"
    r"|WARNING:"
    r"|INFO:"
    r"|UBSAN:"
    r"|kernel BUG at"
    r"|Unable to handle kernel"
    r"|PANIC: double fault"
    r"|(?:Oops: )?general protection fault"
    r"|(?:CPU\d+: )?Watchdog detected hard LOCKUP"
    r")"
)
# Lines that continue a report: the oops after "BUG: kernel NULL pointer
# dereference", the panic after an oops, the hung-task detector's note on
# who holds the lock (7.2: "INFO: task X:1 is blocked on a mutex likely
# owned by task Y:2.").
_SECONDARY = re.compile(
    r"^(?:Oops(?::|\b)|Kernel panic|(?:Oops: )?(?:divide error:|invalid opcode:)"
    r"|INFO: task \S+ (?:is )?blocked on a)"
)
_IGNORE = re.compile(
    r"^" + _SUBSYS + r"(?:INFO: lockdep is turned off"
    r"|INFO: Stall ended before state dump start)"
)

# Lines that end a report and belong to it.
_END_RE = re.compile(r"^---\[ end (?:trace|Kernel panic)")
_RULE_RE = re.compile(r"^={20,}$")  # KASAN/UBSAN/KCSAN reports are framed by these
# Reports a rule line closes again. Lockdep's reports also open with a rule
# but end with their stack trace, like a WARNING.
_FRAMED_START = re.compile(r"^(?:BUG: (?:KASAN|KCSAN|KFENCE|KMSAN):|UBSAN:)")
# After the call trace closed ("</TASK>"), lines that still belong to the report.
_TAIL_RE = re.compile(
    r"^(?:\s|Modules linked in|CR2:|RIP:|RSP:|R[A-Z0-9]{2}:|FS:|CS:|CR0:|DR[0-9]:|Code:"
    r"|PKRU:|Kernel Offset|note:|irq event stamp|hardirqs |softirqs |---\[|<\/?(?:TASK|IRQ)>"
    r"|Dumping ftrace|Kernel panic|Rebooting in|$)"
)

_FUNC = r"([A-Za-z_.$][\w.$]*)"
_RIP_RE = re.compile(r"^RIP: [0-9a-f]{4}:" + _FUNC + r"\+0x")
# A call-trace frame: " func+0x1a/0x40", " ? func+0x1a/0x40 [module]" ("?": unreliable)
_FRAME_RE = re.compile(r"^\s+(\? )?" + _FUNC + r"\+0x[0-9a-f]+/0x[0-9a-f]+")
# The first lock of a lockdep report: "ffff888003a1c0a8 (&a->lock){+.+.}-{3:3}, at: f+0x1/0x2"
_LOCK_AT_RE = re.compile(r"\}(?:-\{\d+:\d+\})?, at: " + _FUNC + r"\+0x")
# Frames a blocked task always sits in; the title names the first one that is not.
_SCHED_FRAMES = re.compile(
    r"^(?:__schedule|schedule\w*|io_schedule\w*|preempt_schedule\w*|__switch_to\w*"
    r"|context_switch|rwsem_down_\w+|__?down\w*|__?mutex_lock\w*|mutex_lock\w*"
    r"|__?rt_mutex\w*|__?wait_for_common|wait_for_completion\w*|do_wait_for_common"
    r"|__wait_rcu_gp|synchronize_rcu\w*|__flush_work|flush_work|msleep\w*|usleep_range\w*"
    r"|percpu_rwsem_wait|__percpu_down_read|folio_wait_\w+|__folio_lock\w*|wait_on_\w+"
    r"|bit_wait\w*|__wait_on_bit\w*|out_of_line_wait_on_bit\w*|ret_from_fork\w*|kthread"
    # the reporting machinery itself
    r"|dump_stack\w*|show_stack|__schedule_bug|_*might_sleep|_*might_resched|__might_fault)$"
)
# lockdep's held-lock list: "1 lock held by sh/64:" then " #0: ffff... (name){+.+.}-{2:2}, at: f"
_HELD_RE = re.compile(r"^(\d+) locks? held by \S+:$")
_HELD_ENTRY_RE = re.compile(r"^ #\d+: ")
# WARNING lines: 7.2 "WARNING: drivers/x.c:164 at f+0xa/0x10, CPU#1: sh/60"
# (or without the file), up to 6.x "WARNING: CPU: 1 PID: 60 at drivers/x.c:164 f+0xa/0x10"
_WARN_RES = (
    re.compile(r"^WARNING: (?:\S+:\d+ )?at " + _FUNC + r"\+0x[0-9a-f]+/0x[0-9a-f]+, CPU#"),
    re.compile(r"^WARNING: CPU: \d+ PID: \d+ at \S+ " + _FUNC),
    re.compile(r"^WARNING: at \S+ " + _FUNC),
)
# The task context every kernel report prints: "CPU: 1 PID: 60 Comm: sh" (6.x),
# "CPU: 1 UID: 0 PID: 60 Comm: sh" (7.x), or the 6.x WARNING line itself.
_CONTEXT_RE = re.compile(r"\bCPU: \d+ (?:UID: \d+ )?PID: \d+")
_STRIP_ADDR_RE = re.compile(r",?(?: for)? (?:address|addr):? ?(?:0x)?[0-9a-fA-F]+.*$")


@dataclass(frozen=True)
class Splat:
    title: str
    report: str
    line: int  # 1-based console line where the report starts

    def to_dict(self) -> dict[str, object]:
        return {"title": self.title, "report": self.report, "line": self.line}


def strip_prefix(line: str) -> str:
    """The printk message without timestamp/caller-id prefixes and line ending."""
    return _PREFIX_RE.sub("", line.rstrip("\r\n").replace("\r", ""), count=1)


def has_prefix(line: str) -> bool:
    """Whether the line starts with a printk prefix (timestamp, caller id or level)."""
    return bool(_PREFIX_RE.match(line.replace("\r", "")).group(0))  # type: ignore[union-attr]


def _kind(msg: str) -> str | None:
    if _IGNORE.match(msg):
        return None
    if _PRIMARY.match(msg):
        return "primary"
    if _SECONDARY.match(msg):
        return "secondary"
    return None


def _rip_func(lines: list[str]) -> str | None:
    for msg in lines:
        m = _RIP_RE.match(msg)
        if m:
            return m.group(1)
    return None


def _frames(lines: list[str]) -> list[str]:
    """The functions of the report's call trace(s), in order; only the
    reliable ones when the unwinder marked some frames unreliable ("? ")."""
    frames = [(m.group(2), bool(m.group(1))) for msg in lines if (m := _FRAME_RE.match(msg))]
    reliable = [f for f, guess in frames if not guess]
    return reliable or [f for f, _ in frames]


def _culprit(lines: list[str]) -> str | None:
    """The first frame of the trace that is not scheduling, waiting or reporting."""
    return next((f for f in _frames(lines) if not _SCHED_FRAMES.match(f)), None)


def _lock_func(lines: list[str]) -> str | None:
    """Where lockdep's report says the first lock was taken ("..., at: FUNC+0x")."""
    for msg in lines:
        if m := _LOCK_AT_RE.search(msg):
            return m.group(1)
    return None


def title_of(lines: list[str]) -> str:
    """A short title for a report (``lines``: messages without prefixes)."""
    first = re.sub(r"^" + _SUBSYS, "", lines[0].strip())
    if _RULE_RE.match(first) and len(lines) > 1:  # a framed report: the rule opens it
        return title_of(lines[1:])
    func = _rip_func(lines)
    in_func = f" in {func}" if func else ""

    if m := re.match(r"^BUG: KASAN: ([\w-]+) in " + _FUNC, first):
        return f"BUG: KASAN: {m.group(1)} in {m.group(2)}"
    for warn in _WARN_RES:
        if m := warn.match(first):
            return f"WARNING in {m.group(1)}"
    # lockdep: "WARNING: possible circular locking dependency detected",
    # "WARNING: inconsistent lock state", "WARNING: possible recursive locking
    # detected", "WARNING: bad unlock balance detected!"...
    if first.startswith("WARNING: ") and (lock := _lock_func(lines[1:])):
        return f"{first.rstrip('!. ')} in {lock}"
    if m := re.match(r"^INFO: task (.+?):\d+ blocked\b.* for more than \d+ seconds", first):
        waiter = _culprit(lines)
        return f"INFO: task hung in {waiter}" if waiter else f"INFO: task {m.group(1)} hung"
    if m := re.match(r"^INFO: (rcu_\w+) (self-)?detected stall", first):
        what = "self-detected stall on CPU" if m.group(2) else "detected stalls"
        return f"INFO: {m.group(1)} {what}{in_func}"
    if first.startswith("BUG: soft lockup"):
        return "BUG: soft lockup" + in_func
    if re.match(r"^(?:CPU\d+: )?Watchdog detected hard LOCKUP", first):
        return "Watchdog detected hard LOCKUP" + in_func
    if m := re.match(r"^BUG: (scheduling while atomic|sleeping function called from "
                     r"invalid context)", first):
        where = func or _culprit(lines)
        return f"BUG: {m.group(1)}" + (f" in {where}" if where else "")
    if m := re.match(r"^BUG: (Bad page state|Bad page map|Bad rss-counter state"
                     r"|workqueue lockup)", first):
        return f"BUG: {m.group(1)}{in_func}"
    if m := re.match(r"^(?:Oops: )?(general protection fault|divide error|invalid opcode)", first):
        return m.group(1) + in_func
    if first.startswith("kernel BUG at"):
        return f"kernel BUG{in_func}" if func else first
    if first.startswith("Kernel panic - not syncing"):
        return first
    if first.startswith("BUG: unable to handle") or first.startswith(
        "BUG: kernel NULL pointer dereference"
    ):
        return _STRIP_ADDR_RE.sub("", first) + in_func
    if first.startswith("Oops"):
        return "Oops" + in_func
    if first.startswith("UBSAN:"):
        return first
    # Anything else: the line itself, minus trailing addresses/colons.
    return _STRIP_ADDR_RE.sub("", first).rstrip(":. ")


class SplatScanner:
    """Stateful: feed console lines with :meth:`feed`, call :meth:`flush` at the end."""

    def __init__(self, max_lines: int = MAX_REPORT_LINES) -> None:
        self.max_lines = max_lines
        self.splats: list[Splat] = []
        self._lineno = 0
        self._raw: list[str] = []  # the open report, as printed
        self._msgs: list[str] = []  # the same without prefixes
        self._start = 0
        self._framed = False  # opened inside a ===== frame
        self._trace_closed = False  # saw </TASK> (or </IRQ> without a TASK part)
        self._pending_rule: str | None = None  # a ===== line that may open a report
        # lockdep's "lock held when returning to user space" has no trace: it
        # ends with its held-lock list, of this many entries still to come
        self._locks_left: int | None = None
        # the open report's first line had no printk prefix and no kernel
        # context has confirmed it yet: user space's, until shown otherwise
        self._unconfirmed = False

    @property
    def open(self) -> bool:
        return bool(self._raw)

    def feed(self, line: str) -> Splat | None:
        """Consume one console line; returns a report that this line completed."""
        self._lineno += 1
        raw = line.rstrip("\r\n")
        msg = strip_prefix(raw)
        done: Splat | None = None

        prefixed = has_prefix(raw)
        if self._raw:
            kind = _kind(msg)
            ended = (self._trace_closed and not self._framed and kind is None
                     and not _TAIL_RE.match(msg))
            if self._unconfirmed and kind is not None and prefixed:
                self._drop()  # a kernel report starts inside user space's text
            elif kind == "primary" or ended:
                done = self._close()
            else:
                if self._unconfirmed and not prefixed and _CONTEXT_RE.search(msg):
                    self._unconfirmed = False
                self._append(raw, msg)
                if (
                    _END_RE.match(msg)
                    or (self._framed and _RULE_RE.match(msg.strip()))
                    or len(self._raw) >= self.max_lines
                ):
                    return self._close()
                if msg.strip() == "</TASK>":
                    self._trace_closed = True
                self._count_held_locks(msg)
                return None

        kind = _kind(msg)
        if kind is not None:
            self._raw, self._msgs, self._start = [], [], self._lineno
            self._framed = self._pending_rule is not None and bool(_FRAMED_START.match(msg))
            self._trace_closed = False
            self._unconfirmed = not prefixed and not _CONTEXT_RE.search(msg)
            if self._pending_rule is not None:
                self._raw.append(self._pending_rule)
                self._start -= 1
            self._append(raw, msg)
        self._pending_rule = raw if _RULE_RE.match(msg.strip()) else None
        return done

    def _count_held_locks(self, msg: str) -> None:
        if not self._msgs[0 if not _RULE_RE.match(self._msgs[0].strip()) else 1].startswith(
                "WARNING: lock held when returning to user space"):
            return
        if m := _HELD_RE.match(msg.strip()):
            self._locks_left = int(m.group(1))
        elif self._locks_left and _HELD_ENTRY_RE.match(msg):
            self._locks_left -= 1
            if self._locks_left == 0:
                self._trace_closed = True  # the list was the end of it

    def _append(self, raw: str, msg: str) -> None:
        self._raw.append(raw)
        self._msgs.append(msg)

    def _close(self) -> Splat | None:
        """End the open report; it is a splat unless it was user space's."""
        splat = None
        if not self._unconfirmed:
            splat = Splat(title_of(self._msgs), "\n".join(self._raw), self._start)
            self.splats.append(splat)
        self._drop()
        return splat

    def _drop(self) -> None:
        self._raw, self._msgs = [], []
        self._trace_closed = False
        self._framed = False
        self._locks_left = None
        self._unconfirmed = False

    def current(self) -> list[Splat]:
        """The reports so far, including an open one whose call trace has
        ended: lockdep, hung-task and lockup reports end with their trace,
        but only the next line proves it, and the console may stay quiet."""
        out = list(self.splats)
        if self._raw and self._trace_closed and not self._framed and not self._unconfirmed:
            out.append(Splat(title_of(self._msgs), "\n".join(self._raw), self._start))
        return out

    def flush(self) -> Splat | None:
        """Close a report still open at the end of the console."""
        self._pending_rule = None
        return self._close() if self._raw else None


def scan_text(text: str) -> list[Splat]:
    """All reports in a complete console log."""
    scanner = SplatScanner()
    for line in text.splitlines():
        scanner.feed(line)
    scanner.flush()
    return scanner.splats

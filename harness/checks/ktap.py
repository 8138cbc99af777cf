"""KTAP / TAP 13 parser for kselftest output (``kselftest_harness.h`` and friends).

Reads ``KTAP version 1`` and ``TAP version 13`` streams: plans ``1..N``,
result lines ``ok|not ok N [- ]name [# SKIP|XFAIL|TODO|TIMEOUT|ERROR reason]``,
nested subtests by indentation (KTAP: 2 spaces per level) or by the ``# ``
prefix kselftest's runner puts in front of a sub-test's TAP output.
Everything else (``#  RUN ...`` diagnostics, a program's own prints, kernel
messages) is tolerated and kept as the diagnostic text of the result that
follows it. Results the plan announced but that never came (the program
crashed or was killed) are reported as missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

_VERSION = re.compile(r"^(?:KTAP version \d+|TAP version \d+)\s*$")
_PLAN = re.compile(r"^1\.\.(\d+)(?:\s*#.*)?$")
_RESULT = re.compile(
    r"^(?P<ok>ok|not ok)\s+(?P<num>\d+)(?:\s+-)?(?:\s+(?P<name>[^#]*?))?\s*"
    r"(?:#\s*(?P<directive>[A-Za-z]+)\b\s*(?P<reason>.*))?$"
)
_BAIL = re.compile(r"^Bail out!\s*(.*)$")


class Outcome(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    XFAIL = "XFAIL"  # an expected failure (counts as passing)
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    MISSING = "MISSING"  # announced by the plan, never reported


@dataclass
class KtapResult:
    number: int
    name: str
    outcome: Outcome
    reason: str = ""  # the directive's text ("# SKIP reason")
    diagnostics: list[str] = field(default_factory=list)  # lines before the result line
    children: list[KtapResult] = field(default_factory=list)
    line: int = -1  # index of the result line in text.splitlines(); -1: none (missing)

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.PASS, Outcome.SKIP, Outcome.XFAIL)


@dataclass
class KtapDocument:
    version: str = ""
    plan: int | None = None
    results: list[KtapResult] = field(default_factory=list)
    bail_out: str | None = None
    other: list[str] = field(default_factory=list)  # lines that belong to no result
    problems: list[str] = field(default_factory=list)  # malformed or inconsistent input

    def flatten(self, sep: str = ".") -> list[tuple[str, KtapResult]]:
        """Leaf results with their dotted paths (a parent's name + sep + the child's)."""
        out: list[tuple[str, KtapResult]] = []

        def walk(prefix: str, results: list[KtapResult]) -> None:
            for r in results:
                path = f"{prefix}{sep}{r.name}" if prefix else r.name
                if r.children:
                    walk(path, r.children)
                else:
                    out.append((path, r))

        walk("", self.results)
        return out

    def counts(self) -> dict[str, int]:
        c = {str(o): 0 for o in Outcome}
        for _, r in self.flatten():
            c[str(r.outcome)] += 1
        return c


def _outcome(ok: bool, directive: str | None) -> Outcome:
    d = (directive or "").upper()
    if d == "SKIP":
        return Outcome.SKIP
    if d in ("XFAIL", "TODO"):
        return Outcome.XFAIL if not ok or d == "XFAIL" else Outcome.PASS
    if d == "TIMEOUT":
        return Outcome.TIMEOUT
    if d == "ERROR":
        return Outcome.ERROR
    return Outcome.PASS if ok else Outcome.FAIL


@dataclass
class _Level:
    doc: KtapDocument
    pending: list[str] = field(default_factory=list)
    sub: _Level | None = None  # a nested document being read, not yet closed by its result


def _split_depth(line: str) -> tuple[int, str]:
    """Nesting depth and the TAP text of a line, or (-1, line) if it is not TAP.

    Depth is counted in 2-space indents (KTAP) and ``# `` prefixes (the
    kselftest runner's nesting); a line is TAP only if what remains is a
    version, plan, result or bail-out line.
    """
    depth, rest = 0, line.rstrip("\r\n")
    while True:
        if rest.startswith("  ") or rest.startswith("# "):
            rest, depth = rest[2:], depth + 1
        elif rest.startswith("\t"):
            rest, depth = rest[1:], depth + 1
        else:
            break
        stripped = rest.lstrip(" ")
        if _is_tap(stripped) and (len(rest) - len(stripped)) % 2 == 0:
            depth += (len(rest) - len(stripped)) // 2
            return depth, stripped
    return (0, rest) if _is_tap(rest) else (-1, line.rstrip("\r\n"))


def _is_tap(text: str) -> bool:
    return bool(_VERSION.match(text) or _PLAN.match(text) or _RESULT.match(text)
                or _BAIL.match(text))


def parse(text: str) -> KtapDocument:
    """Parse KTAP/TAP output; never raises on malformed input (see ``problems``)."""
    root = _Level(KtapDocument())
    stack: list[_Level] = [root]

    def close_to(depth: int) -> None:
        # Lines at ``depth`` close deeper levels left without a result line.
        while len(stack) - 1 > depth:
            lvl = stack.pop()
            parent = stack[-1]
            parent.sub = None
            parent.doc.problems.append("a nested test list ended without a result line")
            parent.doc.results.append(KtapResult(
                len(parent.doc.results) + 1, f"subtest{len(parent.doc.results) + 1}",
                Outcome.ERROR, "no result line", lvl.pending, lvl.doc.results))

    for index, raw in enumerate(text.splitlines()):
        depth, tap = _split_depth(raw)
        if depth < 0:
            stack[-1].pending.append(raw)
            continue
        if depth > len(stack) - 1:
            # A deeper TAP line: open nested levels (a subtest's own stream).
            while depth > len(stack) - 1:
                child = _Level(KtapDocument())
                stack[-1].sub = child
                stack.append(child)
        elif depth < len(stack) - 1 and not _RESULT.match(tap):
            close_to(depth)
        lvl = stack[min(depth, len(stack) - 1)]
        if depth < len(stack) - 1:
            # A result line one level up closes the nested stream it follows.
            nested = stack[depth + 1:]
            del stack[depth + 1:]
            lvl.sub = None
            children_doc = nested[0].doc
            _finish(children_doc, nested[0].pending)
        else:
            children_doc = None
        doc = lvl.doc
        if _VERSION.match(tap):
            if doc.version and doc.results:
                doc.problems.append(f"a second version line: {tap!r}")
            doc.version = doc.version or tap
            continue
        m = _PLAN.match(tap)
        if m:
            if doc.plan is not None:
                doc.problems.append(f"a second plan: {tap!r}")
            else:
                doc.plan = int(m.group(1))
            continue
        m = _BAIL.match(tap)
        if m:
            doc.bail_out = m.group(1)
            continue
        m = _RESULT.match(tap)
        assert m is not None
        num = int(m.group("num"))
        name = (m.group("name") or "").strip() or f"test{num}"
        directive = m.group("directive")
        reason = (m.group("reason") or "").strip()
        if directive and directive.upper() not in ("SKIP", "XFAIL", "TODO", "TIMEOUT", "ERROR"):
            # "# exit=1" and the like: a comment, not a directive.
            reason = f"{directive}{' ' if reason[:1].isalnum() else ''}{reason}".strip()
            directive = None
        expected = len(doc.results) + 1
        if num != expected:
            doc.problems.append(f"result {num} ({name}) out of order, expected {expected}")
        res = KtapResult(num, name, _outcome(m.group("ok") == "ok", directive), reason,
                         lvl.pending, children_doc.results if children_doc else [], index)
        if children_doc:
            doc.problems.extend(f"{name}: {p}" for p in children_doc.problems)
        lvl.pending = []
        doc.results.append(res)

    # End of input: whatever is still open ends here.
    close_to(0)
    _finish(root.doc, root.pending)
    return root.doc


def _finish(doc: KtapDocument, pending: list[str]) -> None:
    doc.other.extend(pending)
    if doc.plan is None:
        if doc.results:
            doc.problems.append("no plan line")
        return
    have = {r.number for r in doc.results}
    for n in range(1, doc.plan + 1):
        if n not in have:
            doc.results.append(KtapResult(n, f"#{n}", Outcome.MISSING,
                                          "announced by the plan, never reported"))
    if len(have) > doc.plan:
        doc.problems.append(f"{len(have)} results, the plan announced {doc.plan}")
    if doc.bail_out is not None:
        doc.problems.append(f"bail out: {doc.bail_out}")

"""Parse Python unittest's verbose (``-v``) output into per-test results.

What ``python3 -m unittest -v`` (or a ``unittest.main()`` runner such as
rdma-core's tests/run_tests.py) writes to stderr::

    test_odp_rc_traffic (tests.test_odp.OdpTestCase.test_odp_rc_traffic) ... ok
    test_odp_xrc_traffic (tests.test_odp.OdpTestCase.test_odp_xrc_traffic) ... skipped 'why'
    test_mrex_odp_rc_traffic (tests.test_odp.OdpTestCase.test_mrex_odp_rc_traffic)
    Test ODP traffic with MREx ... FAIL
    ...
    ======================================================================
    FAIL: test_mrex_odp_rc_traffic (tests.test_odp.OdpTestCase.test_mrex_odp_rc_traffic)
    Test ODP traffic with MREx
    ----------------------------------------------------------------------
    Traceback (most recent call last):
    ...
    ----------------------------------------------------------------------
    Ran 23 tests in 41.262s

    FAILED (failures=1, skipped=10)

A test with a docstring gets its first line on a line of its own before the
`` ... `` verdict; output the tests print themselves may come between a
test's name and its verdict. Python before 3.11 names a test
``name (module.Class)``; later ones ``name (module.Class.name)``: either way
the result's ``id`` is ``module.Class.name``.

unittest -v prints no per-test duration, so there is none here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIP = "skipped"
    XFAIL = "expected failure"
    XPASS = "unexpected success"


@dataclass
class UnitTestResult:
    id: str  # "tests.test_odp.OdpTestCase.test_odp_rc_traffic"
    verdict: Verdict
    reason: str = ""  # a skip's reason
    details: str = ""  # the FAIL/ERROR section: the traceback

    @property
    def name(self) -> str:
        return self.id.rsplit(".", 1)[-1]


@dataclass
class UnitTestRun:
    results: list[UnitTestResult] = field(default_factory=list)
    ran: int | None = None  # "Ran N tests"
    summary: str = ""  # "OK (skipped=3)", "FAILED (failures=1, errors=2)"
    # errors outside a test (setUpClass ...): what failed -> its traceback
    other_errors: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


_NAME = r"(?P<name>\w+) \((?P<where>[\w.]+)\)"
_START = re.compile(rf"^{_NAME}(?P<rest>.*)$")
_VERDICT = re.compile(
    r" \.\.\. (?P<verdict>ok|FAIL|ERROR|skipped(?: (?P<reason>.*))?|expected failure"
    r"|unexpected success)\s*$")
_SECTION = re.compile(rf"^(?P<kind>FAIL|ERROR): (?:{_NAME}|(?P<other>\S.*?))\s*$")
_RAN = re.compile(r"^Ran (\d+) tests? in [\d.]+s\s*$")
_SUMMARY = re.compile(r"^(OK|FAILED)\b.*$")
_BAR = re.compile(r"^(=+|-+)$")
# class and module fixtures: an error there has a verdict line but is no test
FIXTURES = ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule")


def _test_id(name: str, where: str) -> str:
    return where if where.endswith("." + name) else f"{where}.{name}"


def _reason(text: str | None) -> str:
    """skipped 'why' -> why (the repr unittest prints)."""
    if not text:
        return ""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        t = t[1:-1]
    return t.replace("\\'", "'").replace('\\"', '"')


def parse(text: str) -> UnitTestRun:
    """Every verdict in unittest -v output ``text``, with the tracebacks of those that
    did not pass and the closing counts; ``problems`` says what does not add up."""
    run = UnitTestRun()
    lines = text.splitlines()
    pending: str | None = None  # id of a test whose name line came without its verdict
    i = 0
    while i < len(lines):
        line = lines[i]
        if _BAR.match(line) and line.startswith("="):
            i = _section(lines, i + 1, run)
            continue
        m = _RAN.match(line)
        if m:
            run.ran = int(m.group(1))
            for rest in lines[i + 1:]:
                s = _SUMMARY.match(rest.strip())
                if s:
                    run.summary = rest.strip()
                    break
            i += 1
            continue
        start = _START.match(line)
        if start:
            pending = _test_id(start.group("name"), start.group("where"))
            line = start.group("rest")
        v = _VERDICT.search(line)
        if v and pending is not None:
            verdict = Verdict(v.group("verdict").split(" ", 1)[0]
                              if v.group("verdict").startswith("skipped") else v.group("verdict"))
            if pending.rsplit(".", 1)[-1] in FIXTURES:
                run.other_errors.setdefault(pending, str(verdict))
            else:
                run.results.append(UnitTestResult(pending, verdict, _reason(v.group("reason"))))
            pending = None
        i += 1
    if pending is not None:
        run.problems.append(f"{pending}: no verdict (the run ended during it?)")
    _check(run)
    return run


def _section(lines: list[str], i: int, run: UnitTestRun) -> int:
    """A "FAIL: name (id)" / "ERROR: ..." block after a ===== line; returns the next index."""
    if i >= len(lines):
        return i
    m = _SECTION.match(lines[i])
    if not m:
        return i
    body: list[str] = []
    j = i + 1
    while j < len(lines) and not (lines[j].startswith("=" * 10) or _RAN.match(lines[j])):
        body.append(lines[j])
        j += 1
    while body and (not body[-1].strip() or _BAR.match(body[-1])):
        body.pop()
    details = "\n".join([lines[i], *body])
    if m.group("name"):
        tid = _test_id(m.group("name"), m.group("where"))
        for r in run.results:
            if r.id == tid and r.verdict.value == m.group("kind"):
                r.details = details
                break
        else:
            run.other_errors[tid] = details
    else:
        run.other_errors[m.group("other")] = details
    return j


def _check(run: UnitTestRun) -> None:
    if run.ran is None:
        run.problems.append('no "Ran N tests" line: unittest did not finish')
    elif run.ran != len(run.results):
        run.problems.append(f"unittest ran {run.ran} tests but printed {len(run.results)} "
                            "verdicts")
    seen: set[str] = set()
    for r in run.results:
        if r.id in seen:
            run.problems.append(f"{r.id}: more than one verdict")
        seen.add(r.id)
    for what in run.other_errors:
        run.problems.append(f"error outside a test: {what}")

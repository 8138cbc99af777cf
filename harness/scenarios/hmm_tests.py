"""The kernel's own hmm-tests selftest, against hmm_gpu.ko and against test_hmm.ko.

The unmodified ``tools/testing/selftests/mm/hmm-tests`` of the kernel we
boot runs twice in the same guest: first against our driver (hmm_gpu.ko
exposes the test_hmm "dmirror" uAPI on /dev/hmm_dmirror0/1), then, after
``rmmod hmm_gpu``, against the kernel's software baseline lib/test_hmm.ko.

Entries: ``hmm-tests.setup`` (hugetlb pages, debugfs),
``hmm-tests.<driver>.load``, ``hmm-tests.<driver>.<fixture>.<variant>.<test>``
for driver ``hmm-gpu`` and ``test_hmm``, ``hmm-tests.<driver>.unload``.
``results.json`` gets ``tables["hmm-tests"]``: every test with its status on
both drivers.

There are no expected failures: every test must pass on both drivers (the
device-coherent variants SKIP on both, there are no devices 2 and 3), and
``hmm-tests.parity`` fails if any test passing on test_hmm.ko does not pass
on hmm-gpu.

A test's duration is measured on the host from the stream: kselftest's
harness prints ``#  RUN test`` and flushes right before it forks the test,
and the result line follows the test's end (flushed with the next test's RUN
line, or at exit), so the time between the arrivals of the two lines is the
test's. When both came in the same read of the SSH channel (a test faster
than the stream's resolution, or output that was buffered) the duration is
absent (None), never guessed.

What the kernel cannot do is SKIPped with the reason, never counted as a
pass (the guest's kernel.json says what it offers, see
:mod:`harness.scenarios.kernel`):

- without CONFIG_TEST_HMM (Debian's stock 6.1) there is no test_hmm.ko: the
  test_hmm column SKIPs, and so does ``hmm-tests.parity``;
- without CONFIG_DEVICE_PRIVATE the tests that migrate to device memory or
  take pages device-exclusive (kernel.json lists them, from hmm-tests.c)
  cannot pass on any driver: on hmm-gpu they still run (6.1's harness cannot
  leave tests out) and one that does not pass is a SKIP with that reason and
  its real outcome in the excerpt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness import ktap
from harness.ktap import Outcome
from harness.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import (
    BIN,
    HMM_GPU_KO,
    TEST_HMM_KO,
    add_cmd_result,
    guest_run,
    load_module,
    unload_module,
)
from harness.scenarios.kernel import GuestKernel, guest_kernel, unmet
from harness.ssh import Arrival, line_arrivals

log = logging.getLogger(__name__)

HMM_TESTS = f"{BIN}/hmm-tests"
NODES = ("/dev/hmm_dmirror0", "/dev/hmm_dmirror1")
HUGEPAGES = 4
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


@dataclass(frozen=True)
class Driver:
    label: str  # in result paths
    module: str  # in /proc/modules
    ko: str


DRIVERS = (Driver("hmm-gpu", "hmm_gpu", HMM_GPU_KO), Driver("test_hmm", "test_hmm", TEST_HMM_KO))
# driver label -> the kernel features it cannot load without
DRIVER_NEEDS: dict[str, tuple[str, ...]] = {"test_hmm": ("test_hmm",)}


def driver_unmet(d: Driver, kernel: GuestKernel | None) -> str | None:
    """Why hmm-tests cannot run against ``d`` on this kernel at all, or None.

    test_hmm.ko may not be built. And where tests must fail (no device-private
    memory) but this kernel's hmm-tests can neither leave them out nor survive
    them (6.1's kselftest harness: no -T, and a failing ASSERT loops in the
    fixture teardown until the test's timeout), the run is not made.
    """
    if kernel is None:
        return None
    why = unmet(DRIVER_NEEDS.get(d.label, ()), kernel.features, kernel.name)
    if why:
        return why
    dp = unmet(("device_private",), kernel.features, kernel.name)
    if dp and kernel.hmm_tests_device_private and not kernel.hmm_tests_selectable:
        return (f"{len(kernel.hmm_tests_device_private)} of its {len(kernel.hmm_tests)} tests "
                f"need device-private memory: {dp}; this hmm-tests' kselftest harness can "
                "neither leave them out (no -T) nor survive their failing (a failed ASSERT "
                "loops in the fixture teardown until the test times out)")
    return None


# Tests a driver cannot pass because it lacks what they test (never the kernel's
# fault): "fixture.test" -> why. hmm_gpu.ko migrates base pages only.
NOT_IMPLEMENTED: dict[str, dict[str, str]] = {
    "hmm-gpu": {
        # 7.2: the snapshot must show the device-private THP mapped by one PMD
        "hmm.migrate_anon_huge_fault": (
            "needs device-private THP migration (MIGRATE_VMA_SELECT_COMPOUND, "
            "a PMD-mapped device folio), which hmm_gpu.ko does not implement"),
    },
}


def cannot_pass(d: Driver, kernel: GuestKernel | None) -> dict[str, str]:
    """The tests ("fixture.test") that cannot pass with ``d`` on this kernel, with why."""
    out = dict(NOT_IMPLEMENTED.get(d.label, {}))
    why = unmet(("device_private",), kernel.features, kernel.name) if kernel else None
    if why:
        out.update({t: f"needs device-private memory: {why}"
                    for t in kernel.hmm_tests_device_private})
    return out


def skip_column(s: Session, d: Driver, names: list[str], why: str) -> list[TestResult]:
    """SKIP entries for a driver hmm-tests cannot run against: its load and every test."""
    s.results.add_status(f"hmm-tests.{d.label}.load", Status.SKIP, why)
    out = []
    for name in dict.fromkeys(names):
        if name in ("load", "unload", "run"):
            continue
        e = TestResult(f"hmm-tests.{d.label}.{name}", Status.SKIP, log_excerpt=why)
        s.results.add(e)
        out.append(e)
    return out


_HARNESS_SKIP = re.compile(r"^#\s+SKIP\s+(.*?)\s*$")


def test_key(name: str) -> str:
    """"hmm.hmm_device_private.migrate" -> "hmm.migrate" (fixture.test, as in hmm-tests.c)."""
    parts = name.split(".")
    return f"{parts[0]}.{parts[-1]}" if len(parts) >= 3 else name


def status_of(driver: str, name: str, r: ktap.KtapResult,
              cannot: Mapping[str, str] | None = None) -> tuple[Status, str]:
    """The results.json status of one hmm-tests result, and the reason to show.

    ``cannot`` maps tests ("fixture.test") this kernel cannot pass to why: such a
    test that did not pass is a SKIP with that reason (and its real outcome).
    """
    if r.outcome == Outcome.PASS:
        # 6.1's kselftest harness prints a SKIP from a fixture setup as "ok"
        # with no "# SKIP" directive: its "#      SKIP      why" line tells.
        skipped = next((m.group(1) for line in r.diagnostics
                        if (m := _HARNESS_SKIP.match(line))), None)
        if skipped is not None:
            return Status.SKIP, skipped
    if r.outcome in (Outcome.PASS, Outcome.XFAIL):
        return Status.PASS, r.reason
    if r.outcome == Outcome.SKIP:
        return Status.SKIP, r.reason
    why = (cannot or {}).get(test_key(name))
    if why:
        return Status.SKIP, f"{why} (ran anyway: {r.outcome}{': ' + r.reason if r.reason else ''})"
    return Status.FAIL, r.reason or str(r.outcome)


def _missing_names(doc: ktap.KtapDocument, results: list[tuple[str, ktap.KtapResult]]
                   ) -> dict[int, str]:
    """Names of tests the plan announced but that never reported, from "#  RUN" lines."""
    seen = {name for name, _ in results}
    runs: list[str] = []
    for r in doc.results:
        runs.extend(_runs(r.diagnostics))
    runs.extend(_runs(doc.other))
    missing = [r.number for _, r in results if r.outcome == Outcome.MISSING]
    names = [n for n in dict.fromkeys(runs) if n not in seen]
    return dict(zip(missing, names, strict=False))


def _runs(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        m = re.match(r"^#\s+RUN\s+(\S+)\s*\.\.\.", line)
        if m:
            out.append(m.group(1))
    return out


_RUN = re.compile(r"^#\s+RUN\s+(\S+)\s*\.\.\.")


def test_seconds(lines: Sequence[str], flat: Sequence[tuple[str, ktap.KtapResult]],
                 arrivals: Sequence[Arrival | None]) -> list[float | None]:
    """Each result's duration from when its lines reached the host, or None.

    A test starts when its ``#  RUN name ...`` line arrives (kselftest flushes
    it just before forking the test; without one, when the previous result
    line arrived) and ends when its result line does. Both in the same read:
    unknown (None). ``arrivals`` are :func:`harness.ssh.line_arrivals` of
    ``lines``.
    """
    def at(i: int | None) -> Arrival | None:
        return arrivals[i] if i is not None and 0 <= i < len(arrivals) else None

    run_line: dict[str, int] = {}
    for i, line in enumerate(lines):
        m = _RUN.match(line)
        if m:
            run_line.setdefault(m.group(1), i)
    out: list[float | None] = []
    previous: Arrival | None = None
    for name, r in flat:
        end = at(r.line)
        start = at(run_line.get(name)) if name in run_line else previous
        if end is not None and start is not None and end.read != start.read:
            out.append(round(end.time - start.time, 3))
        else:
            out.append(None)
        previous = end or previous
    return out


def parse_run(driver: str, output: str, cannot: Mapping[str, str] | None = None,
              arrivals: Sequence[Arrival | None] = ()) -> tuple[list[TestResult], list[str]]:
    """hmm-tests output → result entries for ``driver``; also problems with the stream.

    ``cannot``: see :func:`status_of`. ``arrivals``: when each line of
    ``output`` reached the host (:func:`harness.ssh.line_arrivals`); without
    them no test has a duration.
    """
    doc = ktap.parse(output)
    flat = doc.flatten()
    problems = list(doc.problems)
    if not flat:
        problems.append("hmm-tests printed no test results")
    renamed = _missing_names(doc, flat)
    seconds = test_seconds(output.splitlines(), flat, arrivals)
    entries = []
    for (name, r), took in zip(flat, seconds, strict=True):
        if r.outcome == Outcome.MISSING:
            name = renamed.get(r.number, f"test{r.number}")
            status, reason = Status.FAIL, "never reported: hmm-tests stopped before it ran"
        else:
            status, reason = status_of(driver, name, r, cannot)
        text = "\n".join([reason, *r.diagnostics[-40:], f"{'ok' if r.ok else 'not ok'} "
                          f"{r.number} {name}"]).strip()
        entries.append(TestResult(f"hmm-tests.{driver}.{name}", status, took, text,
                                  [f"hmm-tests-{driver}.log"],
                                  {"ktap": str(r.outcome), "reason": reason}))
    return entries, problems


def side_by_side(entries: list[TestResult]) -> dict[str, Any]:
    """``{"columns": [...], "rows": [{"test": name, "hmm-gpu": st, "test_hmm": st}]}``."""
    cols = [d.label for d in DRIVERS]
    rows: dict[str, dict[str, str]] = {}
    for e in entries:
        parts = e.path.split(".", 2)
        if len(parts) != 3 or parts[1] not in cols:
            continue
        _, driver, name = parts
        if name in ("load", "unload", "run"):
            continue
        row = rows.setdefault(name, {"test": name, **{c: "-" for c in cols}})
        row[driver] = str(e.status)
    totals = {c: {s: sum(1 for r in rows.values() if r[c] == s)
                  for s in ("PASS", "FAIL", "SKIP", "ERROR", "-")} for c in cols}
    return {"columns": cols, "rows": list(rows.values()), "totals": totals}


def parity(table: dict[str, Any], test_hmm_missing: str = "",
           excused: Mapping[str, str] | None = None) -> TestResult:
    """``hmm-tests.parity``: every test that passes on test_hmm.ko passes on hmm-gpu.

    ``test_hmm_missing``: why test_hmm.ko did not run (then there is nothing to
    compare). ``excused``: tests ("fixture.test") hmm-gpu cannot pass, with why
    (:func:`cannot_pass`); those SKIPped on hmm-gpu are named, not counted behind.
    """
    if test_hmm_missing:
        return TestResult("hmm-tests.parity", Status.SKIP,
                          log_excerpt=f"nothing to compare: {test_hmm_missing}")
    excused = excused or {}
    ahead = [r["test"] for r in table["rows"]
             if r.get("test_hmm") == "PASS" and r.get("hmm-gpu") != "PASS"]
    skipped = [t for t in ahead if test_key(t) in excused and
               next(r for r in table["rows"] if r["test"] == t).get("hmm-gpu") == "SKIP"]
    behind = [t for t in ahead if t not in skipped]
    both = sum(1 for r in table["rows"] if r.get("test_hmm") == r.get("hmm-gpu") == "PASS")
    note = "".join(f"\nnot compared, {t}: {excused[test_key(t)]}" for t in skipped)
    if behind:
        return TestResult("hmm-tests.parity", Status.FAIL, log_excerpt=(
            f"{len(behind)} tests pass on test_hmm.ko but not on hmm-gpu:\n"
            + "\n".join(behind) + note))
    return TestResult("hmm-tests.parity", Status.PASS,
                      log_excerpt=f"{both} tests pass on both drivers" + note)


def format_table(table: dict[str, Any]) -> str:
    cols = table["columns"]
    rows = table["rows"]
    w = max([len("test"), *(len(r["test"]) for r in rows)])
    lines = [f"{'test':<{w}}  " + "  ".join(f"{c:<8}" for c in cols)]
    lines += [f"{r['test']:<{w}}  " + "  ".join(f"{r[c]:<8}" for c in cols) for r in rows]
    for c in cols:
        t = table["totals"][c]
        lines.append(f"{c}: " + ", ".join(f"{n} {k}" for k, n in t.items() if n))
    return "\n".join(lines)


class HmmTests:
    name = "hmm-tests"

    def run(self, s: Session) -> None:
        timeout = s.cfg.timeouts.scenario
        kernel = guest_kernel(s)
        prep = guest_run(s, (
            f"echo {HUGEPAGES} > /proc/sys/vm/nr_hugepages; "
            # THP "always" makes exclusive* fail with EBUSY (they get THPs); the
            # THP tests ask for them with MADV_HUGEPAGE. Our kernels default to it.
            f"[ ! -w {THP} ] || echo madvise > {THP}; "
            "grep -q ' /sys/kernel/debug ' /proc/mounts "
            "|| mount -t debugfs none /sys/kernel/debug; "
            "echo nr_hugepages=$(cat /proc/sys/vm/nr_hugepages); "
            "echo thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled); "
            f"grep -q ' /sys/kernel/debug ' /proc/mounts && [ -x {HMM_TESTS} ] && "
            f"[ $(cat /proc/sys/vm/nr_hugepages) -ge {HUGEPAGES} ]"), 60)
        if not add_cmd_result(s, "hmm-tests.setup", prep):
            return
        entries: list[TestResult] = []
        missing = ""
        for driver in DRIVERS:
            why = driver_unmet(driver, kernel)
            if why:
                missing = missing or why
                # the names the other driver printed, else all the source has
                names = [e.path.split(".", 2)[2] for e in entries
                         if len(e.path.split(".", 2)) == 3]
                entries.extend(skip_column(
                    s, driver, names or (kernel.hmm_test_names() if kernel else []), why))
                continue
            entries.extend(self._one(s, driver, timeout, cannot_pass(driver, kernel)))
        excused = cannot_pass(DRIVERS[0], kernel)
        # Leave the guest as the next scenario expects it: our driver loaded.
        load_module(s, HMM_GPU_KO, "hmm_gpu", ("/dev/hmm_gpu0",))
        table = side_by_side(entries)
        s.results.tables["hmm-tests"] = table
        s.results.add(parity(table, missing, excused))
        text = format_table(table)
        (s.run_dir / "hmm-tests-table.txt").write_text(text + "\n")
        log.info("hmm-tests:\n%s", text)

    def _one(self, s: Session, d: Driver, timeout: float,
             cannot: Mapping[str, str]) -> list[TestResult]:
        other = [x for x in DRIVERS if x is not d]
        for x in other:  # both expose /dev/hmm_dmirror*: only one may be loaded
            c = unload_module(s, x.module)
            if not c.ok:
                add_cmd_result(s, f"hmm-tests.{d.label}.load", c,
                               extra_problem=f"could not unload {x.module} first")
                return []
        c = load_module(s, d.ko, d.module, NODES)
        if not add_cmd_result(s, f"hmm-tests.{d.label}.load", c):
            s.results.add_status(f"hmm-tests.{d.label}", Status.SKIP,
                                 f"not run: hmm-tests.{d.label}.load did not pass")
            return []
        run = guest_run(s, f"cd /tmp && {HMM_TESTS} 2>&1", timeout)
        log_file = s.run_dir / f"hmm-tests-{d.label}.log"
        log_file.write_text(run.text(limit=10_000_000) + "\n")
        output = run.out + run.err
        entries, problems = parse_run(d.label, output, cannot,
                                      line_arrivals(run.out, run.out_marks))
        for e in entries:
            s.results.add(e)
        if run.error or problems or (run.rc not in (0, 1, 4)):
            # The stream itself: timeout, crash, malformed or incomplete output.
            status = run.status_if_error if run.error else Status.FAIL
            s.results.add(TestResult(f"hmm-tests.{d.label}.run", status, run.seconds,
                                     "\n".join([*problems, run.text()]), [log_file.name]))
        c = unload_module(s, d.module)
        add_cmd_result(s, f"hmm-tests.{d.label}.unload", c)
        return entries

    def finish(self, s: Session) -> None:
        return None


def make() -> HmmTests:
    return HmmTests()


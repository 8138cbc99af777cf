"""The kernel's own hmm-tests selftest, against hmm_gpu.ko (two ways) and test_hmm.ko.

The unmodified ``tools/testing/selftests/mm/hmm-tests`` of the kernel we
boot runs three times in the same guest, one column each:

- ``hmm-gpu``: hmm_gpu.ko (``prefault=1``, its default), which exposes the
  test_hmm "dmirror" uAPI on /dev/hmm_dmirror0/1; the driver faults a
  READ/WRITE range in from the CPU (hmm_range_fault) before the device job;
- ``hmm-gpu-devfault``: hmm_gpu.ko reloaded with ``prefault=0``: the device
  takes the page faults and the driver services its fault ring, the path a
  real GPU takes;
- ``test_hmm``: after ``rmmod hmm_gpu``, the kernel's software baseline
  lib/test_hmm.ko.

Entries: ``hmm-tests.setup`` (hugetlb pages, debugfs),
``hmm-tests.<column>.load`` (the module parameters are checked in sysfs),
``hmm-tests.<column>.<fixture>.<variant>.<test>``,
``hmm-tests.<column>.unload``. ``results.json`` gets ``tables["hmm-tests"]``:
every test with its status in each column.

There are no expected failures: every test must pass on both hmm-gpu
columns as on test_hmm.ko (the device-coherent variants SKIP everywhere,
there are no devices 2 and 3), and ``hmm-tests.parity.<column>`` (one per
hmm-gpu column) fails, naming them, if any test passing on test_hmm.ko does
not pass in that column.

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
  test_hmm column SKIPs, and so do the parity entries;
- without CONFIG_DEVICE_PRIVATE the tests that migrate to device memory or
  take pages device-exclusive (kernel.json lists them, from hmm-tests.c)
  cannot pass on any driver: on hmm-gpu they still run (6.1's harness cannot
  leave tests out) and one that does not pass is a SKIP with that reason and
  its real outcome in the excerpt.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks import ktap
from harness.checks.ktap import Outcome
from harness.core.results import Status, TestResult
from harness.guest.ssh import Arrival, line_arrivals
from harness.scenarios import Session, columns
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

log = logging.getLogger(__name__)

HMM_TESTS = f"{BIN}/hmm-tests"
NODES = ("/dev/hmm_dmirror0", "/dev/hmm_dmirror1")
HUGEPAGES = 4
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


@dataclass(frozen=True)
class Param:
    """A module parameter a column loads its driver with."""

    name: str
    value: str  # as insmod gets it
    sysfs: str  # as /sys/module/<module>/parameters/<name> reads back (bool: Y/N)


@dataclass(frozen=True)
class Driver:
    label: str  # in result paths and as the table's column
    module: str  # in /proc/modules
    ko: str
    params: tuple[Param, ...] = ()

    @property
    def insmod_args(self) -> str:
        return " ".join(f"{p.name}={shlex.quote(p.value)}" for p in self.params)


HMM_GPU = Driver("hmm-gpu", "hmm_gpu", HMM_GPU_KO, (Param("prefault", "1", "Y"),))
# The device faults READ/WRITE ranges in itself; the driver services its fault ring.
HMM_GPU_DEVFAULT = Driver("hmm-gpu-devfault", "hmm_gpu", HMM_GPU_KO,
                          (Param("prefault", "0", "N"),))
TEST_HMM = Driver("test_hmm", "test_hmm", TEST_HMM_KO)
DRIVERS = (HMM_GPU, HMM_GPU_DEVFAULT, TEST_HMM)
REFERENCE = TEST_HMM  # what the hmm-gpu columns must keep up with
# driver label -> the kernel features it cannot load without
DRIVER_NEEDS: dict[str, tuple[str, ...]] = {"test_hmm": ("test_hmm",)}


# What kselftest_harness.h runs: every TEST_F of a fixture once per variant of it.
_TEST_F = re.compile(r"^\s*TEST_F(?:_TIMEOUT)?\(\s*(\w+)\s*,", re.M)
_VARIANT_ADD = re.compile(r"^\s*FIXTURE_VARIANT_ADD\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.M)
SELFTEST_FILES = ("tools/testing/selftests/mm/hmm-tests.c",  # 6.3+
                  "tools/testing/selftests/vm/hmm-tests.c")  # 6.1


def hmm_tests_source(kernel_source: Path) -> Path:
    """hmm-tests.c of a kernel source tree (selftests/mm, or selftests/vm before 6.3)."""
    for rel in SELFTEST_FILES:
        if (kernel_source / rel).is_file():
            return kernel_source / rel
    raise FileNotFoundError(f"{kernel_source}: no {' or '.join(SELFTEST_FILES)}")


def expected_counts(text: str) -> dict[str, int]:
    """How many tests hmm-tests.c runs per "fixture.variant" (a fixture without variants:
    "fixture"), counted from its source: its TEST_Fs, once per FIXTURE_VARIANT_ADD."""
    tests: dict[str, int] = {}
    for fixture in _TEST_F.findall(text):
        tests[fixture] = tests.get(fixture, 0) + 1
    variants: dict[str, list[str]] = {}
    for fixture, variant in _VARIANT_ADD.findall(text):
        variants.setdefault(fixture, []).append(variant)
    out: dict[str, int] = {}
    for fixture, n in tests.items():
        for v in variants.get(fixture, [""]):
            out[f"{fixture}.{v}" if v else fixture] = n
    return out


def expected_device_private(kernel_source: Path) -> int:
    """The number of device-private tests (every fixture's ``*_device_private`` variant)
    the hmm-tests of ``kernel_source`` runs."""
    counts = expected_counts(hmm_tests_source(kernel_source).read_text(errors="replace"))
    return sum(n for name, n in counts.items() if name.endswith("_device_private"))


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


def cannot_pass(kernel: GuestKernel | None) -> dict[str, str]:
    """The tests ("fixture.test") that cannot pass on this kernel, whatever the driver,
    with why. A test one driver passes and another does not is never here: it
    is that driver's FAIL, and its parity entry's."""
    why = unmet(("device_private",), kernel.features, kernel.name) if kernel else None
    if not why or kernel is None:
        return {}
    return {t: f"needs device-private memory: {why}" for t in kernel.hmm_tests_device_private}


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
    unknown (None). ``arrivals`` are :func:`harness.guest.ssh.line_arrivals` of
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
    ``output`` reached the host (:func:`harness.guest.ssh.line_arrivals`); without
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


def side_by_side(entries: list[TestResult],
                 drivers: Sequence[Driver] = DRIVERS) -> dict[str, Any]:
    """``{"columns": [...], "rows": [{"test": name, <column>: status, ...}], "totals"}``."""
    return columns.side_by_side(entries, [d.label for d in drivers], REFERENCE.label)


def parity(table: dict[str, Any], column: str, not_run: str = "",
           excused: Mapping[str, str] | None = None) -> TestResult:
    """``hmm-tests.parity.<column>``: every test that passes on test_hmm.ko passes in
    ``column`` (a hmm-gpu column).

    ``not_run``: why test_hmm.ko or the column could not run on this kernel
    (then there is nothing to compare). ``excused``: tests ("fixture.test")
    the column's driver cannot pass, with why (:func:`cannot_pass`); those
    SKIPped there are named, not counted behind.
    """
    return columns.parity(table, "hmm-tests", column, not_run, excused, key=test_key,
                          reference=REFERENCE.label)


format_table = columns.format_table


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
        unmet_by: dict[str, str] = {}  # column -> why it could not run here
        for driver in DRIVERS:
            why = driver_unmet(driver, kernel)
            if why:
                unmet_by[driver.label] = why
                # the names another column printed, else all the source has
                names = [e.path.split(".", 2)[2] for e in entries
                         if len(e.path.split(".", 2)) == 3]
                entries.extend(skip_column(
                    s, driver, names or (kernel.hmm_test_names() if kernel else []), why))
                continue
            entries.extend(self._one(s, driver, timeout, cannot_pass(kernel)))
        self.restore(s)
        table = side_by_side(entries)
        s.results.tables["hmm-tests"] = table
        for d in DRIVERS:
            if d is not REFERENCE:
                why = unmet_by.get(REFERENCE.label) or unmet_by.get(d.label, "")
                s.results.add(parity(table, d.label, why, cannot_pass(kernel)))
        text = format_table(table)
        (s.run_dir / "hmm-tests-table.txt").write_text(text + "\n")
        log.info("hmm-tests:\n%s", text)

    @staticmethod
    def restore(s: Session) -> None:
        """Leave the guest as the next scenario expects it: hmm_gpu.ko loaded, with
        its defaults (prefault on)."""
        unload_module(s, TEST_HMM.module)
        load_module(s, HMM_GPU_KO, HMM_GPU.module, ("/dev/hmm_gpu0",))
        knob = f"/sys/module/{HMM_GPU.module}/parameters/prefault"
        guest_run(s, f"[ ! -w {knob} ] || echo 1 > {knob}", 30)

    def _one(self, s: Session, d: Driver, timeout: float,
             cannot: Mapping[str, str]) -> list[TestResult]:
        # Every driver exposes /dev/hmm_dmirror*: only one may be loaded, and d's
        # own module is reloaded so that its parameters apply.
        for module in dict.fromkeys(x.module for x in DRIVERS):
            c = unload_module(s, module)
            if not c.ok:
                add_cmd_result(s, f"hmm-tests.{d.label}.load", c,
                               extra_problem=f"could not unload {module} first")
                return []
        c = load_module(s, d.ko, d.module, NODES, args=d.insmod_args)
        problem = self._param_problem(s, d) if c.ok else ""
        if not add_cmd_result(s, f"hmm-tests.{d.label}.load", c, extra_problem=problem):
            s.results.add_status(f"hmm-tests.{d.label}", Status.SKIP,
                                 f"not run: hmm-tests.{d.label}.load did not pass")
            unload_module(s, d.module)
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

    @staticmethod
    def _param_problem(s: Session, d: Driver) -> str:
        """What is wrong with ``d``'s module parameters as sysfs reads them back, or ""."""
        problems = []
        for p in d.params:
            knob = f"/sys/module/{d.module}/parameters/{p.name}"
            c = guest_run(s, f"cat {knob}", 30)
            got = c.out.strip() if c.ok else (c.error or c.err.strip() or f"rc {c.rc}")
            if got != p.sysfs:
                problems.append(f"{knob} reads {got!r} after insmod {p.name}={p.value}, "
                                f"expected {p.sysfs!r}")
        return "\n".join(problems)

    def finish(self, s: Session) -> None:
        return None


def make() -> HmmTests:
    return HmmTests()


"""odp-tests: rdma-core's own ODP tests (tests/test_odp.py and the other tests named
*odp*), unmodified, as Debian's python3-pyverbs ships them, one column per RDMA
device.

Column ``hmm-nic``: the emulated NIC (a ``{type: hmm-nic}`` device) through
hmm_nic.ko, which the stock rxe provider drives. It runs on every kernel
with user verbs and ODP (the device brings the faults; the kernel only
needs the ODP core), and its module is unloaded after the run, so a leak or
a hang in its teardown shows.

Column ``rxe``: the kernel's software RoCE over the guest's eth0 (``rdma link
add rxe0 type rxe netdev eth0``), which has on-demand paging from 6.15 on.
It is the baseline the emulated hmm-nic will be held to, side by side, as
hmm-tests holds hmm-gpu to test_hmm.ko (:mod:`harness.scenarios.columns`).

In each column: ``ibv_devinfo -v`` of the device (its port must be ACTIVE
and it must offer ODP), then ``run_tests.py --dev <dev> -v -k odp`` with the
scenario timeout, parsed into one entry per test
(:mod:`harness.checks.unittest_output`): ``odp-tests.<column>.<module>.<class>.<test>``,
PASS / FAIL (an ERROR in unittest's words is a FAIL) / SKIP with
rdma-core's reason. unittest -v prints no durations, so the entries have
none. ``odp-tests.<column>.run`` FAILs when the run itself went wrong: it
timed out, its counts do not add up, it ran no test, or every test
skipped (nothing was exercised). ``tables["odp-tests"]`` has every test
with its status per column (``odp-tests-table.txt``).

A kernel without rxe ODP (before 6.15, or built without rxe or ODP) gets one
SKIP entry, ``odp-tests.rxe``, with the reason; a run without a hmm-nic device
or a kernel without user verbs and ODP, ``odp-tests.hmm-nic``. Where both
columns ran, ``odp-tests.parity.hmm-nic`` FAILs naming every test that passes
on rxe but not on hmm-nic, except those in ``EXCUSED`` (what hmm-nic does not
claim), which it names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from harness.build.guest_debs import RDMA_TESTS_DIR
from harness.checks import unittest_output
from harness.checks.unittest_output import UnitTestResult, UnitTestRun, Verdict
from harness.core.config import RunConfig
from harness.core.results import Status, TestResult
from harness.scenarios import Session, columns
from harness.scenarios.common import Cmd, guest_run
from harness.scenarios.kernel import GuestKernel, guest_kernel, unmet

log = logging.getLogger(__name__)

NAME = "odp-tests"
RUN_TESTS = f"{RDMA_TESTS_DIR}/run_tests.py"
PATTERN = "odp"
NETDEV = "eth0"  # the guest's NIC (guest-images/rootfs/overlay/etc/init.d/rcS)
HUGEPAGES = 8  # the *_huge_* tests map 2 MiB pages for both of their QPs' buffers
SETUP_TIMEOUT = 60.0
HMM_NIC_KO = "/opt/hmmlab/hmm_nic.ko"


@dataclass(frozen=True)
class Column:
    label: str  # the table's column, in entry paths
    device: str  # the RDMA device run_tests.py gets
    needs: tuple[str, ...]  # kernel features (harness.build.kernel.CONFIG_FEATURES)
    odp_since: tuple[int, int]  # the first kernel release where its ODP exists
    setup: str  # shell: create the device (idempotent)
    teardown: str
    device_type: str = ""  # a device of this type must be in the run's devices


HMM_NIC = Column(
    label="hmm-nic", device="hmmnic0", needs=("rdma_user", "rdma_odp"),
    odp_since=(0, 0),
    setup=("grep -q '^hmm_nic ' /proc/modules || insmod " + HMM_NIC_KO + "; "
           "i=0; while [ ! -e /sys/class/infiniband/hmmnic0 ] && [ $i -lt 50 ]; "
           "do i=$((i+1)); sleep 0.1; done"),
    teardown="! grep -q '^hmm_nic ' /proc/modules || rmmod hmm_nic",
    device_type="hmm-nic",
)


RXE = Column(
    label="rxe", device="rxe0", needs=("rdma_user", "rdma_odp", "rdma_rxe"),
    odp_since=(6, 15),
    setup=f"[ -e /sys/class/infiniband/rxe0 ] || rdma link add rxe0 type rxe netdev {NETDEV}",
    teardown="[ ! -e /sys/class/infiniband/rxe0 ] || rdma link delete rxe0",
)
COLUMNS: tuple[Column, ...] = (HMM_NIC, RXE)
REFERENCE = RXE
# What hmm-nic does not claim (its odp_caps say so, and the tests SKIP with
# that reason): the parity check names these instead of counting them behind.
EXCUSED: dict[str, dict[str, str]] = {
    "hmm-nic": {
        "test_odp.OdpTestCase.test_odp_ud_traffic":
            "hmm-nic has RC queue pairs only (no UD)",
    },
}


def release_of(text: str) -> tuple[int, int] | None:
    """"7.2.13" / "6.1.0-57-amd64" / "6.12.117-1" -> (major, minor), or None."""
    m = re.match(r"^\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def column_unmet(col: Column, kernel: GuestKernel | None,
                 cfg: RunConfig | None = None) -> str | None:
    """Why ``col`` cannot run on this kernel and devices, or None (also when not known)."""
    if cfg is not None and col.device_type and not any(
            d.type == col.device_type for d in cfg.devices):
        return f"no {col.device_type} device in this run (devices: [{{type: {col.device_type}}}])"
    if kernel is None:
        return None
    release = release_of(kernel.release) or release_of(kernel.name)
    if release is not None and release < col.odp_since:
        since = ".".join(map(str, col.odp_since))
        return f"{col.label} has ODP from {since} ({kernel.name or kernel.release})"
    return unmet(col.needs, kernel.features, kernel.name)


def entry_key(unittest_id: str) -> str:
    """"tests.test_odp.OdpTestCase.test_odp_rc_traffic" -> "test_odp.OdpTestCase.test_..."."""
    return unittest_id.removeprefix("tests.")


def status_of(r: UnitTestResult) -> tuple[Status, str]:
    if r.verdict in (Verdict.OK, Verdict.XFAIL):
        return Status.PASS, ""
    if r.verdict == Verdict.SKIP:
        return Status.SKIP, r.reason
    if r.verdict == Verdict.XPASS:
        return Status.FAIL, "unexpected success"
    return Status.FAIL, r.details or str(r.verdict)


def entries_of(col: Column, run: UnitTestRun, log_name: str) -> list[TestResult]:
    out = []
    for r in run.results:
        status, why = status_of(r)
        out.append(TestResult(f"{NAME}.{col.label}.{entry_key(r.id)}", status, None,
                              why, [log_name], {"unittest": str(r.verdict)}))
    return out


def run_problems(run: UnitTestRun, rc: int | None) -> list[str]:
    """What makes a column's run itself a failure, beyond its tests' verdicts."""
    problems = list(run.problems)
    if not run.results:
        problems.append("no test ran")
    elif all(r.verdict == Verdict.SKIP for r in run.results):
        problems.append(f"every test skipped ({len(run.results)}): nothing was exercised")
    failed = any(status_of(r)[0] == Status.FAIL for r in run.results)
    if rc is not None and rc != 0 and not failed and not problems:
        problems.append(f"run_tests.py exited with status {rc} although no test failed")
    if rc == 0 and failed:
        problems.append("run_tests.py exited with status 0 although tests failed")
    return problems


def device_problems(devinfo: str, device: str) -> list[str]:
    """What in ``ibv_devinfo -v -d <device>`` says the tests cannot run as meant."""
    problems = []
    if f"hca_id:\t{device}" not in devinfo and not re.search(
            rf"^hca_id:\s*{re.escape(device)}\s*$", devinfo, re.M):
        problems.append(f"ibv_devinfo does not list {device}")
    if not re.search(r"^\s*state:\s*PORT_ACTIVE", devinfo, re.M):
        problems.append(f"{device}'s port is not PORT_ACTIVE")
    if not re.search(r"general_odp_caps:\s*\n\s*ODP_SUPPORT\b", devinfo):
        problems.append(f"{device} offers no ODP (general_odp_caps lacks ODP_SUPPORT)")
    return problems


class OdpTests:
    name = NAME

    def run(self, s: Session) -> None:
        kernel = guest_kernel(s)
        entries: list[TestResult] = []
        ran: list[str] = []
        for col in COLUMNS:
            why = column_unmet(col, kernel, s.cfg)
            if why:
                s.results.add_status(f"{NAME}.{col.label}", Status.SKIP, why)
                continue
            ran.append(col.label)
            entries.extend(self._column(s, col))
        table = columns.side_by_side(entries, [c.label for c in COLUMNS], REFERENCE.label,
                                     scenario=NAME)
        s.results.tables[NAME] = table
        for label in columns.empty_columns(table, ran):
            if not s.results.has(f"{NAME}.{label}.run"):
                s.results.add_status(f"{NAME}.{label}.run", Status.FAIL, "no test ran")
        for col in COLUMNS:
            if col is REFERENCE:
                continue
            missing = [c.label for c in (REFERENCE, col) if c.label not in ran]
            not_run = f"{' and '.join(missing)} did not run here" if missing else ""
            s.results.add(columns.parity(table, NAME, col.label, not_run=not_run,
                                         excused=EXCUSED.get(col.label)))
        text = columns.format_table(table)
        (s.run_dir / f"{NAME}-table.txt").write_text(text + "\n")
        log.info("%s:\n%s", NAME, text)

    def _column(self, s: Session, col: Column) -> list[TestResult]:
        setup = guest_run(s, f"set -e; {col.setup}; "
                             f"n=/proc/sys/vm/nr_hugepages; [ $(cat $n) -ge {HUGEPAGES} ] "
                             f"|| echo {HUGEPAGES} > $n; ibv_devinfo -v -d {col.device}",
                          SETUP_TIMEOUT)
        devinfo_file = f"{NAME}-{col.label}-devinfo.txt"
        (s.run_dir / devinfo_file).write_text(setup.text(limit=1_000_000) + "\n")
        problems = device_problems(setup.out, col.device) if setup.ok else []
        if not self._add(s, f"{NAME}.{col.label}.setup", setup, problems, [devinfo_file]):
            s.results.add_status(f"{NAME}.{col.label}.run", Status.FAIL,
                                 f"not run: {NAME}.{col.label}.setup did not pass")
            guest_run(s, col.teardown, SETUP_TIMEOUT)
            return []
        cmd = f"cd /tmp && python3 {RUN_TESTS} --dev {col.device} -v -k {PATTERN} 2>&1"
        c = guest_run(s, cmd, s.cfg.timeouts.scenario)
        log_name = f"{NAME}-{col.label}.log"
        (s.run_dir / log_name).write_text(c.text(limit=10_000_000) + "\n")
        run = unittest_output.parse(c.out + c.err)
        entries = entries_of(col, run, log_name)
        for e in entries:
            s.results.add(e)
        self._add_run(s, col, c, run, log_name)
        teardown = guest_run(s, col.teardown, SETUP_TIMEOUT)
        if not teardown.ok:
            self._add(s, f"{NAME}.{col.label}.teardown", teardown, [], [])
        return entries

    @staticmethod
    def _add(s: Session, path: str, c: Cmd, problems: Sequence[str], files: list[str]) -> bool:
        if c.error:
            status = c.status_if_error
        elif c.rc != 0 or problems:
            status = Status.FAIL
        else:
            status = Status.PASS
        s.results.add(TestResult(path, status, c.seconds,
                                 "\n".join([*problems, c.text()]), files))
        return status == Status.PASS

    @staticmethod
    def _add_run(s: Session, col: Column, c: Cmd, run: UnitTestRun, log_name: str) -> None:
        path = f"{NAME}.{col.label}.run"
        if c.error:
            s.results.add(TestResult(path, c.status_if_error, c.seconds,
                                     "\n".join([*run.problems, c.text()]), [log_name]))
            return
        problems = run_problems(run, c.rc)
        summary = f"{run.summary} ({len(run.results)} tests)" if run.summary else ""
        if problems:
            s.results.add(TestResult(path, Status.FAIL, c.seconds,
                                     "\n".join([*problems, c.text()]), [log_name]))
        else:
            s.results.add(TestResult(path, Status.PASS, c.seconds, summary, [log_name]))

    def finish(self, s: Session) -> None:
        return None


def make() -> OdpTests:
    return OdpTests()

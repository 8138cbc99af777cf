"""End to end: a guest command that blocks in the kernel leaves the blocked task's stack.

LKDTM's HUNG_TASK puts the writing shell in an uninterruptible sleep forever
(state D): the SSH command times out, long before the hung-task detector
would report it. Before the harness closes the command it types sysrq-w on
the guest's keyboard over QMP; the kernel prints the blocked tasks with
their stacks, which go into the timed-out entry's log excerpt,
blocked-tasks.txt and console.log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.core.results import Status
from harness.run import runner
from harness.scenarios import Session
from harness.scenarios.common import add_cmd_result, guest_run

pytestmark = pytest.mark.e2e

LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"
# well under the hung-task detector's 30 s: only the harness's dump can show the stack
COMMAND_TIMEOUT = 15.0


class BlockInKernel:
    """A test-only scenario: one guest command that never returns from the kernel."""

    name = "block"

    def run(self, s: Session) -> None:
        c = guest_run(s, f"test -w {LKDTM} && echo HUNG_TASK > {LKDTM}", COMMAND_TIMEOUT)
        add_cmd_result(s, "block.hung-task", c)

    def finish(self, s: Session) -> None:
        pass


def test_a_command_stuck_in_the_kernel_leaves_its_stack(artifacts: Artifacts,
                                                        tmp_path: Path) -> None:
    cfg = config.load_text("devices: []\n", "test.yaml")
    results = tmp_path / "res"
    res = runner.run(cfg, results, artifacts=artifacts, scenarios=[BlockInKernel()])
    print(res.table())
    entry = next(t for t in res.tests if t.path == "block.hung-task")
    print(entry.log_excerpt)
    assert entry.status in (Status.FAIL, Status.ERROR)  # a timeout, whatever the status rule
    assert "did not finish within 15s" in entry.log_excerpt
    # sysrq-w: the blocked shell, in D state, inside LKDTM's HUNG_TASK
    assert "sysrq: Show Blocked State" in entry.log_excerpt
    assert "state:D" in entry.log_excerpt
    assert "lkdtm_HUNG_TASK" in entry.log_excerpt
    assert "blocked-tasks.txt" in entry.output_files
    dump = (results / "blocked-tasks.txt").read_text()
    assert "state:D" in dump and "lkdtm_HUNG_TASK" in dump
    console = (results / "console.log").read_text(errors="replace")
    assert "sysrq: Show Blocked State" in console
    # the guest kept answering: the command failed, the guest did not hang
    assert "guest.hang" not in {t.path for t in res.tests}
    # the dump itself is no kernel report: the only one may be the hung task's own
    splat = next(t for t in res.tests if t.path == "console.splat")
    titles = [sp["title"] for sp in splat.extra.get("splats", [])]
    assert all(title == "INFO: task hung in lkdtm_HUNG_TASK" for title in titles), titles

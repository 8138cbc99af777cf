"""Console splat detection on kernel output.

Real consoles of hmmlab guests (6.12 and 7.2, made to misbehave with LKDTM):
lkdtm_*.console; of the 6.12 debug flavor (KASAN, lockdep, DEBUG_ATOMIC_SLEEP):
debug_*.console, from LKDTM (READ_AFTER_FREE, SLAB_LINEAR_OVERFLOW,
SPINLOCKUP) and from debug_splat_demo.c, a throwaway module built against
that kernel (insmod splat_demo.ko mode=circular|inconsistent|sleep). The
kernel docs' own KASAN example is kasan_doc_example.txt. splat_*.txt are
hand-made reports in the kernel's formats around hmm_gpu functions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks.splat import SplatScanner, scan_text, strip_prefix, title_of

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("sample", "title", "first_line", "last_line"),
    [
        ("splat_warning.txt", "WARNING in hmm_gpu_queue_submit",
         "WARNING: CPU: 1 PID: 215", "---[ end trace"),
        ("splat_kasan.txt", "BUG: KASAN: slab-use-after-free in hmm_gpu_complete",
         "=====", "====="),
        ("splat_null.txt", "BUG: kernel NULL pointer dereference in hmm_gpu_probe",
         "BUG: kernel NULL pointer dereference", "---[ end trace"),
        ("splat_hung.txt", "INFO: task hung in hmm_gpu_wait_cmds",
         "INFO: task hmm-gpu-smoke:215", "</TASK>"),
        ("splat_rcu.txt", "INFO: rcu_preempt detected stalls in hmm_gpu_poll_cpl",
         "rcu: INFO: rcu_preempt detected stalls", "</TASK>"),
        ("splat_softlockup.txt", "BUG: soft lockup in hmm_gpu_poll_cpl",
         "watchdog: BUG: soft lockup", "</TASK>"),
        ("splat_panic.txt",
         "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
         "Kernel panic - not syncing", "---[ end Kernel panic"),
        ("splat_sleeping.txt",
         "BUG: sleeping function called from invalid context in hmm_gpu_queue_submit",
         "BUG: sleeping function called", "</TASK>"),
    ],
)
def test_real_splats(sample: str, title: str, first_line: str, last_line: str) -> None:
    splats = scan_text((DATA / sample).read_text())
    assert [s.title for s in splats] == [title]
    lines = splats[0].report.splitlines()
    assert first_line in lines[0]
    assert last_line in lines[-1]
    # The report is the trace, not the normal lines around it.
    assert "hmm_gpu 0000:00:03.0:" not in splats[0].report


def test_null_deref_report_keeps_oops_and_registers() -> None:
    report = scan_text((DATA / "splat_null.txt").read_text())[0].report
    assert "Oops: Oops: 0000 [#1]" in report
    assert "Modules linked in: hmm_gpu(O+)" in report
    assert "CR2: 0000000000000010" in report


def test_kasan_report_includes_alloc_and_free_stacks() -> None:
    report = scan_text((DATA / "splat_kasan.txt").read_text())[0].report
    assert "Allocated by task 215:" in report
    assert "Freed by task 215:" in report
    assert "Disabling lock debugging" not in report


def test_benign_console_has_no_splat() -> None:
    assert scan_text((DATA / "benign.txt").read_text()) == []


@pytest.mark.parametrize(
    "line",
    [
        "[    0.034567] INFO: lockdep is turned off.",
        "[    0.012345] Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on",
        "[    0.000000] Kernel command line: console=ttyS0 panic=-1",
        "[    1.345678] hmm_gpu: Oopsie-free module loaded",
        "hmmlab: ready",
        "[    1.0] ACPI BIOS Error (bug): Could not resolve symbol [\\_SB.PCI0], AE_NOT_FOUND",
    ],
)
def test_benign_lines(line: str) -> None:
    assert scan_text(line) == []


def test_streaming_reports_complete_at_end_marker() -> None:
    scanner = SplatScanner()
    done = [s for line in (DATA / "splat_warning.txt").read_text().splitlines()
            if (s := scanner.feed(line + "\r\n")) is not None]
    assert [s.title for s in done] == ["WARNING in hmm_gpu_queue_submit"]
    assert not scanner.open
    assert scanner.flush() is None


def test_open_report_is_flushed_at_end_of_console() -> None:
    text = "\n".join((DATA / "splat_hung.txt").read_text().splitlines()[:8])  # cut mid-trace
    scanner = SplatScanner()
    for line in text.splitlines():
        assert scanner.feed(line) is None
    splat = scanner.flush()
    assert splat is not None and splat.title == "INFO: task hmm-gpu-smoke hung"  # no trace yet


def test_several_splats_in_one_console() -> None:
    text = "\n".join((DATA / n).read_text() for n in
                     ("benign.txt", "splat_warning.txt", "splat_null.txt", "splat_panic.txt"))
    titles = [s.title for s in scan_text(text)]
    assert titles == [
        "WARNING in hmm_gpu_queue_submit",
        "BUG: kernel NULL pointer dereference in hmm_gpu_probe",
        "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
    ]


def test_report_is_capped() -> None:
    lines = ["[    1.000000] BUG: unable to handle page fault for address: ffffffffc0000000"]
    lines += [f"[    1.000001]  frame_{i}+0x10/0x20" for i in range(1000)]
    scanner = SplatScanner(max_lines=50)
    for line in lines:
        scanner.feed(line)
    scanner.flush()
    assert len(scanner.splats[0].report.splitlines()) == 50
    assert scanner.splats[0].title == "BUG: unable to handle page fault"


def test_line_numbers_point_at_the_report() -> None:
    text = "a\nb\n[    5.0] WARNING: CPU: 0 PID: 1 at mm/hmm.c:10 hmm_range_fault+0x1/0x2\n"
    assert scan_text(text)[0].line == 3


@pytest.mark.parametrize(
    ("first", "title"),
    [
        ("general protection fault, probably for non-canonical address 0xdffffc0000000002: "
         "0000 [#1] PREEMPT SMP KASAN NOPTI", "general protection fault"),
        ("Oops: general protection fault, probably for non-canonical address "
         "0xdffffc0000000002: 0000 [#1] PREEMPT SMP KASAN NOPTI", "general protection fault"),
        ("kernel BUG at mm/migrate_device.c:123!", "kernel BUG at mm/migrate_device.c:123!"),
        ("WARNING: possible circular locking dependency detected",
         "WARNING: possible circular locking dependency detected"),
        ("UBSAN: shift-out-of-bounds in drivers/misc/hmm_gpu.c:77:12",
         "UBSAN: shift-out-of-bounds in drivers/misc/hmm_gpu.c:77:12"),
        ("PANIC: double fault, error_code: 0x0", "PANIC: double fault, error_code: 0x0"),
        ("rcu: INFO: rcu_sched self-detected stall on CPU",
         "INFO: rcu_sched self-detected stall on CPU"),
    ],
)
def test_titles(first: str, title: str) -> None:
    assert title_of([first]) == title


def test_title_uses_rip_function() -> None:
    lines = ["kernel BUG at mm/migrate_device.c:123!",
             "Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
             "RIP: 0010:migrate_vma_setup+0x2ab/0x2c0"]
    assert title_of(lines) == "kernel BUG in migrate_vma_setup"


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ("[    1.234567] BUG: x", "BUG: x"),
        ("[ 1234.000001] [    T1] WARNING: y", "WARNING: y"),
        ("[    0.100000] [    C0] INFO: z\r", "INFO: z"),
        ("<4>[    1.0] Oops: 0002", "Oops: 0002"),
        ("no prefix", "no prefix"),
    ],
)
def test_strip_prefix(line: str, msg: str) -> None:
    assert strip_prefix(line) == msg


@pytest.mark.parametrize(("sample", "title"), [
    ("lkdtm_warning.console", "WARNING in lkdtm_WARNING"),
    ("lkdtm_exception.console", "BUG: kernel NULL pointer dereference in lkdtm_EXCEPTION"),
    ("lkdtm_bug.console", "kernel BUG in lkdtm_BUG"),
    ("lkdtm_panic.console", "Kernel panic - not syncing: dumptest"),
])
def test_whole_consoles_from_our_kernel(sample: str, title: str) -> None:
    """Complete serial consoles of hmmlab guests (6.12) made to crash with LKDTM."""
    splats = scan_text((DATA / sample).read_text(errors="replace"))
    assert [s.title for s in splats] == [title]
    assert "Call Trace:" in splats[0].report
    assert "hmmlab: ready" not in splats[0].report


@pytest.mark.parametrize(("sample", "titles"), [
    # 6.12, 2 CPUs, LKDTM SOFTLOCKUP: RCU notices first, then the lockup
    # detector, again every ~28 s
    ("lkdtm_softlockup.console", ["INFO: rcu_sched self-detected stall on CPU in lkdtm_SOFTLOCKUP",
                                  "BUG: soft lockup in lkdtm_SOFTLOCKUP",
                                  "BUG: soft lockup in lkdtm_SOFTLOCKUP"]),
    # 6.12, hung_task_timeout_secs=5, LKDTM HUNG_TASK: the same title each time
    ("lkdtm_hung_task.console", ["INFO: task hung in lkdtm_HUNG_TASK"] * 6),
    # 7.2 WARNING line: "WARNING: drivers/misc/lkdtm/bugs.c:164 at lkdtm_WARNING+0xa/0x10, ..."
    ("lkdtm_warning_7.2.console", ["WARNING in lkdtm_WARNING"]),
    ("lkdtm_exception_7.2.console", ["BUG: kernel NULL pointer dereference in lkdtm_EXCEPTION"]),
    ("lkdtm_bug_7.2.console", ["kernel BUG in lkdtm_BUG"]),
    ("lkdtm_panic_pvpanic.console", ["Kernel panic - not syncing: dumptest"]),
    # a frozen 1-CPU guest says nothing: the watchdog's job, not the scanner's
    ("lkdtm_hardlockup_1cpu.console", []),
    # a DMAR fault is iommu.dmar-faults' business, not a kernel splat
    ("iommu_dmar_fault.console", []),
])
def test_real_consoles(sample: str, titles: list[str]) -> None:
    splats = scan_text((DATA / sample).read_text(errors="replace"))
    assert [s.title for s in splats] == titles
    for s in splats:
        lines = s.report.splitlines()
        assert lines[-1].endswith(("</TASK>", "---[ end trace 0000000000000000 ]---",
                                   "Kernel Offset: disabled")), lines[-1]
        assert "hmmlab: ready" not in s.report


def test_hung_task_report_is_one_per_detection() -> None:
    splats = scan_text((DATA / "lkdtm_hung_task.console").read_text())
    first = splats[0].report.splitlines()
    assert "INFO: task sh:65 blocked for more than 5 seconds." in first[0]
    assert "lkdtm_HUNG_TASK+0x15/0x20" in splats[0].report
    assert "blocked for more than 10 seconds" in splats[1].report.splitlines()[0]


def test_kasan_report_from_the_kernel_docs() -> None:
    (splat,) = scan_text((DATA / "kasan_doc_example.txt").read_text())
    assert splat.title == "BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right"
    lines = splat.report.splitlines()
    assert lines[0].startswith("=====") and lines[-1].startswith("=====")
    assert "Freed by task 815:" in splat.report
    assert "Memory state around the buggy address:" in splat.report


@pytest.mark.parametrize(("lines", "title"), [
    # 7.2 kernel/panic.c __warn(), with and without a file
    (["WARNING: mm/hmm.c:601 at hmm_range_fault+0x1a/0x300, CPU#0: hmm-tests/99"],
     "WARNING in hmm_range_fault"),
    (["WARNING: at hmm_range_fault+0x1a/0x300, CPU#0: hmm-tests/99"], "WARNING in hmm_range_fault"),
    # lockdep (kernel/locking/lockdep.c): named after the first lock's taker
    (["WARNING: possible circular locking dependency detected",
      "6.12.107 #1 Not tainted",
      "------------------------------------------------------",
      "hmm-tests/99 is trying to acquire lock:",
      "ffff888003a1c0a8 (&svm->lock){+.+.}-{3:3}, at: hmm_gpu_svm_fault+0x5c/0x210 [hmm_gpu]"],
     "WARNING: possible circular locking dependency detected in hmm_gpu_svm_fault"),
    (["WARNING: inconsistent lock state",
      "--------------------------------",
      "inconsistent {HARDIRQ-ON-W} -> {IN-HARDIRQ-W} usage.",
      "swapper/0/0 [HC1[1]:SC0[0]:HE0:SE0] takes:",
      "ffff888003a1c0a8 (&gdev->lock){?.+.}-{2:2}, at: hmm_gpu_cpl_irq+0x1c/0x90 [hmm_gpu]"],
     "WARNING: inconsistent lock state in hmm_gpu_cpl_irq"),
    (["WARNING: bad unlock balance detected!"], "WARNING: bad unlock balance detected!"),
    # kernel/watchdog.c: 6.12 and 7.2
    (["Watchdog detected hard LOCKUP on cpu 1", "RIP: 0010:lkdtm_HARDLOCKUP+0x4/0x10"],
     "Watchdog detected hard LOCKUP in lkdtm_HARDLOCKUP"),
    (["CPU0: Watchdog detected hard LOCKUP on cpu 1"], "Watchdog detected hard LOCKUP"),
    (["BUG: Bad page state in process hmm-tests  pfn:1a2b3"], "BUG: Bad page state"),
    (["BUG: scheduling while atomic: hmm-tests/99/0x00000002"], "BUG: scheduling while atomic"),
])
def test_more_titles(lines: list[str], title: str) -> None:
    assert title_of(lines) == title


def test_lockdep_report_ends_with_its_trace() -> None:
    """Lockdep opens its report with a rule line like KASAN, but does not
    close it with one: the report must end at its stack trace."""
    report = [
        "[   10.000000] ======================================================",
        "[   10.000001] WARNING: possible circular locking dependency detected",
        "[   10.000002] 6.12.107 #1 Not tainted",
        "[   10.000003] ------------------------------------------------------",
        "[   10.000004] hmm-tests/99 is trying to acquire lock:",
        "[   10.000005] ffff888003a1c0a8 (&svm->lock){+.+.}-{3:3}, at: "
        "hmm_gpu_svm_fault+0x5c/0x210 [hmm_gpu]",
        "[   10.000006] ",
        "[   10.000007] stack backtrace:",
        "[   10.000008] Call Trace:",
        "[   10.000009]  <TASK>",
        "[   10.000010]  dump_stack_lvl+0x5d/0x80",
        "[   10.000011]  </TASK>",
    ]
    after = ["[   10.100000] hmm_gpu 0000:00:02.0: something ordinary"] * 400
    splats = scan_text("\n".join(report + after))
    assert [s.title for s in splats] == [
        "WARNING: possible circular locking dependency detected in hmm_gpu_svm_fault"]
    assert splats[0].report.splitlines() == report


def test_a_report_whose_trace_ended_counts_before_the_next_line() -> None:
    scanner = SplatScanner()
    for line in (DATA / "lkdtm_hung_task.console").read_text().splitlines():
        scanner.feed(line)
    # the last report ended with "</TASK>" and nothing came after it yet
    assert len(scanner.splats) == 5
    assert [s.title for s in scanner.current()] == ["INFO: task hung in lkdtm_HUNG_TASK"] * 6
    scanner.feed("[   40.0] next line")
    assert len(scanner.splats) == 6 and len(scanner.current()) == 6


@pytest.mark.parametrize(("sample", "titles", "first", "last"), [
    ("debug_kasan_uaf.console",
     ["BUG: KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE"], "=====", "====="),
    ("debug_kasan_oob.console",
     ["BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW"], "=====", "====="),
    # mutexes a then b, then b then a
    ("debug_lockdep_circular.console",
     ["WARNING: possible circular locking dependency detected in demo_take_ba"],
     "=====", "</TASK>"),
    # a spinlock taken in a timer (softirq) and in process context with softirqs on
    ("debug_lockdep_inconsistent.console",
     ["WARNING: inconsistent lock state in demo_process_lock"], "=====", "</TASK>"),
    # LKDTM SPINLOCKUP returns to user space holding a spinlock: lockdep's
    # report has no trace and ends with the held-lock list; the scheduler's
    # complaint about the leaked preempt count follows as its own report
    ("debug_lockdep_user_return.console",
     ["WARNING: lock held when returning to user space in lkdtm_do_action",
      "BUG: scheduling while atomic in irqentry_exit_to_user_mode"],
     "=====", "(lock_me_up){+.+.}-{2:2}, at: lkdtm_do_action+0x2f/0x50"),
    # msleep() under a spinlock; the initcall then returns with preemption off
    ("debug_sleep_atomic.console",
     ["BUG: scheduling while atomic in demo_sleep_locked", "WARNING in do_one_initcall"],
     "BUG: scheduling while atomic: insmod/66/0x00000002", "</TASK>"),
])
def test_debug_kernel_reports(sample: str, titles: list[str], first: str, last: str) -> None:
    splats = scan_text((DATA / sample).read_text(errors="replace"))
    assert [s.title for s in splats] == titles
    lines = splats[0].report.splitlines()
    assert first in lines[0] and lines[-1].endswith(last), (lines[0], lines[-1])
    assert "hmmlab: ready" not in splats[0].report


def test_lockdep_report_keeps_both_chains_and_the_scenario() -> None:
    (splat,) = scan_text((DATA / "debug_lockdep_circular.console").read_text())
    assert "the existing dependency chain (in reverse order) is:" in splat.report
    assert "Possible unsafe locking scenario:" in splat.report
    assert "*** DEADLOCK ***" in splat.report
    assert "demo_take_ab+0x1c/0x40 [splat_demo]" in splat.report


def test_user_return_report_does_not_swallow_what_follows() -> None:
    splat = scan_text((DATA / "debug_lockdep_user_return.console").read_text())[0]
    assert "segfault" not in splat.report
    assert len(splat.report.splitlines()) == 7


# ---- user space on the console ------------------------------------------------------------

def test_user_space_lines_on_a_real_console_are_not_splats() -> None:
    """A 6.12 guest's console (tests/e2e/test_splats.py): a program wrote
    "WARNING: ...", "BUG: ..." and "Oops: ..." to /dev/console, then LKDTM made the
    kernel WARN. Only the kernel's report counts, from its own first line."""
    text = (DATA / "user_space_warning.console").read_text()
    lines = text.splitlines()
    assert "BUG: neither does this one" in lines  # user space's, no printk prefix
    (splat,) = scan_text(text)
    assert splat.title == "WARNING in lkdtm_WARNING"
    assert "WARNING: CPU: 0 PID: 78 at drivers/misc/lkdtm/bugs.c:112" in lines[splat.line - 1]
    assert "user space" not in splat.report and "neither" not in splat.report


def test_user_space_lines_alone_are_not_splats() -> None:
    lines = (DATA / "user_space_warning.console").read_text().splitlines()
    user = lines[:lines.index("hmmlab-test: user space done") + 1]
    scanner = SplatScanner()
    assert [scanner.feed(line) for line in user] == [None] * len(user)
    assert scanner.current() == []
    assert scanner.flush() is None and scanner.splats == []


def test_a_kernel_report_right_after_user_space_text_is_found() -> None:
    """A user-space "BUG:" line is still open when the kernel's report begins: the
    kernel's starts where its prefixed first line is, even a secondary one (Oops)."""
    null = (DATA / "splat_null.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(null) if "BUG: kernel NULL pointer" in line)
    text = "\n".join(["BUG: from user space", "more user space", *null[start:]])
    (splat,) = scan_text(text)
    assert splat.title == "BUG: kernel NULL pointer dereference in hmm_gpu_probe"
    assert splat.line == 3
    oops = next(ln for ln in null if "Oops:" in ln)
    (splat,) = scan_text("\n".join(["BUG: from user space", oops,
                                    "[    1.0] RIP: 0010:f+0x1/0x2"]))
    assert splat.title == "Oops in f" and splat.line == 2


def test_a_console_without_printk_times_still_has_splats() -> None:
    """Without timestamps a report counts once its "CPU: N PID: N" line comes: the
    real LKDTM console with every printk prefix taken off."""
    text = "\n".join(strip_prefix(line)
                     for line in (DATA / "lkdtm_warning.console").read_text().splitlines())
    assert "[" not in text.splitlines()[0]
    assert [s.title for s in scan_text(text)] == ["WARNING in lkdtm_WARNING"]
    text7 = "\n".join(strip_prefix(line) for line in
                      (DATA / "lkdtm_exception_7.2.console").read_text().splitlines())
    assert [s.title for s in scan_text(text7)] == [
        "BUG: kernel NULL pointer dereference in lkdtm_EXCEPTION"]

"""Console splat detection on real-looking kernel output."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.splat import SplatScanner, scan_text, strip_prefix, title_of

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
        ("splat_hung.txt", "INFO: task hmm-gpu-smoke blocked for more than 122 seconds",
         "INFO: task hmm-gpu-smoke:215", "</TASK>"),
        ("splat_rcu.txt", "INFO: rcu_preempt detected stalls",
         "rcu: INFO: rcu_preempt detected stalls", "</TASK>"),
        ("splat_softlockup.txt", "BUG: soft lockup in hmm_gpu_poll_cpl",
         "watchdog: BUG: soft lockup", "</TASK>"),
        ("splat_panic.txt",
         "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
         "Kernel panic - not syncing", "---[ end Kernel panic"),
        ("splat_sleeping.txt", "BUG: sleeping function called from invalid context",
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
    assert splat is not None and splat.title.startswith("INFO: task hmm-gpu-smoke blocked")


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

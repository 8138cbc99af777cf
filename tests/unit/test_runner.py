"""The runner's and the smoke scenario's decisions, on data from real guests.

Everything here is a pure function of what a guest printed or QEMU wrote;
the data are real: the workload's output and the device's DMA trace of
``hmm-gpu-smoke -s 4K`` in a 6.12 guest, its output under injected faults,
consoles of kernels made to crash with LKDTM (tests/unit/data). How the
runner gathers that data from a booted guest is tested end to end in
tests/e2e/test_runner_e2e.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from harness.checks import dmatrace
from harness.checks.splat import scan_text
from harness.core import config
from harness.core.results import Status, TestResult
from harness.guest.ssh import SSHAborted, SSHError, SSHTimeout
from harness.guest.vm import BootTimeout, GuestDied, GuestError, GuestHung
from harness.run import runner
from harness.scenarios import smoke
from harness.scenarios.common import cut_off_status

DATA = Path(__file__).parent / "data"
WORKLOAD = smoke.WORKLOAD + " -s 4K"

# stdout of `hmm-gpu-smoke -s 4K` (exit status 0) in a 6.12 guest
SMOKE_4K = "".join(line + "\n" for line in [
    ('{"test": "info", "uapi_version": 1, "hw_version": "0x10000", "caps": "0x1", '
     '"max_xfer": 67108864, "max_len": 67108864, "queue_entries": 256, "ctx": 1, '
     '"bdf": "0000:00:02.0", "ok": true}'),
    ('{"test": "copy", "len": 4096, "ncmds": 1, "bytes": 4096, "status": 0, "ctx": 1, '
     '"elapsed_ns": 6833899, "maps_out": 2, "maps": [{"role": "src", '
     '"uaddr": "0x7f42dd669000", "dma": "0x19cb000", "len": 4096}, {"role": "dst", '
     '"uaddr": "0x7f42dd66a000", "dma": "0x19bd000", "len": 4096}], "ok": true}'),
    ('{"test": "fill", "len": 4096, "ncmds": 1, "bytes": 4096, "status": 0, "ctx": 1, '
     '"elapsed_ns": 601020, "maps_out": 1, "maps": [{"role": "dst", '
     '"uaddr": "0x7f42dd66a000", "dma": "0x19cb000", "len": 4096}], "ok": true}'),
    ('{"test": "copy_unaligned", "len": 4085, "ncmds": 1, "bytes": 4085, "status": 0, '
     '"ctx": 1, "elapsed_ns": 473544, "maps_out": 2, "maps": [{"role": "src", '
     '"uaddr": "0x7f42dd669003", "dma": "0x19bd003", "len": 4085}, {"role": "dst", '
     '"uaddr": "0x7f42dd66a005", "dma": "0x19d1005", "len": 4085}], "ok": true}'),
    ('{"test": "fill_unaligned", "len": 4083, "ncmds": 1, "bytes": 4083, "status": 0, '
     '"ctx": 1, "elapsed_ns": 1356984, "maps_out": 1, "maps": [{"role": "dst", '
     '"uaddr": "0x7f42dd66a007", "dma": "0x19bd007", "len": 4083}], "ok": true}'),
    ('{"test": "einval_len0", "len": 0, "ncmds": 0, "bytes": 0, "status": 0, "ctx": 0, '
     '"elapsed_ns": 33921, "maps_out": 0, "maps": [], "expected_errno": 22, "ok": true}'),
    ('{"test": "einval_too_long", "len": 67108865, "ncmds": 0, "bytes": 0, "status": 0, '
     '"ctx": 0, "elapsed_ns": 7752, "maps_out": 0, "maps": [], "expected_errno": 22, '
     '"ok": true}'),
    ('{"test": "einval_overlap", "len": 4096, "ncmds": 0, "bytes": 0, "status": 0, "ctx": 0, '
     '"elapsed_ns": 7361, "maps_out": 0, "maps": [], "expected_errno": 22, "ok": true}'),
    ('{"test": "efault_bad_src", "len": 4096, "ncmds": 0, "bytes": 0, "status": 0, "ctx": 1, '
     '"elapsed_ns": 241884, "maps_out": 0, "maps": [], "expected_errno": 14, "ok": true}'),
    ('{"test": "efault_bad_dst", "len": 4096, "ncmds": 0, "bytes": 0, "status": 0, "ctx": 1, '
     '"elapsed_ns": 65648, "maps_out": 0, "maps": [], "expected_errno": 14, "ok": true}'),
    ('{"test": "efault_readonly_dst", "len": 4096, "ncmds": 0, "bytes": 0, "status": 0, '
     '"ctx": 1, "elapsed_ns": 77056, "maps_out": 0, "maps": [], "expected_errno": 14, '
     '"ok": true}'),
])

# dmatrace-0.bin QEMU wrote during that run (header + 14 records)
TRACE_4K = bytes.fromhex(
    "484d4d475452433101000000280000001000000000000000e8fae580000000000000d8000000000040000000"
    "0000000000000100000000000100000000000000db50e6800000000000b09c01000000000010000000000000"
    "000001000000000001000000010200007759e6800000000000d09b0100000000001000000000000000000100"
    "0000000001000000010201003c5ee680000000000000cf000000000020000000000000000000010000000000"
    "01000000000101003d750c81000000004000d800000000004000000000000000000002000000000001000000"
    "00000000bd990c810000000000b09c0100000000001000000000000000000200000000000100000001020100"
    "f19e0c81000000002000cf0000000000200000000000000000000200000000000100000000010100cd2a1e81"
    "000000008000d800000000004000000000000000000003000000000001000000000000008a4d1e8100000000"
    "03d09b0100000000f50f0000000000000000030000000000010000000102000012541e810000000005109d01"
    "00000000f50f00000000000000000300000000000100000001020100ec581e81000000004000cf0000000000"
    "20000000000000000000030000000000010000000001010053ea368100000000c000d8000000000040000000"
    "0000000000000400000000000100000000000000fe0837810000000007d09b0100000000f30f000000000000"
    "00000400000000000100000001020100320e3781000000006000cf0000000000200000000000000000000400"
    "000000000100000000010100"
)

# The copy under `echo hang > .../inject` (the driver's 10 s timeout), then
# the fill after the reset; and the first line of the workload on a wrong
# device (`-d /dev/null`).
COPY_TIMED_OUT = (
    '{"test": "copy", "len": 4096, "ncmds": 1, "bytes": 0, "status": 0, "ctx": 1, '
    '"elapsed_ns": 10311860819, "maps_out": 2, "maps": [{"role": "src", "uaddr": '
    '"0x7f229233b000", "dma": "0x19d8000", "len": 4096}, {"role": "dst", "uaddr": '
    '"0x7f229233c000", "dma": "0x19d0000", "len": 4096}], "ok": false, "errno": 110, '
    '"error": "HMM_GPU_IOC_XFER: Connection timed out (device status 0)"}'
)
FILL_AFTER_RESET = (
    '{"test": "fill", "len": 4096, "ncmds": 1, "bytes": 4096, "status": 0, "ctx": 1, '
    '"elapsed_ns": 430378, "maps_out": 1, "maps": [{"role": "dst", "uaddr": '
    '"0x7f229233c000", "dma": "0x19d8000", "len": 4096}], "ok": true}'
)
WRONG_DEVICE = (
    '{"test": "einval_len0", "len": 0, "ncmds": 0, "bytes": 0, "status": 0, "ctx": 0, '
    '"elapsed_ns": 5047, "maps_out": 0, "maps": [], "expected_errno": 22, "ok": false, '
    '"errno": 25, "error": "Inappropriate ioctl for device, expected Invalid argument"}'
)

# qom-get of gpu0 after that run, and after `echo fatal > .../inject`
COUNTERS_4K = {"cmds-completed": 4, "cmds-failed": 0, "dma-read-bytes": 8437,
               "dma-write-bytes": 16488, "dma-errors": 0, "irqs-raised": 4, "guest-errors": 0}
COUNTERS_AFTER_FATAL = dict(COUNTERS_4K, **{"irqs-raised": 5, "guest-errors": 1})


def statuses(entries: list[TestResult]) -> dict[str, str]:
    return {t.path: str(t.status) for t in entries}


def _trace_with(rec: int, addr: int) -> bytes:
    """TRACE_4K (a version 1 trace) with record ``rec``'s address changed."""
    data = bytearray(TRACE_4K)
    struct.pack_into("<Q", data, dmatrace.HDR_SIZE + rec * dmatrace.REC_V1_SIZE + 8, addr)
    return bytes(data)


def _splats(sample: str) -> list[Any]:
    return scan_text((DATA / sample).read_text(errors="replace"))


# ---- runner: boot, console, scenario order -------------------------------------------

def test_panic_while_booting_is_a_failure() -> None:
    died = GuestDied("QEMU exited (status 0) before the guest was ready", "console tail")
    entry = runner.boot_failure(died, _splats("lkdtm_panic.console"), 1.5)
    assert (entry.path, entry.status) == ("boot", Status.FAIL)
    assert "console tail" in entry.log_excerpt
    assert entry.output_files == ["console.log", "qemu.stderr"]


def test_qemu_dying_without_a_splat_is_an_infrastructure_error() -> None:
    entry = runner.boot_failure(GuestDied("QEMU exited with status 1"), [], 0.2)
    assert entry.status == Status.ERROR


@pytest.mark.parametrize("error", [GuestHung("no console output for 60s"),
                                   BootTimeout('no "hmmlab: ready" within 120s')])
def test_hung_or_slow_boot_is_an_infrastructure_error(error: Exception) -> None:
    # a console without a splat: a host too slow, or the harness
    entry = runner.boot_failure(error, [], 120)  # type: ignore[arg-type]
    assert entry.status == Status.ERROR
    assert "qemu.log" in entry.output_files and str(error) in entry.log_excerpt


@pytest.mark.parametrize("error", [GuestHung("no console output for 60s"),
                                   BootTimeout('no "hmmlab: ready" within 120s')])
def test_a_boot_that_never_ends_after_a_splat_is_a_failure(error: Exception) -> None:
    # README "Statuses": only a guest that never came up *without* a splat is ERROR
    entry = runner.boot_failure(error, _splats("lkdtm_warning.console"), 120)  # type: ignore[arg-type]
    assert entry.status == Status.FAIL


def test_clean_console_passes() -> None:
    entry = runner.splat_result(scan_text((DATA / "benign.txt").read_text()))
    assert (entry.path, entry.status) == ("console.splat", Status.PASS)


def test_splat_fails_the_console_check_titled_after_the_first() -> None:
    splats = _splats("lkdtm_warning.console") + _splats("lkdtm_bug.console")
    entry = runner.splat_result(splats)
    assert entry.status == Status.FAIL
    assert entry.extra["title"] == "WARNING in lkdtm_WARNING"
    assert [s["title"] for s in entry.extra["splats"]] == [
        "WARNING in lkdtm_WARNING", "kernel BUG in lkdtm_BUG"]
    assert "Call Trace:" in entry.log_excerpt


def _events(sample: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (DATA / sample).read_text().splitlines()]


def test_pvpanic_event_is_a_failure_titled_after_the_panic() -> None:
    # LKDTM PANIC in a 6.12 guest with pvpanic-pci: its console and QMP events
    events = _events("lkdtm_panic_pvpanic.qmp-events.jsonl")
    event = next(e for e in events if e["event"] == "GUEST_PANICKED")
    entry = runner.panic_result(event, _splats("lkdtm_panic_pvpanic.console"))
    assert (entry.path, entry.status) == ("guest.panic", Status.FAIL)
    assert entry.extra["title"] == "Kernel panic - not syncing: dumptest"
    assert entry.log_excerpt.startswith('QMP GUEST_PANICKED {"action": "run"}\n'
                                        "Kernel panic - not syncing: dumptest\n")
    assert "qmp-events.jsonl" in entry.output_files
    # the event alone (the console never got the report out) still fails
    bare = runner.panic_result(event, [])
    assert bare.status == Status.FAIL and bare.extra["title"] == "kernel panic"


HANG = "no console output and no SSH answer for 10s (guest hung)"


def test_silent_hang_is_a_failure() -> None:
    # LKDTM HARDLOCKUP on a 1-CPU guest: the kernel cannot say a thing
    console = (DATA / "lkdtm_hardlockup_1cpu.console").read_text()
    splats = scan_text(console)
    assert splats == []
    entry = runner.hang_result(HANG, splats, console[-300:],
                               ["console.log", "hang-registers.txt"])
    # the watchdog killed a guest that stopped responding: the guest's failure, like
    # the command the kill cut off (SSHAborted: FAIL), so the cell rolls up as FAIL
    assert (entry.path, entry.status) == ("guest.hang", Status.FAIL)
    assert entry.log_excerpt.startswith(HANG)
    assert "lkdtm: Performing direct entry HARDLOCKUP" in entry.log_excerpt
    assert entry.output_files == ["console.log", "hang-registers.txt"]


def test_hang_the_kernel_reported_is_a_failure() -> None:
    entry = runner.hang_result(HANG, _splats("splat_softlockup.txt"), "", ["console.log"])
    assert entry.status == Status.FAIL
    assert "the kernel reported first: BUG: soft lockup in" in entry.log_excerpt


def _entry(status: Status) -> TestResult:
    return TestResult("x", status)


@pytest.mark.parametrize(("entries", "probe"), [
    ([], False),
    ([_entry(Status.PASS), _entry(Status.SKIP)], False),
    ([_entry(Status.MISS)], False),  # nothing ran: nothing it could have broken
    ([_entry(Status.PASS), _entry(Status.FAIL)], True),
    ([_entry(Status.ERROR), _entry(Status.PASS)], True),
])
def test_the_guest_is_probed_after_a_failed_scenario(entries: list[TestResult],
                                                     probe: bool) -> None:
    assert runner.needs_probe(entries) is probe


@pytest.mark.parametrize(("gone", "unanswered", "why"), [
    # a failure alone stops nothing: the guest answered (or was not asked)
    (None, None, None),
    ("QEMU exited with status 0", None, "not run: guest unusable: QEMU exited with status 0"),
    (None, "no answer over SSH: `true` did not finish within 20s",
     "not run: guest unusable after hmm-tests: no answer over SSH: `true` did not finish "
     "within 20s"),
    # both: QEMU's exit is the reason that explains the silence
    ("QEMU exited (status 0) after a kernel panic", "the SSH connection is closed",
     "not run: guest unusable: QEMU exited (status 0) after a kernel panic"),
])
def test_which_scenarios_still_run(gone: str | None, unanswered: str | None,
                                   why: str | None) -> None:
    assert runner.not_run_reason("hmm-tests", gone, unanswered) == why


def test_counters_unread() -> None:
    assert not runner.counters_unread({"gpu0": COUNTERS_4K})
    assert not runner.counters_unread({})
    assert runner.counters_unread({"gpu0": dict(COUNTERS_4K, **{"dma-errors": "error: gone"})})


def test_build_failure_is_an_error(tmp_path: Path) -> None:
    def build(logdir: Path) -> Any:
        raise RuntimeError("kernel build failed (full log: x.log)")

    res = runner.run(config.load_text("", "t.yaml"), tmp_path / "res", build=build)
    assert statuses(res.tests) == {"build": "ERROR"}
    assert res.exit_code() == 2
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert "kernel build failed" in data["tests"][0]["log_excerpt"]


# ---- smoke: driver.load, prepare ---------------------------------------------------------

NODE = "crw-------    1 0        root       10, 258 Nov 21 18:27 /dev/hmm_gpu0\n"
DMESG = ("[    1.7] clocksource: Switched to clocksource tsc\n"
         "[    1.8] hmm_gpu: loading out-of-tree module taints kernel.\n"
         "[    1.8] hmm_gpu 0000:00:02.0: hmm-gpu 1.0, max_xfer 67108864, 64-bit DMA, "
         "/dev/hmm_gpu0\n")


def test_driver_loads() -> None:
    entry = smoke.driver_load_result(smoke.DRIVER, 0, "", "", NODE, DMESG, 0.1,
                                     ["driver-load.dmesg"])
    assert (entry.path, entry.status) == ("driver.load", Status.PASS)
    assert "max_xfer" in entry.log_excerpt and "clocksource" not in entry.log_excerpt
    assert entry.output_files == ["driver-load.dmesg"]


def test_insmod_failure() -> None:
    entry = smoke.driver_load_result(
        "/opt/hmmlab/nope.ko", 254, "",
        "insmod: can't insert '/opt/hmmlab/nope.ko': No such file or directory\n",
        "ls: /dev/hmm_gpu*: No such file or directory\n", "", 0.1)
    assert entry.status == Status.FAIL
    assert entry.log_excerpt.splitlines()[:2] == [
        "insmod exited with status 254", "/dev/hmm_gpu0 does not exist after insmod"]
    assert "can't insert" in entry.log_excerpt


def test_module_loads_but_no_device_node() -> None:
    entry = smoke.driver_load_result(smoke.DRIVER, 0, "", "",
                                     "ls: /dev/hmm_gpu*: No such file or directory\n", DMESG, 5)
    assert entry.status == Status.FAIL
    assert entry.log_excerpt.startswith("/dev/hmm_gpu0 does not exist after insmod")


GONE = "QEMU was killed: no console output and no SSH answer for 60s (guest hung)"


@pytest.mark.parametrize(("error", "gone", "splat", "status"), [
    # ran past its budget: FAIL, whatever the console says
    (SSHTimeout("insmod x", 60, b"", b""), None, False, Status.FAIL),
    (SSHTimeout("insmod x", 60, b"", b""), None, True, Status.FAIL),
    # the guest died (or the watchdog killed it) under the command: FAIL, splat or not
    (SSHAborted("insmod x", GONE, b"", b""), GONE, False, Status.FAIL),
    (SSHError("`x`: the SSH connection was lost"), "QEMU exited with status 1", False,
     Status.FAIL),
    # the link broke under a guest still running: SSH's problem, unless it splatted
    (SSHError("`x`: the SSH connection was lost"), None, False, Status.ERROR),
    (SSHError("`x`: the SSH connection was lost"), None, True, Status.FAIL),
    # a QEMU that would not start (a peer's) under a guest still running
    (GuestError("QEMU did not open its QMP socket within 30s"), None, False, Status.ERROR),
    (GuestDied("QEMU exited at start with status 1"), None, False, Status.ERROR),
    (GuestError("x"), "QEMU exited with status 1", False, Status.FAIL),
])
def test_a_cut_off_command_or_step(error: Exception, gone: str | None, splat: bool,
                                   status: Status) -> None:
    assert cut_off_status(error, gone, splat) == status  # type: ignore[arg-type]


def test_prepare() -> None:
    ok = smoke.prepare_result([("echo hang > x", 0, ""), ("true", 0, "")], 0.1)
    assert (ok.path, ok.status) == ("smoke.prepare", Status.PASS)
    assert "$ echo hang > x" in ok.log_excerpt
    bad = smoke.prepare_result([("true", 0, ""), ("echo x > /nope", 1, "sh: can't create\n")], 0)
    assert bad.status == Status.ERROR
    assert bad.log_excerpt.startswith("`echo x > /nope` exited with status 1")
    assert "can't create" in bad.log_excerpt


# ---- smoke: the workload's output ---------------------------------------------------------

FILES = ["smoke.stdout", "smoke.stderr"]


def test_every_sub_test_passes() -> None:
    objs, entries = smoke.workload_results(WORKLOAD, 0, SMOKE_4K, "", 0.5, FILES)
    assert len(objs) == 11
    assert set(statuses(entries).values()) == {"PASS"}
    assert list(statuses(entries))[:3] == ["smoke.info", "smoke.copy", "smoke.fill"]
    copy = entries[1]
    assert copy.duration == pytest.approx(0.006833899)  # the workload's own elapsed_ns
    assert copy.to_dict()["duration"] == 0.007
    assert '"maps": "2 entries"' in copy.log_excerpt and "0x19cb000" not in copy.log_excerpt
    assert copy.output_files == FILES


def test_failed_sub_test() -> None:
    out = SMOKE_4K.splitlines()
    out[1:3] = [COPY_TIMED_OUT, FILL_AFTER_RESET]
    _, entries = smoke.workload_results(WORKLOAD, 1, "\n".join(out), "", 11.0)
    st = statuses(entries)
    assert st["smoke.copy"] == "FAIL" and st["smoke.fill"] == "PASS"
    assert "Connection timed out" in entries[1].log_excerpt
    assert "smoke.exit" not in st  # a non-zero exit is expected with a failed sub-test


def test_stderr_goes_with_a_failed_sub_test() -> None:
    _, entries = smoke.workload_results(WORKLOAD, 1, WRONG_DEVICE, "a message on stderr\n", 0.1)
    assert entries[0].status == Status.FAIL
    assert entries[0].log_excerpt.endswith("stderr:\na message on stderr\n")
    _, entries = smoke.workload_results(WORKLOAD, 0, SMOKE_4K, "a message on stderr\n", 0.1)
    assert "stderr" not in entries[0].log_excerpt


def test_nonzero_exit_with_all_ok_is_a_failure() -> None:
    _, entries = smoke.workload_results(WORKLOAD, 2, SMOKE_4K + "Segmentation fault\n", "", 1)
    assert statuses(entries)["smoke.exit"] == "FAIL"
    assert entries[-1].log_excerpt.startswith(f"{WORKLOAD} exited with status 2 although")
    assert "Segmentation fault" in entries[-1].log_excerpt


def test_no_sub_test_reported() -> None:
    objs, entries = smoke.workload_results(
        "/opt/hmmlab/bin/nope", 127, "", "sh: /opt/hmmlab/bin/nope: not found\n", 0.1, FILES)
    assert objs == []
    assert statuses(entries) == {"smoke.run": "FAIL"}
    assert "exited with status 127 and reported no sub-test" in entries[0].log_excerpt
    assert "not found" in entries[0].log_excerpt


def test_non_json_lines_are_not_sub_tests() -> None:
    out = "starting\n" + SMOKE_4K.replace("\n", "\nprogress...\n", 1) + '{"no": "test key"}\n{bad\n'
    objs, entries = smoke.workload_results(WORKLOAD, 0, out, "", 2.2)
    assert len(objs) == len(entries) == 11


def test_duration_without_elapsed_ns_is_absent_not_shared() -> None:
    """The workload's total is not split among its sub-tests: no elapsed_ns, no duration."""
    lines = '{"test": "a", "ok": true}\n{"test": "b", "ok": true, "elapsed_ns": 2500000}\n'
    _, entries = smoke.workload_results(WORKLOAD, 0, lines, "", 3.0)
    assert [e.duration for e in entries] == [None, 0.0025]
    assert [e.to_dict()["duration"] for e in entries] == [None, 0.003]


def test_workload_timeout_is_a_failure_and_keeps_what_was_reported() -> None:
    partial = "\n".join(SMOKE_4K.splitlines()[:2]) + "\n"
    e = SSHTimeout(WORKLOAD, 300, partial.encode(), b"")
    objs, entry = smoke.workload_interrupted(e, splat=False, duration=300, output_files=FILES)
    # a command that hung past its budget in a booted guest: as in scenarios.common
    assert (entry.path, entry.status) == ("smoke.run", Status.FAIL)
    assert [o["test"] for o in objs] == ["info", "copy"]
    assert entry.log_excerpt.startswith(f"`{WORKLOAD}` did not finish within 300s")
    assert smoke.workload_interrupted(e, splat=True, duration=1)[1].status == Status.FAIL


def test_guest_dying_under_the_workload() -> None:
    why = "QEMU exited (status 0) after a kernel splat: Kernel panic"
    e = SSHAborted(WORKLOAD, why, b"", b"")
    assert smoke.workload_interrupted(e, splat=True, duration=1)[1].status == Status.FAIL
    # quietly too (QEMU aborted, the watchdog killed it): it died under the test, as
    # scenarios.common.guest_run has it
    assert smoke.workload_interrupted(e, splat=False, duration=1)[1].status == Status.FAIL
    assert smoke.workload_interrupted(e, splat=False, duration=1,
                                      guest_gone=why)[1].status == Status.FAIL


# ---- smoke: device counters -------------------------------------------------------------------

def _objs() -> list[dict[str, Any]]:
    return smoke.parse_workload_output(SMOKE_4K)[0]


def test_counters_pass() -> None:
    entry = smoke.counters_result(COUNTERS_4K, _objs())
    assert (entry.path, entry.status) == ("smoke.counters", Status.PASS)
    assert json.loads(entry.log_excerpt) == COUNTERS_4K


@pytest.mark.parametrize(("change", "problem"), [
    ({"guest-errors": 1}, "guest-errors = 1, expected 0"),
    ({"dma-errors": 3}, "dma-errors = 3, expected 0"),
    ({"cmds-completed": 3}, "cmds-completed = 3, the workload reported 4 commands"),
])
def test_counters_fail(change: dict[str, int], problem: str) -> None:
    entry = smoke.counters_result(dict(COUNTERS_4K, **change), _objs())
    assert entry.status == Status.FAIL
    assert entry.log_excerpt.splitlines()[0] == problem


def test_counters_after_an_injected_fatal_error() -> None:
    assert smoke.counters_result(COUNTERS_AFTER_FATAL, _objs()).status == Status.FAIL


def test_counters_not_read() -> None:
    gone = "QEMU exited (status 0) after a kernel splat: Kernel panic - not syncing: dumptest"
    missed = smoke.counters_result(None, _objs(), gone)
    # never read because the guest was unusable: MISS (they could run here, they did not)
    assert missed.status == Status.MISS and gone in missed.log_excerpt
    assert smoke.counters_result(None, _objs()).status == Status.ERROR
    broken = dict(COUNTERS_4K, **{"dma-errors": "error: Disconnected"})
    entry = smoke.counters_result(broken, _objs())
    assert entry.status == Status.ERROR and "qom-get failed" in entry.log_excerpt


# ---- smoke: the DMA trace -----------------------------------------------------------------------

def test_trace_matches_the_maps() -> None:
    entry = smoke.dmatrace_result(dmatrace.decode(TRACE_4K), _objs(), 0.01, ["dmatrace-0.bin"])
    assert (entry.path, entry.status) == ("smoke.dmatrace", Status.PASS), entry.log_excerpt
    assert entry.extra["trace"]["records"] == 14
    assert entry.extra["trace"]["commands"] == 4


def test_dma_outside_the_maps_fails() -> None:
    # record 2 is the copy's write to its destination at 0x19bd000
    trace = dmatrace.decode(_trace_with(2, 0x900000))
    entry = smoke.dmatrace_result(trace, _objs(), 0.01)
    assert entry.status == Status.FAIL
    assert "0x900000" in entry.log_excerpt


def test_trace_missing_a_transfer_fails() -> None:
    # the fill's write is dropped: it moved 0 of its 4096 bytes
    cut = TRACE_4K[:dmatrace.HDR_SIZE + 5 * dmatrace.REC_V1_SIZE] + \
        TRACE_4K[dmatrace.HDR_SIZE + 6 * dmatrace.REC_V1_SIZE:]
    entry = smoke.dmatrace_result(dmatrace.decode(cut), _objs(), 0.01)
    assert entry.status == Status.FAIL


def test_nothing_to_check_the_trace_against() -> None:
    errors_only = [o for o in _objs() if o.get("ncmds") == 0]
    entry = smoke.dmatrace_result(dmatrace.decode(TRACE_4K), errors_only, 0.01)
    assert entry.status == Status.FAIL
    assert "reported no DMA maps" in entry.log_excerpt


def test_malformed_maps_fail() -> None:
    objs = _objs()
    objs[1]["maps"][0]["dma"] = "not a number"
    entry = smoke.dmatrace_result(dmatrace.decode(TRACE_4K), objs, 0.01)
    assert entry.status == Status.FAIL
    assert "malformed" in entry.log_excerpt


def test_qemu_crashing_while_booting_is_a_failure() -> None:
    # An abort inside a device model (hmm-gpu, hmm-nic) is the product failing
    # (README "Statuses"), even with nothing on the guest's console.
    died = GuestDied("QEMU exited with status -6 before the guest was ready")
    assert runner.boot_failure(died, [], 0.4, qemu_status=-6).status == Status.FAIL
    assert runner.boot_failure(died, [], 0.4, qemu_status=-11).status == Status.FAIL
    # Killed by the harness, or exiting with an error: not a crash.
    assert runner.boot_failure(died, [], 0.4, qemu_status=-9).status == Status.ERROR
    assert runner.boot_failure(died, [], 0.4, qemu_status=1).status == Status.ERROR

"""The runner and the smoke scenario against a fake guest (no QEMU)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import config, runner
from harness.splat import Splat
from harness.ssh import CommandResult, SSHTimeout
from harness.vm import AccelChoice, GuestDied, GuestHung

PAGE = 4096
COPY = {"test": "copy", "ok": True, "len": PAGE, "ncmds": 1, "ctx": 1, "elapsed_ns": 2_000_000,
        "maps": [{"role": "src", "uaddr": "0x7f0000000000", "dma": "0x100000", "len": PAGE},
                 {"role": "dst", "uaddr": "0x7f0000010000", "dma": "0x200000", "len": PAGE}]}
FILL = {"test": "fill", "ok": True, "len": PAGE, "ncmds": 1, "ctx": 1,
        "maps": [{"role": "dst", "uaddr": "0x7f0000020000", "dma": "0x300000", "len": PAGE}]}
ERR = {"test": "einval_len0", "ok": True, "len": 0, "ncmds": 0, "ctx": 1, "maps": []}


def trace_bytes(dst_for_copy: int = 0x200000) -> bytes:
    def rec(addr: int, n: int, kind: int, d: int, cmd: int) -> bytes:
        return struct.pack("<QQQQIBBBB", 1, addr, n, cmd, 1, 1, kind, d, 0)
    hdr = struct.pack("<QIIII", 0x31435254474D4D48, 1, 40, 0x18, 0)
    return (hdr + rec(0x1000, 64, 0, 0, 1) + rec(0x100000, PAGE, 2, 0, 1)
            + rec(dst_for_copy, PAGE, 2, 1, 1) + rec(0x300000, PAGE, 2, 1, 2))


@dataclass
class Script:
    """What the fake guest does."""

    boot_error: Exception | None = None
    workload: list[dict[str, Any]] = field(default_factory=lambda: [COPY, FILL, ERR])
    workload_rc: int = 0
    workload_hangs: bool = False
    insmod_rc: int = 0
    splats: list[Splat] = field(default_factory=list)
    trace: bytes = field(default_factory=trace_bytes)
    counters: dict[str, int] = field(default_factory=lambda: {
        "cmds-completed": 2, "cmds-failed": 0, "dma-read-bytes": PAGE, "dma-write-bytes": 2 * PAGE,
        "dma-errors": 0, "irqs-raised": 2, "guest-errors": 0})


class FakeSSH:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.commands: list[str] = []

    def run(self, cmd: str, timeout: float, abort: Any = None, stdin: Any = None) -> CommandResult:
        self.commands.append(cmd)
        s = self.script
        if cmd == "uname -r":
            return CommandResult(0, "6.12.107\n", "")
        if cmd.startswith("insmod"):
            return CommandResult(s.insmod_rc, "", "" if s.insmod_rc == 0 else "insmod: EINVAL\n")
        if cmd.startswith("for i in"):
            node = "crw------- 1 root root 240, 0 /dev/hmm_gpu0" if s.insmod_rc == 0 else (
                "ls: /dev/hmm_gpu*: No such file or directory")
            return CommandResult(0, node + "\n", "")
        if cmd == "dmesg":
            return CommandResult(0, "[ 1.0] hmm_gpu 0000:00:03.0: 2 MSI-X vectors\n", "")
        if cmd.endswith("hmm-gpu-smoke"):
            if s.workload_hangs:
                raise SSHTimeout(cmd, timeout, b"", b"")
            out = "".join(json.dumps(o) + "\n" for o in s.workload)
            return CommandResult(s.workload_rc, out, "")
        return CommandResult(0, "", "")

    def close(self) -> None:
        pass


class FakeConsole:
    def __init__(self, splats: list[Splat]) -> None:
        self._splats = splats

    def splats(self) -> list[Splat]:
        return list(self._splats)

    def tail(self, n: int = 40) -> str:
        return "hmmlab: ready"


def fake_guest_class(script: Script, seen: dict[str, Any]) -> type:
    class FakeGuest:
        def __init__(self, cfg: Any, image: Any, run_dir: Path, accel: AccelChoice) -> None:
            self.run_dir = run_dir
            self.console = FakeConsole(script.splats)
            self.closed = False
            self.returncode: int | None = None
            seen["guest"] = self

        def start(self) -> None:
            pass

        def wait_ready(self) -> float:
            if script.boot_error:
                raise script.boot_error
            return 3.0

        def ssh(self, key: Path, pub: str, timeout: float) -> FakeSSH:
            seen["ssh"] = FakeSSH(script)
            return seen["ssh"]

        def exit_reason(self) -> str | None:
            return None

        def counters(self) -> dict[str, dict[str, int]]:
            return {"gpu0": dict(script.counters)}

        def shutdown(self, ssh: Any, timeout: float) -> None:
            (self.run_dir / "dmatrace-0.bin").write_bytes(script.trace)
            self.returncode = 0

        def close(self) -> None:
            self.closed = True

    return FakeGuest


@dataclass(frozen=True)
class FakeArtifacts:
    qemu: Path = Path("/nonexistent/qemu-system-x86_64")
    qemu_datadirs: tuple[Path, ...] = ()
    kernel_image: Path = Path("/nonexistent/bzImage")
    kernel_tree: Path = Path("/nonexistent")
    kernel_version: str = "6.12.107-1"
    initrds: tuple[Path, ...] = ()
    ssh_key: Path = Path("/nonexistent/id")
    ssh_host_pubkey: str = "ssh-ed25519 AAAA"


class FakeProbe:
    def choose(self, *a: Any) -> AccelChoice:
        return AccelChoice("tcg", "test")


def go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: Script,
       yaml: str = "", keep_going: bool = False) -> tuple[Any, dict[str, Any]]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(runner, "Guest", fake_guest_class(script, seen))
    if "scenarios:" not in yaml:  # these tests script the smoke scenario's guest side
        yaml += "\nscenarios: [smoke]\n"
    cfg = config.load_text(yaml, "t.yaml")
    res = runner.run(cfg, tmp_path / "res", artifacts=FakeArtifacts(),  # type: ignore[arg-type]
                     probe=FakeProbe(), keep_going=keep_going)  # type: ignore[arg-type]
    return res, seen


def statuses(res: Any) -> dict[str, str]:
    return {t.path: str(t.status) for t in res.tests}


def test_all_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, seen = go(tmp_path, monkeypatch, Script())
    assert statuses(res) == {
        "boot": "PASS", "driver.load": "PASS", "smoke.copy": "PASS", "smoke.fill": "PASS",
        "smoke.einval_len0": "PASS", "smoke.counters": "PASS", "smoke.dmatrace": "PASS",
        "console.splat": "PASS",
    }
    assert res.exit_code() == 0
    assert seen["guest"].closed
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert data["environment"]["accel"] == "tcg"
    assert data["environment"]["kernel_release"] == "6.12.107"
    assert data["devices"]["gpu0"]["cmds-completed"] == 2
    copy = next(t for t in data["tests"] if t["path"] == "smoke.copy")
    assert copy["duration"] == 0.002 and "maps" in copy["log_excerpt"]
    assert (tmp_path / "res" / "run.log").exists()
    assert (tmp_path / "res" / "smoke.stdout").exists()
    assert (tmp_path / "res" / "driver-load.dmesg").exists()


def test_hung_boot_is_an_infrastructure_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    res, seen = go(tmp_path, monkeypatch, Script(boot_error=GuestHung("no console output")))
    assert statuses(res) == {"boot": "ERROR", "console.splat": "PASS"}
    assert res.exit_code() == 2
    assert seen["guest"].closed
    assert (tmp_path / "res" / "results.json").exists()


def test_panic_at_boot_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    panic = Splat("Kernel panic - not syncing: VFS: Unable to mount root fs", "Kernel panic", 9)
    res, _ = go(tmp_path, monkeypatch, Script(boot_error=GuestDied("QEMU exited"),
                                              splats=[panic]))
    assert statuses(res) == {"boot": "FAIL", "console.splat": "FAIL"}
    assert res.exit_code() == 1
    splat = next(t for t in res.tests if t.path == "console.splat")
    assert splat.extra["title"].startswith("Kernel panic")


def test_warning_during_run_fails_the_run(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    warn = Splat("WARNING in hmm_gpu_queue_submit", "WARNING: CPU: 0 ...", 100)
    res, _ = go(tmp_path, monkeypatch, Script(splats=[warn]))
    assert statuses(res)["smoke.copy"] == "PASS"
    assert statuses(res)["console.splat"] == "FAIL"
    assert res.exit_code() == 1


def test_failed_sub_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dict(COPY, ok=False, error="data mismatch at destination offset 12")
    res, _ = go(tmp_path, monkeypatch, Script(workload=[bad, FILL], workload_rc=1))
    assert statuses(res)["smoke.copy"] == "FAIL"
    assert "data mismatch" in next(t for t in res.tests if t.path == "smoke.copy").log_excerpt
    assert "smoke.exit" not in statuses(res)
    assert res.exit_code() == 1


def test_nonzero_exit_with_all_ok_is_a_failure(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    res, _ = go(tmp_path, monkeypatch, Script(workload_rc=2))
    assert statuses(res)["smoke.exit"] == "FAIL"


def test_no_json_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, _ = go(tmp_path, monkeypatch, Script(workload=[], workload_rc=127))
    assert statuses(res)["smoke.run"] == "FAIL"
    assert "smoke.dmatrace" not in statuses(res)


def test_workload_timeout_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, _ = go(tmp_path, monkeypatch, Script(workload_hangs=True))
    assert statuses(res)["smoke.run"] == "ERROR"
    assert res.exit_code() == 2


def test_insmod_failure_skips_the_workload(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    res, seen = go(tmp_path, monkeypatch, Script(insmod_rc=1))
    assert statuses(res)["driver.load"] == "FAIL"
    assert statuses(res)["smoke"] == "SKIP"
    assert not any(c.endswith("hmm-gpu-smoke") for c in seen["ssh"].commands)
    assert res.exit_code() == 1


def test_dma_outside_the_maps_fails_dmatrace(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    res, _ = go(tmp_path, monkeypatch, Script(trace=trace_bytes(dst_for_copy=0x900000)))
    assert statuses(res)["smoke.dmatrace"] == "FAIL"
    t = next(t for t in res.tests if t.path == "smoke.dmatrace")
    assert "0x900000" in t.log_excerpt and t.extra["trace"]["records"] == 4


def test_device_errors_fail_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script()
    script.counters["guest-errors"] = 3
    res, _ = go(tmp_path, monkeypatch, script)
    assert statuses(res)["smoke.counters"] == "FAIL"


def test_build_failure_is_an_error(tmp_path: Path) -> None:
    def build(logdir: Path) -> Any:
        raise RuntimeError("kernel build failed (full log: x.log)")

    res = runner.run(config.load_text("", "t.yaml"), tmp_path / "res", build=build)
    assert statuses(res) == {"build": "ERROR"}
    assert res.exit_code() == 2
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert "kernel build failed" in data["tests"][0]["log_excerpt"]


def test_guest_gone_mid_run_skips_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    panic = Splat("Kernel panic - not syncing: dumptest", "Kernel panic - not syncing: dumptest", 5)
    seen: dict[str, Any] = {}
    cls = fake_guest_class(Script(splats=[panic]), seen)

    class Dying(cls):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            (self.run_dir / "dmatrace-0.bin").write_bytes(trace_bytes())

        def exit_reason(self) -> str | None:
            return "QEMU exited (status 0) after a kernel splat: Kernel panic"

        def counters(self) -> dict[str, dict[str, int]]:
            raise AssertionError("QMP is gone: counters must not be read")

    monkeypatch.setattr(runner, "Guest", Dying)
    res = runner.run(config.load_text("scenarios: [smoke]", "t.yaml"), tmp_path / "res",
                     artifacts=FakeArtifacts(), probe=FakeProbe())  # type: ignore[arg-type]
    st = statuses(res)
    assert st["smoke.counters"] == "SKIP"
    assert st["console.splat"] == "FAIL"
    assert res.exit_code() == 1

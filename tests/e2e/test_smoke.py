"""End to end: build everything, boot the default configuration, run smoke.

Needs the build artifacts (QEMU with hmm-gpu, kernel, rootfs, payload); a
build failure makes these tests ERROR rather than skip. Under TCG one run
takes a minute or two once the cache is warm.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.core.results import Results, Status
from harness.run import runner

_REGS = (Path(__file__).resolve().parents[2] / "qemu-devices" / "include"
         / "hmm_gpu_regs.h").read_text()
HMM_GPU_VERSION_MAJOR, HMM_GPU_VERSION_MINOR = (
    int(re.search(rf"#define HMM_GPU_VERSION_{part}\s+(\d+)", _REGS).group(1))  # type: ignore[union-attr]
    for part in ("MAJOR", "MINOR")
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smoke_run(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Results:
    results_dir = tmp_path_factory.mktemp("e2e") / "smoke"
    res = runner.run(config.load(None), results_dir, artifacts=artifacts)
    print(f"results: {results_dir}")
    print(res.table())
    return res


def _status(res: Results, path: str) -> Status | None:
    return res.status_of(path)


def test_run_passes(smoke_run: Results) -> None:
    assert smoke_run.exit_code() == 0, smoke_run.failures()


@pytest.mark.parametrize("path", ["boot", "driver.load", "smoke.info", "smoke.copy",
                                  "smoke.fill", "smoke.copy_unaligned", "smoke.fill_unaligned",
                                  "smoke.counters", "smoke.dmatrace", "console.splat"])
def test_entry_passes(smoke_run: Results, path: str) -> None:
    assert _status(smoke_run, path) == Status.PASS, smoke_run.failures()


def test_results_files(smoke_run: Results) -> None:
    d: Path = smoke_run.dir
    data = json.loads((d / "results.json").read_text())
    assert data["version"] == 1
    assert data["environment"]["accel"] in ("kvm", "tcg")
    assert data["environment"]["kernel_release"].startswith("6.12")
    assert data["summary"]["exit_status"] == 0
    assert "hmmlab: ready" in (d / "console.log").read_text(errors="replace")
    assert (d / "run.log").stat().st_size > 0
    assert (d / "dmatrace-0.bin").stat().st_size > 24
    assert (d / "smoke.stdout").read_text().count('"ok": true') == 11
    dmesg = (d / "driver-load.dmesg").read_text()
    assert re.search(rf"hmm-gpu {HMM_GPU_VERSION_MAJOR}\.{HMM_GPU_VERSION_MINOR}, ", dmesg)
    assert not (d / "initrd.img").exists()  # a passing run drops it (rebuilt at will)


def test_sub_test_duration_is_the_workloads_own(smoke_run: Results) -> None:
    stdout = (smoke_run.dir / "smoke.stdout").read_text()
    copy = next(json.loads(ln) for ln in stdout.splitlines() if '"test": "copy"' in ln)
    entry = next(t for t in smoke_run.tests if t.path == "smoke.copy")
    assert entry.duration == copy["elapsed_ns"] / 1e9


def test_device_counters_were_read(smoke_run: Results) -> None:
    gpu0 = smoke_run.devices["gpu0"]
    assert gpu0["cmds-completed"] > 0
    assert gpu0["dma-read-bytes"] > 0 and gpu0["dma-write-bytes"] > 0
    assert gpu0["dma-errors"] == 0 and gpu0["guest-errors"] == 0


def test_no_qemu_left_behind(smoke_run: Results) -> None:
    import subprocess

    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
    assert str(smoke_run.dir) not in ps

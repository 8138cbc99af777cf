"""Fixtures: build QEMU once per session, start one qtest QEMU per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hmmgpu import Gpu, Launch

from harness.build.qemu import QemuArtifact, build_qemu
from harness.cache import Cache
from harness.qtest import QTest

# Trace events worth having in the QEMU log of a failed test (the log
# backend prints to stderr, which QTest keeps in a file). MMIO accesses are
# left out: polling loops would drown everything else. hmm_* come from the
# device library (hw/misc/hmm-common), hmm_gpu_* from the GPU itself.
TRACE_EVENTS = (
    "hmm_error",
    "hmm_gpu_fatal",
    "hmm_reg_error",
    "hmm_dma",
    "hmm_gpu_cmd_done",
    "hmm_gpu_reset",
    "hmm_queue_enable",
    "hmm_irq",
    "hmm_bad_ctx",
    "hmm_bad_pte",
    "hmm_ptw_error",
    "hmm_fault",
    "hmm_fault_post",
    "hmm_faultq_full",
    "hmm_replay",
    "hmm_cancel",
    "hmm_bad_token",
    "hmm_tlb_inv",
    "hmm_gpu_migrate",
    "hmm_gpu_bad_vram",
)


@pytest.fixture(scope="session")
def qemu() -> QemuArtifact:
    cache = Cache.default()
    return build_qemu(cache, cache.path("logs"))


@pytest.fixture
def launch(qemu: QemuArtifact, tmp_path: Path) -> Iterator[Launch]:
    """Start QEMU with one hmm-gpu (id gpu0) and return a Gpu driver for it."""
    started: list[QTest] = []

    def _launch(
        *device_opts: str,
        machine: str = "q35",
        extra: tuple[str, ...] = (),
        qmp: bool = False,
        msix: bool = True,
    ) -> Gpu:
        dev = ",".join(["hmm-gpu", "id=gpu0", *device_opts])
        n = len(started)
        args = ["-M", machine, "-m", "256M", "-nodefaults", "-d", "guest_errors"]
        for ev in TRACE_EVENTS:
            args += ["-trace", ev]
        # The "simple" backend would drop a trace-PID file into the cwd. Each
        # -trace option resets the file name, so this one must come last.
        args += ["-trace", f"file={tmp_path / f'trace-simple-{n}.bin'}"]
        args += [*extra, "-device", dev]
        qt = QTest(
            qemu.binary,
            args,
            datadirs=qemu.datadirs,
            logfile=tmp_path / f"qemu-{n}.log",
            qmp=qmp,
        )
        started.append(qt)
        return Gpu(qt, enable_msix=msix)

    yield _launch
    dead = [qt for qt in started if not qt.alive()]
    logs = {qt.logfile: qt.log_text() for qt in dead}
    for qt in started:
        qt.close()
    assert not dead, f"QEMU died during the test: {logs}"


@pytest.fixture
def gpu(launch: Launch) -> Gpu:
    return launch()

"""Fixtures: build QEMU once per session, start one qtest QEMU per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hmmgpu import Gpu, Launch, PciDev
from hmmnic import LaunchNic, Nic

from harness.build.cache import Cache
from harness.build.qemu import QemuArtifact, build_qemu
from harness.guest.qtest import QTest

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
    "hmm_nic_fatal",
    "hmm_nic_reset",
    "hmm_nic_wr_done",
    "hmm_nic_wr_stall",
    "hmm_nic_rnr",
    "hmm_nic_key_error",
    "hmm_nic_peer_error",
    "hmm_nic_queue_error",
    "hmm_nic_qp_err",
    "hmm_nic_cq_overrun",
    "hmm_nic_event_dropped",
)


@pytest.fixture(scope="session")
def qemu() -> QemuArtifact:
    cache = Cache.default()
    return build_qemu(cache, cache.path("logs"))


def _launcher(
    qemu: QemuArtifact, tmp_path: Path, device: str, devid: str, driver: type[PciDev]
) -> Iterator[Callable[..., PciDev]]:
    """Start QEMU with one ``device`` (id ``devid``), return ``driver`` for it."""
    started: list[QTest] = []

    def _launch(
        *device_opts: str,
        machine: str = "q35",
        extra: tuple[str, ...] = (),
        qmp: bool = False,
        msix: bool = True,
    ) -> PciDev:
        dev = ",".join([device, f"id={devid}", *device_opts])
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
        return driver(qt, enable_msix=msix)

    yield _launch
    dead = [qt for qt in started if not qt.closed and not qt.alive()]
    logs = {qt.logfile: qt.log_text() for qt in dead}
    for qt in started:
        qt.close()
    assert not dead, f"QEMU died during the test: {logs}"


@pytest.fixture
def launch(qemu: QemuArtifact, tmp_path: Path) -> Iterator[Launch]:
    """Start QEMU with one hmm-gpu (id gpu0) and return a Gpu driver for it."""
    yield from _launcher(qemu, tmp_path, "hmm-gpu", "gpu0", Gpu)  # type: ignore[misc]


@pytest.fixture
def launch_nic(qemu: QemuArtifact, tmp_path: Path) -> Iterator[LaunchNic]:
    """Start QEMU with one hmm-nic (id nic0) and return a Nic driver for it."""
    yield from _launcher(qemu, tmp_path, "hmm-nic", "nic0", Nic)  # type: ignore[misc]


@pytest.fixture
def gpu(launch: Launch) -> Gpu:
    return launch()


@pytest.fixture
def nic(launch_nic: LaunchNic) -> Nic:
    return launch_nic()

"""The launcher with the real QEMU and kernel: hangs and panics are caught.

These boot guests that misbehave on purpose and check the harness notices
quickly, keeps the logs and leaves no QEMU running.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.guest.vm import AccelChoice, BootTimeout, Guest, GuestDied, GuestHung, GuestImage

pytestmark = pytest.mark.e2e

TCG = AccelChoice("tcg", "test")


def cfg(text: str) -> config.RunConfig:
    return config.load_text(text, "test.yaml")


def test_hung_guest_is_killed_and_logs_kept(artifacts: Artifacts, tmp_path: Path) -> None:
    image = GuestImage.from_artifacts(artifacts)
    # the boot timeout is far off: only the no-output watchdog can end this (GuestHung,
    # not BootTimeout)
    guest = Guest(cfg("timeouts: {no_output: 3, boot: 600}\n"), image, tmp_path, TCG)
    with guest:
        assert guest.qmp is not None
        guest.qmp.execute("stop")  # a vCPU that makes no progress prints nothing
        with pytest.raises(GuestHung, match="no console output for 3s"):
            guest.wait_ready()
        assert guest.returncode is not None  # killed, not left running
    assert (tmp_path / "console.log").exists()
    assert (tmp_path / "hang-registers.txt").read_text().strip()


def test_boot_timeout(artifacts: Artifacts, tmp_path: Path) -> None:
    image = GuestImage.from_artifacts(artifacts)
    with Guest(cfg("timeouts: {boot: 2, no_output: 60}\n"), image, tmp_path, TCG) as guest:
        assert guest.qmp is not None
        guest.qmp.execute("stop")  # never ready, however fast the host
        with pytest.raises(BootTimeout, match="within 2s"):
            guest.wait_ready()
        assert guest.returncode is not None


def test_panic_at_boot_ends_qemu_and_is_reported(artifacts: Artifacts, tmp_path: Path) -> None:
    # No initramfs at all: the kernel cannot find init and panics.
    empty = tmp_path / "empty.cpio"
    empty.write_bytes(b"")
    image = dataclasses.replace(GuestImage.from_artifacts(artifacts), initrds=(empty,))
    with Guest(cfg(""), image, tmp_path / "run", TCG) as guest:
        with pytest.raises(GuestDied):
            guest.wait_ready()
        assert guest.console is not None
        titles = [s.title for s in guest.console.splats()]
    assert titles and titles[0].startswith("Kernel panic - not syncing")
    assert "Kernel panic" in (tmp_path / "run" / "console.log").read_text(errors="replace")


def test_unknown_device_property_is_reported(artifacts: Artifacts, tmp_path: Path) -> None:
    image = GuestImage.from_artifacts(artifacts)
    bad = cfg("devices: [{type: hmm-gpu, props: {no-such-prop: 1}}]\n")
    with pytest.raises(GuestDied, match="no-such-prop"), Guest(bad, image, tmp_path, TCG):
        pass


def test_taken_host_port_is_retried(artifacts: Artifacts, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from harness.guest import vm

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    ports = iter([taken, vm._free_port()])
    monkeypatch.setattr(vm, "_free_port", lambda: next(ports))
    try:
        with Guest(cfg(""), GuestImage.from_artifacts(artifacts), tmp_path, TCG) as guest:
            assert guest.ssh_port != taken
            guest.wait_ready()
    finally:
        busy.close()
    assert "Could not set up host forwarding rule" in (tmp_path / "qemu.stderr").read_text()

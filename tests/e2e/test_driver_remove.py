"""Unbinding hmm_gpu.ko while processes keep migrating pages to its VRAM.

remove() must stop new work before it empties VRAM: otherwise a
MIGRATE_TO_DEV running next to the eviction refills VRAM and
memunmap_pages() waits forever for the last device page. Real guest, real
driver, real unbind through sysfs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.guest.ssh import SSHClient
from harness.guest.vm import AccelChoice, Guest, GuestImage

pytestmark = pytest.mark.e2e

DRIVER = "/sys/bus/pci/drivers/hmm_gpu"
RACE_PARAM = "/sys/module/hmm_gpu/parameters/race_delay_us"
# Each migration to VRAM sleeps this long between reserving its device pages
# and migrating into them: remove() empties VRAM in that time, so a driver
# that lets the migration go on ends up with pages in VRAM after the eviction.
RACE_DELAY_US = 300_000
UNBIND_TIMEOUT = 90.0


@pytest.fixture
def guest(artifacts: Artifacts, accel: AccelChoice, tmp_path: Path) -> Iterator[Guest]:
    cfg = config.load_text("devices: [{type: hmm-gpu}]\n", "remove.yaml")
    with Guest(cfg, GuestImage.from_artifacts(artifacts), tmp_path, accel) as g:
        g.wait_ready()
        yield g


def _ssh(guest: Guest, artifacts: Artifacts) -> SSHClient:
    c = SSHClient("127.0.0.1", guest.ssh_port, artifacts.ssh_key, artifacts.ssh_host_pubkey)
    c.connect(time.monotonic() + 30)
    return c


def test_unbind_while_migrating(guest: Guest, artifacts: Artifacts) -> None:
    with _ssh(guest, artifacts) as ssh:
        rc, out, err = ssh.run("insmod /opt/hmmlab/hmm_gpu.ko && ls /dev/hmm_gpu0 && "
                               f"echo {RACE_DELAY_US} > {RACE_PARAM}", 60)
        assert rc == 0, out + err
        # three migrators, no CPU reader: VRAM fills and refills all the time
        rc, out, err = ssh.run(
            "(/opt/hmmlab/bin/svm-race -u -t 60 -p 512 -w 1 -c 0 -m 3 "
            ">/tmp/race.out 2>&1; echo $? >/tmp/race.rc) </dev/null >/dev/null 2>&1 & "
            "sleep 3; cat /tmp/race.out", 60)
        assert rc == 0, out + err
        t0 = time.monotonic()
        rc, out, err = ssh.run(
            f"bdf=$(basename $(ls -d {DRIVER}/0000:* | head -n1)); echo $bdf; "
            f"echo $bdf > {DRIVER}/unbind", UNBIND_TIMEOUT, abort=guest.exit_reason)
        took = time.monotonic() - t0
        assert rc == 0, out + err
        bdf = out.split()[0]
        ssh.run(f"echo 0 > {RACE_PARAM}", 60)
        # the stress sees ENODEV and stops on its own
        rc, out, err = ssh.run("for i in $(seq 100); do [ -e /tmp/race.rc ] && break; "
                               "sleep 0.2; done; cat /tmp/race.rc /tmp/race.out", 60)
        assert rc == 0 and out.split()[0] == "0", out + err
        # and the device binds again
        rc, out, err = ssh.run(f"echo {bdf} > {DRIVER}/bind && ls /dev/hmm_gpu0", 60)
        assert rc == 0, out + err
        assert took < UNBIND_TIMEOUT
    splats = guest.console.splats() if guest.console else []
    assert not splats, "\n".join(s.title for s in splats)

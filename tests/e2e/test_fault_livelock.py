"""A device job that faults forever must end: by its deadline, or by SIGKILL.

The device's ``inject-spurious-faults`` knob (QMP qom-set) makes every
translation fault although the page is mapped: each fault is serviced and
replayed, and faults again. Every serviced fault is progress, so a driver
that only watches for progress waits forever, in D state. Real guest, real
driver, the fault injected in the real device.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from harness.build import Artifacts
from harness.core import config
from harness.guest.ssh import SSHClient
from harness.guest.vm import AccelChoice, Guest, GuestImage

pytestmark = pytest.mark.e2e

FOREVER = 0xFFFF_FFFF  # injected faults: more than any job will see
JOB_TIMEOUT_MS = 4000
PARAM = "/sys/module/hmm_gpu/parameters/job_timeout_ms"


@pytest.fixture(scope="module")
def guest(artifacts: Artifacts, accel: AccelChoice,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    cfg = config.load_text("devices: [{type: hmm-gpu}]\n", "livelock.yaml")
    with Guest(cfg, GuestImage.from_artifacts(artifacts),
               tmp_path_factory.mktemp("livelock"), accel) as g:
        g.wait_ready()
        yield g


@pytest.fixture
def ssh(guest: Guest, artifacts: Artifacts) -> Iterator[SSHClient]:
    c = SSHClient("127.0.0.1", guest.ssh_port, artifacts.ssh_key, artifacts.ssh_host_pubkey)
    c.connect(time.monotonic() + 30)
    rc, out, err = c.run("grep -q '^hmm_gpu ' /proc/modules || "
                         "insmod /opt/hmmlab/hmm_gpu.ko", 60)
    assert rc == 0, out + err
    yield c
    c.close()


def inject(guest: Guest, n: int) -> None:
    assert guest.qmp is not None
    guest.qmp.execute("qom-set", {"path": "/machine/peripheral/gpu0",
                                  "property": "inject-spurious-faults", "value": n},
                      timeout=10)


def test_job_ends_at_its_deadline(guest: Guest, ssh: SSHClient) -> None:
    rc, out, err = ssh.run(f"echo {JOB_TIMEOUT_MS} > {PARAM}", 30)
    assert rc == 0, out + err
    inject(guest, FOREVER)
    try:
        rc, out, err = ssh.run("/opt/hmmlab/bin/svm-one -o read", 60, abort=guest.exit_reason)
    finally:
        inject(guest, 0)
    res = json.loads(out.splitlines()[-1])
    assert res["errno"] == 110, res  # ETIMEDOUT: the job was cancelled at its deadline
    assert JOB_TIMEOUT_MS <= res["ms"] < JOB_TIMEOUT_MS + 10_000, res
    # and the device works afterwards
    rc, out, err = ssh.run("/opt/hmmlab/bin/svm-one -o read", 60)
    assert rc == 0 and json.loads(out.splitlines()[-1])["errno"] == 0, out + err


def test_sigkill_ends_the_wait(guest: Guest, ssh: SSHClient) -> None:
    # the deadline (60 s by default) is far: only the signal can end the job in time
    ssh.run(f"[ ! -w {PARAM} ] || echo 60000 > {PARAM}", 30)
    inject(guest, FOREVER)
    try:
        rc, out, err = ssh.run(
            "/opt/hmmlab/bin/svm-one -o write >/tmp/one.out 2>&1 & pid=$!; sleep 2; "
            "kill -9 $pid; t0=$(date +%s); "
            "while [ -d /proc/$pid ]; do sleep 0.1; [ $(( $(date +%s) - t0 )) -ge 20 ] && "
            "{ echo STUCK; grep State /proc/$pid/status; exit 1; }; done; "
            "echo gone after $(( $(date +%s) - t0 ))s", 60, abort=guest.exit_reason)
    finally:
        inject(guest, 0)
    assert rc == 0 and "gone after" in out, out + err
    rc, out, err = ssh.run("/opt/hmmlab/bin/svm-one -o read", 60)
    assert rc == 0, out + err
    splats = guest.console.splats() if guest.console else []
    assert not splats, "\n".join(s.title for s in splats)

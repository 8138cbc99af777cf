"""Shared fixtures.

``artifacts`` builds (or finds in the cache) everything a guest needs. It
never skips: when something cannot be built, every test using it ERRORs
with the build's message, so a broken build cannot pass as "skipped".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.build import Artifacts
    from harness.guest.vm import AccelChoice, AccelProbe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    from harness.build import build_all
    from harness.build.cache import Cache

    cache = Cache.default()
    kernel = os.environ.get("HMMLAB_KERNEL", "6.12")
    return build_all(cache, cache.path("logs"), kernel=kernel)


@pytest.fixture
def results_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Where a test's run writes; $HMMLAB_TEST_RESULTS keeps them somewhere known."""
    base = os.environ.get("HMMLAB_TEST_RESULTS")
    if base:
        d = Path(base) / request.node.name
        d.mkdir(parents=True, exist_ok=True)
        return d
    return tmp_path / "results"


@pytest.fixture(scope="session")
def accel_probe() -> AccelProbe:
    """One KVM probe for the whole session (pass as ``runner.run(probe=...)``)."""
    from harness.guest.vm import AccelProbe

    return AccelProbe()


@pytest.fixture(scope="session")
def accel(artifacts: Artifacts, accel_probe: AccelProbe) -> AccelChoice:
    """KVM where it works, else TCG: what ``accel: auto`` would boot with."""
    a = artifacts
    return accel_probe.choose("auto", a.qemu, a.qemu_datadirs, a.kernel_image)


@pytest.fixture(scope="session")
def other_ed25519_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 key pair made by ssh-keygen (``.pub`` next to it): not the guest's."""
    import subprocess

    path = tmp_path_factory.mktemp("other-key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other", "-f",
                    str(path)], check=True, timeout=30)
    return path

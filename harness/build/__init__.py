"""Build orchestration: every artifact a run needs, cached by content.

``build_all`` is what ``hmmlab build`` and ``hmmlab run`` call. Each builder
returns at once when its artifact for the current inputs is already in the
cache, so a warm run costs a few hashes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.build.cache import Cache

if TYPE_CHECKING:
    from harness.build.kernel import KernelArtifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifacts:
    qemu: Path  # qemu-system-x86_64 with the hmm-gpu device
    qemu_datadirs: tuple[Path, ...]  # firmware search path, passed as -L in order
    kernel_image: Path  # bzImage
    kernel_tree: Path  # built kernel tree (modules, selftests build against it)
    kernel_version: str  # Debian package version of the source
    initrds: tuple[Path, ...]  # concatenated in order into one initrd
    ssh_key: Path  # client private key (OpenSSH format)
    ssh_host_pubkey: str  # "ssh-ed25519 AAAA..." to pin for the guest
    # What the kernel offers ("device_private", "test_hmm", "kasan", "lockdep", ...:
    # harness.build.kernel.CONFIG_FEATURES), so scenarios can SKIP with a reason.
    kernel_features: frozenset[str] = frozenset()
    kernel_label: str = ""  # "6.12.107-1", "6.12.107-1+debug", "stock 6.1.0-56", "tree:<describe>"
    kernel: KernelArtifact | None = None  # everything about the kernel (source, config, ...)
    # The exact inputs, for results.json's environment (:func:`build_environment`).
    build_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildTimes:
    """Seconds each step took in this call (near zero when cached)."""

    qemu: float
    kernel: float
    rootfs: float
    payload: float


def build_all(cache: Cache, logdir: Path, kernel: str = "6.12", flavor: str = "default",
              kernel_tree: Path | None = None) -> Artifacts:
    """Everything a run needs for ``kernel`` (a series, "stock-6.1") in ``flavor``,
    or for the developer's own source ``kernel_tree`` (which overrides ``kernel``)."""
    arts, _ = build_all_timed(cache, logdir, kernel, flavor, kernel_tree)
    return arts


def build_all_timed(
    cache: Cache, logdir: Path, kernel: str = "6.12", flavor: str = "default",
    kernel_tree: Path | None = None,
) -> tuple[Artifacts, BuildTimes]:
    # Imported here so `hmmlab --help` and the unit tests do not pay for them.
    from harness.build.kernel import get_kernel
    from harness.build.payload import build_payload
    from harness.build.qemu import build_qemu
    from harness.build.rootfs import build_rootfs

    logdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with cache.lock("qemu"):
        qemu = build_qemu(cache, logdir)
    t1 = time.monotonic()
    kern = get_kernel(cache, logdir, kernel, flavor, kernel_tree)  # locks per (kernel, flavor)
    t2 = time.monotonic()
    with cache.lock("rootfs"):
        rootfs = build_rootfs(cache, logdir)
    t3 = time.monotonic()
    with cache.lock("payload"):
        payload = build_payload(cache, logdir, kern)
    t4 = time.monotonic()
    times = BuildTimes(qemu=t1 - t0, kernel=t2 - t1, rootfs=t3 - t2, payload=t4 - t3)
    log.info("build: qemu %.0fs, kernel %.0fs, rootfs %.0fs, driver+workloads %.0fs",
             times.qemu, times.kernel, times.rootfs, times.payload)
    arts = Artifacts(
        build_info=build_environment(kern, qemu, rootfs.initrd),
        qemu=qemu.binary,
        qemu_datadirs=qemu.datadirs,
        kernel_image=kern.image,
        kernel_tree=kern.tree,
        kernel_version=kern.version,
        initrds=(rootfs.initrd, *kern.initrds, payload),
        ssh_key=rootfs.ssh_key,
        ssh_host_pubkey=rootfs.ssh_host_pubkey,
        kernel_features=kern.features,
        kernel_label=kern.label,
        kernel=kern,
    )
    return arts, times


def build_environment(kern: KernelArtifact, qemu: Any, rootfs_initrd: Path) -> dict[str, Any]:
    """What exactly was built, for results.json: the kernel's source package and
    version, its build's uname -r and key, the QEMU source version and tree key, the
    toolchain, the rootfs key, and the build's warnings (e.g. the kernel source is not
    the archive's candidate because the archive could not be reached)."""
    from harness.build import toolchain

    tools = toolchain.versions()
    return {
        "kernel_source_package": kern.source_package,
        "kernel_source_version": kern.version,
        "kernel_source": str(kern.source or ""),
        "kernel_build_release": kern.release,
        "kernel_key": kern.key,
        "qemu_source_version": getattr(qemu, "version", ""),
        "qemu_tree_key": getattr(qemu, "tree_key", ""),
        "qemu_key": Path(qemu.binary).parent.name,
        "gcc": tools["gcc"],
        "make": tools["make"],
        "binutils": tools["binutils"],
        "rootfs_key": rootfs_initrd.parent.name,
        "build_warnings": list(kern.warnings),
    }

"""Guest kernel builder: Debian's linux-source-X.Y with our config fragment.

The source tarball is unpacked once per Debian version; each configuration is
built out of tree (``make O=``) into its own cache directory, which stays a
complete build tree so out-of-tree modules (the hmm-gpu driver) and the
selftests can be built against it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.apt import PrivateApt
from harness.cache import REPO_ROOT, Cache, InputHash
from harness.proc import run, run_with_progress

log = logging.getLogger(__name__)

FRAGMENT = REPO_ROOT / "guest-images" / "kernel" / "hmm.config"

# kernel series -> Debian source package
SOURCES: dict[str, str] = {
    "6.12": "linux-source-6.12",
}

BUILD_TIMEOUT = 3600


@dataclass(frozen=True)
class KernelArtifact:
    version: str  # Debian package version, e.g. 6.12.107-1
    tree: Path  # O= build directory (has .config, Module.symvers, source -> src)
    image: Path  # arch/x86/boot/bzImage


def _source_deb(cache: Cache, package: str, logdir: Path) -> Path:
    downloads = cache.path("downloads")
    debs = sorted(downloads.glob(f"{package}_*_all.deb"))
    if debs:
        return debs[-1]
    apt = PrivateApt(cache.path("apt"))
    apt.ensure_lists(logdir / "apt.log")
    log.info("kernel: downloading %s", package)
    return apt.download(package, downloads, logdir / "apt.log")


def _unpack_source(cache: Cache, deb: Path, package: str, logdir: Path) -> Path:
    version = deb.name.split("_")[1]
    final = cache.path("linux-src", version)
    if (final / "Makefile").exists():
        return final
    log.info("kernel: unpacking %s %s", package, version)
    with cache.building(final) as tmp:
        run(["dpkg-deb", "-x", deb, tmp / "deb"], timeout=600, logfile=logdir / "kernel.log")
        tarballs = list((tmp / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise RuntimeError(f"{deb.name}: expected one linux-source tarball, got {tarballs}")
        run(["tar", "-xf", tarballs[0], "-C", tmp, "--strip-components=1"], timeout=900,
            logfile=logdir / "kernel.log")
        shutil.rmtree(tmp / "deb")
    return final


def _wanted_options(fragment: Path) -> dict[str, str]:
    want: dict[str, str] = {}
    for lineno, line in enumerate(fragment.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(CONFIG_[A-Z0-9_]+)=(.+)", line)
        if not m:
            raise ValueError(f"{fragment}:{lineno}: expected CONFIG_NAME=value, got {line!r}")
        want[m.group(1)] = m.group(2)
    return want


def check_config(config: Path, fragment: Path) -> None:
    """Every option of the fragment must survive olddefconfig (else a dependency is missing)."""
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        m = re.fullmatch(r"(CONFIG_[A-Z0-9_]+)=(.+)", line)
        if m:
            have[m.group(1)] = m.group(2)
    lost = [f"{k}={v} (got {have.get(k, 'unset')})"
            for k, v in _wanted_options(fragment).items() if have.get(k) != v]
    if lost:
        raise RuntimeError(
            f"kernel config: options from {fragment} did not stick (a dependency is missing "
            "from the fragment):\n  " + "\n  ".join(lost)
        )


def build_kernel(cache: Cache, logdir: Path, series: str = "6.12") -> KernelArtifact:
    if series not in SOURCES:
        raise ValueError(f"kernel {series!r} is not known; choose one of {', '.join(SOURCES)}")
    package = SOURCES[series]
    deb = _source_deb(cache, package, logdir)
    version = deb.name.split("_")[1]
    key = (
        InputHash("kernel")
        .text("package", deb.name)
        .file(FRAGMENT)
        .file(Path(__file__))
        .hexdigest()
    )
    final = cache.path("kernel", f"{series}-{key}")
    image = final / "arch" / "x86" / "boot" / "bzImage"
    stamp = final / ".hmmlab-complete"
    if stamp.exists() and image.exists():
        log.info("kernel: %s cached (%s)", version, final)
        return KernelArtifact(version, final, image)

    src = _unpack_source(cache, deb, package, logdir)
    klog = logdir / "kernel.log"
    jobs = str(os.cpu_count() or 2)
    # Built in place (kbuild records absolute paths, so the tree cannot be
    # renamed afterwards); the stamp marks it complete.
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    obj = final
    try:
        make = ["make", "-C", src, f"O={obj}", "ARCH=x86_64"]
        run([*make, "tinyconfig"], timeout=300, logfile=klog)
        run([src / "scripts" / "kconfig" / "merge_config.sh", "-m", "-O", obj,
             obj / ".config", FRAGMENT], cwd=src, timeout=300, logfile=klog)
        run([*make, "olddefconfig"], timeout=300, logfile=klog)
        check_config(obj / ".config", FRAGMENT)
        log.info("kernel: building %s (trimmed config, -j%s; several minutes cold)",
                 version, jobs)
        run_with_progress([*make, f"-j{jobs}", "bzImage", "modules"], label="kernel build",
                          timeout=BUILD_TIMEOUT, logfile=klog)
        # Only vmlinux links against these; modules and selftests never do.
        for junk in ("vmlinux.o", "vmlinux.a"):
            (obj / junk).unlink(missing_ok=True)
    except BaseException:
        log.error("kernel: build failed; log kept in %s", klog)
        shutil.rmtree(final, ignore_errors=True)
        raise
    stamp.write_text(version + "\n")
    # The `source` symlink kbuild writes points into linux-src; both live in the cache.
    return KernelArtifact(version, final, image)


def main() -> None:
    import argparse
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description="Build the hmmlab guest kernel.")
    ap.add_argument("series", nargs="?", default="6.12")
    args = ap.parse_args()
    cache = Cache.default()
    with cache.lock(f"kernel-{args.series}"):
        art = build_kernel(cache, Path(tempfile.mkdtemp(prefix="hmmlab-kbuild-")), args.series)
    print(art.image)


if __name__ == "__main__":
    main()

"""Debian userspace for the guest image: resolve, download and unpack .debs.

The busybox initramfs gets rdma-core's userspace (libibverbs and its
providers, the verbs utilities, pyverbs with rdma-core's own tests,
perftest, iproute2's ``rdma`` tool) and the Python it runs on, as Debian
ships them. Nothing is installed on the host: apt runs against the harness's
private state (:class:`harness.build.apt.PrivateApt`) in simulation mode to compute
the dependency closure, downloads exactly those versions, and each .deb is
unpacked into the image with ``dpkg-deb -x`` (no maintainer scripts run).

What a busybox initramfs must not get is left out of the closure by telling
apt it is already installed (a private dpkg status file): systemd and udev
(busybox's init and devtmpfs do their job), the ``rdma-core`` package itself
(udev rules, systemd units and rdma-ndd; nothing the verbs libraries need,
but it drags in udev and systemd) and debconf (tzdata's configuration
frontend, perl).

The resolution is pinned in the cache the first time (``downloads/guest-debs/
<suite>-<spec hash>.lock``), like the kernel sources: a warm build needs no
network and builds the same image; delete the lock file to move on to what
the archive offers then. The rootfs cache key includes every name=version.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.build.apt import PrivateApt
from harness.core.proc import run

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT = 300
UNPACK_TIMEOUT = 120


@dataclass(frozen=True)
class DebSpec:
    """What to put into the image, from which suite, and what to leave out."""

    suite: str
    packages: tuple[str, ...]
    excluded: tuple[str, ...]
    # paths (relative to the image root) removed after unpacking: docs, man pages...
    prune: tuple[str, ...] = ()
    # kept although under a pruned path (rdma-core's tests live under usr/share/doc)
    keep: tuple[str, ...] = ()
    # directories whose *.gz files are gunzipped in place (dh_compress'ed sources)
    gunzip: tuple[str, ...] = ()

    def digest(self) -> str:
        text = json.dumps([self.suite, self.packages, self.excluded], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Debian sid: rdma-core 65.0 (trixie has 56.1, bookworm 44.0). rdma-core keeps
# its uAPI headers in step with the kernel's, and sid's is the one nearest 7.2.
RDMA = DebSpec(
    suite="sid",
    packages=("ibverbs-providers", "ibverbs-utils", "python3-pyverbs", "perftest",
              "iproute2", "python3"),
    excluded=("rdma-core", "systemd", "udev", "debconf"),
    prune=("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
           "usr/share/lintian", "usr/share/bash-completion", "usr/share/pixmaps",
           "usr/include", "usr/lib/x86_64-linux-gnu/gconv"),
    keep=("usr/share/doc/rdma-core/tests",),
    gunzip=("usr/share/doc/rdma-core/tests",),
)
RDMA_TESTS_DIR = "/usr/share/doc/rdma-core/tests"


@dataclass(frozen=True)
class Deb:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"

    def filename_stem(self) -> str:
        """How apt-get download names the file, without ``_<arch>.deb``."""
        return f"{self.name}_{self.version.replace(':', '%3a')}"


_INST = re.compile(r"^Inst (\S+) (?:\[[^]]*\] )?\((\S+) ")


def parse_simulation(text: str) -> list[Deb]:
    """The packages ``apt-get -s install`` would install ("Inst name (version ...)")."""
    out = []
    for line in text.splitlines():
        m = _INST.match(line)
        if m:
            out.append(Deb(m.group(1).split(":")[0], m.group(2)))
    return out


def fake_status(versions: dict[str, list[str]]) -> str:
    """A dpkg status file saying each package is installed, at a version above any
    the archive offers (so apt neither fetches nor upgrades it)."""
    stanzas = []
    for name, have in versions.items():
        if not have:
            raise RuntimeError(f"guest debs: excluded package {name!r} is unknown to the "
                               "private apt lists; fix its name in harness/build/guest_debs.py")
        top = _newest(have)
        stanzas.append(f"Package: {name}\nStatus: install ok installed\nVersion: {top}+hmmlab\n"
                       "Architecture: all\nMaintainer: hmmlab\n"
                       "Description: left out of the guest image\n")
    return "\n".join(stanzas)


def _newest(versions: list[str]) -> str:
    from harness.build.kernel import debian_version_key

    return debian_version_key(versions)[-1]


def resolve(apt: PrivateApt, spec: DebSpec, logfile: Path) -> list[Deb]:
    """The dependency closure of ``spec.packages`` in ``spec.suite``, without the excluded."""
    apt.ensure_lists(logfile)
    with tempfile.TemporaryDirectory(prefix="hmmlab-debs-") as tmp:
        status = Path(tmp) / "status"
        status.write_text(fake_status(apt.versions_of(list(spec.excluded))))
        text = apt.simulate_install(list(spec.packages), spec.suite, status, logfile)
    debs = parse_simulation(text)
    names = {d.name for d in debs}
    missing = [p for p in spec.packages if p not in names]
    if missing:
        raise RuntimeError(f"guest debs: apt's closure for {spec.suite} lacks {missing}; "
                           f"see {logfile}")
    leaked = sorted(names & set(spec.excluded))
    if leaked:
        raise RuntimeError(f"guest debs: excluded packages still in the closure: {leaked}")
    return debs


def pinned(apt: PrivateApt, spec: DebSpec, downloads: Path, logfile: Path) -> list[Deb]:
    """The resolution pinned in ``downloads`` (made once, from the archive)."""
    lock = downloads / f"{spec.suite}-{spec.digest()}.lock"
    if lock.exists():
        try:
            data = json.loads(lock.read_text())
            return [Deb(d["name"], d["version"]) for d in data["debs"]]
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"guest debs: {lock} is unreadable ({e}); "
                               "delete it to resolve the packages again") from e
    debs = resolve(apt, spec, logfile)
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = lock.with_suffix(".tmp")
    tmp.write_text(json.dumps({"suite": spec.suite, "packages": spec.packages,
                               "excluded": spec.excluded,
                               "debs": [{"name": d.name, "version": d.version} for d in debs]},
                              indent=1) + "\n")
    tmp.replace(lock)
    log.info("guest debs: pinned %d packages from %s in %s", len(debs), spec.suite, lock)
    return debs


def deb_file(downloads: Path, deb: Deb) -> Path | None:
    for arch in ("amd64", "all"):
        p = downloads / f"{deb.filename_stem()}_{arch}.deb"
        if p.exists():
            return p
    return None


def download(apt: PrivateApt, debs: list[Deb], downloads: Path, logfile: Path) -> list[Path]:
    """Every .deb of ``debs`` in ``downloads`` (fetching the missing ones)."""
    missing = [d for d in debs if deb_file(downloads, d) is None]
    if missing:
        apt.ensure_lists(logfile)
        log.info("guest debs: downloading %d packages", len(missing))
        apt.download_many([d.spec for d in missing], downloads, logfile)
    files = []
    for d in debs:
        f = deb_file(downloads, d)
        if f is None:
            raise RuntimeError(f"guest debs: apt-get download {d.spec} left no "
                               f"{d.filename_stem()}_*.deb in {downloads}; see {logfile}")
        files.append(f)
    return files


def merge_tree(src: Path, root: Path) -> None:
    """Copy ``src`` over ``root``: a file replaces what is there (a busybox applet link,
    a host library), directories merge, and directory symlinks in ``root``
    (lib -> usr/lib) are followed."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        dest_dir = root / rel
        for name in list(dirnames):
            s = Path(dirpath) / name
            d = dest_dir / name
            if s.is_symlink():  # os.walk lists symlinks to directories here
                dirnames.remove(name)
                _replace(s, d)
            elif not d.is_dir():
                if d.is_symlink() or d.exists():
                    d.unlink()
                d.mkdir(parents=True)
        for name in filenames:
            _replace(Path(dirpath) / name, dest_dir / name)


def _replace(s: Path, d: Path) -> None:
    if d.is_dir() and not d.is_symlink():
        raise RuntimeError(f"guest debs: {s} would replace the directory {d} of the image; "
                           "the image layout and the package disagree (merged /usr?)")
    if d.is_symlink() or d.exists():
        d.unlink()
    if s.is_symlink():
        d.symlink_to(os.readlink(s))
    else:
        shutil.copy2(s, d)


def unpack(debs: list[Path], root: Path, logfile: Path) -> None:
    """``dpkg-deb -x`` every .deb, then merge it over ``root``."""
    with tempfile.TemporaryDirectory(prefix="hmmlab-unpack-") as tmp:
        for deb in debs:
            stage = Path(tmp) / deb.stem
            run(["dpkg-deb", "-x", deb, stage], timeout=UNPACK_TIMEOUT, logfile=logfile)
            merge_tree(stage, root)
            shutil.rmtree(stage)


def tidy(root: Path, spec: DebSpec) -> None:
    """Drop ``spec.prune`` (but ``spec.keep``) and gunzip ``spec.gunzip``'s files."""
    with tempfile.TemporaryDirectory(prefix="hmmlab-keep-") as tmp:
        saved: list[str] = []
        for k in spec.keep:
            if (root / k).exists():
                shutil.move(root / k, Path(tmp) / str(len(saved)))
                saved.append(k)
        for p in spec.prune:
            target = root / p
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for i, k in enumerate(saved):
            (root / k).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(tmp) / str(i), root / k)
    for d in spec.gunzip:
        for gz in sorted((root / d).rglob("*.gz")):
            gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()

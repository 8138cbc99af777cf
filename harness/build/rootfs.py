"""Guest root filesystem: a busybox + dropbear initramfs that boots in seconds.

busybox and dropbear come from Debian packages on the host (busybox-static,
dropbear-bin); rdma-core's userspace and the Python its tests run on come
from Debian's archive as .debs unpacked into the image
(:mod:`harness.build.guest_debs`), so nothing is compiled. The image has a
merged /usr (/lib and /lib64 are links into /usr), as those packages expect:
the host's dropbear libraries land there first and the packages' newer glibc
replaces the host's. The SSH keys are generated per cache entry: the client
key is authorised for root in the guest, and the guest's host key is pinned
by the harness.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.build import guest_debs
from harness.build.apt import PrivateApt
from harness.build.cache import REPO_ROOT, Cache, InputHash
from harness.core.files import pack_cpio
from harness.core.proc import run

log = logging.getLogger(__name__)

OVERLAY = REPO_ROOT / "guest-images" / "rootfs" / "overlay"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
HOST_PACKAGES = {BUSYBOX: "busybox-static", DROPBEAR: "dropbear-bin", DROPBEARKEY: "dropbear-bin"}


@dataclass(frozen=True)
class RootfsArtifact:
    initrd: Path  # rootfs.cpio.gz
    ssh_key: Path  # client private key (OpenSSH format)
    ssh_host_pubkey: str  # "ssh-ed25519 AAAA..." of the guest


def _check_tools() -> None:
    missing = sorted({pkg for path, pkg in HOST_PACKAGES.items() if not path.exists()})
    for tool, pkg in (("cpio", "cpio"), ("gzip", "gzip")):
        if shutil.which(tool) is None:
            missing.append(pkg)
    if missing:
        raise RuntimeError(
            "rootfs: missing host packages: " + " ".join(missing)
            + f"\n  fix: apt-get install {' '.join(missing)}  (./hmmlab does this when run as root)"
        )
    if b"statically linked" not in run(["file", "-b", BUSYBOX], timeout=30, check=False).stdout:
        # `file` may be absent; ldd says "not a dynamic executable" for static ones
        out = run(["ldd", BUSYBOX], timeout=30, check=False)
        if b"not a dynamic executable" not in out.stdout + out.stderr:
            raise RuntimeError(f"rootfs: {BUSYBOX} is not static; apt-get install busybox-static")


def _shared_libs(binary: Path) -> list[Path]:
    """The loader and libraries ``binary`` needs, resolved by ldd on the host."""
    out = run(["ldd", binary], timeout=30).stdout.decode()
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _copy_with_parents(src: Path, root: Path) -> None:
    dest = root / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), dest)


def _make_keys(sshdir: Path, logfile: Path) -> str:
    sshdir.mkdir(mode=0o700)
    client = Ed25519PrivateKey.generate()
    (sshdir / "id_ed25519").write_bytes(
        client.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    os.chmod(sshdir / "id_ed25519", 0o600)
    pub = client.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    (sshdir / "id_ed25519.pub").write_text(pub + " hmmlab\n")
    host = sshdir / "dropbear_ed25519_host_key"
    run([DROPBEARKEY, "-t", "ed25519", "-f", host], timeout=60, logfile=logfile)
    out = run([DROPBEARKEY, "-y", "-f", host], timeout=60).stdout.decode()
    m = re.search(r"^(ssh-ed25519 \S+)", out, re.M)
    if not m:
        raise RuntimeError(f"rootfs: could not read the public host key from dropbearkey:\n{out}")
    (sshdir / "host_key.pub").write_text(m.group(1) + "\n")
    return m.group(1)


def _stage(root: Path, sshdir: Path) -> None:
    for d in ("usr/lib", "usr/lib64"):
        (root / d).mkdir(parents=True)
        (root / Path(d).name).symlink_to(d)  # merged /usr: lib -> usr/lib
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
              "root/.ssh", "etc/dropbear", "var/log", "opt/hmmlab/bin", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copytree(OVERLAY, root, dirs_exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = run([BUSYBOX, "--list-full"], timeout=30).stdout.decode().split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "init").symlink_to("/bin/busybox")  # busybox runs its init applet as /init
    for binary in (DROPBEAR,):
        _copy_with_parents(binary, root)
        for lib in _shared_libs(binary):
            _copy_with_parents(lib, root)
    shutil.copy2(sshdir / "dropbear_ed25519_host_key", root / "etc/dropbear")
    shutil.copy2(sshdir / "id_ed25519.pub", root / "root/.ssh/authorized_keys")
    os.chmod(root / "root", 0o700)
    os.chmod(root / "root/.ssh", 0o700)
    os.chmod(root / "root/.ssh/authorized_keys", 0o600)
    os.chmod(root / "etc/dropbear/dropbear_ed25519_host_key", 0o600)
    os.chmod(root / "tmp", 0o1777)


def build_rootfs(cache: Cache, logdir: Path,
                 spec: guest_debs.DebSpec = guest_debs.RDMA) -> RootfsArtifact:
    _check_tools()
    apt = PrivateApt(cache.path("apt"))
    downloads = cache.path("downloads", "guest-debs")
    debs = guest_debs.pinned(apt, spec, downloads, logdir / "apt.log")
    h = InputHash("rootfs").tree(OVERLAY).file(BUSYBOX, "busybox").file(DROPBEAR, "dropbear")
    for lib in _shared_libs(DROPBEAR):
        h.file(lib.resolve(), str(lib))
    h.text("debs", "\n".join(d.spec for d in debs))
    h.text("debs/layout", repr((spec.prune, spec.keep, spec.gunzip)))
    h.text("pack_cpio", inspect.getsource(pack_cpio))  # the archive is its output too
    key = h.file(Path(guest_debs.__file__)).file(Path(__file__)).hexdigest()
    final = cache.path("rootfs", key)
    sshdir = final / "ssh"
    if not (final / "rootfs.cpio.gz").exists():
        log.info("rootfs: building busybox + dropbear initramfs")
        logfile = logdir / "rootfs.log"
        with cache.building(final) as tmp:
            _make_keys(tmp / "ssh", logfile)
            _stage(tmp / "root", tmp / "ssh")
            files = guest_debs.download(apt, debs, downloads, logdir / "apt.log")
            log.info("rootfs: unpacking %d Debian %s packages", len(files), spec.suite)
            guest_debs.unpack(files, tmp / "root", logfile)
            guest_debs.tidy(tmp / "root", spec)
            pack_cpio(tmp / "root", tmp / "rootfs.cpio.gz", logfile, overlay=False)
            shutil.rmtree(tmp / "root")
    else:
        log.info("rootfs: cached (%s)", final)
    return RootfsArtifact(
        initrd=final / "rootfs.cpio.gz",
        ssh_key=sshdir / "id_ed25519",
        ssh_host_pubkey=(sshdir / "host_key.pub").read_text().strip(),
    )


def main() -> None:
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cache = Cache.default()
    with cache.lock("rootfs"):
        art = build_rootfs(cache, Path(tempfile.mkdtemp(prefix="hmmlab-rootfs-")))
    print(art.initrd)


if __name__ == "__main__":
    main()

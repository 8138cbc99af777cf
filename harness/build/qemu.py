"""Build qemu-system-x86_64 10.0.13 (Debian source) with the hmm-gpu device.

Layout under the cache (see docs/architecture.md):

- ``downloads/``               the Debian source package (orig + debian tarballs, .dsc)
- ``qemu-src/<ver>-<treekey>/`` unpacked source, patched once, then overlaid with our
                               files; TREEKEY covers the version, the patch list and
                               every patch's bytes, so a changed patch gets a fresh tree.
                               The overlay is synced into the tree on every build (a
                               changed device file rewritten, a removed one deleted),
                               so device edits stay incremental
- ``tools/meson-<v>/``         a venv with the meson configure needs (bookworm's is too old)
- ``qemu-build/<buildkey>/``   build directory; BUILDKEY covers the tree and the glue
                               (Kconfig, meson.build) but not the device sources, so an
                               edit to a device .c/.h is an incremental ninja rebuild
- ``qemu/<fullhash>/``         the finished binary; FULLHASH covers everything, so a warm
                               run returns without touching the tree
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.build.apt import PrivateApt
from harness.build.cache import REPO_ROOT, Cache, InputHash
from harness.core.files import atomic_write, flock
from harness.core.proc import run, run_with_progress

log = logging.getLogger(__name__)

QEMU_VERSION = "10.0.13"
DEB_VERSION = "10.0.13+ds-0+deb13u1"
APT_SPEC = f"qemu=1:{DEB_VERSION}"
ORIG_TARBALL = f"qemu_{QEMU_VERSION}+ds.orig.tar.xz"
DEBIAN_TARBALL = f"qemu_{DEB_VERSION}.debian.tar.xz"
DSC_FILE = f"qemu_{DEB_VERSION}.dsc"
DEBIAN_PATCHES = ("skip-unpack-edk2-blobs.patch",)

MESON_VERSION = "1.5.0"
TOOLS_REQUIREMENTS = (f"meson=={MESON_VERSION}", "pycotap")

TARGET = "qemu-system-x86_64"
CONFIGURE_FLAGS = (
    "--target-list=x86_64-softmmu",
    "--enable-kvm",
    "--enable-slirp",
    "--disable-docs",
    "--disable-werror",
    "--disable-gtk",
    "--disable-sdl",
    "--disable-vnc",
    "--disable-opengl",
    "--disable-spice",
    "--disable-virglrenderer",
    "--disable-xen",
    "--disable-tools",
    "--disable-guest-agent",
    "--disable-user",
    "--disable-install-blobs",
    "--enable-trace-backends=log,simple",
    "--enable-zstd",  # the devices' trace writer compresses (hmm-common/dmatrace.c)
)

# libzstd for that writer. The host needs no libzstd-dev: the -dev package is
# fetched with the private apt, unpacked in the cache and its static library
# linked in (no system-wide install; the binary needs no libzstd at run time).
# Pinned like the QEMU source, so the cache key names exactly what is linked.
ZSTD_DEV_PACKAGE = "libzstd-dev"
ZSTD_DEV_VERSION = "1.5.4+dfsg2-5+deb12u1"
ZSTD_LIBDIR = "usr/lib/x86_64-linux-gnu"

DEVICE_DIR = REPO_ROOT / "qemu-devices"
# Every file below these qemu-devices/ directories is copied verbatim to the
# QEMU tree: (directory in qemu-devices/, where it goes in the QEMU tree).
OVERLAY_DIRS = (("hw", "hw"), ("include", "include/hw/misc"))
# Fragments appended to QEMU's file of the same name between markers.
GLUE_FILES = ("hw/misc/Kconfig", "hw/misc/meson.build")
TRACE_FILES = ("hw/misc/trace-events",)
MARK_BEGIN = "# hmmlab begin"
MARK_END = "# hmmlab end"

DATADIRS = (Path("/usr/share/qemu"), Path("/usr/share/seabios"), Path("/usr/lib/ipxe/qemu"))

# (how to check, apt package that provides it)
HOST_TOOLS = {
    "cc": "gcc",
    "ninja": "ninja-build",
    "pkg-config": "pkg-config",
    "flex": "flex",
    "bison": "bison",
    "patch": "patch",
    "xz": "xz-utils",
    "tar": "tar",
}
PKGCONFIG_DEPS = {
    "glib-2.0": "libglib2.0-dev",
    "pixman-1": "libpixman-1-dev",
    "slirp": "libslirp-dev",
    "zlib": "zlib1g-dev",
}
# bookworm's libfdt-dev ships no .pc file: look for its header instead
HEADER_DEPS = {Path("/usr/include/libfdt.h"): "libfdt-dev"}

CONFIGURE_TIMEOUT = 900
NINJA_TIMEOUT = 3 * 3600


TREE_KEY_FILE = "tree-key"  # next to the binary: the source tree it was built from
OVERLAY_MANIFEST = ".hmmlab-overlay"  # in the tree: the files apply_overlay copied


@dataclass(frozen=True)
class QemuArtifact:
    binary: Path  # qemu-system-x86_64
    datadirs: tuple[Path, ...]  # for -L, in order (only those that exist)
    version: str = DEB_VERSION  # the Debian source package version
    tree_key: str = ""  # qemu-src/<version>-<tree_key>: version, patches and their bytes


class BuildDepsMissing(RuntimeError):
    pass


def _datadirs() -> tuple[Path, ...]:
    return tuple(d for d in DATADIRS if d.is_dir())


def device_files() -> tuple[tuple[Path, str], ...]:
    """(repo path, path in the QEMU tree) of every file copied verbatim.

    Everything under OVERLAY_DIRS except the spliced fragments and hidden
    files (editor swap files and the like), in a stable order.
    """
    spliced = {DEVICE_DIR / rel for rel in (*GLUE_FILES, *TRACE_FILES)}
    files: list[tuple[Path, str]] = []
    for sub, dest in OVERLAY_DIRS:
        root = DEVICE_DIR / sub
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root)
            if path in spliced or any(part.startswith(".") for part in rel.parts):
                continue
            files.append((path, f"{dest}/{rel.as_posix()}"))
    return tuple(files)


def base_hash() -> str:
    """Inputs that need a fresh build directory when they change."""
    h = InputHash("qemu-build")
    h.text("version", DEB_VERSION)
    h.text("patches", " ".join(DEBIAN_PATCHES))
    h.text("configure", " ".join(CONFIGURE_FLAGS))
    h.text("meson", MESON_VERSION)
    h.text("zstd", f"{ZSTD_DEV_PACKAGE}={ZSTD_DEV_VERSION}")
    for rel in GLUE_FILES:
        h.file(DEVICE_DIR / rel, label=rel)
    return h.hexdigest()


def tree_key(downloads: Path) -> str:
    """The unpacked, patched source tree: version, tarballs and each patch's bytes."""
    h = InputHash("qemu-src").text("version", DEB_VERSION).text("orig", ORIG_TARBALL)
    h.text("debian", DEBIAN_TARBALL).text("patches", " ".join(DEBIAN_PATCHES))
    for patch in DEBIAN_PATCHES:
        data = run(["tar", "-xJOf", downloads / DEBIAN_TARBALL, f"debian/patches/{patch}"],
                   timeout=300).stdout
        h.text(f"patch/{patch}", data.decode(errors="surrogateescape"))
    return h.hexdigest()


def build_key(tree: str) -> str:
    """The build directory: the tree it configures and the glue (not the device sources)."""
    return InputHash("qemu-build-dir").text("base", base_hash()).text("tree", tree).hexdigest()


def full_hash() -> str:
    """Everything the binary depends on, including this builder."""
    h = InputHash("qemu")
    h.text("base", base_hash())
    for src, rel in device_files():
        h.file(src, label=rel)
    for rel in TRACE_FILES:
        h.file(DEVICE_DIR / rel, label=rel)
    h.file(Path(__file__).resolve(), label="harness/build/qemu.py")
    return h.hexdigest()


def check_build_deps() -> None:
    """Fail early, naming the apt packages, instead of deep inside configure."""
    missing: list[str] = []
    for tool, pkg in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            missing.append(pkg)
    if shutil.which("pkg-config") is not None:
        for mod, pkg in PKGCONFIG_DEPS.items():
            rc = subprocess.run(["pkg-config", "--exists", mod], check=False).returncode
            if rc != 0:
                missing.append(pkg)
    else:
        missing.extend(PKGCONFIG_DEPS.values())
    missing.extend(pkg for header, pkg in HEADER_DEPS.items() if not header.is_file())
    probe = subprocess.run(
        [sys.executable, "-c", "import ensurepip, venv"], check=False, capture_output=True
    )
    if probe.returncode != 0:
        missing.append("python3-venv")
    if missing:
        pkgs = " ".join(sorted(set(missing)))
        raise BuildDepsMissing(
            f"QEMU build dependencies are missing; install them with:\n  apt-get install {pkgs}"
        )


def fetch_source(cache: Cache, logfile: Path) -> Path:
    downloads = cache.path("downloads")
    wanted = (ORIG_TARBALL, DEBIAN_TARBALL, DSC_FILE)
    if all((downloads / f).is_file() for f in wanted):
        return downloads
    log.info("qemu: downloading Debian source %s", APT_SPEC)
    apt = PrivateApt(state=cache.path("apt"))
    apt.ensure_lists(logfile)
    apt.source(APT_SPEC, downloads, logfile)
    missing = [f for f in wanted if not (downloads / f).is_file()]
    if missing:
        raise RuntimeError(f"apt-get source {APT_SPEC} did not produce {missing} in {downloads}")
    return downloads


def unpack_source(cache: Cache, downloads: Path, logfile: Path) -> Path:
    """Unpack the orig tarball and apply the Debian patches we need, once per tree key."""
    final = cache.path("qemu-src", f"{QEMU_VERSION}-{tree_key(downloads)}")
    if (final / "configure").is_file():
        return final
    log.info("qemu: unpacking %s", ORIG_TARBALL)
    with cache.building(final) as tmp:
        run(
            ["tar", "-xJf", downloads / ORIG_TARBALL, "-C", tmp, "--strip-components=1"],
            timeout=900,
            logfile=logfile,
        )
        deb = tmp / ".hmmlab-debian"
        deb.mkdir()
        run(
            ["tar", "-xJf", downloads / DEBIAN_TARBALL, "-C", deb, "debian/patches"],
            timeout=300,
            logfile=logfile,
        )
        for patch in DEBIAN_PATCHES:
            run(
                ["patch", "-p1", "--forward", "-i", deb / "debian/patches" / patch],
                cwd=tmp,
                timeout=120,
                logfile=logfile,
            )
        shutil.rmtree(deb)
    return final


def ensure_tools(cache: Cache, logfile: Path) -> Path:
    """A venv with meson>=1.5 for configure; returns its python.

    Built in place with a completion stamp rather than via Cache.building:
    a venv's scripts hard-code its path, so it must not be renamed.
    """
    venv = cache.path("tools", f"meson-{MESON_VERSION}")
    python = venv / "bin" / "python3"
    stamp = venv / ".hmmlab-complete"
    if stamp.is_file() and python.exists():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    log.info("qemu: creating tools venv %s", venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", venv], timeout=300, logfile=logfile)
    run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", *TOOLS_REQUIREMENTS],
        timeout=900,
        logfile=logfile,
    )
    stamp.write_text(" ".join(TOOLS_REQUIREMENTS) + "\n")
    return python


def ensure_zstd(cache: Cache, logfile: Path) -> Path:
    """The private libzstd-dev, unpacked once; returns the directory of its .pc file."""
    final = cache.path("tools", f"libzstd-dev-{ZSTD_DEV_VERSION}")
    pcdir = final / "pkgconfig"
    if (pcdir / "libzstd.pc").is_file():
        return pcdir
    log.info("qemu: fetching %s=%s", ZSTD_DEV_PACKAGE, ZSTD_DEV_VERSION)
    apt = PrivateApt(state=cache.path("apt"))
    apt.ensure_lists(logfile)
    deb = apt.download(f"{ZSTD_DEV_PACKAGE}={ZSTD_DEV_VERSION}", cache.path("downloads"),
                       logfile)
    with cache.building(final) as tmp:
        run(["dpkg-deb", "-x", deb, tmp], timeout=300, logfile=logfile)
        if not (tmp / ZSTD_LIBDIR / "libzstd.a").is_file():
            raise RuntimeError(f"{deb} has no {ZSTD_LIBDIR}/libzstd.a")
        (tmp / "pkgconfig").mkdir()
        # paths name the final directory: cache.building renames tmp to it
        version = ZSTD_DEV_VERSION.split("+")[0]
        (tmp / "pkgconfig" / "libzstd.pc").write_text(
            f"prefix={final}/usr\n"
            "includedir=${prefix}/include\n"
            f"libdir={final}/{ZSTD_LIBDIR}\n\n"
            "Name: zstd\n"
            "Description: libzstd (hmmlab's private copy of the Debian -dev package)\n"
            f"Version: {version}\n"
            "Libs: ${libdir}/libzstd.a\n"
            "Cflags: -I${includedir}\n"
        )
    return pcdir


def _pkgconfig_env(pcdir: Path) -> dict[str, str]:
    """Our libzstd.pc first; the host's other libraries as before."""
    path = os.environ.get("PKG_CONFIG_PATH", "")
    return {"PKG_CONFIG_PATH": f"{pcdir}:{path}" if path else str(pcdir)}


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write only on a content change, so ninja/meson see unchanged mtimes."""
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write(path, data)
    return True


def splice_fragment(original: str, fragment: str) -> str:
    """Replace (or append) our marked block in a QEMU build file; idempotent."""
    body = [
        ln for ln in fragment.strip("\n").splitlines() if ln.strip() not in (MARK_BEGIN, MARK_END)
    ]
    block = "\n".join([MARK_BEGIN, *body, MARK_END]) + "\n"
    start = original.find(MARK_BEGIN + "\n")
    if start >= 0:
        end = original.find(MARK_END + "\n", start)
        if end < 0:
            raise RuntimeError(f"unterminated '{MARK_BEGIN}' block")
        return original[:start] + block + original[end + len(MARK_END) + 1 :]
    if original and not original.endswith("\n"):
        original += "\n"
    return original + "\n" + block


def apply_overlay(src: Path) -> list[str]:
    """Copy device files and splice glue into the QEMU tree; returns what changed.

    A device file copied by an earlier build and gone from qemu-devices/ now is
    deleted from the tree (the manifest remembers what was copied), so the tree
    never keeps a stale source.
    """
    changed: list[str] = []
    manifest = src / OVERLAY_MANIFEST
    before = set(manifest.read_text().split()) if manifest.is_file() else set()
    files = device_files()
    for rel in sorted(before - {rel for _, rel in files}):
        (src / rel).unlink(missing_ok=True)
        changed.append(f"{rel} (removed)")
    for repo_file, rel in files:
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if _write_if_changed(dest, repo_file.read_bytes()):
            changed.append(rel)
    _write_if_changed(manifest, "".join(f"{rel}\n" for _, rel in files).encode())
    for rel in (*GLUE_FILES, *TRACE_FILES):
        dest = src / rel
        new = splice_fragment(dest.read_text(), (DEVICE_DIR / rel).read_text())
        if _write_if_changed(dest, new.encode()):
            changed.append(rel)
    return changed


def configure(src: Path, build: Path, python: Path, logfile: Path,
              env: dict[str, str] | None = None) -> None:
    stamp = build / ".hmmlab-configured"
    if stamp.is_file() and (build / "build.ninja").is_file():
        return
    if build.exists():
        shutil.rmtree(build)  # a half-configured directory is not worth repairing
    build.mkdir(parents=True)
    log.info("qemu: configuring in %s", build)
    # configure finds meson through this python's venv (bookworm's meson is too old)
    env = {**(env or {}), "PATH": f"{python.parent}:{os.environ.get('PATH', '')}"}
    run_with_progress(
        [src / "configure", f"--python={python}", *CONFIGURE_FLAGS],
        label="qemu configure",
        cwd=build,
        env=env,
        timeout=CONFIGURE_TIMEOUT,
        logfile=logfile,
    )
    stamp.write_text(" ".join(CONFIGURE_FLAGS) + "\n")


def build_qemu(cache: Cache, logdir: Path) -> QemuArtifact:
    """Return a qemu-system-x86_64 with hmm-gpu, building it only if needed."""
    fullhash = full_hash()
    final = cache.path("qemu", fullhash)
    binary = final / TARGET
    if binary.is_file():
        return _artifact(final)

    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / "qemu-build.log"
    with flock(cache.path("qemu-build", ".lock")):  # QEMU builds share one source tree
        if binary.is_file():  # another process finished it while we waited
            return _artifact(final)
        check_build_deps()
        start = time.monotonic()
        downloads = fetch_source(cache, logfile)
        src = unpack_source(cache, downloads, logfile)
        python = ensure_tools(cache, logfile)
        # meson re-runs itself from ninja when a build file changes: same env both times
        pcenv = _pkgconfig_env(ensure_zstd(cache, logfile))
        changed = apply_overlay(src)
        if changed:
            log.info("qemu: overlay updated: %s", ", ".join(changed))
        tkey = src.name.removeprefix(f"{QEMU_VERSION}-")
        build = cache.path("qemu-build", build_key(tkey))
        configure(src, build, python, logfile, env=pcenv)
        run_with_progress(
            ["ninja", "-C", build, TARGET],
            label="qemu build",
            env=pcenv,
            timeout=NINJA_TIMEOUT,
            logfile=logfile,
        )
        with cache.building(final) as tmp:
            shutil.copy2(build / TARGET, tmp / TARGET)
            (tmp / TREE_KEY_FILE).write_text(tkey + "\n")
        log.info("qemu: %s ready in %.0fs", binary, time.monotonic() - start)
    return _artifact(final)


def _artifact(final: Path) -> QemuArtifact:
    f = final / TREE_KEY_FILE
    tkey = f.read_text().strip() if f.is_file() else ""  # built before the key was recorded
    return QemuArtifact(binary=final / TARGET, datadirs=_datadirs(), tree_key=tkey)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cache = Cache.default()
    try:
        art = build_qemu(cache, cache.path("logs"))
    except BuildDepsMissing as e:
        print(e, file=sys.stderr)
        return 2
    print(art.binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

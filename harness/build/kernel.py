"""Guest kernel builder: Debian's linux-source-X.Y, or a developer's own tree.

Every kernel is ``make tinyconfig`` plus our fragments (guest-images/kernel/:
``hmm.config``, for the debug flavor also ``debug.config``, each with an
optional per-series ``NAME-X.Y.config`` next to it), checked after
olddefconfig so an option that did not stick fails the build loudly.

Debian sources are unpacked once per package version; each configuration is
built out of tree (``make O=``) into its own cache directory, which stays a
complete build tree so out-of-tree modules (the hmm-gpu driver) and the
selftests can be built against it. A developer's tree (``kernel_tree``) is
built the same way, out of tree, into a cache directory of its own; the tree
itself is never written to.

Debian's stock 6.1 image lives in :mod:`harness.build.stock`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.build import toolchain
from harness.build.apt import PrivateApt
from harness.build.cache import REPO_ROOT, Cache, InputHash
from harness.core.proc import run, run_with_progress

log = logging.getLogger(__name__)

FRAGMENT_DIR = REPO_ROOT / "guest-images" / "kernel"
FRAGMENT = FRAGMENT_DIR / "hmm.config"
DEBUG_FRAGMENT = FRAGMENT_DIR / "debug.config"

# kernel series -> Debian source package
SOURCES: dict[str, str] = {
    "6.1": "linux-source-6.1",
    "6.12": "linux-source-6.12",
    "7.2": "linux-source-7.2",
}
# The suite each series is taken from. Several suites carry some of these
# packages (bookworm-security has a linux-source-6.12 backport), and apt
# would pick the highest version among them: without a pin, a fresh cache
# built another 6.12 than a warm one. 6.1 lives in bookworm and its security
# updates only, so it takes the newest of those.
SUITES: dict[str, str | None] = {
    "6.1": None,
    "6.12": "trixie",
    "7.2": "sid",
}
FLAVORS = ("default", "debug")

# The build recipe as data: _configure and _make run exactly these commands
# (placeholders filled in), and the cache key hashes them, so a changed step
# is a new key without anyone remembering to bump a number. {jobs} is left out
# of the key (make -j does not change what is built); paths are placeholders.
CONFIG_STEPS: tuple[tuple[str, ...], ...] = (
    ("make", "-C", "{src}", "O={obj}", "ARCH=x86_64", "tinyconfig"),
    # cwd=obj: merge_config.sh writes its scratch files into the current directory,
    # which must never be a developer's source tree.
    ("{src}/scripts/kconfig/merge_config.sh", "-m", "-O", "{obj}", "{obj}/.config",
     "{fragments}"),
    ("make", "-C", "{src}", "O={obj}", "ARCH=x86_64", "olddefconfig"),
)
BUILD_STEP: tuple[str, ...] = ("make", "-C", "{src}", "O={obj}", "ARCH=x86_64", "-j{jobs}",
                               "bzImage", "modules")
# Removed after the build (only vmlinux links against them).
JUNK = ("vmlinux.o", "vmlinux.a")


def recipe_text() -> str:
    """The recipe as it enters the key: every command template, in order."""
    steps = [*CONFIG_STEPS, ("check fragments against .config",), BUILD_STEP, ("rm", *JUNK)]
    return "\n".join(" ".join(step) for step in steps)


def _expand(step: Sequence[str], src: Path, obj: Path, frags: Sequence[Path] = (),
            jobs: str = "1") -> list[str]:
    out: list[str] = []
    for arg in step:
        if arg == "{fragments}":
            out.extend(str(f) for f in frags)
        else:
            out.append(arg.format(src=src, obj=obj, jobs=jobs))
    return out


BUILD_TIMEOUT = 3 * 3600  # the debug flavor (KASAN, lockdep) takes longest
CONFIG_TIMEOUT = 300
GIT_TIMEOUT = 300

_OPTION = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.+)")
_NOT_SET = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")

# feature -> the option that must be =y in the built .config
CONFIG_FEATURES: dict[str, str] = {
    "device_private": "CONFIG_DEVICE_PRIVATE",
    "zone_device": "CONFIG_ZONE_DEVICE",
    "hmm_mirror": "CONFIG_HMM_MIRROR",
    "mmu_notifier": "CONFIG_MMU_NOTIFIER",
    "thp": "CONFIG_TRANSPARENT_HUGEPAGE",
    "hugetlbfs": "CONFIG_HUGETLBFS",
    "gup_test": "CONFIG_GUP_TEST",
    "debugfs": "CONFIG_DEBUG_FS",
    "modules": "CONFIG_MODULES",
    "intel_iommu": "CONFIG_INTEL_IOMMU",
    "swap": "CONFIG_SWAP",
    "ramdisk": "CONFIG_BLK_DEV_RAM",
    "pvpanic": "CONFIG_PVPANIC_PCI",
    "lkdtm": "CONFIG_LKDTM",
    "kasan": "CONFIG_KASAN",
    "lockdep": "CONFIG_PROVE_LOCKING",
    "debug_vm": "CONFIG_DEBUG_VM",
    "debug_atomic_sleep": "CONFIG_DEBUG_ATOMIC_SLEEP",
    "hung_task": "CONFIG_DETECT_HUNG_TASK",
    "softlockup": "CONFIG_SOFTLOCKUP_DETECTOR",
    "rcu_stall": "CONFIG_RCU_STALL_COMMON",
    "sysrq": "CONFIG_MAGIC_SYSRQ",
    "sysrq_keyboard": "CONFIG_KEYBOARD_ATKBD",  # QMP send-key types sysrq-w on it
    "rdma_rxe": "CONFIG_RDMA_RXE",  # built in: a module would need a modules initramfs
    "rdma_odp": "CONFIG_INFINIBAND_ON_DEMAND_PAGING",
    "rdma_user": "CONFIG_INFINIBAND_USER_ACCESS",
}
TEST_HMM_KO = "lib/test_hmm.ko"


class KernelError(RuntimeError):
    """A kernel cannot be configured or built; the message names the input and the fix."""


@dataclass(frozen=True)
class KernelArtifact:
    version: str  # Debian package version (6.12.107-1), or the tree's git describe
    tree: Path  # where out-of-tree modules build (make -C TREE M=...): O= dir or headers
    image: Path  # bzImage
    source: Path | None = None  # the kernel source (hmm-tests, test_hmm_uapi.h)
    config: Path | None = None  # the kernel's .config
    features: frozenset[str] = frozenset()
    label: str = ""  # "6.12.107-1", "6.12.107-1+debug", "stock 6.1.0-56", "tree:v6.13-rc1-5-g1234"
    release: str = ""  # uname -r
    initrds: tuple[Path, ...] = ()  # initramfs parts the kernel needs (stock: its modules)
    series: str = ""  # "6.12", "stock-6.1", or the tree's X.Y
    flavor: str = "default"
    source_package: str = ""  # "linux-source-6.12" (Debian kernels)
    key: str = ""  # its cache key (the last part of tree's directory name)
    warnings: tuple[str, ...] = ()  # e.g. the source is not the archive's candidate


# --- config fragments -------------------------------------------------------


def fragments(series: str | None, flavor: str = "default") -> list[Path]:
    """The fragment files for ``series`` and ``flavor``, in merge order (later wins)."""
    if flavor not in FLAVORS:
        raise KernelError(f"kernel flavor {flavor!r} is not known; choose one of "
                          f"{', '.join(FLAVORS)}")
    names = ["hmm", "debug"] if flavor == "debug" else ["hmm"]
    out: list[Path] = []
    for name in names:
        out.append(FRAGMENT_DIR / f"{name}.config")
        if series:
            per_series = FRAGMENT_DIR / f"{name}-{series}.config"
            if per_series.exists():
                out.append(per_series)
    return out


def parse_fragment(fragment: Path) -> dict[str, str]:
    """``CONFIG_X=v`` lines, and ``# CONFIG_X is not set`` as ``"n"``; other comments skipped."""
    want: dict[str, str] = {}
    for lineno, line in enumerate(fragment.read_text().splitlines(), 1):
        line = line.strip()
        m = _NOT_SET.fullmatch(line)
        if m:
            want[m.group(1)] = "n"
            continue
        if not line or line.startswith("#"):
            continue
        m = _OPTION.fullmatch(line)
        if not m:
            raise KernelError(
                f"{fragment}:{lineno}: expected CONFIG_NAME=value or "
                f"'# CONFIG_NAME is not set', got {line!r}"
            )
        want[m.group(1)] = m.group(2)
    return want


def merged_wants(frags: Sequence[Path]) -> dict[str, tuple[str, Path]]:
    """Option -> (value, fragment that set it), later fragments overriding earlier ones."""
    out: dict[str, tuple[str, Path]] = {}
    for f in frags:
        for k, v in parse_fragment(f).items():
            out[k] = (v, f)
    return out


def read_config(config: Path) -> dict[str, str]:
    """A .config as option -> value ("n" for ``is not set``)."""
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        m = _OPTION.fullmatch(line)
        if m:
            have[m.group(1)] = m.group(2)
            continue
        m = _NOT_SET.fullmatch(line)
        if m:
            have[m.group(1)] = "n"
    return have


def check_config(config: Path, frags: Path | Sequence[Path]) -> None:
    """Every option of the fragments must survive olddefconfig (else a dependency is missing)."""
    if isinstance(frags, Path):
        frags = [frags]
    have = read_config(config)
    lost = []
    for k, (v, frag) in merged_wants(frags).items():
        got = have.get(k, "n")
        if got != v:
            shown = "unset" if k not in have else got
            lost.append(f"{k}={v} from {frag.name} (got {shown})")
    if lost:
        raise KernelError(
            f"kernel config {config}: options did not stick (a dependency is missing from "
            "the fragment, or the option is named differently in this kernel: put the "
            f"right name in a per-series fragment such as {FRAGMENT_DIR}/hmm-X.Y.config):\n  "
            + "\n  ".join(lost)
        )


def features_of(config: Path, tree: Path | None = None) -> frozenset[str]:
    """What a built kernel offers, from its .config (and its tree: test_hmm.ko built?)."""
    have = read_config(config)
    feats = {f for f, opt in CONFIG_FEATURES.items() if have.get(opt) == "y"}
    if tree is not None and (tree / TEST_HMM_KO).exists():
        feats.add("test_hmm")
    return frozenset(feats)


# --- Debian sources -----------------------------------------------------------


def debian_version_key(versions: Iterable[str]) -> list[str]:
    """``versions`` sorted oldest first by Debian's rules (dpkg --compare-versions)."""
    import functools

    def cmp(a: str, b: str) -> int:
        if a == b:
            return 0
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b],
                            timeout=30, check=False).returncode == 0
        return -1 if lt else 1

    return sorted(versions, key=functools.cmp_to_key(cmp))


@dataclass(frozen=True)
class SourceChoice:
    deb: Path  # downloads/[<suite>/]<package>_<version>_all.deb
    version: str
    warning: str = ""  # why this is not the archive's candidate (recorded in results.json)


def _downloaded(downloads: Path, package: str) -> dict[str, Path]:
    return {d.name.split("_")[1]: d for d in downloads.glob(f"{package}_*_all.deb")}


def resolve_source(cache: Cache, package: str, logdir: Path, suite: str | None = None,
                   apt: PrivateApt | None = None) -> SourceChoice:
    """The linux-source .deb to build: the archive's candidate now, downloaded if needed.

    The candidate comes from the private lists (refreshed once a day), so a
    developer's warm cache and a cold CI run build the same version. When the
    archive cannot be reached (lists cannot be refreshed, or the candidate
    cannot be downloaded) the newest source already downloaded is used, with a
    warning the caller records. With ``suite``, only that suite's package
    (kept in ``downloads/<suite>/``).
    """
    downloads = cache.path("downloads", suite) if suite else cache.path("downloads")
    apt = apt or PrivateApt(cache.path("apt"))
    spec = f"{package}/{suite}" if suite else package
    alog = logdir / "apt.log"
    try:
        apt.ensure_lists(alog)
        version = apt.candidate(spec)
        exact = downloads / f"{package}_{version.replace(':', '%3a')}_all.deb"
        if not exact.exists():
            log.info("kernel: downloading %s=%s", package, version)
            apt.download(f"{package}={version}", downloads, alog)
        if not exact.exists():
            raise RuntimeError(f"apt-get download {package}={version} left no {exact.name}")
        return SourceChoice(exact, version)
    except RuntimeError as e:  # a failed apt command (CommandError) included
        have = _downloaded(downloads, package)
        if not have:
            raise KernelError(f"{spec}: the archive cannot be reached and no source is "
                              f"downloaded in {downloads}: {e}") from e
        version = debian_version_key(have)[-1]
        warning = (f"{spec}: could not resolve the archive's candidate ({str(e).strip()[:300]});"
                   f" building {version}, the newest source already downloaded")
        log.warning("kernel: %s", warning)
        return SourceChoice(have[version], version, warning)


def source_deb(cache: Cache, package: str, logdir: Path, version: str | None = None,
               suite: str | None = None, apt: PrivateApt | None = None) -> Path:
    """The linux-source .deb of ``version`` (downloaded if needed), or without a version
    the archive's candidate (:func:`resolve_source`)."""
    if version is None:
        return resolve_source(cache, package, logdir, suite, apt).deb
    downloads = cache.path("downloads", suite) if suite else cache.path("downloads")
    exact = downloads / f"{package}_{version}_all.deb"
    if exact.exists():
        return exact
    apt = apt or PrivateApt(cache.path("apt"))
    apt.ensure_lists(logdir / "apt.log")
    log.info("kernel: downloading %s=%s", package, version)
    return apt.download(f"{package}={version}", downloads, logdir / "apt.log")


# Kept for callers of the old name.
_source_deb = source_deb


def unpack_source(cache: Cache, deb: Path, package: str, logdir: Path) -> Path:
    """linux-src/<version>/: the unpacked source of ``deb`` (once; shared by all flavors)."""
    version = deb.name.split("_")[1]
    final = cache.path("linux-src", version)
    if (final / "Makefile").exists():
        return final
    with cache.lock(f"linux-src-{version}"):
        if (final / "Makefile").exists():
            return final
        log.info("kernel: unpacking %s %s", package, version)
        ulog = logdir / "kernel-unpack.log"
        with cache.building(final) as tmp:
            run(["dpkg-deb", "-x", deb, tmp / "deb"], timeout=600, logfile=ulog)
            tarballs = list((tmp / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
            if len(tarballs) != 1:
                raise KernelError(f"{deb.name}: expected one linux-source tarball, got {tarballs}")
            run(["tar", "-xf", tarballs[0], "-C", tmp, "--strip-components=1"], timeout=900,
                logfile=ulog)
            shutil.rmtree(tmp / "deb")
    return final


_unpack_source = unpack_source


# --- building -------------------------------------------------------------------


def _kernel_release(obj: Path) -> str:
    f = obj / "include" / "config" / "kernel.release"
    return f.read_text().strip() if f.exists() else ""


def _configure(src: Path, obj: Path, frags: Sequence[Path], klog: Path) -> None:
    for step in CONFIG_STEPS:
        run(_expand(step, src, obj, frags), cwd=obj, timeout=CONFIG_TIMEOUT, logfile=klog)
    check_config(obj / ".config", frags)


def _make(src: Path, obj: Path, klog: Path, label: str) -> None:
    jobs = str(os.cpu_count() or 2)
    log.info("kernel: building %s (trimmed config, -j%s; several minutes cold, log %s)",
             label, jobs, klog)
    run_with_progress(_expand(BUILD_STEP, src, obj, jobs=jobs),
                      label=f"kernel {label}", timeout=BUILD_TIMEOUT, logfile=klog)


def _artifact(version: str, obj: Path, src: Path, label: str, series: str,
              flavor: str) -> KernelArtifact:
    config = obj / ".config"
    return KernelArtifact(
        version=version, tree=obj, image=obj / "arch" / "x86" / "boot" / "bzImage",
        source=src, config=config, features=features_of(config, obj), label=label,
        release=_kernel_release(obj), series=series, flavor=flavor,
    )


def debian_key(deb_name: str, flavor: str, frags: Sequence[Path],
               tools: dict[str, str] | None = None) -> str:
    """The key of a Debian kernel: the exact source package (its .deb name carries the
    version), the flavor, the fragments' bytes, the recipe's commands and the
    toolchain (``tools``, default the host's now: :mod:`harness.build.toolchain`)."""
    h = InputHash("kernel").text("package", deb_name).text("flavor", flavor)
    for f in frags:
        h.file(f, label=f"fragment/{f.name}")
    h.text("recipe", recipe_text())
    return toolchain.add_to(h, tools).hexdigest()


def build_kernel(cache: Cache, logdir: Path, series: str = "6.12",
                 flavor: str = "default") -> KernelArtifact:
    """Debian's linux-source-``series`` with our fragments (cached)."""
    if series not in SOURCES:
        raise KernelError(f"kernel {series!r} is not known; choose one of {', '.join(SOURCES)}")
    package = SOURCES[series]
    frags = fragments(series, flavor)
    choice = resolve_source(cache, package, logdir, suite=SUITES[series])
    deb, version = choice.deb, choice.version
    extra: dict[str, Any] = {"source_package": package,
                             "warnings": (choice.warning,) if choice.warning else ()}
    label = version if flavor == "default" else f"{version}+{flavor}"
    key = debian_key(deb.name, flavor, frags)
    extra["key"] = key
    final = cache.path("kernel", f"{series}-{flavor}-{key}")
    image = final / "arch" / "x86" / "boot" / "bzImage"
    stamp = final / ".hmmlab-complete"
    src = cache.path("linux-src", version)
    if stamp.exists() and image.exists() and (src / "Makefile").exists():
        log.info("kernel: %s cached (%s)", label, final)
        return replace(_artifact(version, final, src, label, series, flavor), **extra)

    src = unpack_source(cache, deb, package, logdir)
    klog = logdir / f"kernel-{series}-{flavor}.log"
    # Built in place (kbuild records absolute paths, so the tree cannot be
    # renamed afterwards); the stamp marks it complete. An entry may be a
    # symlink to an equivalent tree built under an older key: replace the link only.
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    try:
        _configure(src, final, frags, klog)
        _make(src, final, klog, label)
        # Only vmlinux links against these; modules and selftests never do.
        for junk in JUNK:
            (final / junk).unlink(missing_ok=True)
    except BaseException:
        log.error("kernel: %s build failed; log kept in %s", label, klog)
        shutil.rmtree(final, ignore_errors=True)
        raise
    stamp.write_text(version + "\n")
    # The `source` symlink kbuild writes points into linux-src; both live in the cache.
    return replace(_artifact(version, final, src, label, series, flavor), **extra)


# --- a developer's own tree -------------------------------------------------------


def _git(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    # --no-optional-locks: status/describe must not refresh and rewrite the
    # tree's .git/index (we never write to the developer's tree).
    return run(["git", "--no-optional-locks", "-C", tree, *args], timeout=GIT_TIMEOUT,
               check=check)


def is_git_tree(tree: Path) -> bool:
    if shutil.which("git") is None:
        return False
    cp = _git(tree, "rev-parse", "--show-toplevel", check=False)
    return cp.returncode == 0 and Path(cp.stdout.decode().strip()).resolve() == tree.resolve()


@dataclass(frozen=True)
class TreeState:
    describe: str  # "v6.13-rc1-5-g1234abcd-dirty", or "mtime:<hash>" outside git
    digest: str  # changes whenever the tree's content does


def tree_state(tree: Path) -> TreeState:
    """What the tree holds now, cheaply.

    In a git tree: HEAD pins every committed file, and the dirty part is
    hashed exactly — ``git diff HEAD --binary`` (staged and unstaged edits)
    plus the content of untracked, non-ignored files — so an edit changes
    the key and a revert brings the old key back. Outside git there is no
    cheap content identity, so every file's path, size and mtime is hashed:
    touching a file rebuilds (kbuild then finds what really changed).
    """
    h = hashlib.sha256()
    if is_git_tree(tree):
        head = _git(tree, "rev-parse", "HEAD").stdout.decode().strip()
        describe = _git(tree, "describe", "--always", "--tags",
                        "--abbrev=12").stdout.decode().strip()
        status = _git(tree, "status", "--porcelain=v1", "-z", "--untracked-files=all").stdout
        h.update(f"git\0{head}\0".encode())
        if status:
            describe += "-dirty"
            h.update(_git(tree, "diff", "HEAD", "--binary", "--no-ext-diff").stdout)
            untracked = _git(tree, "ls-files", "-z", "--others", "--exclude-standard").stdout
            for rel in sorted(p for p in untracked.decode(errors="surrogateescape").split("\0")
                              if p):
                p = tree / rel
                h.update(f"\0untracked\0{rel}\0".encode())
                if p.is_file() and not p.is_symlink():
                    h.update(p.read_bytes())
                elif p.is_symlink():
                    h.update(os.readlink(p).encode())
        return TreeState(describe, h.hexdigest()[:16])
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(tree)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    digest = h.hexdigest()[:16]
    return TreeState(f"mtime:{digest[:12]}", digest)


def tree_series(tree: Path) -> str:
    """``X.Y`` from the tree's top Makefile (selects per-series fragments)."""
    text = (tree / "Makefile").read_text(errors="replace")
    ver = re.search(r"^VERSION\s*=\s*(\d+)", text, re.M)
    patch = re.search(r"^PATCHLEVEL\s*=\s*(\d+)", text, re.M)
    if not (ver and patch):
        raise KernelError(f"{tree}/Makefile: no VERSION/PATCHLEVEL lines; is {tree} a Linux "
                          "source tree?")
    return f"{ver.group(1)}.{patch.group(1)}"


def check_tree(tree: Path) -> None:
    """A usable source tree for an out-of-tree build, or a clear error naming the fix."""
    if not tree.is_dir():
        raise KernelError(f"--kernel-tree {tree}: no such directory")
    missing = [n for n in ("Makefile", "Kconfig", "arch/x86/Kconfig",
                           "scripts/kconfig/merge_config.sh") if not (tree / n).exists()]
    if missing:
        raise KernelError(f"--kernel-tree {tree}: not a Linux source tree (missing "
                          f"{', '.join(missing)})")
    # kbuild refuses O= builds from a source tree that was configured or built
    # in place ("source tree is not clean"); say so before make does, with the fix.
    dirty = [n for n in (".config", "include/config", "include/generated",
                         "arch/x86/include/generated") if (tree / n).exists()]
    if dirty:
        raise KernelError(
            f"--kernel-tree {tree}: the tree has been configured or built in place "
            f"({', '.join(dirty)} exist), and kbuild's out-of-tree build (O=) refuses such a "
            f"tree. hmmlab builds out of tree and never writes into yours. Fix: "
            f"`make -C {tree} mrproper` (it deletes {tree}/.config: copy it away first if you "
            "need it), or point --kernel-tree at a clean worktree (`git worktree add`)."
        )


def tree_build_dir(cache: Cache, tree: Path, flavor: str, frags: Sequence[Path]) -> Path:
    """The O= directory for ``tree``: one per (tree path, flavor, fragments).

    It does not depend on the tree's content, so after an edit the same
    directory is rebuilt incrementally (the developer's edit-build-test loop);
    the content key lives in the stamp.
    """
    h = InputHash("kernel-tree-dir").text("path", str(tree.resolve())).text("flavor", flavor)
    for f in frags:
        h.file(f, label=f"fragment/{f.name}")
    return cache.path("kernel", f"tree-{flavor}-{h.text('recipe', recipe_text()).hexdigest()}")


def tree_key(tree: Path, flavor: str, frags: Sequence[Path], state: TreeState,
             tools: dict[str, str] | None = None) -> str:
    h = InputHash("kernel-tree").text("path", str(tree.resolve())).text("flavor", flavor)
    h.text("state", state.digest)
    for f in frags:
        h.file(f, label=f"fragment/{f.name}")
    h.text("recipe", recipe_text())
    return toolchain.add_to(h, tools).hexdigest()


def build_tree_kernel(cache: Cache, logdir: Path, tree: Path,
                      flavor: str = "default") -> KernelArtifact:
    """A developer's tree, built out of tree into the cache (incremental after edits)."""
    tree = tree.expanduser().resolve()
    check_tree(tree)
    series = tree_series(tree)
    frags = fragments(series, flavor)
    state = tree_state(tree)
    key = tree_key(tree, flavor, frags, state)
    obj = tree_build_dir(cache, tree, flavor, frags)
    label = f"tree:{state.describe}" + ("" if flavor == "default" else f"+{flavor}")
    stamp = obj / ".hmmlab-complete"
    image = obj / "arch" / "x86" / "boot" / "bzImage"
    if stamp.exists() and stamp.read_text().split() == [key] and image.exists():
        log.info("kernel: %s cached (%s)", label, obj)
        return _artifact(state.describe, obj, tree, label, series, flavor)
    klog = logdir / f"kernel-tree-{flavor}.log"
    stamp.unlink(missing_ok=True)
    obj.mkdir(parents=True, exist_ok=True)
    try:
        _configure(tree, obj, frags, klog)
        _make(tree, obj, klog, label)
    except BaseException:
        # Keep the object directory: the next attempt continues incrementally.
        log.error("kernel: %s build failed; log kept in %s", label, klog)
        raise
    stamp.write_text(key + "\n")
    return _artifact(state.describe, obj, tree, label, series, flavor)


# --- entry point -----------------------------------------------------------------


def lock_name(kernel: str, flavor: str, kernel_tree: Path | None = None) -> str:
    if kernel_tree is not None:
        path_hash = hashlib.sha256(str(kernel_tree.expanduser().resolve()).encode()).hexdigest()
        return f"kernel-tree-{path_hash[:12]}-{flavor}"
    return f"kernel-{kernel}-{flavor}"


def get_kernel(cache: Cache, logdir: Path, kernel: str = "6.12", flavor: str = "default",
               kernel_tree: Path | None = None) -> KernelArtifact:
    """The kernel a run asks for, built or found in the cache, under its own lock."""
    from harness.build.stock import STOCK, build_stock

    if flavor not in FLAVORS:
        raise KernelError(f"kernel flavor {flavor!r} is not known; choose one of "
                          f"{', '.join(FLAVORS)}")
    with cache.lock(lock_name(kernel, flavor, kernel_tree)):
        if kernel_tree is not None:
            return build_tree_kernel(cache, logdir, kernel_tree, flavor)
        if kernel in STOCK:
            if flavor != "default":
                raise KernelError(f"kernel {kernel!r} is Debian's own build: it has no "
                                  f"{flavor!r} flavor (use flavor: default)")
            return build_stock(cache, logdir, kernel)
        return build_kernel(cache, logdir, kernel, flavor)


def main() -> None:
    import argparse
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description="Build an hmmlab guest kernel.")
    ap.add_argument("series", nargs="?", default="6.12",
                    help=f"one of {', '.join(SOURCES)} or stock-6.1")
    ap.add_argument("--flavor", default="default", choices=FLAVORS)
    ap.add_argument("--kernel-tree", type=Path, default=None)
    ap.add_argument("--logdir", type=Path, default=None)
    args = ap.parse_args()
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="hmmlab-kbuild-"))
    try:
        art = get_kernel(Cache.default(), logdir, args.series, args.flavor, args.kernel_tree)
    except KernelError as e:
        raise SystemExit(str(e)) from None
    print(f"{art.label}: {art.image}")
    print(f"  tree {art.tree}\n  source {art.source}\n  features {' '.join(sorted(art.features))}")


if __name__ == "__main__":
    main()

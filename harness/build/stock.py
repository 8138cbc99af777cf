"""Debian's stock kernel (``stock-6.1``): the archive's own image and headers.

Nothing is compiled: the unsigned image, its headers (arch and common part)
and linux-kbuild are downloaded through the private apt state and unpacked
with ``dpkg-deb -x`` into one cache directory, laid out as on a Debian host
(``boot/``, ``lib/modules/``, ``usr/src/``, ``usr/lib/linux-kbuild-6.1``).
The absolute paths Debian's packages carry (the headers Makefile includes
``/usr/src/linux-headers-*-common/Makefile``; ``lib/modules/*/build`` and
``source`` links) are rewritten to the cache, so ``make -C <headers> M=...``
builds modules from there.

Debian builds virtio, virtio-net and friends as modules, while our busybox
initramfs has none: an extra initramfs part carries those modules (and what
they depend on, from the host's ``depmod -b``) plus ``hmmlab-modules``, the
list the guest's rcS insmods in dependency order before networking.

The matching ``linux-source-6.1`` (same Debian version) is unpacked too: the
payload builder takes hmm-tests and test_hmm's uAPI header from it.
Stock 6.1 has no DEVICE_PRIVATE and no TEST_HMM; the artifact's features say so.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.build import toolchain
from harness.build.apt import PrivateApt
from harness.build.cache import Cache, InputHash
from harness.build.kernel import (
    KernelArtifact,
    KernelError,
    debian_version_key,
    features_of,
    source_deb,
    unpack_source,
)
from harness.core.files import pack_cpio
from harness.core.proc import run

log = logging.getLogger(__name__)

# run's kernel name -> Debian kernel series
STOCK: dict[str, str] = {"stock-6.1": "6.1"}
FLAVOR = "amd64"

# Modules the guest needs before networking: PCI virtio transport and the NIC
# (required); entropy and pvpanic (loaded when the image has them as modules).
REQUIRED_MODULES = ("virtio_pci", "virtio_net")
OPTIONAL_MODULES = ("virtio_rng", "pvpanic_pci")
LOAD_LIST = "hmmlab-modules"

UNPACK_TIMEOUT = 600
# The recipe is this file's code (unpack, path fix-up, the modules initrd) run
# with the host's depmod, cpio and gzip: their bytes and versions are the key,
# no hand-bumped number. (A rebuild is an unpack of four .debs: seconds.)
RECIPE_TOOLS: dict[str, tuple[str, ...]] = {
    "depmod": ("depmod", "--version"),
    "cpio": ("cpio", "--version"),
    "gzip": ("gzip", "--version"),
}


@dataclass(frozen=True)
class StockChoice:
    series: str  # "6.1"
    abi: str  # "56" in 6.1.0-56
    version: str  # Debian version of all four packages, e.g. 6.1.192-2

    @property
    def release(self) -> str:
        return f"{self.series}.0-{self.abi}-{FLAVOR}"

    def packages(self) -> dict[str, str]:
        """role -> binary package name."""
        return {
            "image": f"linux-image-{self.release}-unsigned",
            "headers": f"linux-headers-{self.release}",
            "common": f"linux-headers-{self.series}.0-{self.abi}-common",
            "kbuild": f"linux-kbuild-{self.series}",
        }

    def deb_names(self) -> dict[str, str]:
        arch = {"image": "amd64", "headers": "amd64", "common": "all", "kbuild": "amd64"}
        return {role: f"{pkg}_{self.version}_{arch[role]}.deb"
                for role, pkg in self.packages().items()}

    @property
    def source_package(self) -> str:
        return f"linux-source-{self.series}"


def image_regex(series: str) -> str:
    return rf"^linux-image-{re.escape(series)}\.0-([0-9]+)-{FLAVOR}-unsigned$"


def select_stock(series: str, versions: Mapping[str, Sequence[str]]) -> StockChoice:
    """The newest stock kernel whose image, headers, kbuild and source all exist.

    ``versions`` maps package name -> versions the archive offers (every
    linux-image-X.0-N-amd64-unsigned and the packages around it). Debian
    sometimes publishes an image before the matching linux-kbuild or source
    (or drops them), so the newest ABI alone is not enough.
    """
    pat = re.compile(image_regex(series))
    images = sorted(((int(m.group(1)), name) for name in versions
                     if (m := pat.match(name))), reverse=True)
    if not images:
        raise KernelError(f"stock-{series}: the archive lists no linux-image-{series}.0-*-"
                          f"{FLAVOR}-unsigned (are bookworm and bookworm-security in the "
                          "private apt sources?)")
    tried: list[str] = []
    for abi, name in images:
        for version in reversed(debian_version_key(versions[name])):
            choice = StockChoice(series, str(abi), version)
            wanted = [*choice.packages().values(), choice.source_package]
            missing = [p for p in wanted if version not in versions.get(p, ())]
            if not missing:
                return choice
            tried.append(f"{choice.release} {version} (no {', '.join(missing)})")
    raise KernelError(f"stock-{series}: no image has matching headers, kbuild and source "
                      "at the same version:\n  " + "\n  ".join(tried))


def _downloaded_choice(downloads: Path, series: str) -> StockChoice | None:
    """The newest complete set already in ``downloads`` (warm runs need no network)."""
    pat = re.compile(rf"linux-image-{re.escape(series)}\.0-([0-9]+)-{FLAVOR}-unsigned_"
                     r"([^_]+)_amd64\.deb")
    found: list[StockChoice] = []
    for deb in downloads.glob(f"linux-image-{series}.0-*-{FLAVOR}-unsigned_*.deb"):
        m = pat.fullmatch(deb.name)
        if not m:
            continue
        choice = StockChoice(series, m.group(1), m.group(2))
        names = [*choice.deb_names().values(),
                 f"{choice.source_package}_{choice.version}_all.deb"]
        if all((downloads / n).exists() for n in names):
            found.append(choice)
    if not found:
        return None
    by_version = {c.version: c for c in found}
    newest = debian_version_key(by_version)[-1]
    return max((c for c in found if c.version == newest), key=lambda c: int(c.abi))


def choose_stock(cache: Cache, series: str, logdir: Path,
                 apt: PrivateApt | None = None) -> tuple[StockChoice, str]:
    """The archive's newest complete stock kernel now (downloaded if needed), and a
    warning ("" if none): when the archive cannot be reached, the newest complete
    set already downloaded, with the warning saying so."""
    downloads = cache.path("downloads")
    apt = apt or PrivateApt(cache.path("apt"))
    try:
        apt.ensure_lists(logdir / "apt.log")
        names = apt.search_names(image_regex(series))
        # only the newest few ABIs need their companions looked up
        pat = re.compile(image_regex(series))
        abis = sorted((int(m.group(1)) for n in names if (m := pat.match(n))),
                      reverse=True)[:3]
        wanted = set(names)
        for abi in abis:
            probe = StockChoice(series, str(abi), "")
            wanted.update((*probe.packages().values(), probe.source_package))
        choice = select_stock(series, apt.versions_of(sorted(wanted)))
        missing = [n for n in choice.deb_names().values() if not (downloads / n).exists()]
        if missing:
            log.info("kernel: stock-%s is %s (%s)", series, choice.release, choice.version)
            apt.download_many([f"{pkg}={choice.version}" for pkg in choice.packages().values()],
                              downloads, logdir / "apt.log")
        missing = [n for n in choice.deb_names().values() if not (downloads / n).exists()]
        if missing:
            raise KernelError(f"stock-{series}: apt-get download left no {', '.join(missing)} "
                              f"in {downloads} (see {logdir / 'apt.log'})")
        return choice, ""
    except RuntimeError as e:  # apt failed (CommandError), or the download did
        have = _downloaded_choice(downloads, series)
        if have is None:
            raise
        warning = (f"stock-{series}: could not resolve the archive's newest image "
                   f"({str(e).strip()[:300]}); using {have.release} {have.version}, the newest "
                   "already downloaded")
        log.warning("kernel: %s", warning)
        return have, warning


# --- the guest's modules ---------------------------------------------------------


def _mod_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep as module path -> the paths it depends on."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod.strip()] = rest.split()
    return deps


def load_order(deps: Mapping[str, Sequence[str]], wanted: Sequence[str],
               optional: Sequence[str] = (), builtin: Sequence[str] = ()) -> list[str]:
    """Module paths to insmod, dependencies first, for the ``wanted`` module names.

    A wanted module that is built in needs nothing; a missing required one is
    an error, a missing optional one is left out.
    """
    by_name = {_mod_name(p): p for p in deps}
    builtin_names = {_mod_name(p) for p in builtin}
    order: list[str] = []

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in chain:
            raise KernelError(f"modules.dep: dependency cycle {' -> '.join((*chain, path))}")
        for dep in deps.get(path, ()):
            visit(dep, (*chain, path))
        order.append(path)

    for name in (*wanted, *optional):
        key = name.replace("-", "_")
        if key in builtin_names:
            continue
        if key not in by_name:
            if name in optional:
                continue
            raise KernelError(f"stock kernel: module {name} is neither built in nor in "
                              "modules.dep; the guest would have no network")
        visit(by_name[key], ())
    return order


def _modules_initrd(root: Path, release: str, out: Path, logfile: Path) -> list[str]:
    """Pack the guest's modules and their load list; returns the load order."""
    moddir = root / "lib" / "modules" / release
    # The host's depmod (kmod) against the unpacked tree: no guest-side depmod needed.
    run(["depmod", "-b", root, release], timeout=300, logfile=logfile)
    deps = parse_modules_dep((moddir / "modules.dep").read_text())
    builtin = (moddir / "modules.builtin").read_text().split()
    order = load_order(deps, REQUIRED_MODULES, OPTIONAL_MODULES, builtin)
    stage = out.parent / "modules-root"
    # usr/lib: the rootfs has a merged /usr, and a "lib" directory in this
    # appended archive would replace its /lib -> usr/lib link (rcS still finds
    # /lib/modules through it)
    dest = stage / "usr" / "lib" / "modules" / release
    dest.mkdir(parents=True)
    for rel in order:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dest / rel)
    # modules.dep for what we ship (busybox modprobe works in the guest too)
    (dest / "modules.dep").write_text(
        "".join(f"{rel}: {' '.join(deps[rel])}\n".replace(": \n", ":\n") for rel in order))
    shutil.copy2(moddir / "modules.builtin", dest / "modules.builtin")
    (dest / LOAD_LIST).write_text("".join(f"{rel}\n" for rel in order))
    pack_cpio(stage, out, logfile, overlay=True)
    shutil.rmtree(stage)
    return order


# --- unpack and fix-up ------------------------------------------------------------


def _fix_paths(root: Path, choice: StockChoice) -> None:
    """Point Debian's absolute /usr/src paths at the unpacked copy under ``root``."""
    headers = root / "usr" / "src" / f"linux-headers-{choice.release}"
    common = root / "usr" / "src" / f"linux-headers-{choice.series}.0-{choice.abi}-common"
    makefile = headers / "Makefile"
    text = makefile.read_text()
    fixed = re.sub(r"^include\s+/usr/src/", f"include {root}/usr/src/", text, flags=re.M)
    if fixed == text:
        raise KernelError(f"{makefile}: expected `include /usr/src/...-common/Makefile`, got "
                          f"{text!r}; Debian changed the headers layout")
    makefile.write_text(fixed)
    moddir = root / "lib" / "modules" / choice.release
    for link, target in (("build", headers), ("source", common)):
        p = moddir / link
        if p.is_symlink() or p.exists():
            p.unlink()
        p.symlink_to(Path("../../..") / target.relative_to(root))


def stock_key(choice: StockChoice, tools: dict[str, str] | None = None) -> str:
    h = InputHash("stock").file(Path(__file__), label="harness/build/stock.py")
    for name, line in sorted((tools if tools is not None
                              else toolchain.versions(RECIPE_TOOLS)).items()):
        h.text(f"tool/{name}", line)
    for role, name in sorted(choice.deb_names().items()):
        h.text(role, name)
    h.text("modules", " ".join((*REQUIRED_MODULES, *OPTIONAL_MODULES)))
    return h.hexdigest()


def build_stock(cache: Cache, logdir: Path, kernel: str = "stock-6.1") -> KernelArtifact:
    """Debian's stock ``kernel`` unpacked into the cache, ready to boot and build against."""
    if kernel not in STOCK:
        raise KernelError(f"kernel {kernel!r} is not a stock kernel; choose one of "
                          f"{', '.join(STOCK)}")
    series = STOCK[kernel]
    choice, warning = choose_stock(cache, series, logdir)
    # The same Debian version's source: hmm-tests and test_hmm_uapi.h for the payload.
    src_deb = source_deb(cache, choice.source_package, logdir, choice.version)
    src = unpack_source(cache, src_deb, choice.source_package, logdir)

    key = stock_key(choice)
    final = cache.path("kernel", f"stock-{choice.release}-{key}")
    root = final / "root"
    initrd = final / "modules.cpio.gz"
    stamp = final / ".hmmlab-complete"
    if not stamp.exists():
        slog = logdir / f"kernel-{kernel}.log"
        log.info("kernel: unpacking Debian's %s %s", choice.release, choice.version)
        downloads = cache.path("downloads")
        # Unpacked in place: the fixed-up paths name the final directory.
        if final.exists():
            shutil.rmtree(final)
        root.mkdir(parents=True)
        try:
            for name in choice.deb_names().values():
                run(["dpkg-deb", "-x", downloads / name, root], timeout=UNPACK_TIMEOUT,
                    logfile=slog)
            _fix_paths(root, choice)
            order = _modules_initrd(root, choice.release, initrd, slog)
            (final / LOAD_LIST).write_text("".join(f"{m}\n" for m in order))
            # Keep only what boots and builds: the other 3000-odd modules go.
            kmods = root / "lib" / "modules" / choice.release / "kernel"
            shutil.rmtree(kmods)
            shutil.rmtree(root / "usr" / "share", ignore_errors=True)
        except BaseException:
            log.error("kernel: stock %s failed; log kept in %s", choice.release, slog)
            shutil.rmtree(final, ignore_errors=True)
            raise
        stamp.write_text(choice.version + "\n")
    else:
        log.info("kernel: stock %s cached (%s)", choice.release, final)

    config = root / "boot" / f"config-{choice.release}"
    loaded = {_mod_name(m) for m in (final / LOAD_LIST).read_text().split()}
    feats = set(features_of(config))
    if "pvpanic_pci" in loaded:
        feats.add("pvpanic")  # as a module from our initrd
    return KernelArtifact(
        version=choice.version,
        tree=root / "usr" / "src" / f"linux-headers-{choice.release}",
        image=root / "boot" / f"vmlinuz-{choice.release}",
        source=src,
        config=config,
        features=frozenset(feats),
        label=f"stock {choice.series}.0-{choice.abi}",
        release=choice.release,
        initrds=(initrd,),
        series=kernel,
        flavor="default",
        source_package=choice.source_package,
        key=key,
        warnings=(warning,) if warning else (),
    )

"""Guest payload builder: ``hmm_gpu.ko``, ``hmm_nic.ko`` and the static workloads.

The driver is built out of tree against a kernel's build directory (``make
-C TREE M=scratch W=1 modules``: a built tree, or a distribution's headers)
from a flat scratch copy of ``guest-images/driver/`` plus the device ABI
header; the workloads are built statically with their Makefile. Both are
packed into ``payload.cpio.gz`` (newc, owned by root), which the launcher
appends to the rootfs initramfs:

    /opt/hmmlab/hmm_gpu.ko
    /opt/hmmlab/hmm_nic.ko             if the kernel has user verbs and ODP (see below)
    /opt/hmmlab/test_hmm.ko            the kernel's own lib/test_hmm.ko (the baseline), if built
    /opt/hmmlab/kernel.json            what the kernel offers (see below)
    /opt/hmmlab/bin/hmm-gpu-smoke, svm-mirror, svm-invalidate, hmm-bench, ...
    /opt/hmmlab/bin/hmm-tests          tools/testing/selftests/{mm,vm}/hmm-tests.c, unmodified
    /opt/hmmlab/bin/odp-rc.py, odp-implicit.py, odp-gpu.py, odp-lat.py, odp-xvm.py,
                                       odp_common.py
                                       pyverbs workloads, copied as they are (see SCRIPTS)

hmm-tests is built statically from the kernel's own source, so it always
matches the kernel and test_hmm.ko it runs against (6.1 keeps it in
selftests/vm, later kernels in selftests/mm; the helper sources it needs are
found by following its includes).

``kernel.json`` tells the scenarios what this kernel can do, so they SKIP
what it cannot with a reason instead of failing: ``features`` (from the
kernel's .config: "device_private", "test_hmm", ...), ``name`` (for
reasons: "Debian stock 6.1"), the W=1 warnings the driver build printed, and
which hmm-tests need device-private memory (:func:`hmm_tests_needs`).

``hmm_nic.ko`` (guest-images/nic-driver/, built the same way against
``hmm_nic_regs.h`` and the shared ``hmm_gpu_regs.h``) is built only for a
kernel whose .config has the RDMA core with user verbs and on-demand paging
(:func:`nic_buildable`); ``kernel.json`` then lists ``hmm_nic.ko`` in
``modules`` and its W=1 warnings in ``nic_driver_warnings``. Its build
failing fails the payload, as the GPU driver's does.

The artifact directory also keeps the unstripped module and binaries next to
the archive, for symbolising oopses.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.build import toolchain
from harness.build.cache import REPO_ROOT, Cache, InputHash
from harness.build.kernel import features_of, read_config
from harness.core.files import pack_cpio
from harness.core.proc import run

log = logging.getLogger(__name__)

DRIVER_DIR = REPO_ROOT / "guest-images" / "driver"
WORKLOADS_DIR = REPO_ROOT / "guest-images" / "workloads"
ABI_HEADER = REPO_ROOT / "qemu-devices" / "include" / "hmm_gpu_regs.h"
NIC_DRIVER_DIR = REPO_ROOT / "guest-images" / "nic-driver"
NIC_ABI_HEADER = REPO_ROOT / "qemu-devices" / "include" / "hmm_nic_regs.h"

MODULE = "hmm_gpu.ko"
NIC_MODULE = "hmm_nic.ko"
# What hmm_nic.ko needs of the kernel: option -> accepted values.
NIC_CONFIG = {"CONFIG_INFINIBAND_USER_ACCESS": ("y", "m"),
              "CONFIG_INFINIBAND_ON_DEMAND_PAGING": ("y",)}
WORKLOADS = ("hmm-gpu-smoke", "svm-mirror", "svm-invalidate", "svm-migrate", "vram-pressure",
             "atomics", "hmm-bench", "dmirror-edge", "svm-race", "svm-reclaim", "svm-one")
# Python workloads (pyverbs, which the rootfs has: harness.build.guest_debs), installed
# from guest-images/workloads as they are: script -> mode. The scripts import the
# module from their own directory.
SCRIPTS = {"odp-rc.py": 0o755, "odp-implicit.py": 0o755, "odp-gpu.py": 0o755,
           "odp-lat.py": 0o755, "odp-xvm.py": 0o755, "odp_common.py": 0o644}
GUEST_DIR = "opt/hmmlab"
MANIFEST = "kernel.json"

# The kernel's own HMM selftest and baseline module, from the kernel tree.
TEST_HMM_KO = "lib/test_hmm.ko"
SELFTEST_DIRS = ("tools/testing/selftests/mm", "tools/testing/selftests/vm")  # 6.3+, 6.1
HMM_TESTS = "hmm-tests"
HMM_TESTS_MAIN = "hmm-tests.c"

# Files of a kernel tree that identify what a module built against it must match.
KERNEL_IDENTITY = (".config", "Module.symvers", "include/config/kernel.release")

MODULE_TIMEOUT = 900
WORKLOAD_TIMEOUT = 600
PACK_TIMEOUT = 300

# Build products that may sit next to the sources after an in-place build.
_PRODUCT_SUFFIXES = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".a", ".tmp")
_PRODUCT_NAMES = {"modules.order", "Module.symvers", *WORKLOADS}


class PayloadError(RuntimeError):
    """The payload cannot be built (a tool is missing, or a build step failed)."""


@dataclass(frozen=True)
class PayloadKernel:
    """What the payload is built against, whatever kind of kernel it is."""

    tree: Path  # make -C TREE M=...: a built O= tree or a headers directory
    source: Path  # the kernel source: hmm-tests, lib/test_hmm_uapi.h
    config: Path  # its .config
    name: str  # in SKIP reasons: "6.12.107-1", "Debian stock 6.1", "tree:v7.0-rc1"
    features: frozenset[str]
    test_hmm: Path | None  # lib/test_hmm.ko, None when the kernel has no TEST_HMM
    release: str = ""  # uname -r of the kernel it boots

    @classmethod
    def of(cls, kernel: Any) -> PayloadKernel:
        """From a :class:`harness.build.kernel.KernelArtifact`, or a built tree's path.

        A bare path must be a complete build tree (its ``source`` link leads to
        the source, its ``.config`` says what it offers).
        """
        if isinstance(kernel, (str, os.PathLike)):
            tree = Path(kernel).resolve()
            source, config, name, feats = (tree / "source").resolve(), tree / ".config", "", None
            release = ""
        else:
            tree = Path(kernel.tree).resolve()
            source = Path(kernel.source or tree / "source").resolve()
            config = Path(kernel.config or tree / ".config")
            series = getattr(kernel, "series", "") or ""
            name = (f"Debian stock {series.removeprefix('stock-')}" if series.startswith("stock-")
                    else getattr(kernel, "label", "") or kernel.version)
            feats = getattr(kernel, "features", None) or None
            release = getattr(kernel, "release", "") or ""
        if not config.exists():
            raise PayloadError(f"payload: {config} is missing: {tree} is not a configured kernel")
        if feats is None:
            feats = features_of(config, tree)
        name = name or _release(tree) or tree.name
        ko = tree / TEST_HMM_KO
        test_hmm = ko if ko.exists() else None
        feats = frozenset(feats) | ({"test_hmm"} if test_hmm else set())
        return cls(tree, source, config, name, frozenset(feats), test_hmm,
                   release or _release(tree))


def _release(tree: Path) -> str:
    f = tree / "include" / "config" / "kernel.release"
    return f.read_text().strip() if f.exists() else ""


def _sources(directory: Path) -> list[Path]:
    """The source files of a guest-images directory, without build products."""
    return sorted(
        p for p in directory.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.endswith(_PRODUCT_SUFFIXES)
        and p.name not in _PRODUCT_NAMES
    )


def _check_tools(k: PayloadKernel) -> None:
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in (("make", "make"), ("gcc", "gcc"), ("cpio", "cpio"), ("gzip", "gzip"))
        if shutil.which(tool) is None
    ]
    if missing:
        raise PayloadError("payload: missing build tools: " + ", ".join(missing))
    libc_a = subprocess.run(
        ["gcc", "-print-file-name=libc.a"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    if not os.path.isabs(libc_a) or not Path(libc_a).exists():
        raise PayloadError(
            "payload: static libc (libc.a) not found; the workloads link statically: "
            "apt-get install libc6-dev"
        )
    absent = [n for n in ("Makefile", *KERNEL_IDENTITY) if not (k.tree / n).exists()]
    if absent:
        raise PayloadError(
            f"payload: {k.tree} is not a kernel build directory (missing {', '.join(absent)}); "
            "build the kernel first"
        )


def selftest_dir(source: Path) -> Path:
    """The directory of hmm-tests.c in a kernel source."""
    for rel in SELFTEST_DIRS:
        if (source / rel / HMM_TESTS_MAIN).exists():
            return source / rel
    raise PayloadError(
        f"payload: {source} is not a kernel source with hmm-tests "
        f"({' or '.join(f'{d}/{HMM_TESTS_MAIN}' for d in SELFTEST_DIRS)})"
    )


def kernel_source(kernel_tree: Path) -> Path:
    """The unpacked source a kernel tree was built from (kbuild's ``source`` link)."""
    src = (kernel_tree / "source").resolve()
    selftest_dir(src)
    return src


_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def _include_dirs(source: Path) -> list[Path]:
    """The -I directories of the hmm-tests build, as the kernel's selftest Makefile has them."""
    return [source, source / "tools" / "testing" / "selftests",
            source / "tools" / "include" / "uapi"]


def hmm_tests_files(source: Path) -> tuple[list[Path], list[Path]]:
    """(sources to compile, every file of the kernel source they include).

    The sources are hmm-tests.c plus the selftest helpers (vm_util.c,
    hugepage_settings.c, ...) whose header it includes, followed transitively:
    each kernel version needs a different set.
    """
    sdir = selftest_dir(source)
    dirs = _include_dirs(source)
    seen: dict[Path, None] = {}
    units: dict[Path, None] = {}
    todo = [sdir / HMM_TESTS_MAIN]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f] = None
        if f.suffix == ".c":
            units[f] = None
        for kind, name in _INCLUDE.findall(f.read_text(errors="replace")):
            bases = ([f.parent] if kind == '"' else []) + dirs
            hit = next((b / name for b in bases if (b / name).is_file()), None)
            if hit is None:
                continue  # a system header
            hit = hit.resolve()
            todo.append(hit)
            helper = hit.with_suffix(".c")
            if hit.suffix == ".h" and hit.parent == sdir.resolve() and helper.is_file():
                todo.append(helper)
    files = sorted(seen)
    return [u for u in files if u in units], files


_TEST = re.compile(r"^TEST_F(?:_TIMEOUT)?\(\s*(\w+)\s*,\s*(\w+)\s*[,)]", re.M)
_FUNC = re.compile(r"^(?:static\s+)?(?:inline\s+)?[\w\s\*]+?\b(\w+)\([^;{]*\)\s*\n\{", re.M)
# What only works with device-private memory (migration, device-exclusive entries).
_DEVICE_PRIVATE_IOCTLS = re.compile(
    r"\bHMM_DMIRROR_(?:MIGRATE_TO_DEV|MIGRATE_TO_SYS|EXCLUSIVE|CHECK_EXCLUSIVE|RELEASE)\b")


def _bodies(text: str) -> dict[str, str]:
    """Top-level function and TEST_F bodies of a C file, by name ("fixture.test" for tests)."""
    starts: list[tuple[int, str]] = []
    for m in _TEST.finditer(text):
        starts.append((m.start(), f"{m.group(1)}.{m.group(2)}"))
    for m in _FUNC.finditer(text):
        starts.append((m.start(), m.group(1)))
    starts.sort()
    out: dict[str, str] = {}
    for (pos, name), nxt in zip(starts, [*starts[1:], (len(text), "")], strict=True):
        body = text[pos:nxt[0]]
        end = re.search(r"^\}", body, re.M)
        out[name] = body[:end.end()] if end else body
    return out


def hmm_tests_needs(text: str) -> dict[str, Any]:
    """Which hmm-tests tests need device-private memory, from hmm-tests.c's source.

    A test needs it when its body, or a function of the file it calls
    (transitively), issues a migration or device-exclusive ioctl. Returns
    ``{"tests": [every "fixture.test"], "device_private": [those that need it],
    "variants": {fixture: [variant, ...]}}``.
    """
    bodies = _bodies(text)
    funcs = {n for n in bodies if "." not in n}
    direct = {n for n, b in bodies.items() if _DEVICE_PRIVATE_IOCTLS.search(b)}
    calls = {n: {c for c in re.findall(r"\b(\w+)\s*\(", b) if c in funcs and c != n}
             for n, b in bodies.items()}
    needs = set(direct)
    changed = True
    while changed:
        changed = False
        for n, cs in calls.items():
            if n not in needs and cs & needs:
                needs.add(n)
                changed = True
    tests = [n for n in bodies if "." in n]
    variants: dict[str, list[str]] = {}
    for fixture, variant in re.findall(r"^FIXTURE_VARIANT_ADD\(\s*(\w+)\s*,\s*(\w+)\s*\)",
                                       text, re.M):
        variants.setdefault(fixture, []).append(variant)
    return {"tests": tests, "device_private": [t for t in tests if t in needs],
            "variants": variants}


def harness_selects_tests(harness_text: str) -> bool:
    """Whether a kselftest_harness.h can run a subset of the tests (-t/-T/-r, 6.3+).

    6.1's cannot, and a failing ASSERT in a fixture test there loops in the
    fixture's teardown until the test's timeout: a run in which tests must fail
    (no device-private memory) cannot be made of it.
    """
    m = re.search(r'getopt\([^,]+,[^,]+,\s*"([^"]*)"', harness_text)
    return m is not None and "T:" in m.group(1)


def nic_buildable(config: Path) -> bool:
    """Whether hmm_nic.ko can be built for (and loaded into) the kernel of ``config``."""
    have = read_config(config)
    return all(have.get(opt) in ok for opt, ok in NIC_CONFIG.items())


def manifest(k: PayloadKernel, warnings: Iterable[str] = (),
             nic_warnings: Iterable[str] | None = None) -> dict[str, Any]:
    """``/opt/hmmlab/kernel.json``: what the scenarios need to know about the kernel.

    ``nic_warnings`` is None when hmm_nic.ko was not built.
    """
    text = (selftest_dir(k.source) / HMM_TESTS_MAIN).read_text(errors="replace")
    harness = k.source / "tools" / "testing" / "selftests" / "kselftest_harness.h"
    out: dict[str, Any] = {
        "name": k.name,
        "release": k.release,
        "features": sorted(k.features),
        "driver_warnings": list(warnings),
        "hmm_tests": {**hmm_tests_needs(text),
                      "selectable": harness_selects_tests(harness.read_text(errors="replace"))},
    }
    if nic_warnings is not None:
        out["modules"] = [MODULE, NIC_MODULE]
        out["nic_driver_warnings"] = list(nic_warnings)
    return out


def payload_key(kernel: Any, tools: dict[str, str] | None = None) -> str:
    """Hash of everything the payload is built from: our sources, the kernel's identity
    and hmm-tests sources, the builder (this file) and the toolchain (gcc, make,
    binutils: ``tools``, default the host's now)."""
    k = kernel if isinstance(kernel, PayloadKernel) else PayloadKernel.of(kernel)
    h = InputHash("payload")
    h.tree(DRIVER_DIR, _sources(DRIVER_DIR))
    h.tree(WORKLOADS_DIR, _sources(WORKLOADS_DIR))
    h.file(ABI_HEADER, label="abi/hmm_gpu_regs.h")
    if nic_buildable(k.config):
        h.tree(NIC_DRIVER_DIR, _sources(NIC_DRIVER_DIR))
        h.file(NIC_ABI_HEADER, label="abi/hmm_nic_regs.h")
    for name in KERNEL_IDENTITY:
        h.file(k.tree / name, label=f"kernel/{name}")
    h.text("kernel/name", k.name)
    h.text("kernel/features", " ".join(sorted(k.features)))
    if k.test_hmm is not None:
        h.file(k.test_hmm, label=f"kernel/{TEST_HMM_KO}")
    _, files = hmm_tests_files(k.source)
    for f in files:
        h.file(f, label=f"src/{f.relative_to(k.source.resolve()).as_posix()}")
    h.file(k.source / "lib" / "test_hmm_uapi.h", label="src/lib/test_hmm_uapi.h")
    sdir = selftest_dir(k.source)
    h.file(sdir / "Makefile", label=f"src/{sdir.relative_to(k.source).as_posix()}/Makefile")
    toolchain.add_to(h, tools)
    h.file(Path(__file__), label="payload.py")
    h.text("pack_cpio", inspect.getsource(pack_cpio))  # the archive is its output too
    return h.hexdigest()


_WARNING = re.compile(r"^(\S+\.[ch]):\d+:\d+: warning: .*$|^WARNING: modpost: .*$", re.M)


def driver_warnings(build_output: str, ours: Iterable[str], scratch: Path,
                    module: str = MODULE) -> list[str]:
    """The compiler warnings about files named in ``ours`` and modpost's about the
    module, from a kbuild log; paths shown relative to ``scratch``."""
    names = set(ours)
    out = [m.group(0).replace(f"{scratch}/", "") for m in _WARNING.finditer(build_output)
           if (Path(m.group(1)).name in names if m.group(1) else module in m.group(0))]
    return list(dict.fromkeys(out))


def _build_module(k: PayloadKernel, scratch: Path, logfile: Path, *,
                  sources: Path = DRIVER_DIR, headers: Iterable[Path] = (ABI_HEADER,),
                  module: str = MODULE, abi_var: str = "HMM_GPU_ABI_DIR",
                  ) -> tuple[Path, list[str]]:
    """``module`` (``hmm_gpu.ko`` by default) built from a flat copy of ``sources``
    and the ABI ``headers``, and the compiler warnings (W=1) about our own sources."""
    scratch.mkdir(parents=True)
    for src in _sources(sources):
        shutil.copy2(src, scratch / src.name)
    for header in headers:
        shutil.copy2(header, scratch / header.name)
    jobs = str(os.cpu_count() or 2)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.touch()
    before = logfile.stat().st_size
    run(["make", "-C", k.tree, f"M={scratch}", f"{abi_var}={scratch}", "W=1",
         f"-j{jobs}", "modules"], timeout=MODULE_TIMEOUT, env={"LC_ALL": "C"}, logfile=logfile)
    with open(logfile, "rb") as fh:
        fh.seek(before)
        text = fh.read().decode(errors="replace")
    ko = scratch / module
    if not ko.exists():
        raise PayloadError(f"payload: the module build produced no {module} (see {logfile})")
    return ko, driver_warnings(text, (p.name for p in scratch.iterdir()), scratch, module)


def _build_nic_module(k: PayloadKernel, scratch: Path, logfile: Path) -> tuple[Path, list[str]]:
    """``hmm_nic.ko``: its ABI header includes hmm_gpu_regs.h for the shared MMU layouts."""
    return _build_module(k, scratch, logfile, sources=NIC_DRIVER_DIR,
                         headers=(NIC_ABI_HEADER, ABI_HEADER), module=NIC_MODULE,
                         abi_var="HMM_NIC_ABI_DIR")


def _build_workloads(driver_scratch: Path, scratch: Path, ksrc: Path,
                     logfile: Path) -> list[Path]:
    scratch.mkdir(parents=True)
    for src in _sources(WORKLOADS_DIR):
        shutil.copy2(src, scratch / src.name)
    run(["make", "-C", scratch, f"HMM_GPU_UAPI_DIR={driver_scratch}", f"KSRC={ksrc}",
         f"O={scratch}"], timeout=WORKLOAD_TIMEOUT, logfile=logfile)
    bins = [scratch / name for name in WORKLOADS]
    absent = [b.name for b in bins if not b.exists()]
    if absent:
        raise PayloadError(f"payload: workload build produced no {', '.join(absent)} "
                           f"(see {logfile})")
    return bins


def selftest_optimization(makefile_text: str) -> list[str]:
    """The -O flag of the selftest Makefile's ``CFLAGS =`` line ([] when it has none).

    It matters: 6.1's kselftest_harness keeps the fixture in a local across
    setjmp(), and at -O2 a failing ASSERT then loops in the teardown forever.
    """
    m = re.search(r"^CFLAGS\s*:?=(.*)$", makefile_text, re.M)
    return re.findall(r"(?<!\S)-O[0-3s]\b", m.group(1))[:1] if m else []


def _build_hmm_tests(ksrc: Path, out: Path, logfile: Path) -> Path:
    """The kernel's hmm-tests, unmodified, linked statically (the guest has no libc),
    optimised as the kernel's own selftest Makefile does it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sdir = selftest_dir(ksrc)
    units, _ = hmm_tests_files(ksrc)
    incs = [f"-I{d}" for d in _include_dirs(ksrc)]
    opt = selftest_optimization((sdir / "Makefile").read_text(errors="replace"))
    run(["gcc", "-static", *opt, "-Wall", *incs, *units, "-lpthread", "-o", out],
        cwd=sdir, timeout=WORKLOAD_TIMEOUT, logfile=logfile)
    if not out.exists():
        raise PayloadError(f"payload: the hmm-tests build produced nothing (see {logfile})")
    return out


def _install(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def build_payload(cache: Cache, logdir: Path, kernel: Any) -> Path:
    """Build (or find cached) ``payload.cpio.gz`` for ``kernel``; returns its path.

    ``kernel`` is a :class:`harness.build.kernel.KernelArtifact` (any kind: built,
    stock headers, a developer's tree) or the path of a complete build tree.
    """
    k = PayloadKernel.of(kernel)
    _check_tools(k)
    key = payload_key(k)
    final = cache.path("payload", key)
    out = final / "payload.cpio.gz"
    if out.exists():
        log.info("payload: cached (%s)", final)
        return out

    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / "payload.log"
    log.info("payload: building %s and %s against %s (%s)", MODULE, ", ".join(WORKLOADS),
             k.tree, k.name)
    with cache.building(final) as tmp:
        scratch = tmp / "build"
        ko, warnings = _build_module(k, scratch / "driver", logfile)
        for w in warnings:
            log.warning("payload: %s", w)
        nic: Path | None = None
        nic_warnings: list[str] | None = None
        if nic_buildable(k.config):
            nic, nic_warnings = _build_nic_module(k, scratch / "nic-driver", logfile)
            for w in nic_warnings:
                log.warning("payload: %s", w)
        bins = _build_workloads(scratch / "driver", scratch / "workloads", k.source, logfile)
        bins.append(_build_hmm_tests(k.source, scratch / "selftests" / HMM_TESTS, logfile))

        root = tmp / "root"
        _install(ko, root / GUEST_DIR / MODULE, 0o644)
        if nic is not None:
            _install(nic, root / GUEST_DIR / NIC_MODULE, 0o644)
        if k.test_hmm is not None:
            _install(k.test_hmm, root / GUEST_DIR / "test_hmm.ko", 0o644)
        for b in bins:
            _install(b, root / GUEST_DIR / "bin" / b.name, 0o755)
        for name, mode in SCRIPTS.items():
            _install(WORKLOADS_DIR / name, root / GUEST_DIR / "bin" / name, mode)
        (root / GUEST_DIR / MANIFEST).write_text(
            json.dumps(manifest(k, warnings, nic_warnings), indent=1) + "\n")
        os.chmod(root / GUEST_DIR / MANIFEST, 0o644)
        pack_cpio(root, tmp / "payload.cpio.gz", logfile, overlay=True, timeout=PACK_TIMEOUT)

        # Keep the unstripped products for symbolising; drop the rest.
        _install(ko, tmp / MODULE, 0o644)
        if nic is not None:
            _install(nic, tmp / NIC_MODULE, 0o644)
        for b in bins:
            _install(b, tmp / b.name, 0o755)
        shutil.copyfile(root / GUEST_DIR / MANIFEST, tmp / MANIFEST)
        shutil.rmtree(scratch)
        shutil.rmtree(root)
    log.info("payload: %s (%d bytes)", out, out.stat().st_size)
    return out


def main() -> None:
    import argparse
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description="Build the hmmlab guest payload (driver, workloads).")
    ap.add_argument("kernel_tree", type=Path, help="built kernel tree (has Module.symvers and "
                    "a source link)")
    ap.add_argument("--logdir", type=Path, default=None, help="where payload.log goes")
    args = ap.parse_args()
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="hmmlab-payload-"))
    try:
        print(build_payload(Cache.default(), logdir, args.kernel_tree))
    except PayloadError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()

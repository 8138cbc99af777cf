"""Guest payload builder: ``hmm_gpu.ko`` and the static workloads.

The driver is built out of tree against a built kernel tree (``make -C TREE
M=scratch modules``) from a flat scratch copy of ``guest-images/driver/`` plus
the device ABI header; the workloads are built statically with their
Makefile. Both are packed into ``payload.cpio.gz`` (newc, owned by root),
which the launcher appends to the rootfs initramfs:

    /opt/hmmlab/hmm_gpu.ko
    /opt/hmmlab/test_hmm.ko            the kernel's own lib/test_hmm.ko (the baseline)
    /opt/hmmlab/bin/hmm-gpu-smoke, svm-mirror, svm-invalidate, hmm-bench
    /opt/hmmlab/bin/hmm-tests          tools/testing/selftests/mm/hmm-tests.c, unmodified

hmm-tests is built statically from the source of the kernel tree (its
``source`` symlink), so it always matches the kernel and test_hmm.ko it runs
against.

The artifact directory also keeps the unstripped module and binaries next to
the archive, for symbolising oopses.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from harness.cache import REPO_ROOT, Cache, InputHash
from harness.proc import run

log = logging.getLogger(__name__)

DRIVER_DIR = REPO_ROOT / "guest-images" / "driver"
WORKLOADS_DIR = REPO_ROOT / "guest-images" / "workloads"
ABI_HEADER = REPO_ROOT / "qemu-devices" / "include" / "hmm_gpu_regs.h"

MODULE = "hmm_gpu.ko"
WORKLOADS = ("hmm-gpu-smoke", "svm-mirror", "svm-invalidate", "svm-migrate", "vram-pressure",
             "atomics", "hmm-bench")
GUEST_DIR = "opt/hmmlab"

# The kernel's own HMM selftest and baseline module, from the kernel tree.
TEST_HMM_KO = "lib/test_hmm.ko"
SELFTEST_DIR = "tools/testing/selftests/mm"
HMM_TESTS = "hmm-tests"
HMM_TESTS_SOURCES = ("hmm-tests.c", "vm_util.c")
# Everything hmm-tests.c and vm_util.c include from the kernel source (for the cache key).
HMM_TESTS_HEADERS = (
    "tools/testing/selftests/mm/vm_util.h",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/kselftest.h",
    "lib/test_hmm_uapi.h",
    "mm/gup_test.h",
)

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


def _sources(directory: Path) -> list[Path]:
    """The source files of a guest-images directory, without build products."""
    return sorted(
        p for p in directory.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.endswith(_PRODUCT_SUFFIXES)
        and p.name not in _PRODUCT_NAMES
    )


def _check_tools(kernel_tree: Path) -> None:
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
    absent = [n for n in ("Makefile", *KERNEL_IDENTITY, TEST_HMM_KO)
              if not (kernel_tree / n).exists()]
    if absent:
        raise PayloadError(
            f"payload: {kernel_tree} is not a built kernel tree (missing {', '.join(absent)}); "
            "build the kernel first"
        )


def kernel_source(kernel_tree: Path) -> Path:
    """The unpacked source a kernel tree was built from (kbuild's ``source`` link)."""
    src = (kernel_tree / "source").resolve()
    if not (src / SELFTEST_DIR / "hmm-tests.c").exists():
        raise PayloadError(
            f"payload: {kernel_tree}/source does not lead to a kernel source with "
            f"{SELFTEST_DIR}/hmm-tests.c"
        )
    return src


def payload_key(kernel_tree: Path) -> str:
    """Hash of everything the payload is built from."""
    h = InputHash("payload")
    h.tree(DRIVER_DIR, _sources(DRIVER_DIR))
    h.tree(WORKLOADS_DIR, _sources(WORKLOADS_DIR))
    h.file(ABI_HEADER, label="abi/hmm_gpu_regs.h")
    for name in KERNEL_IDENTITY:
        h.file(kernel_tree / name, label=f"kernel/{name}")
    h.file(kernel_tree / TEST_HMM_KO, label=f"kernel/{TEST_HMM_KO}")
    src = kernel_source(kernel_tree)
    for name in HMM_TESTS_SOURCES:
        h.file(src / SELFTEST_DIR / name, label=f"src/{SELFTEST_DIR}/{name}")
    for rel in HMM_TESTS_HEADERS:
        h.file(src / rel, label=f"src/{rel}")
    cc = run(["gcc", "--version"], timeout=60).stdout.decode(errors="replace")
    h.text("gcc", cc.splitlines()[0] if cc else "")
    h.file(Path(__file__), label="payload.py")
    return h.hexdigest()


def _build_module(kernel_tree: Path, scratch: Path, logfile: Path) -> Path:
    scratch.mkdir(parents=True)
    for src in _sources(DRIVER_DIR):
        shutil.copy2(src, scratch / src.name)
    shutil.copy2(ABI_HEADER, scratch / ABI_HEADER.name)
    jobs = str(os.cpu_count() or 2)
    run(["make", "-C", kernel_tree, f"M={scratch}", f"HMM_GPU_ABI_DIR={scratch}",
         f"-j{jobs}", "modules"], timeout=MODULE_TIMEOUT, logfile=logfile)
    ko = scratch / MODULE
    if not ko.exists():
        raise PayloadError(f"payload: the module build produced no {MODULE} (see {logfile})")
    return ko


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


def _build_hmm_tests(ksrc: Path, out: Path, logfile: Path) -> Path:
    """The kernel's hmm-tests, unmodified, linked statically (the guest has no libc)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["gcc", "-static", "-O2", "-Wall", f"-I{ksrc}", f"-I{ksrc}/tools/testing/selftests",
         f"-I{ksrc}/tools/include/uapi", *HMM_TESTS_SOURCES, "-lpthread", "-o", out],
        cwd=ksrc / SELFTEST_DIR, timeout=WORKLOAD_TIMEOUT, logfile=logfile)
    if not out.exists():
        raise PayloadError(f"payload: the hmm-tests build produced nothing (see {logfile})")
    return out


def _install(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def _pack(root: Path, out: Path, logfile: Path) -> None:
    """``root`` as a gzip-compressed newc cpio owned by root, reproducibly.

    The archive carries no "." entry: it is appended to the rootfs and must
    not change the mode of the guest's / when unpacked over it.
    """
    paths = sorted(root.rglob("*"))
    for p in paths:
        if p.is_dir():
            os.chmod(p, 0o755)
    for p in (*paths, root):
        os.utime(p, (0, 0), follow_symlinks=False)
    listing = "".join(f"./{p.relative_to(root).as_posix()}\n" for p in paths).encode()
    with open(logfile, "ab") as fh:
        fh.write(b"\n$ cpio -o -H newc --owner=0:0 --reproducible | gzip -9n\n")
    archive = run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible"],
                  cwd=root, timeout=PACK_TIMEOUT, input_bytes=listing).stdout
    out.write_bytes(run(["gzip", "-9n"], timeout=PACK_TIMEOUT, input_bytes=archive).stdout)


def build_payload(cache: Cache, logdir: Path, kernel_tree: Path) -> Path:
    """Build (or find cached) ``payload.cpio.gz`` for ``kernel_tree``; returns its path."""
    kernel_tree = kernel_tree.resolve()
    _check_tools(kernel_tree)
    key = payload_key(kernel_tree)
    final = cache.path("payload", key)
    out = final / "payload.cpio.gz"
    if out.exists():
        log.info("payload: cached (%s)", final)
        return out

    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / "payload.log"
    log.info("payload: building %s and %s against %s", MODULE, ", ".join(WORKLOADS),
             kernel_tree)
    with cache.building(final) as tmp:
        scratch = tmp / "build"
        ksrc = kernel_source(kernel_tree)
        test_hmm = kernel_tree / TEST_HMM_KO
        if not test_hmm.exists():
            raise PayloadError(f"payload: {test_hmm} is missing (CONFIG_TEST_HMM=m?)")
        ko = _build_module(kernel_tree, scratch / "driver", logfile)
        bins = _build_workloads(scratch / "driver", scratch / "workloads", ksrc, logfile)
        bins.append(_build_hmm_tests(ksrc, scratch / "selftests" / HMM_TESTS, logfile))

        root = tmp / "root"
        _install(ko, root / GUEST_DIR / MODULE, 0o644)
        _install(test_hmm, root / GUEST_DIR / "test_hmm.ko", 0o644)
        for b in bins:
            _install(b, root / GUEST_DIR / "bin" / b.name, 0o755)
        _pack(root, tmp / "payload.cpio.gz", logfile)

        # Keep the unstripped products for symbolising; drop the rest.
        _install(ko, tmp / MODULE, 0o644)
        for b in bins:
            _install(b, tmp / b.name, 0o755)
        shutil.rmtree(scratch)
        shutil.rmtree(root)
    log.info("payload: %s (%d bytes)", out, out.stat().st_size)
    return out


def main() -> None:
    import argparse
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description="Build the hmmlab guest payload (driver, workloads).")
    ap.add_argument("kernel_tree", type=Path, help="built kernel tree (has Module.symvers)")
    ap.add_argument("--logdir", type=Path, default=None, help="where payload.log goes")
    args = ap.parse_args()
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="hmmlab-payload-"))
    try:
        print(build_payload(Cache.default(), logdir, args.kernel_tree))
    except PayloadError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()

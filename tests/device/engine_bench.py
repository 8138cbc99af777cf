"""Engine micro-benchmark over qtest: not a test (pytest does not collect it).

Times big VA jobs over a fully mapped 4 KiB page table (every page a TLB
miss, so four PTW reads per page) and small jobs, each with and without the
``dmatrace`` chardev, so the cost of the trace shows on its own:

    .venv/bin/python tests/device/engine_bench.py [--qemu BINARY] [--mib 64] [--repeats 3]

Wall-clock times include the qtest polling of CPLQ_TAIL (one socket round
trip per poll, and the engine's BH runs between polls), so small-job figures
are dominated by qtest; the big-job figures are the engine's.
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hmmgpu import CTX_TABLE, Gpu, H, PageTables, read_va, write_va

from harness.build.qemu import DATADIRS
from harness.guest.qtest import QTest

VA = 0x7F12_0000_0000
DATA_PA = 0x0800_0000  # 128 MiB: backing of the mapped range
BUS = 0x1000_0000  # 256 MiB: the bus-address side of READ_VA / WRITE_VA
RW = H.PTE_READ | H.PTE_WRITE | H.PTE_VALID


def map_range(gpu: Gpu, pt: PageTables, size: int) -> None:
    """Map [VA, VA + size) to shuffled 4 KiB pages (not contiguous, like RAM)."""
    pages = list(range(size // 4096))
    random.Random(1).shuffle(pages)
    for tbl in range(0, len(pages), 512):
        # tables above level 0 through the helper, each level-0 table in one write
        first = pt.entry_addr(1, VA + tbl * 4096, 0)
        ptes = [(DATA_PA + 4096 * pages[i]) | RW for i in range(tbl, min(tbl + 512, len(pages)))]
        gpu.qt.write(first, struct.pack(f"<{len(ptes)}Q", *ptes))


def launch(binary: Path, tmp: Path, trace: bool, n: int) -> tuple[QTest, Gpu]:
    args = ["-M", "q35", "-m", "512M", "-nodefaults"]
    dev = "hmm-gpu,id=gpu0"
    if trace:
        args += ["-chardev", f"file,id=t0,path={tmp / f'trace-{n}.bin'}"]
        dev += ",dmatrace=t0"
    qt = QTest(
        binary,
        [*args, "-device", dev],
        datadirs=DATADIRS,
        logfile=tmp / f"qemu-{n}.log",
        timeout=120,
    )
    return qt, Gpu(qt)


def run_case(
    binary: Path, tmp: Path, trace: bool, n: int, size: int, repeats: int, small: int
) -> dict[str, float]:
    qt, gpu = launch(binary, tmp, trace, n)
    try:
        gpu.setup(cmdq_size=64, cplq_size=64)
        pt = PageTables(gpu, 2)
        pt.set_ctx(1)
        pt.enable()
        map_range(gpu, pt, size)
        out: dict[str, float] = {}
        for name, cmd in (
            ("read_va", read_va(VA, BUS, size, ctx=1)),
            ("write_va", write_va(BUS, VA, size, ctx=1)),
        ):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                (c,) = gpu.run(cmd)
                times.append(time.perf_counter() - t0)
                assert c.status == H.ERR_NONE and c.nbytes == size, c
            out[name + "_MBps"] = size / min(times) / 1e6
        # small jobs: one page each, 8 in flight per doorbell
        times = []
        for i in range(small // 8):
            cmds = [
                read_va(VA + 4096 * ((8 * i + k) % (size // 4096)), BUS, 4096, ctx=1)
                for k in range(8)
            ]
            t0 = time.perf_counter()
            gpu.run(*cmds)
            times.append((time.perf_counter() - t0) / 8)
        out["small_job_us"] = statistics.median(times) * 1e6
        if trace:
            out["trace_MiB"] = (tmp / f"trace-{n}.bin").stat().st_size / 2**20
        return out
    finally:
        qt.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", type=Path, help="qemu-system-x86_64 (default: build it)")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small", type=int, default=400, help="1-page jobs to time")
    a = ap.parse_args()
    binary = a.qemu
    if binary is None:
        from harness.build.cache import Cache
        from harness.build.qemu import build_qemu

        cache = Cache.default()
        binary = build_qemu(cache, cache.path("logs")).binary
    assert CTX_TABLE  # layout shared with the tests
    size = a.mib << 20
    print(f"qemu: {binary}\n{a.mib} MiB VA jobs, 4 KiB pages, all TLB misses; best of {a.repeats}")
    with tempfile.TemporaryDirectory(prefix="hmm-gpu-bench-") as d:
        rows = {}
        for n, trace in enumerate((False, True)):
            rows[trace] = run_case(binary, Path(d), trace, n, size, a.repeats, a.small)
    print(f"{'':24}{'no dmatrace':>14}{'dmatrace':>14}{'trace cost':>12}")
    for key in ("read_va_MBps", "write_va_MBps", "small_job_us"):
        off, on = rows[False][key], rows[True][key]
        cost = (off / on - 1) if key.endswith("MBps") else (on / off - 1)
        print(f"{key:24}{off:14.1f}{on:14.1f}{cost:+12.0%}")
    print(f"trace file: {rows[True]['trace_MiB']:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-only
"""odp-lat: what one ODP page fault and one ODP invalidation cost on a device.

  odp-lat.py -d DEV [-n SAMPLES]

Two RC QPs in loopback on DEV (odp_common.Loopback, polling its completions
without yielding). QP A writes from a
pinned page; QP B's memory is an ODP MR over PAGES pages. Each sample takes
the next page i of that MR and measures, from user space (post to
completion, or the madvise() call):

  fault_write   an 8-byte RDMA WRITE into page i, which nothing maps yet: the
                responder faults it in (one ODP fault round trip)
  warm_write    the same WRITE again: page i is mapped, no fault
  invalidate    madvise(MADV_DONTNEED) of page i, now mapped by the CPU and
                the device: the kernel's zap plus the driver's ODP
                invalidation (device translation cleared and fenced, DMA
                unmapped)
  plain         madvise(MADV_DONTNEED) of a page the CPU wrote, of memory no
                MR covers: the kernel's share of ``invalidate``

The written bytes are checked after each WRITE. Prints one JSON line: the
median (and p90) of each in microseconds, and ``fault_cost_us`` =
fault_write - warm_write, ``invalidate_cost_us`` = invalidate - plain (of
the medians). The same script runs on rxe (software ODP) for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from odp_common import (
    ACCESS,
    ODP_ACCESS,
    PAGE,
    Loopback,
    Mismatch,
    emit,
    madvise_dontneed,
    mmap_anon,
    munmap,
    poke,
    u64,
)
from pyverbs.device import Context
from pyverbs.libibverbs_enums import ibv_wr_opcode
from pyverbs.mr import MR
from pyverbs.pd import PD

PAGES = 64


def p90(values: list[float]) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]


def us(t0: int, t1: int) -> float:
    return (t1 - t0) / 1000


def measure(dev: str, samples: int) -> dict[str, float | int]:
    ctx = Context(name=dev)
    pd = PD(ctx)
    lb = Loopback(ctx, pd, spin=True)  # what is timed is the device, not a sleep
    src = mmap_anon(PAGE)
    odp = mmap_anon(PAGES * PAGE)
    plain = mmap_anon(PAGES * PAGE)
    src_mr = MR(pd, PAGE, ACCESS, address=src)
    odp_mr = MR(pd, PAGES * PAGE, ODP_ACCESS, address=odp)
    times: dict[str, list[float]] = {k: [] for k in ("fault_write", "warm_write",
                                                      "invalidate", "plain")}
    try:
        for n in range(samples):
            page = odp + (n % PAGES) * PAGE
            for what in ("fault_write", "warm_write"):
                value = (n << 8) | len(times[what])
                poke(src, value.to_bytes(8, "little"))
                t0 = time.perf_counter_ns()
                lb.rdma(ibv_wr_opcode.IBV_WR_RDMA_WRITE, src, page, 8, src_mr.lkey,
                        odp_mr.rkey)
                t1 = time.perf_counter_ns()
                if u64(page) != value:
                    raise Mismatch(f"{what}: page {n % PAGES} holds {u64(page):#x}, "
                                   f"the WRITE brought {value:#x}")
                times[what].append(us(t0, t1))
            t0 = time.perf_counter_ns()
            madvise_dontneed(page, PAGE)
            t1 = time.perf_counter_ns()
            times["invalidate"].append(us(t0, t1))

            other = plain + (n % PAGES) * PAGE
            poke(other, b"x")
            t0 = time.perf_counter_ns()
            madvise_dontneed(other, PAGE)
            t1 = time.perf_counter_ns()
            times["plain"].append(us(t0, t1))
    finally:
        for obj in (odp_mr, src_mr):
            obj.close()
        lb.close()
        pd.close()
        ctx.close()
        for addr, length in ((src, PAGE), (odp, PAGES * PAGE), (plain, PAGES * PAGE)):
            munmap(addr, length)
    out: dict[str, float | int] = {"samples": samples}
    for k, v in times.items():
        out[f"{k}_us"] = statistics.median(v)
        out[f"{k}_p90_us"] = p90(v)
    out["fault_cost_us"] = out["fault_write_us"] - out["warm_write_us"]
    out["invalidate_cost_us"] = out["invalidate_us"] - out["plain_us"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--device", required=True, help="RDMA device (hmmnic0, rxe0)")
    ap.add_argument("-n", "--samples", type=int, default=100, help="samples (default 100)")
    args = ap.parse_args()
    if args.samples < 1:
        ap.error(f"-n {args.samples}: at least one sample")
    try:
        figures = measure(args.device, args.samples)
    except Exception as e:  # pyverbs raises its own types: any is a failed run
        emit({"test": "odp-lat", "ok": False, "device": args.device,
              "error": f"{type(e).__name__}: {e}"})
        return 1
    emit({"test": "odp-lat", "ok": True, "device": args.device, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())

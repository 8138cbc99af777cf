#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-only
"""odp-implicit: one implicit ODP memory region over the whole address space.

ibv_reg_mr(pd, NULL, SIZE_MAX, IBV_ACCESS_ON_DEMAND | local write | remote
read/write/atomic): its lkey and rkey reach any address of the process, and
the driver creates a child (a 1 GiB ib_umem_odp) at the first fault in each
gigabyte. The buffers are far apart (from 64 GiB to 64 TiB, and one across a
1 GiB boundary, so one work request spans two children) plus one where mmap
puts it. Sub-tests, each checking every byte moved (:mod:`odp_common`):

  traffic         SEND/RECV, RDMA WRITE, RDMA READ, CMP_AND_SWP, FETCH_AND_ADD
                  from each buffer to the next (a ring), on pages the device has
                  never seen; the first round crosses the 1 GiB boundary
  after-dontneed  madvise(MADV_DONTNEED) of every buffer, then the ring again
  prefetch.<advice>[.flush]
                  two fresh buffers far apart; before every operation
                  ibv_advise_mr(PREFETCH or PREFETCH_WRITE, with or without
                  IBV_ADVISE_MR_FLAG_FLUSH) of the bytes it touches, then the
                  operation

One JSON line per sub-test (with its buffers' addresses, for the harness's
look at the device's trace); exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from odp_common import (
    MAP_FIXED_NOREPLACE,
    ODP_ACCESS,
    OPS,
    PAGE,
    Counts,
    Loopback,
    Mismatch,
    Prepared,
    Region,
    emit,
    log,
    madvise_dontneed,
    mmap_anon,
    munmap,
    run_op,
    wrs_of,
)
from pyverbs.device import Context
from pyverbs.libibverbs_enums import (
    _IBV_ADVISE_MR_ADVICE_PREFETCH,
    _IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE,
    _IBV_ADVISE_MR_FLAG_FLUSH,
    ibv_odp_general_caps,
)
from pyverbs.libibverbs_enums import ibv_odp_transport_cap_bits as caps
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.pyverbs_error import PyverbsRDMAError
from pyverbs.wr import SGE

GIB = 1 << 30
CHILD = GIB  # hmm_nic.ko's implicit children (HMM_NIC_CHILD_SHIFT)
BUF = 8 * PAGE
# Where the far buffers go; one starts 4 pages before a 1 GiB boundary.
FAR = (("far-64g", 64 * GIB), ("far-1t", 1 << 40), ("far-16t", 16 << 40),
       ("far-64t", 64 << 40), ("straddle-128g", 128 * GIB - 4 * PAGE))
PREFETCH_AT = (("prefetch-a", 3 << 40), ("prefetch-b", 48 << 40))
ADVICE = (("prefetch", _IBV_ADVISE_MR_ADVICE_PREFETCH),
          ("prefetch_write", _IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE))
RC_NEEDED = (caps.IBV_ODP_SUPPORT_SEND | caps.IBV_ODP_SUPPORT_RECV | caps.IBV_ODP_SUPPORT_WRITE
             | caps.IBV_ODP_SUPPORT_READ | caps.IBV_ODP_SUPPORT_ATOMIC)


def map_far(addr: int) -> int:
    """BUF bytes at ``addr``, or a GiB further on if something is there already."""
    for i in range(16):
        try:
            return mmap_anon(BUF, addr + i * GIB, MAP_FIXED_NOREPLACE)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    raise OSError(errno.EEXIST, f"no room for {BUF} bytes near {addr:#x}")


class Implicit:
    def __init__(self, ctx: Context, pd: PD) -> None:
        self.pd = pd
        self.mr = MR(pd, 0, ODP_ACCESS, implicit=True)
        self.lb = Loopback(ctx, pd)
        self.bufs: dict[str, int] = {}

    def region(self, name: str) -> Region:
        return Region(self.bufs[name], BUF, self.mr.lkey, self.mr.rkey)

    def regions(self, names: list[str]) -> list[dict[str, object]]:
        return [{"name": n, "addr": self.bufs[n], "length": BUF, "mr": self.mr.lkey >> 8,
                 "child": self.bufs[n] // CHILD} for n in names]

    def close(self) -> None:
        self.lb.close()
        self.mr.close()
        for addr in self.bufs.values():
            munmap(addr, BUF)

    def ring(self, names: list[str], rounds: int, rng: random.Random, counts: Counts,
             hook: Callable[[Prepared], Callable[[], None] | None] | None = None) -> None:
        """Every operation from each buffer to the next; round 0 crosses the 1 GiB
        boundary inside the straddling buffer."""
        for r in range(rounds):
            for i, src in enumerate(names):
                dst = names[(i + 1) % len(names)]
                for op in OPS:
                    if r == 0 and "straddle" in (src + dst):
                        off, length = (4 * PAGE - 8, 8) if op in ("cmp_swap", "fetch_add") \
                            else (4 * PAGE - 1000, 3000)
                    elif op in ("cmp_swap", "fetch_add"):
                        off, length = rng.randrange(0, BUF - 64, 8), 8
                    else:
                        length = rng.randrange(1, 4 * PAGE)
                        off = rng.randrange(0, BUF - length - 64)
                    try:
                        run_op(self.lb, op, self.region(src), self.region(dst), off, length,
                               rng, hook)
                    except Mismatch as e:
                        raise Mismatch(f"round {r}, {op} from {src} ({self.bufs[src]:#x}) to "
                                       f"{dst} ({self.bufs[dst]:#x}) at offset {off:#x} "
                                       f"length {length}: {e}") from e
                    counts.op(op)
                    counts.wrs += wrs_of(op)

    def prefetcher(self, advice: int, flags: int, counts: Counts
                   ) -> Callable[[Prepared], None]:
        def hook(prep: Prepared) -> None:
            sges = [SGE(a, n, self.mr.lkey) for a, n in prep.touched()]
            try:
                self.pd.advise_mr(advice, flags, sges)
            except PyverbsRDMAError as e:
                raise Mismatch(f"ibv_advise_mr({advice}, flags {flags}) of "
                               f"{[(hex(a), n) for a, n in prep.touched()]}: {e}") from e
            counts.change("advise_mr")
        return hook


def run_sub(name: str, body: Callable[[Counts], None], regions: list[dict[str, object]],
            seed: int) -> bool:
    counts = Counts()
    t0 = time.monotonic_ns()
    obj: dict[str, object] = {"test": name, "ok": True}
    try:
        body(counts)
    except (Mismatch, OSError) as e:
        obj = {"test": name, "ok": False, "error": str(e)}
    except Exception as e:  # a pyverbs error: the device or driver refused something
        obj = {"test": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
    obj.update(ops=counts.ops, wrs=counts.wrs, changes=counts.changes, regions=regions,
               elapsed_ns=time.monotonic_ns() - t0, seed=seed)
    emit(obj)
    return obj["ok"] is True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--dev", default="hmmnic0")
    ap.add_argument("-n", "--rounds", type=int, default=2, help="rounds of the ring")
    ap.add_argument("-s", "--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    log(f"odp-implicit: device {args.dev}, seed {seed}")
    ctx = Context(name=args.dev)
    odp = ctx.query_device_ex().odp_caps
    if not odp.general_caps & ibv_odp_general_caps.IBV_ODP_SUPPORT_IMPLICIT:
        emit({"test": "implicit", "skip": f"{args.dev} does not offer implicit ODP "
                                          f"(general_odp_caps {odp.general_caps:#x})"})
        return 0
    rc_caps = odp.rc_odp_caps
    if rc_caps & RC_NEEDED != RC_NEEDED:
        emit({"test": "implicit", "skip": f"{args.dev} lacks RC ODP operations "
                                          f"(rc_odp_caps {rc_caps:#x})"})
        return 0
    pd = PD(ctx)
    imp = Implicit(ctx, pd)
    results = []
    try:
        for name, addr in FAR:
            imp.bufs[name] = map_far(addr)
        imp.bufs["near"] = mmap_anon(BUF)
        ring = [n for n, _ in FAR] + ["near"]
        regions = imp.regions(ring)
        log("odp-implicit: buffers " + ", ".join(f"{n} {imp.bufs[n]:#x}" for n in ring))
        rng = random.Random(seed)
        results.append(run_sub("traffic", lambda c: imp.ring(ring, args.rounds, rng, c),
                               regions, seed))

        def dontneed(c: Counts) -> None:
            for n in ring:
                madvise_dontneed(imp.bufs[n], BUF)
                c.change("madvise_dontneed")
            imp.ring(ring, 1, rng, c)
        results.append(run_sub("after-dontneed", dontneed, regions, seed))

        for i, (aname, advice) in enumerate(ADVICE):
            for flush in (False, True):
                sub = f"prefetch.{aname}" + (".flush" if flush else "")
                names = [f"{sub}.{n}" for n, _ in PREFETCH_AT]
                for n, (_, base) in zip(names, PREFETCH_AT, strict=True):
                    imp.bufs[n] = map_far(base + (2 * i + flush) * 4 * GIB)
                flags = _IBV_ADVISE_MR_FLAG_FLUSH if flush else 0

                def body(c: Counts, names: list[str] = names, advice: int = advice,
                         flags: int = flags) -> None:
                    imp.ring(names, 1, rng, c, imp.prefetcher(advice, flags, c))
                results.append(run_sub(sub, body, imp.regions(names), seed))
    finally:
        imp.close()
        pd.close()
        ctx.close()
    failed = results.count(False)
    log(f"odp-implicit: {failed} of {len(results)} sub-tests failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

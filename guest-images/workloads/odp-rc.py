#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-only
"""odp-rc: explicit ODP memory regions on one RDMA device, RC loopback.

Two buffers, A (QP A's) and B (QP B's), each ``PAGES`` pages of anonymous
memory with its own ODP MR (ibv_reg_mr(addr, len, IBV_ACCESS_ON_DEMAND |
local write | remote read/write/atomic)). Every phase gets fresh QPs and
MRs, then runs SEND/RECV, RDMA WRITE, RDMA READ, CMP_AND_SWP and
FETCH_AND_ADD, ``-n`` rounds, at a random offset and length in the first
half of the buffers, with new random data each time, and checks every byte
each operation moved, the bytes past it and the completions. Phases:

  first-touch  nothing but the faults of an empty device page table
  dontneed     madvise(MADV_DONTNEED) of both halves before each operation
  remap        munmap + mmap(MAP_FIXED) of both halves before each operation
  mprotect     the range the device only reads is read-only during the
               operation; the range it writes goes read-only and back first
  fork         a child is forked after the data is written and before the
               work request is posted: the device's writes must break
               copy-on-write (the parent sees them, the child keeps the old
               bytes, which it checks and says so in its exit status)
  race         a thread madvises, remaps and mprotects the second half of
               both buffers (same MRs, other pages) all the time, while the
               operations run on the first half after a DONTNEED

One JSON line per phase; exit status 1 if any phase failed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from odp_common import (
    ODP_ACCESS,
    OPS,
    PAGE,
    PROT_READ,
    PROT_WRITE,
    Counts,
    Loopback,
    Mismatch,
    Prepared,
    Region,
    emit,
    log,
    madvise_dontneed,
    mmap_anon,
    mprotect,
    munmap,
    peek,
    poke,
    remap,
    run_op,
    wrs_of,
)
from pyverbs.device import Context
from pyverbs.libibverbs_enums import ibv_odp_transport_cap_bits as caps
from pyverbs.mr import MR
from pyverbs.pd import PD

PAGES = 32  # per buffer: the first half carries traffic, the second half is the race's
HALF = PAGES // 2 * PAGE
PHASES = ("first-touch", "dontneed", "remap", "mprotect", "fork", "race")
NEEDED = {"send": caps.IBV_ODP_SUPPORT_SEND | caps.IBV_ODP_SUPPORT_RECV,
          "write": caps.IBV_ODP_SUPPORT_WRITE, "read": caps.IBV_ODP_SUPPORT_READ,
          "cmp_swap": caps.IBV_ODP_SUPPORT_ATOMIC, "fetch_add": caps.IBV_ODP_SUPPORT_ATOMIC}


def pages_of(addr: int, length: int) -> tuple[int, int]:
    lo = addr - addr % PAGE
    hi = -(-(addr + length) // PAGE) * PAGE
    return lo, hi - lo


class Phase:
    """One phase: its buffers, MRs, QPs and what it changes around each operation."""

    def __init__(self, name: str, ctx: Context, pd: PD, rng: random.Random) -> None:
        self.name, self.ctx, self.pd, self.rng = name, ctx, pd, rng
        self.counts = Counts()
        self.bufs = [mmap_anon(PAGES * PAGE) for _ in range(2)]
        self.mrs = [MR(pd, PAGES * PAGE, ODP_ACCESS, address=b) for b in self.bufs]
        self.a, self.b = (Region(b, PAGES * PAGE, mr.lkey, mr.rkey)
                          for b, mr in zip(self.bufs, self.mrs, strict=True))
        self.lb = Loopback(ctx, pd)
        self.stop = threading.Event()
        self.race_error: BaseException | None = None
        self.race_rng = random.Random(0)

    def close(self) -> None:
        self.lb.close()
        for mr in self.mrs:
            mr.close()
        for b in self.bufs:
            munmap(b, PAGES * PAGE)

    # -- what each phase does around an operation --------------------------------

    def before(self) -> None:
        if self.name in ("dontneed", "race"):
            for b in self.bufs:
                madvise_dontneed(b, HALF)
            self.counts.change("madvise_dontneed", 2)
        elif self.name == "remap":
            for b in self.bufs:
                remap(b, HALF)
            self.counts.change("munmap_remap", 2)

    def hook(self) -> Callable[[Prepared], Callable[[], None] | None] | None:
        if self.name == "mprotect":
            return self._mprotect
        if self.name == "fork":
            return self._fork
        return None

    def _mprotect(self, prep: Prepared) -> Callable[[], None]:
        for addr, length in prep.writes:
            lo, n = pages_of(addr, length)
            mprotect(lo, n, PROT_READ)
            mprotect(lo, n, PROT_READ | PROT_WRITE)
            self.counts.change("mprotect_ro_rw")
        ro = [pages_of(a, n) for a, n in prep.reads]
        for lo, n in ro:
            mprotect(lo, n, PROT_READ)
            self.counts.change("mprotect_ro_during")

        def restore() -> None:
            for lo, n in ro:
                mprotect(lo, n, PROT_READ | PROT_WRITE)
        return restore

    def _fork(self, prep: Prepared) -> Callable[[], None]:
        before = [(a, n, peek(a, n)) for a, n in prep.touched()]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for the parent's operation, then check its copy
            os.close(w)
            os.read(r, 1)
            for a, n, want in before:
                if peek(a, n) != want:
                    os.write(2, f"fork child: {a:#x}+{n} changed under the child: the "
                                "device wrote a page the child shares\n".encode())
                    os._exit(1)
            os._exit(0)
        os.close(r)
        self.counts.change("fork")

        def reap() -> None:
            os.write(w, b"x")
            os.close(w)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise Mismatch(f"{prep.op}: the forked child's copy changed (child exit "
                               f"{os.waitstatus_to_exitcode(status)}): a device write "
                               "reached a page the child shares")
        return reap

    def _race(self) -> None:
        """The second half of both buffers: DONTNEED, remap, mprotect, touch, again."""
        i = 0
        rng = self.race_rng
        try:
            while not self.stop.is_set():
                for b in self.bufs:
                    page = b + HALF + rng.randrange(PAGES // 2) * PAGE
                    kind = i % 4
                    if kind == 0:
                        madvise_dontneed(page, PAGE)
                    elif kind == 1:
                        remap(page, PAGE)
                    elif kind == 2:
                        mprotect(page, PAGE, PROT_READ)
                        mprotect(page, PAGE, PROT_READ | PROT_WRITE)
                    else:
                        poke(page, bytes([i & 0xFF]) * 64)
                    self.counts.change(("race_dontneed", "race_remap", "race_mprotect",
                                        "race_touch")[kind])
                i += 1
                time.sleep(0.001)
        except BaseException as e:  # reported by the phase
            self.race_error = e

    # -- the phase ----------------------------------------------------------------

    def run(self, rounds: int, ops: tuple[str, ...]) -> None:
        racer = None
        if self.name == "race":
            self.race_rng = random.Random(self.rng.random())  # its own: ours stays reproducible
            racer = threading.Thread(target=self._race, daemon=True)
            racer.start()
        try:
            for i in range(rounds):
                for op in ops:
                    self.before()
                    if op in ("cmp_swap", "fetch_add"):
                        off, length = self.rng.randrange(0, HALF - 64, 8), 8
                    else:
                        length = self.rng.randrange(1, 5 * PAGE)
                        off = self.rng.randrange(0, HALF - length - 64)
                    try:
                        run_op(self.lb, op, self.a, self.b, off, length, self.rng, self.hook())
                    except Mismatch as e:
                        raise Mismatch(f"round {i}, {op} at offset {off:#x} length "
                                       f"{length}: {e}") from e
                    self.counts.op(op)
                    self.counts.wrs += wrs_of(op)
                    if self.race_error:
                        raise self.race_error
        finally:
            self.stop.set()
            if racer is not None:
                racer.join(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--dev", default="hmmnic0")
    ap.add_argument("-n", "--rounds", type=int, default=20, help="rounds of the five operations")
    ap.add_argument("-p", "--phases", default=",".join(PHASES))
    ap.add_argument("-s", "--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    log(f"odp-rc: device {args.dev}, seed {seed}, {args.rounds} rounds per phase")
    ctx = Context(name=args.dev)
    rc_caps = ctx.query_device_ex().odp_caps.rc_odp_caps
    ops = tuple(op for op in OPS if rc_caps & NEEDED[op] == NEEDED[op])
    missing = [op for op in OPS if op not in ops]
    if not ops:
        emit({"test": "odp", "skip": f"{args.dev} offers no RC ODP operation "
                                     f"(rc_odp_caps {rc_caps:#x})"})
        return 0
    pd = PD(ctx)
    failed = 0
    total = Counts()
    for n, name in enumerate(args.phases.split(",")):
        rng = random.Random(seed + n)
        t0 = time.monotonic_ns()
        phase = Phase(name, ctx, pd, rng)
        regions = [{"name": s, "addr": r.addr, "length": r.length, "mr": r.lkey >> 8}
                   for s, r in (("a", phase.a), ("b", phase.b))]
        obj: dict[str, object] = {"test": name, "ok": True}
        try:
            phase.run(args.rounds, ops)
        except (Mismatch, OSError) as e:
            obj = {"test": name, "ok": False, "error": str(e)}
            failed += 1
        except Exception as e:  # a pyverbs error: the device or driver refused something
            obj = {"test": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
            failed += 1
        finally:
            try:
                phase.close()
            except Exception as e:
                obj.setdefault("close_error", f"{type(e).__name__}: {e}")
        obj.update(ops=phase.counts.ops, wrs=phase.counts.wrs, changes=phase.counts.changes,
                   regions=regions, elapsed_ns=time.monotonic_ns() - t0, seed=seed + n)
        if missing:
            obj["not_offered"] = missing
        emit(obj)
        for k, v in phase.counts.ops.items():
            total.ops[k] = total.ops.get(k, 0) + v
    log(f"odp-rc: {failed} of {len(args.phases.split(','))} phases failed; operations "
        + ", ".join(f"{k} {v}" for k, v in total.ops.items()))
    pd.close()
    ctx.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

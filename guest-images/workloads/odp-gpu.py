#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-only
"""odp-gpu: an ODP memory region over memory that hmm-gpu moved into its VRAM.

A buffer G of ``PAGES`` anonymous pages is filled and migrated into the
GPU's memory through test_hmm's uAPI on /dev/hmm_dmirror0
(HMM_DMIRROR_MIGRATE_TO_DEV; what the device reads back must be what the
CPU wrote, and HMM_DMIRROR_SNAPSHOT must say every page is device-private
and the device's own). G then gets an ODP MR on the RDMA device (hmmnic0),
and so does a buffer H in system memory. In RC loopback (two QPs on one
port, :mod:`odp_common`) the NIC reads and writes G while its pages are in
VRAM: the NIC's page fault makes its driver's hmm_range_fault() meet a
device-private entry, and the kernel calls the GPU driver's
migrate_to_ram, which copies the page out of VRAM, before the NIC's fault
is replayed. Before every operation the pages of G it touches (and the
guard bytes past them) are written with fresh data and migrated into VRAM
again, so the faults recur.

Every operation is checked: the device's read-back at the migration, the
snapshot (in VRAM) before the work request, its completion, the snapshot
after it (every page of G the NIC moved data to or from is back in system
memory, and no CPU access happened in between: the NIC's fault moved it),
the bytes the GPU reads through its mirror (HMM_DMIRROR_READ) afterwards,
and then every byte through the CPU: the destination, the bytes past it,
the source. Phases (``-p``), each ``-n`` operations:

  migrate       G in VRAM, read back by the device and snapshotted
  read-remote   RDMA READ from G (the responder faults on VRAM pages)
  write-remote  RDMA WRITE into G (the responder's write fault)
  send-into     SEND into a receive buffer in G
  read-local    RDMA READ from H into G (the requester writes VRAM pages)
  write-local   RDMA WRITE from G to H (the requester reads VRAM pages)
  send-from     SEND from G into a receive buffer in H
  atomics       CMP_AND_SWP and FETCH_AND_ADD on a word of G in VRAM
  gpu-busy      the GPU's own work meanwhile (below)

All the while a thread keeps the GPU busy with work of its own through a
second mirror: fresh pages, filled, migrated to VRAM (read back), written
by the device (HMM_DMIRROR_WRITE), read by it (HMM_DMIRROR_READ), checked
and unmapped. It never touches a page in VRAM with the CPU, so it never
makes the GPU copy a page out: every copy out of VRAM while the NIC waits
for a fault is the NIC's doing (the harness looks at both devices' traces).

One JSON line per phase: {"test", "ok", counts..., "regions": [G, H]};
exit status 1 if any phase failed.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from odp_common import (
    ODP_ACCESS,
    PAGE,
    Loopback,
    Mismatch,
    emit,
    expect_bytes,
    first_difference,
    log,
    mmap_anon,
    munmap,
    pattern,
    peek,
    poke,
    put_u64,
    u64,
)
from pyverbs.device import Context
from pyverbs.libibverbs_enums import ibv_odp_transport_cap_bits as caps
from pyverbs.libibverbs_enums import ibv_wr_opcode
from pyverbs.mr import MR
from pyverbs.pd import PD

PAGES = 64  # G and H each
BUSY_PAGES = 16  # the GPU thread's buffers
PHASES = ("migrate", "read-remote", "write-remote", "send-into", "read-local", "write-local",
          "send-from", "atomics")
# phase -> (operation, is G the requester's (local) side)
OPS = {"read-remote": ("read", False), "write-remote": ("write", False),
       "send-into": ("send", False), "read-local": ("read", True),
       "write-local": ("write", True), "send-from": ("send", True)}
NEEDED = {"read": caps.IBV_ODP_SUPPORT_READ, "write": caps.IBV_ODP_SUPPORT_WRITE,
          "send": caps.IBV_ODP_SUPPORT_SEND | caps.IBV_ODP_SUPPORT_RECV,
          "atomics": caps.IBV_ODP_SUPPORT_ATOMIC}

# -- test_hmm's uAPI (lib/test_hmm_uapi.h), which hmm_gpu.ko offers -------------


class DmirrorCmd(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("ptr", ctypes.c_uint64),
                ("npages", ctypes.c_uint64), ("cpages", ctypes.c_uint64),
                ("faults", ctypes.c_uint64)]


def _iowr(nr: int) -> int:
    """_IOWR('H', nr, struct hmm_dmirror_cmd)"""
    return (3 << 30) | (ctypes.sizeof(DmirrorCmd) << 16) | (ord("H") << 8) | nr


DMIRROR_READ, DMIRROR_WRITE, MIGRATE_TO_DEV, MIGRATE_TO_SYS, SNAPSHOT = (
    _iowr(n) for n in range(5))
PROT_DEV_PRIVATE_MASK = 0x30
PROT_DEV_PRIVATE_LOCAL = 0x20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


class Dmirror:
    """One open /dev/hmm_dmirrorN: a mirror of this process on the GPU. ctypes
    lets other threads run while an ioctl waits for the device."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR)

    def close(self) -> None:
        os.close(self.fd)

    def _ioctl(self, req: int, name: str, addr: int, npages: int,
               buf: ctypes.Array[ctypes.c_char] | None) -> DmirrorCmd:
        cmd = DmirrorCmd(addr, ctypes.addressof(buf) if buf is not None else 0, npages, 0, 0)
        if _libc.ioctl(self.fd, req, ctypes.byref(cmd)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}({addr:#x}, {npages} pages) on {self.path}: "
                               f"{os.strerror(err)}")
        return cmd

    def migrate_to_dev(self, addr: int, npages: int) -> bytes:
        """Move the pages into VRAM; returns what the device then reads there."""
        buf = ctypes.create_string_buffer(npages * PAGE)
        cmd = self._ioctl(MIGRATE_TO_DEV, "MIGRATE_TO_DEV", addr, npages, buf)
        if cmd.cpages != npages:
            raise Mismatch(f"MIGRATE_TO_DEV({addr:#x}, {npages}): cpages {cmd.cpages}")
        return buf.raw

    def read(self, addr: int, npages: int) -> bytes:
        buf = ctypes.create_string_buffer(npages * PAGE)
        self._ioctl(DMIRROR_READ, "READ", addr, npages, buf)
        return buf.raw

    def write(self, addr: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        self._ioctl(DMIRROR_WRITE, "WRITE", addr, len(data) // PAGE, buf)

    def snapshot(self, addr: int, npages: int) -> bytes:
        buf = ctypes.create_string_buffer(npages)
        self._ioctl(SNAPSHOT, "SNAPSHOT", addr, npages, buf)
        return buf.raw[:npages]


def in_vram(snap: bytes) -> list[bool]:
    return [b & PROT_DEV_PRIVATE_MASK == PROT_DEV_PRIVATE_LOCAL for b in snap]


def pages_of(addr: int, length: int) -> tuple[int, int]:
    """(first page, number of pages) of [addr, addr + length)."""
    lo = addr - addr % PAGE
    hi = -(-(addr + length) // PAGE) * PAGE
    return lo, (hi - lo) // PAGE


# -- the GPU's own work ------------------------------------------------------------


@dataclass
class GpuBusy:
    """A thread that keeps the GPU migrating, writing and reading its own pages."""

    path: str
    seed: int
    iterations: int = 0
    pages_to_vram: int = 0
    bytes_checked: int = 0
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
            if self.thread.is_alive():
                self.error = self.error or "the GPU thread did not stop within 30 s"

    def _run(self) -> None:
        rng = random.Random(self.seed)
        n = BUSY_PAGES * PAGE
        try:
            dm = Dmirror(self.path)
        except OSError as e:
            self.error = str(e)
            return
        try:
            while not self.stop.is_set():
                buf = mmap_anon(n)
                try:
                    data = pattern(rng, n)
                    poke(buf, data)
                    got = dm.migrate_to_dev(buf, BUSY_PAGES)
                    if got != data:
                        raise Mismatch(f"GPU thread: MIGRATE_TO_DEV read back "
                                       f"{first_difference(data, got)}")
                    snap = dm.snapshot(buf, BUSY_PAGES)
                    if not all(in_vram(snap)):
                        raise Mismatch(f"GPU thread: after MIGRATE_TO_DEV, SNAPSHOT "
                                       f"{snap.hex()}: not every page in VRAM")
                    data = pattern(rng, n)
                    dm.write(buf, data)
                    got = dm.read(buf, BUSY_PAGES)
                    if got != data:
                        raise Mismatch(f"GPU thread: READ after WRITE in VRAM: "
                                       f"{first_difference(data, got)}")
                finally:
                    munmap(buf, n)  # pages in VRAM are freed, never copied out
                self.iterations += 1
                self.pages_to_vram += BUSY_PAGES
                self.bytes_checked += 2 * n
        except (Mismatch, OSError) as e:
            self.error = str(e)
        finally:
            dm.close()


# -- the NIC on G --------------------------------------------------------------------


@dataclass
class Buf:
    name: str
    addr: int
    length: int
    mr: MR | None = None

    @property
    def lkey(self) -> int:
        assert self.mr is not None
        return int(self.mr.lkey)

    @property
    def rkey(self) -> int:
        assert self.mr is not None
        return int(self.mr.rkey)

    def holds(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + self.length

    def region(self) -> dict[str, int | str]:
        return {"name": self.name, "addr": self.addr, "length": self.length,
                "mr": self.lkey >> 8 if self.mr is not None else -1}


@dataclass
class PhaseCounts:
    ops: int = 0
    pages_to_vram: int = 0  # pages of G migrated into VRAM before the operations
    pages_back_by_nic: int = 0  # of those, pages the NIC's faults brought back
    pages_left_in_vram: int = 0  # pages of G in VRAM after an operation (not touched)
    bytes_checked: int = 0
    gpu_bytes_checked: int = 0  # read through the GPU's mirror after the NIC

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Run:
    def __init__(self, ctx: Context, pd: PD, dm: Dmirror, rng: random.Random) -> None:
        self.ctx, self.pd, self.dm, self.rng = ctx, pd, dm, rng
        self.g = Buf("gpu", mmap_anon(PAGES * PAGE), PAGES * PAGE)
        self.h = Buf("host", mmap_anon(PAGES * PAGE), PAGES * PAGE)
        self.lb: Loopback | None = None

    def register(self) -> None:
        for b in (self.g, self.h):
            b.mr = MR(self.pd, b.length, ODP_ACCESS, address=b.addr)
        self.lb = Loopback(self.ctx, self.pd)

    def close(self) -> None:
        if self.lb is not None:
            self.lb.close()
        for b in (self.g, self.h):
            if b.mr is not None:
                b.mr.close()
            munmap(b.addr, b.length)

    # -- G into VRAM and back --------------------------------------------------------

    def to_vram(self, addr: int, npages: int, c: PhaseCounts) -> None:
        """Migrate G's pages [addr, +npages) to VRAM: the device must read back what
        the CPU wrote, and SNAPSHOT must say each page is the device's."""
        want = peek(addr, npages * PAGE)  # the pages are in system memory now
        got = self.dm.migrate_to_dev(addr, npages)
        if got != want:
            raise Mismatch(f"MIGRATE_TO_DEV({addr:#x}, {npages}): the device read back "
                           f"{first_difference(want, got)}")
        snap = self.dm.snapshot(addr, npages)
        if not all(in_vram(snap)):
            raise Mismatch(f"after MIGRATE_TO_DEV({addr:#x}, {npages}) SNAPSHOT says "
                           f"{snap.hex()}: not every page is device-private (0x20)")
        c.pages_to_vram += npages

    def migrate_phase(self, c: PhaseCounts) -> None:
        data = pattern(self.rng, self.g.length)
        poke(self.g.addr, data)
        self.to_vram(self.g.addr, PAGES, c)
        got = self.dm.read(self.g.addr, PAGES)
        if got != data:
            raise Mismatch(f"READ of G in VRAM: {first_difference(data, got)}")
        c.gpu_bytes_checked += len(data)
        c.ops += 1

    def _after_nic(self, touched: list[tuple[int, int]], vram_pages: list[tuple[int, int]],
                   c: PhaseCounts, what: str) -> None:
        """Pages of G the NIC moved data to or from are back in system memory."""
        for lo, n in vram_pages:
            snap = self.dm.snapshot(lo, n)
            vram = in_vram(snap)
            for i, v in enumerate(vram):
                page = lo + i * PAGE
                hit = any(pages_of(a, ln)[0] <= page < pages_of(a, ln)[0]
                          + pages_of(a, ln)[1] * PAGE for a, ln in touched)
                if hit and v:
                    raise Mismatch(f"{what}: page {page:#x} of G is still in VRAM (SNAPSHOT "
                                   f"{snap[i]:#04x}) although the NIC moved its bytes: the "
                                   "NIC's fault did not migrate it to system memory")
                if hit:
                    c.pages_back_by_nic += 1
                elif v:
                    c.pages_left_in_vram += 1

    def _gpu_check(self, addr: int, want: bytes, c: PhaseCounts, what: str) -> None:
        """The GPU reads ``want`` at ``addr`` (in G) through its mirror."""
        lo, n = pages_of(addr, len(want))
        got = self.dm.read(lo, n)[addr - lo:addr - lo + len(want)]
        if got != want:
            raise Mismatch(f"{what}: the GPU's READ at {addr:#x}+{len(want)}: "
                           f"{first_difference(want, got)}")
        c.gpu_bytes_checked += len(want)

    def data_op(self, phase: str, op: str, g_local: bool, c: PhaseCounts) -> None:
        assert self.lb is not None
        a, b = (self.g, self.h) if g_local else (self.h, self.g)
        length = self.rng.randrange(1, 5 * PAGE)
        off = self.rng.randrange(0, PAGES * PAGE - length - 64)
        src, dst = a.addr + off, b.addr + off
        data, guard = pattern(self.rng, length), pattern(self.rng, 64)
        frm, to = (src, dst) if op != "read" else (dst, src)
        poke(frm, data)
        poke(to, bytes(length))
        poke(to + length, guard)
        # G's side of the operation (its bytes and the guard past them) into VRAM
        g_at = frm if self.g.holds(frm) else to
        g_len = length if g_at == frm else length + 64
        lo, n = pages_of(g_at, g_len)
        self.to_vram(lo, n, c)
        what = f"{phase}: {op} {'from' if op != 'read' else 'to'} {a.name} at {off:#x} " \
               f"length {length}"
        if op == "send":
            self.lb.send(src, dst, length, a.lkey, b.lkey)
        else:
            opcode = (ibv_wr_opcode.IBV_WR_RDMA_READ if op == "read"
                      else ibv_wr_opcode.IBV_WR_RDMA_WRITE)
            self.lb.rdma(opcode, src, dst, length, a.lkey, b.rkey)
        self._after_nic([(g_at, length)], [(lo, n)], c, what)
        if self.g.holds(to):
            self._gpu_check(to, data, c, what)
        for name, at, want in (("destination", to, data), ("past the destination",
                                                           to + length, guard),
                               ("source", frm, data)):
            try:
                expect_bytes(name, at, want)
            except Mismatch as e:
                raise Mismatch(f"{what}: {e}") from e
        c.bytes_checked += 2 * length + 64
        c.ops += 1

    def atomic_op(self, phase: str, c: PhaseCounts) -> None:
        assert self.lb is not None
        off = self.rng.randrange(0, PAGES * PAGE, 8)
        dst, src = self.g.addr + off, self.h.addr + off
        for kind in ("cmp_swap", "fetch_add"):
            old = self.rng.getrandbits(64)
            put_u64(dst, old)
            put_u64(src, 0)
            lo, n = pages_of(dst, 8)
            self.to_vram(lo, n, c)
            what = f"{phase}: {kind} on G at {off:#x}"
            if kind == "cmp_swap":
                new = self.rng.getrandbits(64)
                self.lb.atomic(ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP, src, dst,
                               self.h.lkey, self.g.rkey, old, new)
            else:
                add = self.rng.getrandbits(32)
                new = (old + add) % (1 << 64)
                self.lb.atomic(ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD, src, dst,
                               self.h.lkey, self.g.rkey, add)
            self._after_nic([(dst, 8)], [(lo, n)], c, what)
            self._gpu_check(dst, new.to_bytes(8, "little"), c, what)
            for name, at, want in (("old value returned", src, old),
                                   ("G's word after", dst, new)):
                if u64(at) != want:
                    raise Mismatch(f"{what}: {name}: expected {want:#x}, found {u64(at):#x}")
            c.bytes_checked += 16
            c.ops += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--dev", default="hmmnic0")
    ap.add_argument("-m", "--mirror", default="/dev/hmm_dmirror0")
    ap.add_argument("-n", "--rounds", type=int, default=20, help="operations per phase")
    ap.add_argument("-p", "--phases", default=",".join(PHASES))
    ap.add_argument("-s", "--seed", type=int, default=None)
    ap.add_argument("--no-busy", action="store_true", help="no GPU thread")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    phases = args.phases.split(",")
    log(f"odp-gpu: {args.dev} over {args.mirror}, seed {seed}, {args.rounds} operations "
        "per phase")
    ctx = Context(name=args.dev)
    rc_caps = ctx.query_device_ex().odp_caps.rc_odp_caps
    pd = PD(ctx)
    dm = Dmirror(args.mirror)
    busy = GpuBusy(args.mirror, seed ^ 0x5A5A)
    if not args.no_busy:
        busy.start()
    run = Run(ctx, pd, dm, random.Random(seed))
    failed = 0
    try:
        for name in phases:
            c = PhaseCounts()
            t0 = time.monotonic_ns()
            busy_before = busy.iterations
            obj: dict[str, object] = {"test": name, "ok": True}
            need = NEEDED.get(OPS[name][0] if name in OPS else name, 0)
            try:
                if name == "migrate":
                    run.migrate_phase(c)
                    run.register()  # the MRs over G once it is in VRAM
                elif rc_caps & need != need:
                    obj = {"test": name, "skip": f"{args.dev} does not offer it on ODP RC "
                                                 f"(rc_odp_caps {rc_caps:#x})"}
                elif run.lb is None:
                    raise Mismatch("no MRs: the migrate phase did not run first")
                elif name == "atomics":
                    for _ in range(args.rounds):
                        run.atomic_op(name, c)
                else:
                    op, g_local = OPS[name]
                    for _ in range(args.rounds):
                        run.data_op(name, op, g_local, c)
                if busy.error:
                    raise Mismatch(busy.error)
            except (Mismatch, OSError) as e:
                obj = {"test": name, "ok": False, "error": str(e)}
            except Exception as e:  # pyverbs: the device or driver refused something
                obj = {"test": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
            if obj.get("ok") is False:
                failed += 1
            obj.update(c.to_dict(), gpu_busy_iterations=busy.iterations - busy_before,
                       elapsed_ns=time.monotonic_ns() - t0,
                       regions=[run.g.region(), run.h.region()])
            emit(obj)
    finally:
        busy.finish()
        obj = {"test": "gpu-busy", "ok": not busy.error, "iterations": busy.iterations,
               "pages_to_vram": busy.pages_to_vram, "bytes_checked": busy.bytes_checked}
        if args.no_busy:
            obj = {"test": "gpu-busy", "skip": "--no-busy"}
        elif busy.error:
            obj["error"] = busy.error
        elif busy.iterations == 0:
            obj.update(ok=False, error="the GPU thread did not finish one iteration")
        if obj.get("ok") is False:
            failed += 1
        emit(obj)
        run.close()
        dm.close()
        pd.close()
        ctx.close()
    log(f"odp-gpu: {failed} phases failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

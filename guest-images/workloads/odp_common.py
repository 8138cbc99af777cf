# SPDX-License-Identifier: GPL-2.0-only
"""Shared parts of the pyverbs ODP workloads (odp-rc.py, odp-implicit.py).

Two RC queue pairs on one device and port, connected to each other
(loopback: QP A's dest_qp_num is B's and the other way round, the LID from
the port), anonymous memory mapped and changed with ctypes (madvise,
munmap + mmap MAP_FIXED, mprotect), and the work requests the workloads
post, each checked: its completion's status and opcode, then the bytes it
moved. Every check that fails raises :class:`Mismatch` with what was
expected and what was found.

Output: one JSON line per sub-test on stdout, ``{"test": ..., "ok": true|false,
...}`` (or ``"skip": "why"``), which the harness turns into entries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyverbs.addr import AHAttr, GlobalRoute
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.libibverbs_enums import (
    IBV_LINK_LAYER_ETHERNET,
    ibv_access_flags,
    ibv_mtu,
    ibv_qp_type,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from pyverbs.pd import PD
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import SGE, RecvWR, SendWR

PAGE = os.sysconf("SC_PAGE_SIZE")
PORT = 1
GID_INDEX = 0  # RoCE (rxe): the port's first GID, as rdma-core's tests default to
POLL_TIMEOUT = 20.0  # seconds for one completion (a fault is a few ms; a lost one is forever)

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x10, 0x20, 0x100000
MADV_DONTNEED = 4
MAP_FAILED = ctypes.c_void_p(-1).value

ACCESS = (ibv_access_flags.IBV_ACCESS_LOCAL_WRITE | ibv_access_flags.IBV_ACCESS_REMOTE_WRITE
          | ibv_access_flags.IBV_ACCESS_REMOTE_READ | ibv_access_flags.IBV_ACCESS_REMOTE_ATOMIC)
ODP_ACCESS = ACCESS | ibv_access_flags.IBV_ACCESS_ON_DEMAND

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
for _fn in (_libc.madvise, _libc.mprotect):
    _fn.restype = ctypes.c_int
    _fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class Mismatch(Exception):
    """A work request did not complete as it must, or moved the wrong bytes."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mmap_anon(length: int, addr: int = 0, fixed: int = 0) -> int:
    """Anonymous private read/write memory; at ``addr`` exactly when ``fixed`` is
    MAP_FIXED or MAP_FIXED_NOREPLACE."""
    p = _libc.mmap(addr or None, length, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0)
    if p is None or p == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap({addr:#x}, {length}): {os.strerror(err)}")
    if fixed and p != addr:
        raise OSError(0, f"mmap({addr:#x}) gave {p:#x}")
    return int(p)


def munmap(addr: int, length: int) -> None:
    _check(_libc.munmap(addr, length), f"munmap({addr:#x}, {length})")


def madvise_dontneed(addr: int, length: int) -> None:
    _check(_libc.madvise(addr, length, MADV_DONTNEED), f"madvise({addr:#x}, DONTNEED)")


def mprotect(addr: int, length: int, prot: int) -> None:
    _check(_libc.mprotect(addr, length, prot), f"mprotect({addr:#x}, {prot})")


def remap(addr: int, length: int) -> None:
    """munmap and map fresh zero pages at the same address (MAP_FIXED)."""
    munmap(addr, length)
    mmap_anon(length, addr, MAP_FIXED)


def poke(addr: int, data: bytes) -> None:
    ctypes.memmove(addr, data, len(data))


def peek(addr: int, length: int) -> bytes:
    return ctypes.string_at(addr, length)


def pattern(rng: random.Random, length: int) -> bytes:
    return rng.randbytes(length)


def first_difference(want: bytes, got: bytes) -> str:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return f"byte {i}: expected {a:#04x}, found {b:#04x}"
    return f"length: expected {len(want)}, found {len(got)}"


def expect_bytes(what: str, addr: int, want: bytes) -> None:
    got = peek(addr, len(want))
    if got != want:
        raise Mismatch(f"{what} at {addr:#x}+{len(want)}: {first_difference(want, got)}")


def u64(addr: int) -> int:
    return int.from_bytes(peek(addr, 8), "little")


def put_u64(addr: int, value: int) -> None:
    poke(addr, value.to_bytes(8, "little"))


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Counts:
    """What a sub-test did: work requests by opcode, memory changes by kind."""

    ops: dict[str, int] = field(default_factory=dict)
    wrs: int = 0  # work requests posted (receives included)
    changes: dict[str, int] = field(default_factory=dict)

    def op(self, name: str) -> None:
        self.ops[name] = self.ops.get(name, 0) + 1

    def change(self, name: str, n: int = 1) -> None:
        self.changes[name] = self.changes.get(name, 0) + n


# work request opcode -> (its completion's opcode, its name)
_WC_OPCODE = {
    ibv_wr_opcode.IBV_WR_SEND: (ibv_wc_opcode.IBV_WC_SEND, "SEND"),
    ibv_wr_opcode.IBV_WR_RDMA_WRITE: (ibv_wc_opcode.IBV_WC_RDMA_WRITE, "RDMA_WRITE"),
    ibv_wr_opcode.IBV_WR_RDMA_READ: (ibv_wc_opcode.IBV_WC_RDMA_READ, "RDMA_READ"),
    ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP: (ibv_wc_opcode.IBV_WC_COMP_SWAP, "CMP_AND_SWP"),
    ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD: (ibv_wc_opcode.IBV_WC_FETCH_ADD,
                                                "FETCH_AND_ADD"),
}


def rc_attr(dest_qp_num: int, dlid: int, gid: Any = None) -> QPAttr:
    """What takes an RC QP to RTS towards QP ``dest_qp_num`` at ``dlid`` (through a GRH
    to ``gid`` on RoCE): every remote access allowed, PSNs 0, retries as a real
    requester makes them (the peer may not be in RTR yet)."""
    attr = QPAttr(port_num=PORT, path_mtu=ibv_mtu.IBV_MTU_1024)
    attr.qp_access_flags = ACCESS
    attr.dest_qp_num = dest_qp_num
    attr.rq_psn = attr.sq_psn = 0
    attr.max_rd_atomic = attr.max_dest_rd_atomic = 1
    attr.min_rnr_timer = 1
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    if gid is None:
        attr.ah_attr = AHAttr(port_num=PORT, dlid=dlid, is_global=0)
    else:
        attr.ah_attr = AHAttr(port_num=PORT, dlid=dlid, is_global=1,
                              gr=GlobalRoute(dgid=gid, sgid_index=GID_INDEX))
    return attr


class Loopback:
    """Two RC QPs on ``dev`` port 1, A connected to B, each with its own CQ. On an
    InfiniBand port (hmm-nic) the path is the port's LID; on RoCE (rxe) a GRH to the
    port's own GID."""

    def __init__(self, ctx: Context, pd: PD, depth: int = 64, spin: bool = False) -> None:
        self.ctx, self.pd = ctx, pd
        # spin: poll completions without yielding; time.sleep(0) puts the thread to
        # sleep in the guest (state S) until the next tick, which a latency figure
        # would measure instead of the device
        self.spin = spin
        port = ctx.query_port(PORT)
        self.lid = port.lid
        self.gid = (ctx.query_gid(PORT, GID_INDEX)
                    if port.link_layer == IBV_LINK_LAYER_ETHERNET else None)
        self.cq_a = CQ(ctx, depth)
        self.cq_b = CQ(ctx, depth)
        self.qp_a = self._qp(self.cq_a, depth)
        self.qp_b = self._qp(self.cq_b, depth)
        self._connect(self.qp_a, self.qp_b.qp_num)
        self._connect(self.qp_b, self.qp_a.qp_num)
        self.wr_id = 0

    def _qp(self, cq: CQ, depth: int) -> QP:
        cap = QPCap(max_send_wr=depth, max_recv_wr=depth, max_send_sge=2, max_recv_sge=2)
        init = QPInitAttr(qp_type=ibv_qp_type.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap,
                          sq_sig_all=1)
        return QP(self.pd, init)

    def _connect(self, qp: QP, dest_qp_num: int) -> None:
        qp.to_rts(rc_attr(dest_qp_num, self.lid, self.gid))

    def close(self) -> None:
        for obj in (self.qp_a, self.qp_b, self.cq_a, self.cq_b):
            obj.close()

    # -- posting and completing --------------------------------------------

    def _next_id(self) -> int:
        self.wr_id += 1
        return self.wr_id

    def poll(self, cq: CQ, wr_id: int, opcode: int, what: str) -> Any:
        deadline = time.monotonic() + POLL_TIMEOUT
        while True:
            n, wcs = cq.poll(1)
            if n:
                wc = wcs[0]
                if wc.status != ibv_wc_status.IBV_WC_SUCCESS:
                    raise Mismatch(f"{what}: completion status {wc.status} "
                                   f"(vendor_err {wc.vendor_err}), wr_id {wc.wr_id}")
                if wc.wr_id != wr_id or wc.opcode != opcode:
                    raise Mismatch(f"{what}: completion wr_id {wc.wr_id} opcode {wc.opcode}, "
                                   f"expected wr_id {wr_id} opcode {opcode}")
                return wc
            if time.monotonic() > deadline:
                raise Mismatch(f"{what}: no completion within {POLL_TIMEOUT:.0f} s "
                               f"(wr_id {wr_id}): the QP stalled")
            if not self.spin:
                time.sleep(0)

    def send(self, src: int, dst: int, length: int, lkey_a: int, lkey_b: int) -> None:
        """A SENDs ``length`` bytes at ``src`` into the receive B posted at ``dst``."""
        rid = self._next_id()
        self.qp_b.post_recv(RecvWR(wr_id=rid, num_sge=1, sg=[SGE(dst, length, lkey_b)]))
        sid = self._next_id()
        self.qp_a.post_send(SendWR(wr_id=sid, opcode=ibv_wr_opcode.IBV_WR_SEND, num_sge=1,
                                   sg=[SGE(src, length, lkey_a)]))
        self.poll(self.cq_a, sid, ibv_wc_opcode.IBV_WC_SEND, "SEND")
        wc = self.poll(self.cq_b, rid, ibv_wc_opcode.IBV_WC_RECV, "RECV")
        if wc.byte_len != length:
            raise Mismatch(f"RECV: byte_len {wc.byte_len}, expected {length}")

    def rdma(self, opcode: int, local: int, remote: int, length: int, lkey: int,
             rkey: int) -> None:
        """A posts an RDMA WRITE (local -> remote) or READ (remote -> local)."""
        wid = self._next_id()
        wr = SendWR(wr_id=wid, opcode=opcode, num_sge=1, sg=[SGE(local, length, lkey)])
        wr.set_wr_rdma(rkey, remote)
        self.qp_a.post_send(wr)
        self.poll(self.cq_a, wid, *_WC_OPCODE[opcode])

    def atomic(self, opcode: int, local: int, remote: int, lkey: int, rkey: int,
               compare_add: int, swap: int = 0) -> None:
        """A posts an 8-byte atomic on ``remote``; the old value lands at ``local``."""
        wid = self._next_id()
        wr = SendWR(wr_id=wid, opcode=opcode, num_sge=1, sg=[SGE(local, 8, lkey)])
        wr.set_wr_atomic(rkey=rkey, addr=remote, compare_add=compare_add, swap=swap)
        self.qp_a.post_send(wr)
        self.poll(self.cq_a, wid, *_WC_OPCODE[opcode])


# -- the five operations, each checked ---------------------------------------------

OPS = ("send", "write", "read", "cmp_swap", "fetch_add")


@dataclass
class Region:
    """A range of memory and the keys it is reached with."""

    addr: int
    length: int
    lkey: int
    rkey: int


@dataclass
class Prepared:
    """An operation whose memory is written and not yet posted."""

    op: str
    reads: list[tuple[int, int]]  # (addr, length) the device only reads
    writes: list[tuple[int, int]]  # (addr, length) the device writes

    def touched(self) -> list[tuple[int, int]]:
        return self.reads + self.writes


# Called between the preparation and the posting; returns what to run after the
# check (whatever the outcome), or None.
Hook = Callable[[Prepared], Callable[[], None] | None]


def run_op(lb: Loopback, op: str, a: Region, b: Region, off: int, length: int,
           rng: random.Random, hook: Hook | None = None) -> None:
    """One ``op`` between ``a`` (QP A's memory) and ``b`` (QP B's), at ``off`` in
    both, ``length`` bytes (8 for the atomics), then check every byte it moved
    and the bytes just past it. The data is fresh each call, so a stale device
    translation shows up as old bytes. ``hook`` runs once the memory is
    written, just before the work request is posted."""
    src, dst = a.addr + off, b.addr + off
    checks: list[tuple[str, int, bytes]] = []
    if op in ("send", "write", "read"):
        data, guard = pattern(rng, length), pattern(rng, 64)
        # send/write: A's bytes go to B; read: B's bytes come to A
        frm, to = (src, dst) if op != "read" else (dst, src)
        poke(frm, data)
        poke(to, bytes(length))
        poke(to + length, guard)
        prep = Prepared(op, [(frm, length)], [(to, length)])
        checks = [(f"{op}: destination", to, data), (f"{op}: past the destination",
                                                      to + length, guard),
                  (f"{op}: source", frm, data)]
    elif op in ("cmp_swap", "fetch_add"):
        old = rng.getrandbits(64)
        put_u64(dst, old)
        put_u64(src, 0)
        prep = Prepared(op, [], [(src, 8), (dst, 8)])
    else:
        raise ValueError(op)
    after = hook(prep) if hook else None
    try:
        if op == "send":
            lb.send(src, dst, length, a.lkey, b.lkey)
        elif op == "write":
            lb.rdma(ibv_wr_opcode.IBV_WR_RDMA_WRITE, src, dst, length, a.lkey, b.rkey)
        elif op == "read":
            lb.rdma(ibv_wr_opcode.IBV_WR_RDMA_READ, src, dst, length, a.lkey, b.rkey)
        elif op == "cmp_swap":
            new = rng.getrandbits(64)
            lb.atomic(ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP, src, dst, a.lkey, b.rkey,
                      old, new)
            _expect_u64("cmp_swap: old value returned", src, old)
            _expect_u64("cmp_swap: remote after a matching compare", dst, new)
            lb.atomic(ibv_wr_opcode.IBV_WR_ATOMIC_CMP_AND_SWP, src, dst, a.lkey, b.rkey,
                      new ^ 1, old)
            _expect_u64("cmp_swap: old value returned (no match)", src, new)
            _expect_u64("cmp_swap: remote after a compare that differs", dst, new)
        else:  # fetch_add
            add = rng.getrandbits(32)
            lb.atomic(ibv_wr_opcode.IBV_WR_ATOMIC_FETCH_AND_ADD, src, dst, a.lkey, b.rkey,
                      add)
            _expect_u64("fetch_add: old value returned", src, old)
            _expect_u64("fetch_add: remote after the add", dst, (old + add) % (1 << 64))
        for what, addr, want in checks:
            expect_bytes(what, addr, want)
    finally:
        if after is not None:
            after()


def _expect_u64(what: str, addr: int, want: int) -> None:
    got = u64(addr)
    if got != want:
        raise Mismatch(f"{what} at {addr:#x}: expected {want:#x}, found {got:#x}")


def wrs_of(op: str) -> int:
    """Work requests one :func:`run_op` posts (a SEND's receive counted)."""
    return 2 if op in ("send", "cmp_swap") else 1

#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-only
"""odp-xvm: RDMA WRITE and READ into another guest's ODP memory (odp-cross-vm).

  odp-xvm.py -d DEV [-n PAGES] [--dir /tmp/xvm]

Runs in both guests, one per side of a cable between two QEMUs, and is
driven through files in --dir (the harness copies between the guests):

  self.json   written at start: this side's LID, QP number and ODP region
              (address, rkey, length), for the other side
  peer.json   the other side's self.json; read once, then the RC QP is
              connected to it
  ready       written once connected
  cmd-N       one command per file, N = 1, 2, ...; its outcome goes to
              result-N.json, one JSON line {"test": ..., "ok": ...}

Each side's memory is an anonymous mapping of PAGES pages under one ODP MR,
never touched before the traffic, so the first access of either device
faults. Commands:

  write SEED      fill the local region with pattern SEED from the CPU, RDMA
                  WRITE it into the whole remote region
  read SPEC       drop the local region (madvise DONTNEED), RDMA READ the
                  whole remote region into it, compare with SPEC
  check SPEC      compare the local region with SPEC (what the other side's
                  writes must have left)
  change SEED     on the local region: drop the even pages, write pattern
                  SEED into the pages 1 mod 4 from the CPU; the other side's
                  next READ must see exactly that (a stale device
                  translation would show the old bytes)
  exit

SPEC: ``all:S`` (every page pattern S) or ``changed:S:T`` (even pages zero,
pages 1 mod 4 pattern T, pages 3 mod 4 pattern S).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from odp_common import (
    ODP_ACCESS,
    PAGE,
    PORT,
    Mismatch,
    first_difference,
    madvise_dontneed,
    mmap_anon,
    peek,
    poke,
    rc_attr,
)
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.libibverbs_enums import (
    ibv_qp_type,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.qp import QP, QPCap, QPInitAttr
from pyverbs.wr import SGE, SendWR

PEER_TIMEOUT = 120.0  # seconds for the other side's self.json
CMD_TIMEOUT = 600.0  # seconds without a command: the harness is gone
POLL_TIMEOUT = 30.0  # one completion (faults on both sides, over the link)


def page_pattern(seed: int, page: int) -> bytes:
    return random.Random(seed * 1_000_003 + page).randbytes(PAGE)


def expected(spec: str, pages: int) -> list[bytes]:
    kind, *seeds = spec.split(":")
    if kind == "all" and len(seeds) == 1:
        return [page_pattern(int(seeds[0]), p) for p in range(pages)]
    if kind == "changed" and len(seeds) == 2:
        old, new = int(seeds[0]), int(seeds[1])
        return [bytes(PAGE) if p % 2 == 0 else page_pattern(new if p % 4 == 1 else old, p)
                for p in range(pages)]
    raise ValueError(f"bad SPEC {spec!r}: all:S or changed:S:T")


def compare(addr: int, want: list[bytes], what: str) -> None:
    for p, w in enumerate(want):
        got = peek(addr + p * PAGE, PAGE)
        if got != w:
            raise Mismatch(f"{what}: page {p}: {first_difference(w, got)}")


class Side:
    def __init__(self, dev: str, pages: int) -> None:
        self.ctx = Context(name=dev)
        self.pd = PD(self.ctx)
        self.cq = CQ(self.ctx, 16)
        cap = QPCap(max_send_wr=16, max_recv_wr=16, max_send_sge=1, max_recv_sge=1)
        self.qp = QP(self.pd, QPInitAttr(qp_type=ibv_qp_type.IBV_QPT_RC, scq=self.cq,
                                         rcq=self.cq, cap=cap, sq_sig_all=1))
        self.pages = pages
        self.length = pages * PAGE
        self.addr = mmap_anon(self.length)
        self.mr = MR(self.pd, self.length, ODP_ACCESS, address=self.addr)
        self.lid = self.ctx.query_port(PORT).lid
        self.peer: dict[str, int] = {}
        self.wr_id = 0

    def info(self) -> dict[str, int]:
        return {"lid": self.lid, "qpn": self.qp.qp_num, "addr": self.addr,
                "rkey": self.mr.rkey, "length": self.length}

    def connect(self, peer: dict[str, int]) -> None:
        self.peer = peer
        self.qp.to_rts(rc_attr(peer["qpn"], peer["lid"]))

    def _rdma(self, opcode: int, wc_opcode: int, what: str) -> None:
        self.wr_id += 1
        wr = SendWR(wr_id=self.wr_id, opcode=opcode, num_sge=1,
                    sg=[SGE(self.addr, self.length, self.mr.lkey)])
        wr.set_wr_rdma(self.peer["rkey"], self.peer["addr"])
        self.qp.post_send(wr)
        deadline = time.monotonic() + POLL_TIMEOUT
        while True:
            n, wcs = self.cq.poll(1)
            if n:
                wc = wcs[0]
                if wc.status != ibv_wc_status.IBV_WC_SUCCESS or wc.opcode != wc_opcode:
                    raise Mismatch(f"{what}: completion status {wc.status} opcode "
                                   f"{wc.opcode} (vendor_err {wc.vendor_err})")
                return
            if time.monotonic() > deadline:
                raise Mismatch(f"{what}: no completion within {POLL_TIMEOUT:.0f} s")
            time.sleep(0)

    def command(self, words: list[str]) -> dict[str, object]:
        op, args = words[0], words[1:]
        if op == "write":
            seed = int(args[0])
            for p in range(self.pages):
                poke(self.addr + p * PAGE, page_pattern(seed, p))
            self._rdma(ibv_wr_opcode.IBV_WR_RDMA_WRITE, ibv_wc_opcode.IBV_WC_RDMA_WRITE,
                       f"RDMA WRITE of {self.length} bytes")
        elif op == "read":
            want = expected(args[0], self.pages)
            madvise_dontneed(self.addr, self.length)
            self._rdma(ibv_wr_opcode.IBV_WR_RDMA_READ, ibv_wc_opcode.IBV_WC_RDMA_READ,
                       f"RDMA READ of {self.length} bytes")
            compare(self.addr, want, f"READ back ({args[0]})")
        elif op == "check":
            compare(self.addr, expected(args[0], self.pages), f"local memory ({args[0]})")
        elif op == "change":
            seed = int(args[0])
            for p in range(0, self.pages, 2):
                madvise_dontneed(self.addr + p * PAGE, PAGE)
            for p in range(1, self.pages, 4):
                poke(self.addr + p * PAGE, page_pattern(seed, p))
        else:
            raise ValueError(f"unknown command {' '.join(words)!r}")
        return {"bytes": self.length}


def wait_for(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.05)
    time.sleep(0.05)  # the harness writes it whole, then we read
    return path.read_text()


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--device", required=True)
    ap.add_argument("-n", "--pages", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/xvm"))
    args = ap.parse_args()
    if args.pages < 4:
        ap.error(f"-n {args.pages}: at least 4 pages")
    d: Path = args.dir
    d.mkdir(parents=True, exist_ok=True)
    side = Side(args.device, args.pages)
    write_atomically(d / "self.json", json.dumps(side.info()) + "\n")
    side.connect(json.loads(wait_for(d / "peer.json", PEER_TIMEOUT)))
    write_atomically(d / "ready", "")
    n = 1
    while True:
        words = wait_for(d / f"cmd-{n}", CMD_TIMEOUT).split()
        if words == ["exit"]:
            return 0
        t0 = time.monotonic()
        try:
            out = {"test": words[0], "ok": True, **side.command(words)}
        except (Mismatch, OSError, ValueError) as e:
            out = {"test": words[0], "ok": False, "error": str(e)}
        except Exception as e:  # pyverbs' own errors: the command failed
            out = {"test": words[0], "ok": False, "error": f"{type(e).__name__}: {e}"}
        out["seconds"] = round(time.monotonic() - t0, 3)
        write_atomically(d / f"result-{n}.json", json.dumps(out) + "\n")
        n += 1


if __name__ == "__main__":
    sys.exit(main())

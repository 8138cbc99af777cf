"""Test-side model of the hmm-nic ABI and a driver for it over qtest.

Constants are parsed from qemu-devices/include/hmm_nic_regs.h (the single
source of truth) with hmmgpu's parser; the PCI and MSI-X plumbing, the fault
queue and the page-table builder are hmmgpu's (PciDev, PageTables): the two
devices share the device MMU. The struct layouts are written out here and
checked against the header's static asserts.

The driver builds what a kernel driver and the rxe provider would: MR, QP
and CQ tables in guest RAM, queue buffers (struct rxe_queue_buf layout)
mapped in MMU context RING_CTX, memory regions mapped in their own context.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from hmmgpu import (
    REPO_ROOT,
    PageTables,
    PciDev,
    parse_header,
)
from hmmgpu import H as G  # the shared MMU layouts (PTE bits, access, trace kinds)

from harness.guest.qtest import QTest

HEADER = REPO_ROOT / "qemu-devices" / "include" / "hmm_nic_regs.h"
ABI = parse_header(HEADER, "HMM_NIC_", skip=("HMM_NIC_STATIC_ASSERT",))


class _Abi:
    """Attribute access to header constants without the HMM_NIC_ prefix."""

    def __getattr__(self, name: str) -> int:
        return ABI["HMM_NIC_" + name]


N = _Abi()

MR = struct.Struct("<QQIIII")  # va length key access flags pdn
# sq_va rq_va sq_mask rq_mask sq_log2 rq_log2 state type send_cqn recv_cqn
# dest_qpn pdn access flags rnr_retry min_rnr_timer dest_lid retry_cnt timeout
QP = struct.Struct("<QQIIBBBBIIIIIIBBHBB6x")
CQ = struct.Struct("<QIBBH16x")  # va mask log2_elem flags rsvd0
SEND_WR_HEAD = struct.Struct("<QIIII")  # wr_id reserved opcode send_flags imm
RDMA = struct.Struct("<QII")  # remote_addr rkey reserved
ATOMIC = struct.Struct("<QQQII")  # remote_addr compare_add swap rkey reserved
FLUSH = struct.Struct("<QIIBB")  # remote_addr length(unused) rkey type level
SGE = struct.Struct("<QII")  # addr length lkey
DMA_INFO = struct.Struct("<IIIIII")  # length resid cur_sge num_sge sge_offset reserved
# wr_id status opcode vendor_err byte_len imm qp_num src_qp wc_flags pkey slid sl dlid port rsvd
CQE = struct.Struct("<QIIIIIIIIHHBBBB")
EQE = struct.Struct("<IIIIQQ")  # type num err rsvd0 timestamp rsvd1
for _n, _s, _size in (
    ("hmm_nic_mr", MR, 32),
    ("hmm_nic_qp", QP, 64),
    ("hmm_nic_cq", CQ, 32),
    ("hmm_nic_sge", SGE, 16),
    ("hmm_nic_dma_info", DMA_INFO, 24),
    ("hmm_nic_cqe", CQE, 48),
    ("hmm_nic_eqe", EQE, 32),
):
    assert _s.size == _size, _n
    assert f"sizeof(struct {_n}) == {_size}" in HEADER.read_text()
assert f"sizeof(struct hmm_nic_send_wr) == {N.SWQE_DMA - 40}" in HEADER.read_text()

# Guest-physical layout (RAM is 256 MiB). hmmgpu's MMU areas are reused:
# CTX_TABLE 0x301000, FAULTQ 0x310000, page tables 0x400000-0x800000.
MR_TABLE = 0x0080_0000
QP_TABLE = 0x0081_0000
CQ_TABLE = 0x0082_0000
EQ = 0x0083_0000
QBUF_PA = 0x0100_0000  # queue buffers, allocated upwards, 4 KiB aligned
QBUF_END = 0x0200_0000
DATA_PA = 0x0400_0000  # backing of memory regions (tests pick offsets)
RING_VA = 0x0000_5500_0000_0000  # where the queue buffers live in RING_CTX
MR_VA = 0x0000_7F00_0000_0000  # memory region N: MR_VA + N << 32 by default
PAGE = 4096

ALL_INTR = N.INTR_EQ | N.INTR_ERROR | N.INTR_FAULT
REMOTE_ALL = N.ACCESS_REMOTE_WRITE | N.ACCESS_REMOTE_READ | N.ACCESS_REMOTE_ATOMIC
ACCESS_ALL = N.ACCESS_LOCAL_WRITE | REMOTE_ALL
RWA = G.PTE_READ | G.PTE_WRITE | G.PTE_ATOMIC


def key(index: int, tag: int = 0x5A) -> int:
    return (index << 8) | tag


@dataclass(frozen=True)
class Cqe:
    wr_id: int
    status: int
    opcode: int
    vendor_err: int
    byte_len: int
    imm: int
    qp_num: int
    src_qp: int
    wc_flags: int

    @classmethod
    def unpack(cls, data: bytes) -> Cqe:
        f = CQE.unpack(data)
        return cls(*f[:9])


@dataclass(frozen=True)
class Eqe:
    type: int
    num: int
    err: int
    timestamp_ns: int

    @classmethod
    def unpack(cls, data: bytes) -> Eqe:
        t, num, err, _r, ts, _r1 = EQE.unpack(data)
        return cls(t, num, err, ts)


@dataclass
class Queue:
    """A queue buffer (struct rxe_queue_buf): indices at +128/+256, data at +384."""

    pa: int
    va: int
    mask: int
    log2: int
    index: int = 0  # the test's own index: producer for SQ/RQ, consumer for CQ

    def slot_pa(self, i: int) -> int:
        return self.pa + N.QBUF_DATA + ((i & self.mask) << self.log2)


@dataclass
class Qp:
    qpn: int
    sq: Queue
    rq: Queue
    send_cqn: int
    recv_cqn: int
    dest: int
    pdn: int
    access: int
    flags: int
    rnr_retry: int
    state: int
    min_rnr_timer: int = 0
    dest_lid: int = 0
    retry_cnt: int = 0
    timeout: int = 0


@dataclass
class Mr:
    index: int
    key: int
    va: int
    length: int
    pa: int  # backing of va (contiguous) or 0 if unmapped


@dataclass
class SendWr:
    opcode: int
    wr_id: int = 0
    flags: int = 0  # send_flags
    sges: list[tuple[int, int, int]] = field(default_factory=list)  # (addr, length, lkey)
    inline: bytes | None = None
    remote_addr: int = 0
    rkey: int = 0
    compare_add: int = 0
    swap: int = 0
    imm: int = 0
    length: int | None = None  # dma.length; default: sum of the SGEs
    num_sge: int | None = None  # default: len(sges)
    value: int = 0  # ATOMIC_WRITE: the 8 bytes (rxe's dma.atomic_wr)
    flush_type: int = N.FLUSH_GLOBAL  # FLUSH: placement type(s)
    flush_level: int = N.FLUSH_RANGE  # FLUSH: selectivity level

    def pack(self, elem: int) -> bytes:
        flags = self.flags | (N.SEND_INLINE if self.inline is not None else 0)
        head = SEND_WR_HEAD.pack(self.wr_id, 0, self.opcode, flags, self.imm)
        if self.opcode in (N.WR_ATOMIC_CMP_AND_SWP, N.WR_ATOMIC_FETCH_AND_ADD):
            union = ATOMIC.pack(self.remote_addr, self.compare_add, self.swap, self.rkey, 0)
        elif self.opcode == N.WR_FLUSH:
            union = FLUSH.pack(self.remote_addr, 0, self.rkey, self.flush_type,
                               self.flush_level)
        else:
            union = RDMA.pack(self.remote_addr, self.rkey, 0)
        wr = (head + union).ljust(N.SWQE_DMA, b"\0")
        if self.opcode in (N.WR_FLUSH, N.WR_ATOMIC_WRITE) and self.inline is None:
            # as the rxe provider writes them: no SGEs, dma.length the range
            # (FLUSH) or 8 with the value where the SGEs would be (ATOMIC_WRITE)
            atomic_write = self.opcode == N.WR_ATOMIC_WRITE
            length = self.length if self.length is not None else 8 if atomic_write else 0
            nsge = 0 if self.num_sge is None else self.num_sge
            body = struct.pack("<Q", self.value) if atomic_write else b""
            wqe = wr + DMA_INFO.pack(length, length, 0, nsge, 0, 0) + body
            return wqe.ljust(elem, b"\0")
        if self.inline is not None:
            length = len(self.inline) if self.length is None else self.length
            body = self.inline
            nsge = 0
        else:
            length = sum(s[1] for s in self.sges) if self.length is None else self.length
            body = b"".join(SGE.pack(*s) for s in self.sges)
            nsge = len(self.sges) if self.num_sge is None else self.num_sge
        dma = DMA_INFO.pack(length, length, 0, nsge, 0, 0)
        wqe = wr + dma + body
        assert len(wqe) <= elem, "WQE does not fit its slot"
        return wqe.ljust(elem, b"\0")


def recv_wqe(wr_id: int, sges: list[tuple[int, int, int]], elem: int,
             num_sge: int | None = None) -> bytes:
    length = sum(s[1] for s in sges)
    n = len(sges) if num_sge is None else num_sge
    wqe = struct.pack("<Q8x", wr_id) + DMA_INFO.pack(length, length, 0, n, 0, 0)
    wqe += b"".join(SGE.pack(*s) for s in sges)
    assert len(wqe) <= elem
    return wqe.ljust(elem, b"\0")


class Nic(PciDev):
    """Plays the role of firmware, kernel driver and rxe provider for one hmm-nic."""

    name = "hmm-nic"
    qom_id = "nic0"
    prefix = "HMM_NIC_"
    abi = ABI
    queue_enable = "ENABLE"

    def __init__(self, qt: QTest, *, enable_msix: bool = True) -> None:
        super().__init__(qt, enable_msix=enable_msix)
        self.qbuf_next = QBUF_PA
        self.qps: dict[int, Qp] = {}
        self.cqs: dict[int, Queue] = {}
        self.mrs: dict[int, Mr] = {}
        self.eq_head = 0
        self.eq_size = 0
        self.pt: PageTables | None = None

    # -- bring-up ----------------------------------------------------------

    def setup(
        self,
        *,
        qp_count: int = 8,
        cq_count: int = 8,
        mr_count: int = 16,
        eq_size: int = 16,
        faultq: bool = True,
        intr_mask: int = ALL_INTR,
    ) -> PageTables:
        """MMU (context RING_CTX for the queues), fault queue, event queue,
        empty tables; the NIC enabled."""
        self.set_reg("INTR_MASK", intr_mask)
        pt = PageTables(self, mr_count)
        pt.set_ctx(N.RING_CTX)
        pt.enable()
        self.pt = pt
        if faultq:
            self.setup_faultq()
        self.qt.memset(MR_TABLE, MR.size * mr_count, 0)
        self.qt.memset(QP_TABLE, QP.size * qp_count, 0)
        self.qt.memset(CQ_TABLE, CQ.size * cq_count, 0)
        self.set_reg("MR_BASE_LO", MR_TABLE)
        self.set_reg("MR_BASE_HI", 0)
        self.set_reg("QP_BASE_LO", QP_TABLE)
        self.set_reg("QP_BASE_HI", 0)
        self.set_reg("QP_COUNT", qp_count)
        self.set_reg("CQ_BASE_LO", CQ_TABLE)
        self.set_reg("CQ_BASE_HI", 0)
        self.set_reg("CQ_COUNT", cq_count)
        if eq_size:
            self.qt.memset(EQ, EQE.size * eq_size, 0)
            self.set_reg("EQ_BASE_LO", EQ)
            self.set_reg("EQ_BASE_HI", 0)
            self.set_reg("EQ_SIZE", eq_size)
            self.set_reg("EQ_CTRL", N.ENABLE)
            self.eq_size, self.eq_head = eq_size, 0
        self.set_reg("NIC_CTRL", N.ENABLE)
        self.msi_clear()
        return pt

    def ring_buffer(self, size: int) -> tuple[int, int]:
        """A zeroed queue buffer of ``size`` bytes mapped in RING_CTX: (pa, va)."""
        assert self.pt is not None
        size = (size + PAGE - 1) & ~(PAGE - 1)
        pa = self.qbuf_next
        assert pa + size <= QBUF_END, "queue buffer pool exhausted"
        self.qbuf_next += size
        va = RING_VA + (pa - QBUF_PA)
        self.qt.memset(pa, size, 0)
        self.pt.map_range(N.RING_CTX, va, pa, size, G.PTE_READ | G.PTE_WRITE)
        return pa, va

    def queue(self, entries: int, log2: int) -> Queue:
        pa, va = self.ring_buffer(N.QBUF_DATA + (entries << log2))
        return Queue(pa, va, entries - 1, log2)

    def create_cq(self, cqn: int, entries: int = 16, log2: int = 6,
                  flags: int | None = None) -> Queue:
        q = self.queue(entries, log2)
        self.write_cq(cqn, q, N.CQ_VALID if flags is None else flags)
        self.cqs[cqn] = q
        return q

    def write_cq(self, cqn: int, q: Queue, flags: int) -> None:
        self.qt.write(CQ_TABLE + CQ.size * cqn, CQ.pack(q.va, q.mask, q.log2, flags, 0))

    def create_qp(
        self,
        qpn: int,
        *,
        dest: int,
        send_cq: int = 0,
        recv_cq: int | None = None,
        sq_entries: int = 16,
        rq_entries: int = 16,
        sq_log2: int = 9,
        rq_log2: int = 7,
        pdn: int = 1,
        access: int = REMOTE_ALL,
        flags: int = 0,
        rnr_retry: int = 7,
        state: int | None = None,
        min_rnr_timer: int = 0,
        dest_lid: int = 0,
        retry_cnt: int = 0,
        timeout: int = 0,
    ) -> Qp:
        qp = Qp(
            qpn,
            self.queue(sq_entries, sq_log2),
            self.queue(rq_entries, rq_log2),
            send_cq,
            send_cq if recv_cq is None else recv_cq,
            dest,
            pdn,
            access,
            flags,
            rnr_retry,
            N.QPS_RTS if state is None else state,
            min_rnr_timer,
            dest_lid,
            retry_cnt,
            timeout,
        )
        self.qps[qpn] = qp
        self.write_qp(qp)
        return qp

    def write_qp(self, qp: Qp, *, type_: int | None = None) -> None:
        self.qt.write(
            QP_TABLE + QP.size * qp.qpn,
            QP.pack(
                qp.sq.va, qp.rq.va, qp.sq.mask, qp.rq.mask, qp.sq.log2, qp.rq.log2,
                qp.state, N.QPT_RC if type_ is None else type_, qp.send_cqn, qp.recv_cqn,
                qp.dest, qp.pdn, qp.access, qp.flags, qp.rnr_retry, qp.min_rnr_timer,
                qp.dest_lid, qp.retry_cnt, qp.timeout,
            ),
        )

    def qp_state(self, qpn: int) -> int:
        return self.qt.read(QP_TABLE + QP.size * qpn + 26, 1)[0]

    def reg_mr(
        self,
        index: int,
        length: int,
        *,
        va: int | None = None,
        pa: int | None = None,
        access: int = ACCESS_ALL,
        pdn: int = 1,
        tag: int = 0x5A,
        flags: int = N.MR_VALID,
        mapped: bool = True,
        perms: int = RWA,
    ) -> Mr:
        """Memory region ``index`` (context ``index``) over [va, va + length),
        backed by ``pa`` (default DATA_PA + index MiB) and mapped unless not
        ``mapped`` (an ODP region whose pages fault in)."""
        assert self.pt is not None and index != N.RING_CTX
        if va is None:
            va = MR_VA + (index << 32)
        if pa is None:
            pa = DATA_PA + (index << 20)
        k = key(index, tag)
        self.pt.set_ctx(index)
        if mapped:
            start = va & ~(PAGE - 1)
            end = (va + length + PAGE - 1) & ~(PAGE - 1)
            self.pt.map_range(index, start, pa - (va - start), end - start, perms)
        self.qt.write(MR_TABLE + MR.size * index, MR.pack(va, length, k, access, flags, pdn))
        mr = Mr(index, k, va, length, pa)
        self.mrs[index] = mr
        return mr

    # -- posting -----------------------------------------------------------

    def post_send(self, qp: Qp, *wrs: SendWr, ring: bool = True) -> None:
        for wr in wrs:
            self.qt.write(qp.sq.slot_pa(qp.sq.index), wr.pack(1 << qp.sq.log2))
            qp.sq.index = (qp.sq.index + 1) & qp.sq.mask
        self.qt.writel(qp.sq.pa + N.QBUF_PRODUCER, qp.sq.index)
        if ring:
            self.set_reg("SQ_DOORBELL", qp.qpn)

    def post_recv(self, qp: Qp, wr_id: int, sges: list[tuple[int, int, int]],
                  ring: bool = True, num_sge: int | None = None) -> None:
        self.qt.write(qp.rq.slot_pa(qp.rq.index),
                      recv_wqe(wr_id, sges, 1 << qp.rq.log2, num_sge))
        qp.rq.index = (qp.rq.index + 1) & qp.rq.mask
        self.qt.writel(qp.rq.pa + N.QBUF_PRODUCER, qp.rq.index)
        if ring:
            self.set_reg("RQ_DOORBELL", qp.qpn)

    def sq_consumer(self, qp: Qp) -> int:
        return self.qt.readl(qp.sq.pa + N.QBUF_CONSUMER)

    def rq_consumer(self, qp: Qp) -> int:
        return self.qt.readl(qp.rq.pa + N.QBUF_CONSUMER)

    # -- completions and events ---------------------------------------------

    def cq_pending(self, cqn: int) -> int:
        q = self.cqs[cqn]
        return (self.qt.readl(q.pa + N.QBUF_PRODUCER) - q.index) & q.mask

    def poll(self, cqn: int, n: int, tries: int = 3000) -> list[Cqe]:
        """Wait for n CQEs on CQ cqn and consume them (consumer index)."""
        q = self.cqs[cqn]
        self.wait(lambda: self.cq_pending(cqn) >= n, f"{n} CQE(s) on CQ {cqn}", tries)
        out = []
        for _ in range(n):
            out.append(Cqe.unpack(self.qt.read(q.slot_pa(q.index), CQE.size)))
            q.index = (q.index + 1) & q.mask
        self.qt.writel(q.pa + N.QBUF_CONSUMER, q.index)
        return out

    def eq_pending(self) -> int:
        return (self.reg("EQ_TAIL") - self.eq_head) % self.eq_size

    def events(self, n: int | None = None, tries: int = 3000) -> list[Eqe]:
        """Consume n events (waiting for them), or all pending ones if n is None."""
        if n is None:
            n = self.eq_pending()
        else:
            self.wait(lambda: self.eq_pending() >= n, f"{n} event(s)", tries)
        out = []
        for _ in range(n):
            out.append(Eqe.unpack(self.qt.read(EQ + EQE.size * self.eq_head, EQE.size)))
            self.eq_head = (self.eq_head + 1) % self.eq_size
        self.set_reg("EQ_HEAD", self.eq_head)
        return out

    def wait_idle(self) -> None:
        self.wait(lambda: not self.reg("STATUS") & N.STATUS_BUSY, "NIC idle")

    def reset(self) -> None:
        self.set_reg("RESET", N.RESET_MAGIC)

    def invalidate(self, ctx: int, va: int, length: int) -> None:
        self.set_reg("INV_CTX", ctx)
        self.set_reg("INV_VA_LO", va & 0xFFFFFFFF)
        self.set_reg("INV_VA_HI", va >> 32)
        self.set_reg("INV_LEN_LO", length & 0xFFFFFFFF)
        self.set_reg("INV_LEN_HI", length >> 32)
        self.set_reg("INV_GO", 1)


# conftest's ``launch_nic`` fixture: launch_nic(*device_opts, extra=, qmp=, msix=) -> Nic
LaunchNic = Callable[..., Nic]

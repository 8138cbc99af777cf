"""Test-side model of the hmm-gpu ABI and a driver for it over qtest.

Register offsets and constants are parsed from the ABI header
(qemu-devices/include/hmm_gpu_regs.h) so the tests follow the single source
of truth; the struct layouts are written out here (with size checks against
the header's static asserts) until harness/dmatrace.py exists.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.build.cache import REPO_ROOT
from harness.guest.qtest import QTest

HEADER = REPO_ROOT / "qemu-devices" / "include" / "hmm_gpu_regs.h"


def parse_header(
    path: Path, prefix: str = "HMM_GPU_", skip: tuple[str, ...] = ()
) -> dict[str, int]:
    """The integer constants (#defines and enum values) named ``prefix*`` in a
    C header; ``skip`` names defines that are not integers (they would fail)."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    consts: dict[str, int] = {}

    def ev(expr: str) -> int:
        expr = re.sub(r"(?<=[0-9a-fA-F])(ull|ul|u)\b", "", expr.strip())
        expr = re.sub(rf"\b({prefix}\w+)\b", lambda m: str(consts[m.group(1)]), expr)
        if not re.fullmatch(r"[0-9a-fA-FxX()<>|&~+\-* ]+", expr):
            raise ValueError(expr)
        return int(eval(expr))  # constant integer arithmetic only (checked above)

    for m in re.finditer(rf"^#define\s+({prefix}\w+)\s+(.+)$", text, re.M):
        name, expr = m.group(1), m.group(2).strip()
        if name == "HMM_GPU_REGS_H" or name in skip or not expr:
            continue
        consts[name] = ev(expr)
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\};", text, re.S):
        for m in re.finditer(rf"({prefix}\w+)\s*=\s*([^,\n]+)", body):
            consts[m.group(1)] = ev(m.group(2))
    return consts


ABI = parse_header(HEADER)


class _Abi:
    """Attribute access to header constants without the HMM_GPU_ prefix."""

    def __getattr__(self, name: str) -> int:
        return ABI["HMM_GPU_" + name]


H = _Abi()

# struct hmm_gpu_cmd / cpl / trace_hdr / trace_rec / ctx_desc / fault_rec
CMD = struct.Struct("<BBHIQQQQQQ8s")
CPL = struct.Struct("<QIHHQQ")
TRACE_HDR = struct.Struct("<QIIII")
# timestamp addr len cmd_id va aux ctx engine kind dir result level rsvd
TRACE_REC = struct.Struct("<QQQQQQIBBBBB7x")
CTX_DESC = struct.Struct("<QII")
FAULT_REC = struct.Struct("<QQQIHBBB7x24x")
assert (CMD.size, CPL.size, TRACE_HDR.size, TRACE_REC.size) == (64, 32, 24, 64)
COPY_ENT = struct.Struct("<QQ")  # struct hmm_gpu_copy_ent: src, dst
assert (CTX_DESC.size, FAULT_REC.size, COPY_ENT.size) == (16, 64, 16)
for _n, _s in (
    ("hmm_gpu_copy_ent", COPY_ENT),
    ("hmm_gpu_cmd", CMD),
    ("hmm_gpu_cpl", CPL),
    ("hmm_gpu_trace_rec", TRACE_REC),
    ("hmm_gpu_fault_rec", FAULT_REC),
):
    assert f"sizeof(struct {_n}) == {_s.size}" in HEADER.read_text()

# Guest-physical layout used by the tests (q35, RAM starts at 0).
BAR0 = 0xE000_0000
BAR1 = 0xE000_1000
CMDQ = 0x0010_0000
CPLQ = 0x0020_0000
MSI_ADDR = 0x0030_0000  # vector v writes its data to MSI_ADDR + 16 * v
MSI_DATA = 0x0000_A000  # | vector
SRC = 0x0100_0000
DST = 0x0200_0000
NOT_RAM = 0x0000_4000_0000_0000  # nothing is mapped up there

PCI_COMMAND = 0x04
PCI_COMMAND_MEM = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_CAP_ID_MSIX = 0x11
PCI_CAP_ID_EXP = 0x10


@dataclass
class Cmd:
    opcode: int
    flags: int = 0
    ctx: int = 0
    cmd_id: int = 0
    src: int = 0
    dst: int = 0
    length: int = 0
    pattern: int = 0
    rsvd0: int = 0
    arg2: int = 0

    def pack(self) -> bytes:
        return CMD.pack(
            self.opcode,
            self.flags,
            self.rsvd0,
            self.ctx,
            self.cmd_id,
            self.src,
            self.dst,
            self.length,
            self.pattern,
            self.arg2,
            b"\0" * 8,
        )


@dataclass(frozen=True)
class Cpl:
    cmd_id: int
    status: int
    opcode: int
    phase: int
    nbytes: int
    timestamp_ns: int

    @classmethod
    def unpack(cls, data: bytes) -> Cpl:
        return cls(*CPL.unpack(data))


def copy(src: int, dst: int, length: int, cmd_id: int = 0, flags: int = 0, ctx: int = 0) -> Cmd:
    return Cmd(H.OP_COPY, flags=flags, ctx=ctx, cmd_id=cmd_id, src=src, dst=dst, length=length)


def fill(dst: int, length: int, pattern: int, cmd_id: int = 0, flags: int = 0) -> Cmd:
    return Cmd(H.OP_FILL, flags=flags, cmd_id=cmd_id, dst=dst, length=length, pattern=pattern)


@dataclass(frozen=True)
class TraceRec:
    timestamp_ns: int
    addr: int
    length: int
    cmd_id: int
    va: int
    aux: int
    ctx: int
    engine: int
    kind: int
    dir: int
    result: int
    level: int


def parse_trace(raw: bytes) -> list[TraceRec]:
    magic, version, rec_size, _devfn, _rsvd = TRACE_HDR.unpack_from(raw, 0)
    assert (magic, version, rec_size) == (H.TRACE_MAGIC, H.TRACE_VERSION, TRACE_REC.size)
    body = raw[TRACE_HDR.size :]
    assert len(body) % TRACE_REC.size == 0
    return [TraceRec(*TRACE_REC.unpack_from(body, i)) for i in range(0, len(body), TRACE_REC.size)]


@dataclass(frozen=True)
class FaultRec:
    va: int
    cmd_id: int
    timestamp_ns: int
    ctx: int
    token: int
    access: int
    reason: int
    engine: int

    @classmethod
    def unpack(cls, data: bytes) -> FaultRec:
        return cls(*FAULT_REC.unpack(data))


# -- VA commands (ABI 1.1) ---------------------------------------------------


def read_va(va: int, bus: int, length: int, ctx: int = 0, cmd_id: int = 0, flags: int = 0) -> Cmd:
    return Cmd(H.OP_READ_VA, flags, ctx, cmd_id, src=va, dst=bus, length=length)


def write_va(bus: int, va: int, length: int, ctx: int = 0, cmd_id: int = 0, flags: int = 0) -> Cmd:
    return Cmd(H.OP_WRITE_VA, flags, ctx, cmd_id, src=bus, dst=va, length=length)


def fill_va(va: int, length: int, pattern: int, ctx: int = 0, cmd_id: int = 0) -> Cmd:
    return Cmd(H.OP_FILL_VA, 0, ctx, cmd_id, dst=va, length=length, pattern=pattern)


def copy_va(src: int, dst: int, length: int, ctx: int = 0, cmd_id: int = 0) -> Cmd:
    return Cmd(H.OP_COPY_VA, 0, ctx, cmd_id, src=src, dst=dst, length=length)


def atomic_add(va: int, val: int, old_to: int = 0, ctx: int = 0, cmd_id: int = 0) -> Cmd:
    return Cmd(H.OP_ATOMIC_ADD, 0, ctx, cmd_id, src=old_to, dst=va, length=8, pattern=val)


def cmpxchg(va: int, expect: int, new: int, old_to: int = 0, ctx: int = 0, cmd_id: int = 0) -> Cmd:
    return Cmd(
        H.OP_ATOMIC_CMPXCHG, 0, ctx, cmd_id, src=old_to, dst=va, length=8, pattern=new, arg2=expect
    )


def tlb_inv(va: int, length: int, ctx: int = 0, cmd_id: int = 0) -> Cmd:
    return Cmd(H.OP_TLB_INVALIDATE, 0, ctx, cmd_id, dst=va, length=length)


# -- VRAM (ABI 1.2) ------------------------------------------------------------

COPY_LIST = 0x0090_0000  # default place for MIGRATE copy lists (up to 8 KiB)


def migrate(list_addr: int, npages: int, direction: int, cmd_id: int = 0, flags: int = 0) -> Cmd:
    return Cmd(
        H.OP_MIGRATE, flags, 0, cmd_id, src=list_addr, length=npages * 4096, pattern=direction
    )


def copy_list(entries: list[tuple[int, int]]) -> bytes:
    return b"".join(COPY_ENT.pack(src, dst) for src, dst in entries)


# Guest-physical areas for the MMU tests (below 256 MiB of RAM).
CTX_TABLE = 0x0030_1000
FAULTQ = 0x0031_0000
PT_POOL = 0x0040_0000  # page tables are allocated upwards from here
PT_POOL_END = 0x0080_0000


class PageTables:
    """Builds contexts and 4-level page tables in guest RAM over qtest."""

    def __init__(self, gpu: PciDev, ctx_count: int = 4) -> None:
        self.gpu = gpu
        self.qt = gpu.qt
        self.next = PT_POOL
        self.roots: dict[int, int] = {}
        self.ctx_count = ctx_count
        self.qt.memset(CTX_TABLE, 16 * ctx_count, 0)

    def alloc(self) -> int:
        page = self.next
        assert page < PT_POOL_END, "page-table pool exhausted"
        self.next += 4096
        self.qt.memset(page, 4096, 0)
        return page

    def enable(self) -> None:
        g = self.gpu
        g.set_reg("CTX_BASE_LO", CTX_TABLE & 0xFFFFFFFF)
        g.set_reg("CTX_BASE_HI", CTX_TABLE >> 32)
        g.set_reg("CTX_COUNT", self.ctx_count)
        g.set_reg("MMU_CTRL", H.MMU_ENABLE)

    def set_ctx(self, ctx: int, root: int | None = None, flags: int | None = None) -> int:
        if root is None:
            root = self.alloc()
        self.roots[ctx] = root
        self.qt.write(
            CTX_TABLE + 16 * ctx, CTX_DESC.pack(root, H.CTX_VALID if flags is None else flags, 0)
        )
        return root

    def entry_addr(self, ctx: int, va: int, level: int, create: bool = True) -> int:
        """Bus address of the level-`level` entry for va, creating tables above it."""
        table = self.roots[ctx]
        for lvl in range(H.PT_LEVELS - 1, level, -1):
            a = table + 8 * ((va >> (12 + 9 * lvl)) & 511)
            pte = self.qt.readq(a)
            if not pte & H.PTE_VALID:
                assert create, f"no table at level {lvl} for {va:#x}"
                pte = self.alloc() | H.PTE_VALID
                self.qt.writeq(a, pte)
            table = pte & H.PTE_ADDR_MASK
        return table + 8 * ((va >> (12 + 9 * level)) & 511)

    def map(self, ctx: int, va: int, pa: int, perms: int | None = None, huge: bool = False) -> int:
        if perms is None:
            perms = H.PTE_READ | H.PTE_WRITE | H.PTE_ATOMIC
        level = 1 if huge else 0
        a = self.entry_addr(ctx, va, level)
        self.qt.writeq(a, pa | perms | H.PTE_VALID | (H.PTE_LEAF if huge else 0))
        return a

    def map_range(self, ctx: int, va: int, pa: int, length: int, perms: int | None = None) -> None:
        for off in range(0, length, 4096):
            self.map(ctx, va + off, pa + off, perms)

    def set_pte(self, ctx: int, va: int, level: int, value: int) -> int:
        a = self.entry_addr(ctx, va, level)
        self.qt.writeq(a, value)
        return a


class PciDev:
    """Firmware + driver plumbing every hmmlab device shares under qtest: find
    it on bus 0, assign BAR0 (registers) and BAR1 (MSI-X), enable MSI-X with
    each vector writing into RAM at MSI_ADDR, register access by the names of
    the device's ABI header (``abi`` with the ``prefix`` of its constants)."""

    name = "hmm-gpu"
    qom_id = "gpu0"
    prefix = "HMM_GPU_"
    abi: dict[str, int] = ABI
    queue_enable = "QCTRL_ENABLE"  # the enable bit of the fault queue's CTRL

    def __init__(self, qt: QTest, *, enable_msix: bool = True) -> None:
        self.qt = qt
        self.devfn = self._find()
        self.cfg_write(0x10, BAR0)  # BAR0: 32-bit memory
        self.cfg_write(0x14, BAR1)  # BAR1: MSI-X table + PBA
        self.set_command(PCI_COMMAND_MEM | PCI_COMMAND_MASTER)
        self.msix_cap = self.find_cap(PCI_CAP_ID_MSIX)
        if enable_msix:
            self.enable_msix()

    def const(self, name: str) -> int:
        return self.abi[self.prefix + name]

    # -- config space ----------------------------------------------------

    def _find(self) -> int:
        want = self.const("PCI_VENDOR_ID") | (self.const("PCI_DEVICE_ID") << 16)
        for devfn in range(0, 256, 8):
            if self.qt.pci_cfg_read(0, devfn, 0) == want:
                return devfn
        raise AssertionError(f"{self.name} not found on PCI bus 0")

    def cfg_read(self, reg: int, size: int = 4) -> int:
        return self.qt.pci_cfg_read(0, self.devfn, reg, size)

    def cfg_write(self, reg: int, val: int, size: int = 4) -> None:
        self.qt.pci_cfg_write(0, self.devfn, reg, val, size)

    def set_command(self, bits: int) -> None:
        self.cfg_write(PCI_COMMAND, bits, 2)

    def find_cap(self, cap_id: int) -> int | None:
        if not self.cfg_read(0x06, 2) & 0x10:  # status: capability list
            return None
        ptr = self.cfg_read(0x34, 1) & 0xFC
        seen = set()
        while ptr and ptr not in seen:
            seen.add(ptr)
            if self.cfg_read(ptr, 1) == cap_id:
                return ptr
            ptr = self.cfg_read(ptr + 1, 1) & 0xFC
        return None

    def enable_msix(self) -> None:
        cap = self.msix_cap
        assert cap is not None, "no MSI-X capability"
        table = self.cfg_read(cap + 4)
        assert table & 7 == self.const("BAR_MSIX"), "MSI-X table not in BAR1"
        base = BAR1 + (table & ~7)
        nvec = (self.cfg_read(cap + 2, 2) & 0x7FF) + 1
        assert nvec == self.const("NUM_VECTORS")
        for v in range(nvec):
            e = base + 16 * v
            self.qt.writel(e + 0, MSI_ADDR + 16 * v)
            self.qt.writel(e + 4, 0)
            self.qt.writel(e + 8, MSI_DATA | v)
            self.qt.writel(e + 12, 0)  # unmask
        ctrl = self.cfg_read(cap + 2, 2)
        self.cfg_write(cap + 2, (ctrl | 0x8000) & ~0x4000, 2)  # enable, no function mask

    # -- MSI observation (the message is a 32-bit write into RAM) ---------

    def msi_clear(self) -> None:
        for v in range(self.const("NUM_VECTORS")):
            self.qt.writel(MSI_ADDR + 16 * v, 0)

    def msi_fired(self, v: int) -> bool:
        val = self.qt.readl(MSI_ADDR + 16 * v)
        assert val in (0, MSI_DATA | v), f"unexpected MSI data {val:#x} at vector {v}"
        return val == MSI_DATA | v

    # -- registers -------------------------------------------------------

    def rd(self, off: int) -> int:
        return self.qt.readl(BAR0 + off)

    def wr(self, off: int, val: int) -> None:
        self.qt.writel(BAR0 + off, val)

    def reg(self, name: str) -> int:
        return self.rd(self.abi[self.prefix + "REG_" + name])

    def set_reg(self, name: str, val: int) -> None:
        self.wr(self.abi[self.prefix + "REG_" + name], val)

    def error_addr(self) -> int:
        return self.reg("ERROR_ADDR_LO") | (self.reg("ERROR_ADDR_HI") << 32)

    def wait(self, pred: Callable[[], int], what: str, tries: int = 3000) -> int:
        """Poll; each qtest round trip lets the main loop run the device BH."""
        for _ in range(tries):
            v = pred()
            if v:
                return v
        raise AssertionError(f"timed out waiting for {what}")

    def qom_get(self, prop: str) -> int:
        """Read a QOM counter of the device (needs launch(qmp=True))."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        assert self.qt.qmp_path is not None, "launch with qmp=True"
        mon = QEMUMonitorProtocol(str(self.qt.qmp_path))
        mon.connect()
        mon.settimeout(10)
        try:
            return mon.cmd("qom-get", path=f"/machine/peripheral/{self.qom_id}", property=prop)
        finally:
            mon.close()

    def setup_faultq(self, size: int = 16, base: int = FAULTQ) -> None:
        self.set_reg("FAULTQ_BASE_LO", base & 0xFFFFFFFF)
        self.set_reg("FAULTQ_BASE_HI", base >> 32)
        self.set_reg("FAULTQ_SIZE", size)
        self.set_reg("FAULTQ_CTRL", self.const(self.queue_enable))
        self.faultq, self.faultq_size, self.fault_head = base, size, 0

    def pending_faults(self) -> int:
        return (self.reg("FAULTQ_TAIL") - self.fault_head) % self.faultq_size

    def faults(self, n: int, tries: int = 3000) -> list[FaultRec]:
        """Wait for n fault records and consume them (FAULTQ_HEAD)."""
        self.wait(lambda: self.pending_faults() >= n, f"{n} fault record(s)", tries)
        out = []
        for _ in range(n):
            out.append(FaultRec.unpack(self.qt.read(self.faultq + 64 * self.fault_head, 64)))
            self.fault_head = (self.fault_head + 1) % self.faultq_size
        self.set_reg("FAULTQ_HEAD", self.fault_head)
        return out

    def hot_unplug(self, slot: int) -> None:
        """Unplug the device from slot ``slot`` of the ``pc`` machine (needs qmp=True):
        device_del, then the guest's part of PIIX4 ACPI hotplug (eject the
        slot), then wait for DEVICE_DELETED."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        assert self.qt.qmp_path is not None, "launch with qmp=True"
        mon = QEMUMonitorProtocol(str(self.qt.qmp_path))
        mon.connect()
        mon.settimeout(10)
        try:
            mon.cmd("device_del", id=self.qom_id)
            self.qt.outl(0xAE00 + 0x8, 1 << slot)
            ev = mon.pull_event(wait=10.0)
            while ev is not None and ev["event"] != "DEVICE_DELETED":
                ev = mon.pull_event(wait=10.0)
            assert ev is not None and ev["data"].get("device") == self.qom_id
        finally:
            mon.close()
        assert self.cfg_read(0x00) == 0xFFFFFFFF, "device still on the bus"

    def wait_fatal(self) -> None:
        self.wait(lambda: self.reg("STATUS") & self.const("STATUS_FATAL"), "STATUS_FATAL")


class Gpu(PciDev):
    """Plays the role of firmware + driver for one hmm-gpu under qtest."""

    def __init__(self, qt: QTest, *, enable_msix: bool = True) -> None:
        self.cmdq_size = 0
        self.cplq_size = 0
        self.cmd_tail = 0
        self.cpl_head = 0
        self.phase = 1
        super().__init__(qt, enable_msix=enable_msix)

    def reset(self) -> None:
        self.set_reg("RESET", H.RESET_MAGIC)
        self.cmd_tail = self.cpl_head = 0
        self.phase = 1

    # -- rings -----------------------------------------------------------

    def setup(
        self,
        cmdq: int = CMDQ,
        cmdq_size: int = 16,
        cplq: int = CPLQ,
        cplq_size: int = 16,
        *,
        intr_mask: int | None = None,
    ) -> None:
        self.set_reg("INTR_MASK", H.INTR_CPL | H.INTR_ERROR if intr_mask is None else intr_mask)
        self.set_reg("CMDQ_BASE_LO", cmdq & 0xFFFFFFFF)
        self.set_reg("CMDQ_BASE_HI", cmdq >> 32)
        self.set_reg("CMDQ_SIZE", cmdq_size)
        self.set_reg("CPLQ_BASE_LO", cplq & 0xFFFFFFFF)
        self.set_reg("CPLQ_BASE_HI", cplq >> 32)
        self.set_reg("CPLQ_SIZE", cplq_size)
        self.cmdq, self.cplq = cmdq, cplq
        self.cmdq_size, self.cplq_size = cmdq_size, cplq_size
        self.set_reg("CPLQ_CTRL", H.QCTRL_ENABLE)
        self.set_reg("CMDQ_CTRL", H.QCTRL_ENABLE)
        self.cmd_tail = self.cpl_head = 0
        self.phase = 1

    def push(self, *cmds: Cmd, ring: bool = True) -> None:
        for c in cmds:
            self.qt.write(self.cmdq + 64 * self.cmd_tail, c.pack())
            self.cmd_tail = (self.cmd_tail + 1) % self.cmdq_size
        if ring:
            self.set_reg("CMDQ_TAIL", self.cmd_tail)

    def pending_cpls(self) -> int:
        return (self.reg("CPLQ_TAIL") - self.cpl_head) % self.cplq_size

    def reap(self, n: int, tries: int = 3000) -> list[Cpl]:
        """Wait for n completions, check their phase, consume them (CPLQ_HEAD)."""
        self.wait(lambda: self.pending_cpls() >= n, f"{n} completion(s)", tries)
        out = []
        for _ in range(n):
            cpl = Cpl.unpack(self.qt.read(self.cplq + 32 * self.cpl_head, 32))
            assert cpl.phase == self.phase, f"phase {cpl.phase} != expected {self.phase}"
            out.append(cpl)
            self.cpl_head = (self.cpl_head + 1) % self.cplq_size
            if self.cpl_head == 0:
                self.phase ^= 1
        self.set_reg("CPLQ_HEAD", self.cpl_head)
        return out

    def run(self, *cmds: Cmd) -> list[Cpl]:
        self.push(*cmds)
        return self.reap(len(cmds))

    def wait_idle(self) -> None:
        self.wait(lambda: not self.reg("STATUS") & H.STATUS_BUSY, "engine idle")

    def vram_size(self) -> int:
        return self.reg("VRAM_SIZE_LO") | (self.reg("VRAM_SIZE_HI") << 32)

    def migrate(
        self,
        entries: list[tuple[int, int]],
        direction: int,
        list_addr: int = COPY_LIST,
        cmd_id: int = 0,
    ) -> Cpl:
        """Write a copy list, run one MIGRATE over it, return its completion."""
        self.qt.write(list_addr, copy_list(entries))
        (cpl,) = self.run(migrate(list_addr, len(entries), direction, cmd_id=cmd_id))
        return cpl

    def to_vram(self, pairs: list[tuple[int, int]]) -> Cpl:
        """(bus address, VRAM offset) pairs into VRAM."""
        return self.migrate(pairs, H.MIGRATE_TO_VRAM)

    def from_vram(self, pairs: list[tuple[int, int]]) -> Cpl:
        """(VRAM offset, bus address) pairs out of VRAM."""
        return self.migrate(pairs, H.MIGRATE_FROM_VRAM)


# conftest's ``launch`` fixture: launch(*device_opts, machine=, extra=, qmp=, msix=) -> Gpu
Launch = Callable[..., Gpu]

"""The numpy trace decoder and checks give exactly what the record-at-a-time ones gave.

``tests/dmatrace_ref.py`` is the implementation before the rewrite, kept unchanged
as the oracle. Both run on a slice of a real trace (checked in), on every real trace of a
sensible size this machine's result directories hold, on mutated copies of the real
slice and on random streams built to hit the tricky cases (READ_VA/WRITE_VA pairs, 2 MiB
leaves, non-present walks, whole-context and wrapping invalidations, multi-page DMA,
VRAM pages copied in and out, unknown enum values, truncated tails, version 1).
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import os
import random
import struct
from pathlib import Path
from typing import Any

import dmatrace_ref as old  # tests/ is on sys.path (its conftest.py)
import numpy as np
import pytest

from harness.checks import dmatrace as new
from harness.checks import tracefile
from harness.checks.dmatrace import Dir, Engine, Kind

DATA = Path(__file__).parent / "data"
REAL = DATA / "dmatrace-real-6.12-iommu.bin"  # 4096 records of a 6.12-iommu cell's gpu0
PAGE = 4096
ALL = (1 << 64) - 1


def as_ints(r: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in dataclasses.astuple(r))


def expectations_for(mod: Any, ncmds: bool, ctx: bool) -> list[Any]:
    """Made-up requests: on a real trace they produce many problems (and so many messages
    to compare), over the grouped and the pooled paths."""
    objs = [{"test": f"t{i}", "len": (i + 1) * PAGE,
             "maps": [{"role": "src", "dma": hex(0x1000_0000 * i), "len": 1 << 30},
                      {"role": "dst", "dma": hex(0x1000_0000 * i + (1 << 30)), "len": 1 << 28}],
             **({"ncmds": 3} if ncmds else {}), **({"ctx": i % 3} if ctx else {})}
            for i in range(4)]
    return [mod.expectation_from_result(o) for o in objs]


def assert_same(data: bytes, device: str = new.GPU) -> None:
    a, b = new.decode(data, device), old.decode(data, device)
    assert a.header == new.TraceHeader(*dataclasses.astuple(b.header))
    assert (a.truncated_bytes, a.problems, a.device) == (b.truncated_bytes, b.problems, b.device)
    assert len(a.records) == len(b.records)
    assert [as_ints(r) for r in a.records] == [as_ints(r) for r in b.records]
    assert [r.describe() for r in a.records[:200]] == [r.describe() for r in b.records[:200]]
    assert new.summarize(a).to_dict() == old.summarize(b).to_dict()
    assert new.summarize(a).format() == old.summarize(b).format()
    for limit in (50, 10_000):
        ia = new.check_invalidations(a.records, limit)
        ib = old.check_invalidations(b.records, limit)
        assert (ia.to_dict(), ia.problems) == (ib.to_dict(), ib.problems)
        va = new.check_vram_lifetime(a.records, limit)
        vb = old.check_vram_lifetime(b.records, limit)
        assert (va.to_dict(), va.problems) == (vb.to_dict(), vb.problems)
    # a window of the records, as the scenarios pass one
    n = len(a.records)
    ia = new.check_invalidations(a.records[n // 3:n // 2])
    ib = old.check_invalidations(b.records[n // 3:n // 2])
    assert (ia.to_dict(), ia.problems) == (ib.to_dict(), ib.problems)
    for ncmds in (True, False):
        for ctx in (True, False):
            for only_first in (True, False):
                assert (new.check_trace(expectations_for(new, ncmds, ctx), a, only_first)
                        == old.check_trace(expectations_for(old, ncmds, ctx), b, only_first))


def test_real_slice_checked_in() -> None:
    data = REAL.read_bytes()
    assert len(data) == new.HDR_SIZE + 4096 * new.REC_SIZE
    assert_same(data)
    # the slice cuts VRAM pages' history: the audits have problems to agree on
    assert new.check_vram_lifetime(new.decode(data).records).problem_count > 0


def real_traces() -> list[str]:
    """Real traces of this machine's result directories, 1-12 MB decoded (a few seconds
    each for the old decoder), at most three. Most are compressed (zstd frames)."""
    found = sorted({os.path.realpath(p) for p in glob.glob("/tmp/*/cells/*/dmatrace-*.bin")
                    + glob.glob("/tmp/*/*/cells/*/dmatrace-*.bin")
                    if 1 << 20 <= tracefile.stream_size(Path(p)) <= 12 << 20})
    return found[:3]


@pytest.mark.parametrize("path", real_traces() or [None])
def test_real_traces_of_this_machine(path: str | None) -> None:
    if path is None:
        pytest.skip("no real trace of 1-12 MB under /tmp/*/cells (run a matrix first)")
    device = new.device_of(Path(path))
    assert_same(tracefile.read_bytes(Path(path)), device)
    whole = new.read_trace(Path(path))  # and the file streamed through the checks
    got = new.check_file(Path(path))
    assert got.summary == new.summarize(whole)
    assert (got.invalidations, got.vram) == new.audit(whole.records)


@pytest.mark.parametrize("seed", range(12))
def test_mutated_real_slice(seed: int) -> None:
    """The real slice with records dropped, failed, moved and re-kinded: walks go
    missing, DMAs land elsewhere, the audits fire."""
    rnd = random.Random(seed)
    data = bytearray(REAL.read_bytes())
    nrec = (len(data) - new.HDR_SIZE) // new.REC_SIZE
    for _ in range(rnd.randrange(5, 200)):
        off = new.HDR_SIZE + rnd.randrange(nrec) * new.REC_SIZE
        what = rnd.randrange(5)
        if what == 0:  # a different kind (a walk or an event vanishes, or appears)
            data[off + 53] = rnd.choice([0, 1, 2, 4, 7, 16, 17, 18, 9])
        elif what == 1:  # a failed DMA / walk
            data[off + 55] = rnd.randrange(1, 4)
        elif what == 2:  # another address
            struct.pack_into("<Q", data, off + 8, rnd.getrandbits(40) & ~0xFFF)
        elif what == 3:  # another length (multi-page, or zero)
            struct.pack_into("<Q", data, off + 16, rnd.choice([0, 1, PAGE, 3 * PAGE + 5]))
        else:  # an invalidation of everything, or wrapping
            data[off + 53] = Kind.EV_TLB_INV
            struct.pack_into("<Q", data, off + 40, rnd.choice([ALL, ALL - 5, 0, 1 << 21]))
    assert_same(bytes(data))


def rec2(kind: int, addr: int = 0, length: int = 0, direction: int = Dir.READ, cmd: int = 1,
         ctx: int = 1, engine: int = Engine.COPY, va: int = 0, aux: int = 0, level: int = 0,
         result: int = 0, ts: int = 0) -> bytes:
    return struct.pack("<QQQQQQIBBBBB7s", ts, addr, length, cmd, va, aux, ctx, engine, kind,
                       direction, result, level, b"\0" * 7)


def random_stream(rnd: random.Random, n: int) -> bytes:
    """Device-like activity over a few pages of a few contexts, so that walks,
    invalidations and accesses meet."""
    vas = [0x7F00_0000_0000 + p * PAGE for p in range(0, 1024, 37)] + [0x7F00_0020_0000]
    out = [struct.pack("<QIIII", new.TRACE_MAGIC, 2, 64, 0x18, 0)]
    for i in range(n):
        ctx = rnd.randrange(3)
        va = rnd.choice(vas) + rnd.choice([0, 0, 8, PAGE - 8])
        pa = rnd.randrange(64) * PAGE
        c = rnd.randrange(12)
        if c < 3:  # a walk: a leaf, a 2 MiB leaf, a non-present or an intermediate entry
            level = rnd.choice([0, 0, 1, 2])
            pte = pa | new.PTE_VALID | rnd.choice([0, new.PTE_VRAM]) | rnd.choice(
                [0, new.PTE_LEAF]) if rnd.random() < 0.85 else 0
            out.append(rec2(Kind.PTW, 0x9000, 8, ctx=ctx, engine=Engine.MMU, va=va, aux=pte,
                            level=level, result=int(rnd.random() < 0.05), ts=i))
        elif c == 3:
            length = rnd.choice([PAGE, 2 * PAGE, 1 << 21, 0, ALL, 5 * PAGE])
            out.append(rec2(Kind.EV_TLB_INV, direction=Dir.NONE, ctx=ctx, engine=Engine.MMU,
                            va=va & ~0xFFF, aux=length, ts=i))
        elif c < 7:  # a VA job's access, sometimes a READ_VA/WRITE_VA pair
            kind = rnd.choice([Kind.DATA, Kind.DATA, Kind.VRAM])
            length = rnd.choice([8, PAGE, 2 * PAGE + 16])
            out.append(rec2(kind, pa, length, Dir.READ, cmd=i, ctx=ctx, va=va, ts=i))
            if rnd.random() < 0.5:
                out.append(rec2(kind, pa + PAGE * rnd.choice([0, 1]), length, Dir.WRITE, cmd=i,
                                ctx=ctx, va=va, ts=i))
        elif c < 9:  # a migration copy into or out of VRAM
            out.append(rec2(Kind.DATA, 0x5000_0000, PAGE, rnd.choice([Dir.READ, Dir.WRITE]),
                            cmd=i, engine=Engine.MIGRATE, aux=pa,
                            result=int(rnd.random() < 0.05), ts=i))
        elif c == 9:  # an XFER command
            out.append(rec2(Kind.DATA, pa, PAGE, rnd.choice([Dir.READ, Dir.WRITE]),
                            cmd=rnd.randrange(4), ctx=ctx, ts=i))
        elif c == 10:
            out.append(rec2(Kind.CPL_WRITE, 0x2000, 32, Dir.WRITE, cmd=rnd.randrange(4),
                            ctx=ctx, engine=Engine.QUEUE, ts=i))
        else:  # something odd: unknown enum values, odd directions
            out.append(rec2(rnd.choice([Kind.DATA, 9, 19]), pa, 8, rnd.choice([0, 1, 2, 7]),
                            ctx=ctx, engine=rnd.choice([0, 1, 2, 3, 6]), ts=i))
    return b"".join(out)


@pytest.mark.parametrize("seed", range(25))
def test_random_streams(seed: int) -> None:
    rnd = random.Random(seed)
    data = random_stream(rnd, rnd.randrange(50, 3000))
    assert_same(data)
    assert_same(data + b"\x07" * rnd.randrange(1, 64))  # a record QEMU did not finish
    assert_same(data, new.NIC)


def test_version_1_and_larger_records() -> None:
    v1 = [struct.pack("<QIIII", new.TRACE_MAGIC, 1, 40, 0x18, 0)]
    v1 += [struct.pack("<QQQQIBBBB", i, 0x1000 * i, PAGE, i % 3, 1, 1, 2, i % 2, 0)
           for i in range(100)]
    assert_same(b"".join(v1))
    wide = [struct.pack("<QIIII", new.TRACE_MAGIC, 2, 80, 0x18, 0)]
    wide += [rec2(Kind.DATA, 0x1000 * i, PAGE, i % 2, cmd=i) + b"\xee" * 16 for i in range(50)]
    assert_same(b"".join(wide))


def test_records_are_a_view_not_a_copy() -> None:
    """The decoder maps the file and reads it in place."""
    t = new.read_trace(REAL)
    assert not t.rows.flags.owndata and t.rows.base is not None
    assert isinstance(t.records[10:20], new.Records)
    assert t.records[10:20][0] == t.records[10]


def test_the_checks_stream_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With chunks smaller than the trace, the answers are the same (what a trace larger
    than memory goes through)."""
    data = random_stream(random.Random(99), 2000)
    whole = new.decode(data)
    want = (new.summarize(whole).to_dict(), new.check_invalidations(whole.records).problems,
            new.check_vram_lifetime(whole.records).problems)
    monkeypatch.setattr(new, "CHUNK", 97)
    got = (new.summarize(whole).to_dict(), new.check_invalidations(whole.records).problems,
           new.check_vram_lifetime(whole.records).problems)
    assert got == want


def test_decode_with_a_limit_reads_only_the_first_records(tmp_path: Path) -> None:
    """A 4096-record trace followed by garbage: with a limit the garbage is never
    looked at (no unknown-enum problems, no truncation)."""
    f = tmp_path / "dmatrace-0.bin"
    f.write_bytes(REAL.read_bytes() + b"\xff" * (64 * 1000 + 5))
    t = new.read_trace(f, limit=3)
    assert len(t.records) == 3 and t.problems == [] and t.truncated_bytes == 0
    assert new.read_trace(f).problems != []
    assert np.array_equal(t.rows, new.read_trace(REAL).rows[:3])


# ---- device-like random traces: an MMU with a TLB, and a VRAM allocator ---------------

HUGE = 1 << 21
_PTE = new.PTE_VALID | new.PTE_READ | new.PTE_WRITE


class Device:
    """Plays a device (the GPU's engines or the NIC's) over a few contexts: jobs walk
    (four levels, 4 KiB or 2 MiB leaves, sometimes a non-present entry) on a TLB
    miss and then DMA, the driver invalidates ranges (within a page, across pages
    and 2 MiB boundaries, exactly a page's end, the whole context, wrapping), and
    with ``bugs`` the device keeps using translations it should have dropped, or
    maps a page elsewhere. VRAM pages are copied in and out (MIGRATE) and used,
    sometimes after they were freed or before any copy."""

    def __init__(self, rnd: random.Random, bugs: float, engine: int = Engine.COPY) -> None:
        self.rnd, self.bugs, self.engine = rnd, bugs, engine
        self.out: list[bytes] = [struct.pack("<QIIII", new.TRACE_MAGIC, 2, 64, 0x18, 0)]
        self.tlb: dict[tuple[int, int], tuple[int, int, bool, int]] = {}  # (ctx, page)
        self.ts = 0
        self.cmd = 0
        # VRAM page -> holds data (copied in, not yet out)
        self.vram: dict[int, bool] = {}
        # a few regions per context: some 4 KiB-mapped, some 2 MiB-mapped, next to
        # each other so that ranges cross from one to the other
        self.regions = [(0x7F00_0000_0000 + k * HUGE, k % 3 == 2) for k in range(6)]

    def emit(self, kind: int, addr: int = 0, length: int = 0, direction: int = Dir.READ,
             ctx: int = 1, engine: int | None = None, va: int = 0, aux: int = 0,
             level: int = 0, result: int = 0) -> None:
        self.ts += self.rnd.randrange(1, 50)
        self.out.append(rec2(kind, addr, length, direction, self.cmd, ctx,
                             self.engine if engine is None else engine, va, aux, level,
                             result, self.ts))

    def pa_of(self, ctx: int, page: int, huge: bool) -> tuple[int, bool]:
        if huge and self.rnd.random() < 0.8:
            return (hash((ctx, page >> 9, "h")) & 0xFFFF) << 21, False
        if self.rnd.random() < 0.2 and self.vram:  # a VRAM page (maybe a free one)
            return self.rnd.choice(list(self.vram)) << 12, True
        return (hash((ctx, page)) & 0xFFFFFF) << 12, False

    def walk(self, ctx: int, va: int, huge: bool) -> None:
        page = va >> 12
        for level in (3, 2):
            self.emit(Kind.PTW, 0x9000 + level * 8, 8, ctx=ctx, engine=Engine.MMU, va=va,
                      aux=0x5000 | _PTE, level=level)
        if self.rnd.random() < 0.08:  # the walk ends on a non-present entry
            self.emit(Kind.PTW, 0x9008, 8, ctx=ctx, engine=Engine.MMU, va=va,
                      level=self.rnd.choice([0, 1, 2]))
            for k in [k for k in self.tlb if k[0] == ctx and (k[1] == page or (
                    self.tlb[k][3] == 1 and k[1] >> 9 == page >> 9))]:
                del self.tlb[k]
            return
        pa, vram = self.pa_of(ctx, page, huge)
        flags = _PTE | (new.PTE_VRAM if vram else 0)
        if huge and not vram:
            self.emit(Kind.PTW, 0x9010, 8, ctx=ctx, engine=Engine.MMU, va=va,
                      aux=pa | flags | new.PTE_LEAF, level=1,
                      result=int(self.rnd.random() < 0.03))
            for p in range(page & ~511, (page & ~511) + 512):
                self.tlb[(ctx, p)] = (pa + ((p & 511) << 12), 1, False, 1)
        else:
            self.emit(Kind.PTW, 0x9010, 8, ctx=ctx, engine=Engine.MMU, va=va,
                      aux=0x6000 | _PTE, level=1)
            self.emit(Kind.PTW, 0x9018, 8, ctx=ctx, engine=Engine.MMU, va=va,
                      aux=pa | flags, level=0, result=int(self.rnd.random() < 0.03))
            self.tlb[(ctx, page)] = (pa, 0, vram, 0)

    def job(self) -> None:
        rnd = self.rnd
        self.cmd += 1
        ctx = rnd.randrange(1, 4)
        base, huge = rnd.choice(self.regions)
        va = base + rnd.randrange(0, HUGE, 8 if rnd.random() < 0.3 else PAGE)
        length = rnd.choice([8, 512, PAGE, PAGE, 2 * PAGE, 3 * PAGE + 24, 0])
        self.emit(Kind.CMD_FETCH, 0x1000, 64, engine=Engine.QUEUE, ctx=ctx)
        pages = range(va >> 12, ((va + max(length, 1) - 1) >> 12) + 1)
        for p in pages:
            missed = (ctx, p) not in self.tlb or rnd.random() < 0.1
            if missed and not (rnd.random() < self.bugs and (ctx, p) in self.tlb):
                self.walk(ctx, max(va, p << 12), huge)
        # the bus address the device uses: the translation's, or with a bug another
        first = self.tlb.get((ctx, va >> 12))
        addr = (first[0] | (va & 0xFFF)) if first else rnd.randrange(1 << 30) & ~7
        vram = bool(first and first[2])
        if rnd.random() < self.bugs:
            addr += rnd.choice([PAGE, -PAGE, 8])
        kind = Kind.VRAM if vram else Kind.DATA
        if rnd.random() < 0.5:  # READ_VA / WRITE_VA: the other side a bus address
            self.emit(kind, addr, length, Dir.READ, ctx=ctx, va=va)
            other = rnd.randrange(1 << 30) & ~0xFFF if rnd.random() < 0.9 else addr
            self.emit(Kind.DATA if rnd.random() < 0.8 else kind, other, length, Dir.WRITE,
                      ctx=ctx, va=va)
        else:
            self.emit(kind, addr, length, rnd.choice([Dir.READ, Dir.WRITE]), ctx=ctx, va=va)
        self.emit(Kind.CPL_WRITE, 0x2000, 32, Dir.WRITE, ctx=ctx, engine=Engine.QUEUE)

    def invalidate(self) -> None:
        rnd = self.rnd
        ctx = rnd.randrange(1, 4)
        base, _ = rnd.choice(self.regions)
        va = base + rnd.randrange(0, HUGE, PAGE) + rnd.choice([0, 0, 0, 8])
        length = rnd.choice([1, PAGE, PAGE - 8, 2 * PAGE, 64 * PAGE, HUGE, HUGE + PAGE,
                             3 * HUGE, 0, ALL, ALL - va, ALL - va + 1, ALL - 5])
        if length == ALL or va + length > ALL:
            gone = [k for k in self.tlb if k[0] == ctx]
        else:
            lo, hi = va >> 12, (va + length - 1) >> 12
            gone = [k for k in self.tlb if k[0] == ctx and length and (
                lo <= k[1] <= hi or (self.tlb[k][3] and lo >> 9 <= k[1] >> 9 <= hi >> 9))]
        if rnd.random() >= self.bugs * 3:  # with a bug the device keeps them
            for k in gone:
                del self.tlb[k]
        self.emit(Kind.EV_TLB_INV, direction=Dir.NONE, ctx=ctx, engine=Engine.MMU, va=va,
                  aux=length)

    def migrate(self) -> None:
        rnd = self.rnd
        self.cmd += 1
        page = rnd.randrange(48)
        into = (not self.vram.get(page, False) if rnd.random() > self.bugs * 2
                else rnd.random() < 0.5)
        self.emit(Kind.COPY_LIST, 0x4000, 32, engine=Engine.MIGRATE)
        self.emit(Kind.DATA, 0x5000_0000 + page * PAGE, PAGE, Dir.READ if into else Dir.WRITE,
                  engine=Engine.MIGRATE, aux=page << 12, result=int(rnd.random() < 0.03))
        self.vram[page] = into
        if rnd.random() < 0.4:  # a VA job's access of a VRAM page (sometimes a free one)
            self.emit(Kind.VRAM, rnd.randrange(64) * PAGE + rnd.choice([0, 8]),
                      rnd.choice([PAGE, 8, 2 * PAGE, 0]), rnd.choice([Dir.READ, Dir.WRITE]),
                      ctx=rnd.randrange(1, 4), va=0x7F00_0000_0000 + page * PAGE)
        if rnd.random() < 0.05:  # a 2 MiB VRAM leaf
            self.emit(Kind.PTW, 0x9010, 8, ctx=1, engine=Engine.MMU, va=0x7F10_0000_0000,
                      aux=(rnd.randrange(2) << 21) | _PTE | new.PTE_VRAM | new.PTE_LEAF, level=1)

    def run(self, n: int) -> bytes:
        while len(self.out) < n:
            r = self.rnd.random()
            if r < 0.6:
                self.job()
            elif r < 0.8:
                self.invalidate()
            else:
                self.migrate()
        return b"".join(self.out)


def assert_audits_same(data: bytes, device: str) -> None:
    a, b = new.decode(data, device), old.decode(data, device)
    for limit in (3, 10_000):
        ia = new.check_invalidations(a.records, limit)
        ib = old.check_invalidations(b.records, limit)
        assert (ia.to_dict(), ia.problems) == (ib.to_dict(), ib.problems)
        va = new.check_vram_lifetime(a.records, limit)
        vb = old.check_vram_lifetime(b.records, limit)
        assert (va.to_dict(), va.problems) == (vb.to_dict(), vb.problems)
    assert new.summarize(a).to_dict() == old.summarize(b).to_dict()
    assert new.summarize(a).format() == old.summarize(b).format()


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("chunk", [1 << 20, 64, 7])
def test_device_like_random_traces(seed: int, chunk: int, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    """The audits over device-like traces, with and without bugs, whole and in chunks
    small enough that translations, VRAM pages' histories and READ_VA/WRITE_VA pairs
    cross chunk boundaries: exactly the oracle's counts, problems and their order."""
    monkeypatch.setattr(new, "CHUNK", chunk)
    monkeypatch.setattr(new, "_BLOCK", min(chunk, 1 << 15))
    rnd = random.Random(seed)
    bugs = (0.0, 0.01, 0.1)[seed % 3]
    engine = Engine.COPY if seed % 4 else int(new.NicEngine.REQ)
    data = Device(rnd, bugs, engine).run(rnd.randrange(300, 2500))
    assert_audits_same(data, new.GPU if seed % 4 else new.NIC)
    if bugs:  # the audits have something to agree on
        a = new.decode(data)
        assert new.check_invalidations(a.records).problem_count > 0
    assert new.check_vram_lifetime(new.decode(data).records).problem_count > 0


def test_kernel_addresses_and_many_keys() -> None:
    """VAs near the top of the address space (a kernel mapping, or garbage) make
    (ctx, page) too wide to pack beside a position: the audits renumber the keys, and
    still agree with the oracle; so do VRAM offsets beyond 16 bits of pages."""
    rnd = random.Random(7)
    data = bytearray(Device(rnd, 0.05).run(3000))
    high = 0xFFF0_0000_0000_0000
    for off in range(new.HDR_SIZE, len(data), new.REC_SIZE):
        (va,) = struct.unpack_from("<Q", data, off + 32)
        if va:
            struct.pack_into("<Q", data, off + 32, (va + high) & ALL)
        if data[off + 53] == Kind.DATA and data[off + 52] == Engine.MIGRATE:
            (aux,) = struct.unpack_from("<Q", data, off + 40)
            struct.pack_into("<Q", data, off + 40, aux + (1 << 32))  # a 4 GiB VRAM
    assert_audits_same(bytes(data), new.GPU)


def frames_file(path: Path, data: bytes, rnd: random.Random, raw: bool = False) -> Path:
    """``data`` as the device writes it: zstd frames (the header alone first, then runs
    of whole records of random lengths, a drop marker between two of them), or raw."""
    import zstandard

    if raw:
        path.write_bytes(data)
        return path
    cut = [0, new.HDR_SIZE]
    while cut[-1] < len(data):
        cut.append(min(len(data), cut[-1] + 64 * rnd.choice([1, 3, 50, 130, 400])))
    z = zstandard.ZstdCompressor(write_checksum=True)
    frames = [z.compress(data[a:b]) for a, b in itertools.pairwise(cut)]
    drop = struct.pack("<II", tracefile.DROP_MAGIC, 16) + tracefile.DROP_PAYLOAD.pack(5, 5)
    frames.insert(len(frames) // 2, drop)
    path.write_bytes(b"".join(frames))
    assert len(tracefile.scan(path).frames) == len(cut) - 1 > 4
    return path


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1 << 20, 97, 7])
def test_streamed_file_checks_match_the_whole_trace(seed: int, chunk: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """check_file, which decodes a file frame by frame and never holds it whole, gives the
    summary and both audits exactly as over read_trace's whole trace: chunks of 97 or 7
    records end inside frames of 1 to 400 records and hold whole small frames; with and
    without bugs; a truncated tail and unknown enum values; a raw file too."""
    monkeypatch.setattr(new, "CHUNK", chunk)
    monkeypatch.setattr(new, "_BLOCK", min(chunk, 1 << 15))
    monkeypatch.setattr(new, "AHEAD", 1 + seed)
    rnd = random.Random(seed)
    bugs = (0.0, 0.01, 0.1)[seed % 3]
    data = Device(rnd, bugs).run(rnd.randrange(600, 3000))
    if seed == 1:  # an unknown kind, and QEMU killed mid-record
        at = new.HDR_SIZE + 2 * 64 + 53  # record 2's kind
        data = data[:at] + bytes([99]) + data[at + 1:] + b"\x01" * 40
    path = frames_file(tmp_path / "dmatrace-0.bin", data, rnd, raw=seed == 5)
    for limit in (3, 10_000):
        whole = new.read_trace(path)
        inv, vram = new.audit(whole.records, limit=limit)
        assert inv is not None and vram is not None
        got = new.check_file(path, limit=limit)
        assert got.summary == new.summarize(whole)
        assert got.invalidations is not None and got.vram is not None
        assert (got.invalidations.to_dict(), got.invalidations.problems) == (
            inv.to_dict(), inv.problems)
        assert (got.vram.to_dict(), got.vram.problems) == (vram.to_dict(), vram.problems)
    if seed == 1:
        assert any("unknown kind" in p for p in got.summary.problems)
        assert "truncated last record" in got.summary.problems[-1]
    if bugs:  # the audits have something to agree on
        assert got.invalidations.problem_count > 0
    assert got.vram.problem_count > 0
    only = new.check_file(path, invalidations=False, vram=False)  # the summary alone
    assert only.summary == got.summary and only.invalidations is None and only.vram is None


def test_streamed_file_checks_of_the_real_slice(tmp_path: Path) -> None:
    data = REAL.read_bytes()
    path = frames_file(tmp_path / "dmatrace-0.bin", data, random.Random(1))
    whole = new.decode(data)
    got = new.check_file(path, new.GPU)
    assert got.summary == new.summarize(whole)
    assert got.invalidations == new.check_invalidations(whole.records)
    assert got.vram == new.check_vram_lifetime(whole.records)

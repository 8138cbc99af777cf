"""DMA trace decoding, summaries and the check against the workload's maps."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.checks import dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind, TraceError

PAGE = 4096


def hdr(magic: int = dmatrace.TRACE_MAGIC, version: int = 1, rec_size: int = 40,
        devfn: int = 3 << 3) -> bytes:
    return struct.pack("<QIIII", magic, version, rec_size, devfn, 0)


def rec(addr: int, length: int, kind: int = Kind.DATA, direction: int = Dir.READ,
        cmd: int = 1, ctx: int = 7, engine: int = Engine.COPY, result: int = 0,
        ts: int = 1000) -> bytes:
    return struct.pack("<QQQQIBBBB", ts, addr, length, cmd, ctx, engine, kind, direction, result)


def copy_cmd(cmd: int, src: int, dst: int, length: int) -> bytes:
    """What the device emits for one COPY: fetch, data read, data write, completion."""
    return (rec(0x1000 + cmd * 64, 64, Kind.CMD_FETCH, Dir.READ, cmd, engine=Engine.QUEUE)
            + rec(src, length, Kind.DATA, Dir.READ, cmd)
            + rec(dst, length, Kind.DATA, Dir.WRITE, cmd)
            + rec(0x2000 + cmd * 32, 32, Kind.CPL_WRITE, Dir.WRITE, cmd, engine=Engine.QUEUE))


def fill_cmd(cmd: int, dst: int, length: int) -> bytes:
    return (rec(0x1000, 64, Kind.CMD_FETCH, Dir.READ, cmd, engine=Engine.QUEUE)
            + rec(dst, length, Kind.DATA, Dir.WRITE, cmd)
            + rec(0x2000, 32, Kind.CPL_WRITE, Dir.WRITE, cmd, engine=Engine.QUEUE))


def test_decode_records() -> None:
    t = dmatrace.decode(hdr() + copy_cmd(5, 0x10000, 0x20000, PAGE))
    assert t.header.devfn == 0x18 and t.header.slot == 3 and t.header.function == 0
    assert len(t.records) == 4
    r = t.records[1]
    assert (r.addr, r.len, r.cmd_id, r.ctx) == (0x10000, PAGE, 5, 7)
    assert (r.engine, r.kind, r.dir) == (Engine.COPY, Kind.DATA, Dir.READ)
    assert r.ok and t.truncated_bytes == 0 and t.problems == []
    assert [x.kind for x in t.data()] == [Kind.DATA, Kind.DATA]


def test_truncated_last_record_is_reported_not_fatal() -> None:
    data = hdr() + rec(0x1000, 8) + rec(0x2000, 8)[:17]
    t = dmatrace.decode(data)
    assert len(t.records) == 1
    assert t.truncated_bytes == 17
    assert "truncated last record: 17 of 40 bytes" in t.problems[0]


@pytest.mark.parametrize(("data", "msg"), [
    (b"", "empty trace"),
    (hdr()[:10], "truncated header: 10 of 24"),
    (hdr(magic=0x1122334455667788), "bad magic"),
    (b"\x7fELF" + b"\0" * 60, "bad magic"),
    (hdr(version=3), "trace version 3"),
    (hdr(version=2, rec_size=40), "record size 40 is smaller than 64"),
    (hdr(rec_size=32), "record size 32"),
])
def test_rejects_garbage(data: bytes, msg: str) -> None:
    with pytest.raises(TraceError, match=msg):
        dmatrace.decode(data)


def test_random_garbage_after_a_good_header_does_not_crash() -> None:
    import random

    rng = random.Random(1234)
    body = bytes(rng.getrandbits(8) for _ in range(40 * 10 + 13))
    t = dmatrace.decode(hdr() + body)
    assert len(t.records) == 10 and t.truncated_bytes == 13
    assert any("unknown" in p for p in t.problems)  # random enum bytes are reported


def test_unknown_enum_values_are_kept() -> None:
    t = dmatrace.decode(hdr() + rec(0, 8, kind=9, direction=4, engine=9))
    r = t.records[0]
    assert (r.kind, r.dir, r.engine) == (9, 4, 9)
    assert len(t.problems) == 3
    assert "?9" in r.describe()


def test_larger_records_from_a_newer_device_are_read() -> None:
    data = hdr(rec_size=48) + rec(0x5000, 16) + b"\xaa" * 8 + rec(0x6000, 32) + b"\xbb" * 8
    t = dmatrace.decode(data)
    assert [r.addr for r in t.records] == [0x5000, 0x6000]


def test_summary() -> None:
    t = dmatrace.decode(hdr() + copy_cmd(1, 0x10000, 0x20000, PAGE) + fill_cmd(2, 0x30000, 512)
                        + rec(0x40000, 8, Kind.DATA, Dir.WRITE, 3, result=2, ts=5000))
    s = dmatrace.summarize(t)
    assert s.records == 8
    assert s.commands == 3
    assert s.bytes_by["DATA/READ"] == PAGE
    assert s.bytes_by["DATA/WRITE"] == PAGE + 512 + 8
    assert s.count_by["CMD_FETCH/READ"] == 2
    assert s.errors == 1
    assert (s.first_ns, s.last_ns) == (1000, 5000)
    text = s.format()
    assert "DATA/WRITE" in text and "1 DMA errors" in text
    assert s.to_dict()["bytes"]["DATA/READ"] == PAGE


def test_read_trace_file(tmp_path: Path) -> None:
    f = tmp_path / "dmatrace-0.bin"
    f.write_bytes(hdr() + fill_cmd(1, 0x1000, 8))
    assert len(dmatrace.read_trace(f).records) == 3


# ---- checking against the workload's maps ----------------------------------------

def maps(role: str, *spans: tuple[int, int]) -> list[dict[str, object]]:
    return [{"role": role, "uaddr": hex(0x7F0000000000 + i * PAGE), "dma": hex(d), "len": n}
            for i, (d, n) in enumerate(spans)]


COPY_2P = {  # 2 pages, physically scattered, 2 commands
    "test": "copy", "ok": True, "len": 2 * PAGE, "ncmds": 2,
    "maps": maps("src", (0x100000, PAGE), (0x300000, PAGE))
    + maps("dst", (0x200000, PAGE), (0x500000, PAGE)),
}
FILL_1P = {"test": "fill", "ok": True, "len": PAGE, "ncmds": 1,
           "maps": maps("dst", (0x700000, PAGE))}


def good_trace() -> dmatrace.Trace:
    return dmatrace.decode(
        hdr() + copy_cmd(10, 0x100000, 0x200000, PAGE) + copy_cmd(11, 0x300000, 0x500000, PAGE)
        + fill_cmd(12, 0x700000, PAGE))


def expectations(*objs: dict[str, object]) -> list[dmatrace.Expectation]:
    return [dmatrace.expectation_from_result(o) for o in objs]


def test_check_passes_for_a_matching_trace() -> None:
    assert dmatrace.check_trace(expectations(COPY_2P, FILL_1P), good_trace()) == []


def test_check_read_outside_src() -> None:
    t = dmatrace.decode(hdr() + copy_cmd(10, 0x100000, 0x200000, PAGE)
                        + copy_cmd(11, 0x900000, 0x500000, PAGE) + fill_cmd(12, 0x700000, PAGE))
    problems = dmatrace.check_trace(expectations(COPY_2P, FILL_1P), t)
    assert problems == ["copy: DATA READ 0x900000+4096 (cmd 11) is outside every src mapping"]


def test_check_write_into_src_is_wrong_role() -> None:
    t = dmatrace.decode(hdr() + copy_cmd(10, 0x100000, 0x300000, PAGE)
                        + copy_cmd(11, 0x300000, 0x500000, PAGE) + fill_cmd(12, 0x700000, PAGE))
    problems = dmatrace.check_trace(expectations(COPY_2P, FILL_1P), t)
    assert any("0x300000+4096 (cmd 10) is outside every dst mapping" in p for p in problems)


def test_check_write_straddling_the_end_of_a_map() -> None:
    t = dmatrace.decode(hdr() + fill_cmd(1, 0x700000 + 8, PAGE))
    problems = dmatrace.check_trace(expectations(FILL_1P), t)
    assert "outside every dst mapping" in problems[0]


def test_check_adjacent_maps_may_be_crossed() -> None:
    obj = {"test": "fill", "len": 2 * PAGE, "ncmds": 1,
           "maps": maps("dst", (0x10000, PAGE), (0x11000, PAGE))}
    t = dmatrace.decode(hdr() + fill_cmd(1, 0x10000, 2 * PAGE))
    assert dmatrace.check_trace(expectations(obj), t) == []


def test_check_fill_must_not_read() -> None:
    t = dmatrace.decode(hdr() + rec(0x700000, PAGE, Kind.DATA, Dir.READ, 1)
                        + rec(0x700000, PAGE, Kind.DATA, Dir.WRITE, 1))
    problems = dmatrace.check_trace(expectations(FILL_1P), t)
    assert problems == ["fill: DATA READ 0x700000+4096 (cmd 1): a fill must not read data"]


def test_check_short_transfer() -> None:
    t = dmatrace.decode(hdr() + fill_cmd(1, 0x700000, PAGE // 2))
    assert dmatrace.check_trace(expectations(FILL_1P), t) == [
        "fill: device wrote 2048 bytes, request was 4096"]


def test_check_failed_dma() -> None:
    t = dmatrace.decode(hdr() + rec(0x700000, PAGE, Kind.DATA, Dir.WRITE, 1, result=1))
    assert "failed with MemTxResult 1" in dmatrace.check_trace(expectations(FILL_1P), t)[0]


def test_check_command_count_mismatch_falls_back_to_pooled() -> None:
    t = dmatrace.decode(hdr() + copy_cmd(10, 0x100000, 0x200000, PAGE)
                        + copy_cmd(11, 0x300000, 0x500000, PAGE))  # fill missing
    problems = dmatrace.check_trace(expectations(COPY_2P, FILL_1P), t)
    assert problems[0] == "trace has DATA records for 2 commands, the workload reported 3"
    assert "device wrote 8192 bytes in all, the requests add up to 12288" in problems


def test_check_without_ncmds_is_pooled() -> None:
    objs = [{k: v for k, v in o.items() if k != "ncmds"} for o in (COPY_2P, FILL_1P)]
    assert dmatrace.check_trace(expectations(*objs), good_trace()) == []


def test_check_reused_command_ids_are_split_by_order() -> None:
    # A driver that recycles ids per ring slot: 0, 1, then 0 again.
    t = dmatrace.decode(hdr() + copy_cmd(0, 0x100000, 0x200000, PAGE)
                        + copy_cmd(1, 0x300000, 0x500000, PAGE) + fill_cmd(0, 0x700000, PAGE))
    assert dmatrace.check_trace(expectations(COPY_2P, FILL_1P), t) == []


def test_maps_accept_ints_and_hex() -> None:
    m = dmatrace.parse_maps([{"role": "src", "uaddr": 4096, "dma": "0x2000", "len": "4096"}])
    assert (m[0].dma, m[0].len, m[0].uaddr, m[0].end) == (0x2000, 4096, 4096, 0x3000)


def test_check_ignores_other_contexts_when_ctx_is_reported() -> None:
    # The driver's own DMA (context 0) must not be matched to the workload's requests.
    objs = [dict(o, ctx=7) for o in (COPY_2P, FILL_1P)]
    t = dmatrace.decode(hdr() + rec(0xABC000, 64, Kind.DATA, Dir.WRITE, 99, ctx=0)
                        + good_trace_body())
    assert dmatrace.check_trace(expectations(*objs), t) == []


def good_trace_body() -> bytes:
    return (copy_cmd(10, 0x100000, 0x200000, PAGE) + copy_cmd(11, 0x300000, 0x500000, PAGE)
            + fill_cmd(12, 0x700000, PAGE))


# ---- version 2 records (ABI 1.1) ----------------------------------------------------

def rec2(kind: int, addr: int = 0, length: int = 0, direction: int = Dir.READ, cmd: int = 1,
         ctx: int = 1, engine: int = Engine.COPY, va: int = 0, aux: int = 0, level: int = 0,
         result: int = 0, ts: int = 1000) -> bytes:
    return struct.pack("<QQQQQQIBBBBB7s", ts, addr, length, cmd, va, aux, ctx, engine, kind,
                       direction, result, level, b"\0" * 7)


def hdr2() -> bytes:
    return hdr(version=2, rec_size=64)


def test_decode_v2_records() -> None:
    t = dmatrace.decode(hdr2()
                        + rec2(Kind.PTW, 0x5000, 8, engine=Engine.MMU, va=0x7f0000001000,
                               aux=0x123000 | dmatrace.PTE_VALID, level=0)
                        + rec2(Kind.EV_TLB_INV, direction=Dir.NONE, engine=Engine.MMU,
                               va=0x7f0000000000, aux=0x200000))
    assert t.problems == [] and len(t.records) == 2
    ptw, inv = t.records
    assert (ptw.kind, ptw.engine, ptw.va, ptw.level) == (Kind.PTW, Engine.MMU, 0x7f0000001000, 0)
    assert ptw.aux == 0x123001 and "L0 pte=0x123001" in ptw.describe()
    assert inv.is_event and inv.dir == Dir.NONE and "len=0x200000" in inv.describe()
    s = dmatrace.summarize(t)
    assert s.count_by == {"PTW/READ": 1, "EV_TLB_INV": 1}


def test_decode_v1_records_have_no_va() -> None:
    t = dmatrace.decode(hdr() + rec(0x1000, 8))
    assert t.records[0].va == 0 and t.records[0].aux == 0


# ---- the svm-invalidate check ---------------------------------------------------------

VA = 0x7F0000000000
PA = 0x40000000
V = dmatrace.PTE_VALID | dmatrace.PTE_READ | dmatrace.PTE_WRITE


def ptw(va: int, pte: int, level: int = 0, ctx: int = 1, ts: int = 0) -> dmatrace.TraceRecord:
    return dmatrace.TraceRecord(ts, 0x9000, 8, 1, ctx, Engine.MMU, Kind.PTW, Dir.READ, 0,
                                va=va, aux=pte, level=level)


def walk(va: int, pa: int, ctx: int = 1) -> list[dmatrace.TraceRecord]:
    """A full 4-level walk ending on a 4 KiB leaf."""
    return [ptw(va, 0xA000 | V, 3, ctx), ptw(va, 0xB000 | V, 2, ctx),
            ptw(va, 0xC000 | V, 1, ctx), ptw(va, pa | V, 0, ctx)]


def data(va: int, addr: int, length: int = PAGE, ctx: int = 1,
         direction: Dir = Dir.READ) -> dmatrace.TraceRecord:
    return dmatrace.TraceRecord(0, addr, length, 2, ctx, Engine.COPY, Kind.DATA, direction, 0,
                                va=va)


def inv(va: int, length: int, ctx: int = 1) -> dmatrace.TraceRecord:
    return dmatrace.TraceRecord(0, 0, 0, 3, ctx, Engine.MMU, Kind.EV_TLB_INV, Dir.NONE, 0,
                                va=va, aux=length)


def test_invalidate_check_passes_for_walk_then_dma() -> None:
    recs = [*walk(VA, PA), data(VA, PA), data(VA + 16, PA + 16, 32)]
    out = dmatrace.check_invalidations(recs)
    assert out.problems == [] and out.data_checked == 2 and out.walks == 1


def test_dma_after_invalidation_without_a_new_walk_fails() -> None:
    recs = [*walk(VA, PA), data(VA, PA), inv(VA, PAGE), data(VA, PA, direction=Dir.WRITE)]
    out = dmatrace.check_invalidations(recs)
    assert out.problem_count == 1
    assert "record 6" in out.problems[0] and "stale TLB entry" in out.problems[0]


def test_dma_after_invalidation_and_a_new_walk_passes() -> None:
    recs = [*walk(VA, PA), inv(VA, PAGE), *walk(VA, PA + 0x10000), data(VA, PA + 0x10000)]
    assert dmatrace.check_invalidations(recs).problems == []


def test_dma_to_the_old_address_after_a_rewalk_fails() -> None:
    # re-walked after the invalidation, but the DMA went to the page it had before
    recs = [*walk(VA, PA), inv(VA, PAGE), *walk(VA, PA + 0x10000), data(VA, PA)]
    out = dmatrace.check_invalidations(recs)
    assert out.problem_count == 1
    assert f"maps it to bus address 0x{PA + 0x10000:x}" in out.problems[0]


def vram(va: int, offset: int, length: int = PAGE, ctx: int = 1,
         direction: Dir = Dir.READ) -> dmatrace.TraceRecord:
    """A VA job's access to a PTE_VRAM page: device-internal, addr = VRAM offset."""
    return dmatrace.TraceRecord(0, offset, length, 2, ctx, Engine.COPY, Kind.VRAM, direction, 0,
                                va=va)


def vwalk(va: int, offset: int, ctx: int = 1) -> list[dmatrace.TraceRecord]:
    """A walk ending on a 4 KiB PTE_VRAM leaf."""
    return [*walk(va, 0, ctx)[:3], ptw(va, offset | V | dmatrace.PTE_VRAM, 0, ctx)]


def test_vram_access_through_a_vram_translation_passes() -> None:
    # READ_VA of a page in VRAM: the VRAM read, then the bus-side write
    recs = [*vwalk(VA, 0x200000), vram(VA, 0x200000),
            data(VA, PA, direction=Dir.WRITE)]
    out = dmatrace.check_invalidations(recs)
    assert out.problems == [] and out.data_checked == 2


def test_stale_vram_access_after_invalidation_fails() -> None:
    # the page went back to system memory: the VRAM page may be reused
    recs = [*vwalk(VA, 0x200000), inv(VA, PAGE), vram(VA, 0x200000)]
    out = dmatrace.check_invalidations(recs)
    assert out.problem_count == 1 and "no translation" in out.problems[0]


def test_dma_where_the_translation_is_vram_fails() -> None:
    # same number, other address space: a bus access to a page that lives in VRAM
    recs = [*vwalk(VA, PA), data(VA, PA)]
    out = dmatrace.check_invalidations(recs)
    assert out.problem_count == 1 and "VRAM offset" in out.problems[0]


def test_migrate_dma_is_not_an_xfer() -> None:
    # MIGRATE's system-memory side is va 0 like an XFER, but on its own engine
    mig = dmatrace.TraceRecord(0, PA, PAGE, 5, 1, Engine.MIGRATE, Kind.DATA, Dir.READ, 0,
                               aux=0x200000)
    assert dmatrace.check_invalidations([mig]).data_checked == 0


def test_a_cleared_table_under_a_job_still_using_its_cached_translation() -> None:
    """Found in a default-matrix run: a munmap empties a level-0 table and the
    driver detaches it (level-1 entry cleared) before its fence; meanwhile a job
    goes on with the translation it cached, and another job's walk of a page in
    the same 2 MiB finds the cleared entry. Legal until the fence: only the
    walked page is known untranslated."""
    other = VA + 0xF1000  # same level-1 entry, another page
    recs = [*walk(VA, PA), data(VA, PA, 1920),
            ptw(other, 0xA000 | V, 3), ptw(other, 0xB000 | V, 2), ptw(other, 0, 1),
            data(VA + 1920, PA + 1920, 2176)]
    assert dmatrace.check_invalidations(recs).problems == []
    # the fence then ends it: a use after the invalidation is still caught
    recs += [inv(VA, 2 * 1024 * 1024), data(VA, PA, 64)]
    assert dmatrace.check_invalidations(recs).problem_count == 1
    # and the walked page itself has no translation after its miss
    recs = [*walk(other, PA + PAGE), ptw(other, 0xA000 | V, 3), ptw(other, 0xB000 | V, 2),
            ptw(other, 0, 1), data(other, PA + PAGE)]
    assert dmatrace.check_invalidations(recs).problem_count == 1


def test_invalidation_of_another_range_or_context_does_not_count() -> None:
    recs = [*walk(VA, PA), inv(VA + PAGE, PAGE), inv(VA, PAGE, ctx=2), data(VA, PA)]
    assert dmatrace.check_invalidations(recs).problems == []


def test_invalidate_all() -> None:
    recs = [*walk(VA, PA), *walk(VA + 0x40000000, PA + PAGE), inv(0, dmatrace.ALL),
            data(VA + 0x40000000, PA + PAGE)]
    assert dmatrace.check_invalidations(recs).problem_count == 1


def test_range_invalidation_covering_the_page_partly() -> None:
    recs = [*walk(VA, PA), inv(VA + PAGE - 1, 2), data(VA, PA)]
    assert dmatrace.check_invalidations(recs).problem_count == 1


def test_dma_never_walked_fails() -> None:
    out = dmatrace.check_invalidations([data(VA, PA)])
    assert out.problem_count == 1


def test_non_present_walk_removes_the_translation() -> None:
    recs = [*walk(VA, PA), ptw(VA, 0, 0), data(VA, PA)]
    assert dmatrace.check_invalidations(recs).problem_count == 1


def test_huge_leaf_translates_the_whole_2mib() -> None:
    huge = [ptw(VA, 0xA000 | V, 3), ptw(VA, 0xB000 | V, 2),
            ptw(VA, 0x40200000 | V | dmatrace.PTE_LEAF, 1)]
    recs = [*huge, data(VA + 0x1FF000, 0x40200000 + 0x1FF000), data(VA + 0x5000, 0x40205000)]
    assert dmatrace.check_invalidations(recs).problems == []
    recs += [inv(VA + 0x100000, PAGE), data(VA + 0x5000, 0x40205000)]
    assert dmatrace.check_invalidations(recs).problem_count == 1


def test_multi_page_dma_is_checked_page_by_page() -> None:
    recs = [*walk(VA, PA), *walk(VA + PAGE, PA + PAGE), data(VA + 0x800, PA + 0x800, PAGE)]
    out = dmatrace.check_invalidations(recs)
    assert out.problems == [] and out.pages_checked == 2
    # second page not contiguous on the bus: the DMA record cannot have used it
    recs = [*walk(VA, PA), *walk(VA + PAGE, PA + 0x8000), data(VA + 0x800, PA + 0x800, PAGE)]
    assert dmatrace.check_invalidations(recs).problem_count == 1


def test_bus_address_dma_and_other_contexts_are_ignored() -> None:
    recs = [data(0, 0x1000), *walk(VA, PA, ctx=2), data(VA, PA, ctx=2)]
    out = dmatrace.check_invalidations(recs)
    assert out.problems == [] and out.data_checked == 1
    assert dmatrace.check_invalidations([*walk(VA, PA, ctx=2), data(VA, PA, ctx=1)]).problem_count


def test_problem_list_is_bounded() -> None:
    out = dmatrace.check_invalidations([data(VA + i * PAGE, PA) for i in range(100)], limit=5)
    assert out.problem_count == 100 and len(out.problems) == 5 and "95 more" in out.format()


def test_invalidate_check_on_decoded_bytes() -> None:
    body = (rec2(Kind.PTW, 0x9000, 8, engine=Engine.MMU, va=VA, aux=PA | V, level=0)
            + rec2(Kind.DATA, PA, PAGE, Dir.WRITE, va=VA)
            + rec2(Kind.EV_TLB_INV, direction=Dir.NONE, engine=Engine.MMU, va=VA, aux=PAGE)
            + rec2(Kind.DATA, PA, PAGE, Dir.WRITE, va=VA))
    out = dmatrace.check_invalidations(dmatrace.decode(hdr2() + body).records)
    assert out.data_checked == 2 and out.problem_count == 1


def test_interleaved_commands_are_grouped_by_completion() -> None:
    # the 1.1 engine works in chunks: two copies' DATA records interleave
    body = (rec(0x10000, PAGE, Kind.DATA, Dir.READ, 1) + rec(0x50000, PAGE, Kind.DATA, Dir.READ, 2)
            + rec(0x20000, PAGE, Kind.DATA, Dir.WRITE, 1)
            + rec(0x2000, 32, Kind.CPL_WRITE, Dir.WRITE, 1, engine=Engine.QUEUE)
            + rec(0x60000, PAGE, Kind.DATA, Dir.WRITE, 2)
            + rec(0x2000, 32, Kind.CPL_WRITE, Dir.WRITE, 2, engine=Engine.QUEUE)
            # the id is reused for a later command
            + rec(0x70000, PAGE, Kind.DATA, Dir.WRITE, 1)
            + rec(0x2000, 32, Kind.CPL_WRITE, Dir.WRITE, 1, engine=Engine.QUEUE))
    t = dmatrace.decode(hdr() + body)
    a = dmatrace.Expectation("a", PAGE, (dmatrace.MapRange("src", 0x10000, PAGE),
                                         dmatrace.MapRange("dst", 0x20000, PAGE)), ncmds=1)
    b = dmatrace.Expectation("b", PAGE, (dmatrace.MapRange("src", 0x50000, PAGE),
                                         dmatrace.MapRange("dst", 0x60000, PAGE)), ncmds=1)
    c = dmatrace.Expectation("c", PAGE, (dmatrace.MapRange("dst", 0x70000, PAGE),), ncmds=1)
    assert dmatrace.check_trace([a, b, c], t) == []
    # later MMU work is not the workload's when only_first is set
    later = rec(0x9000, 8, Kind.PTW, Dir.READ, 9, engine=Engine.MMU) + rec(0x80000, PAGE,
                                                                           Kind.DATA, Dir.WRITE, 9)
    t2 = dmatrace.decode(hdr() + body + later)
    assert dmatrace.check_trace([a, b, c], t2, only_first=True) == []
    assert dmatrace.check_trace([a, b, c], t2) != []


# ---- VRAM page lifetime -----------------------------------------------------------

def migrate_page(offset: int, to_vram: bool, sys_addr: int = 0x7000_0000,
                 ok: bool = True) -> dmatrace.TraceRecord:
    """One page of a MIGRATE: system side DMA, aux = the VRAM offset."""
    return dmatrace.TraceRecord(0, sys_addr, PAGE, 9, 0, Engine.MIGRATE, Kind.DATA,
                                Dir.READ if to_vram else Dir.WRITE, 0 if ok else 3,
                                aux=offset)


def test_vram_used_while_live_passes() -> None:
    recs = [migrate_page(0x5000, True), *vwalk(VA, 0x5000), vram(VA, 0x5000),
            vram(VA, 0x5000, direction=Dir.WRITE), migrate_page(0x5000, False)]
    out = dmatrace.check_vram_lifetime(recs)
    assert out.problems == []
    assert (out.copies_in, out.copies_out, out.walks, out.accesses) == (1, 1, 1, 2)


def test_walk_to_a_vram_page_freed_and_reused_fails() -> None:
    # the fault worker mapped a device page a CPU fault had just moved back
    # and freed; the page then went to another migration
    recs = [migrate_page(0x5000, True), migrate_page(0x5000, False), *vwalk(VA, 0x5000),
            vram(VA, 0x5000, direction=Dir.WRITE), migrate_page(0x5000, True)]
    out = dmatrace.check_vram_lifetime(recs)
    assert out.problem_count == 2
    assert "walk of va=0x" in out.problems[0] and "it was free in between" in out.problems[0]
    assert "touched VRAM offset 0x5000" in out.problems[1]


def test_vram_page_reused_after_a_new_copy_in_passes() -> None:
    recs = [migrate_page(0x5000, True), migrate_page(0x5000, False),
            migrate_page(0x5000, True), *vwalk(VA, 0x5000), vram(VA, 0x5000)]
    assert dmatrace.check_vram_lifetime(recs).problems == []


def test_migration_that_copied_out_but_failed_leaves_the_page_usable() -> None:
    # copied out, but the page could not move (an extra reference): still the
    # process's page, mapped again, and copied out again later
    recs = [migrate_page(0x5000, True), migrate_page(0x5000, False), *vwalk(VA, 0x5000),
            vram(VA, 0x5000), migrate_page(0x5000, False)]
    assert dmatrace.check_vram_lifetime(recs).problems == []


def test_use_after_the_last_copy_out_is_not_judged() -> None:
    recs = [migrate_page(0x5000, True), migrate_page(0x5000, False), vram(VA, 0x5000)]
    assert dmatrace.check_vram_lifetime(recs).problems == []


def test_use_of_a_page_never_copied_in_fails() -> None:
    out = dmatrace.check_vram_lifetime([*vwalk(VA, 0x9000), migrate_page(0x9000, True)])
    assert out.problem_count == 1 and "no page was ever copied into it" in out.problems[0]


def test_failed_copy_does_not_change_the_page() -> None:
    # a copy-in whose DMA failed brought nothing into VRAM
    recs = [migrate_page(0x5000, True, ok=False), vram(VA, 0x5000)]
    assert dmatrace.check_vram_lifetime(recs).problem_count == 1


def test_vram_access_spanning_pages_checks_each() -> None:
    recs = [migrate_page(0x5000, True), vram(VA, 0x5800, PAGE)]  # reaches into 0x6000
    out = dmatrace.check_vram_lifetime(recs)
    assert out.problem_count == 1 and "0x6000" in out.problems[0]


# ---- hmm-nic's traces: the same records, its own engines ------------------------------

def test_nic_trace_names_its_engines(tmp_path: Path) -> None:
    data = (hdr() + rec(0x1000, 64, Kind.CMD_FETCH, engine=0)
            + rec(0x5000, 100, Kind.DATA, Dir.READ, engine=1)
            + rec(0x9000, 100, Kind.DATA, Dir.WRITE, engine=4)
            + rec(0x2000, 64, Kind.FAULT_WRITE, Dir.WRITE, engine=2))
    t = dmatrace.decode(data, dmatrace.NIC)
    assert t.problems == [] and t.device == "hmm-nic"
    assert [r.engine for r in t.records] == [dmatrace.NicEngine.QUEUE, dmatrace.NicEngine.REQ,
                                             dmatrace.NicEngine.RESP, dmatrace.NicEngine.MMU]
    assert "RESP" in t.records[2].describe()
    s = dmatrace.summarize(t)
    assert s.by_engine == {"QUEUE": 1, "REQ": 1, "RESP": 1, "MMU": 1}
    assert "RESP 1" in s.format()
    # the same bytes read as a hmm-gpu trace: engine 4 is not one of hmm-gpu's
    gpu = dmatrace.decode(data)
    assert gpu.problems == ["record 2: unknown engine 4"]
    # a file's name says which device wrote it
    f = tmp_path / "dmatrace-nic0.bin"
    f.write_bytes(data)
    assert dmatrace.read_trace(f).device == "hmm-nic"
    assert dmatrace.read_trace(f, dmatrace.GPU).problems == gpu.problems
    assert dmatrace.device_of(tmp_path / "dmatrace-1.bin") == "hmm-gpu"


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device 'hmm-foo'"):
        dmatrace.decode(hdr(), "hmm-foo")

"""harness.checks.tracefile on traces the device wrote (tests/unit/data, made by
tests/device/test_dmatrace_writer.py with UPDATE_TRACE_FIXTURE=1): zstd frames,
a drop marker, files cut short while being written, and the old raw format."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest
import zstandard

from harness.checks import dmatrace, tracefile
from harness.core.files import disk_bytes
from harness.scenarios.odp import window_of

DATA = Path(__file__).parent / "data"
FRAMES = DATA / "dmatrace-frames.zst.bin"  # 1 + 8 x 255 FILLs, flush_ms 0: a frame per run
DROPS = DATA / "dmatrace-drops.zst.bin"  # queue of one, a consumer that did not read


def frame_by_frame(path: Path) -> bytes:
    """The reference: zstd's own decoder over the whole file (skips skippable frames)."""
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        return reader.read()


def test_frames_indexed_from_headers() -> None:
    idx = tracefile.scan(FRAMES)
    assert idx.compressed and idx.partial_tail == 0 and idx.drops == []
    assert idx.frames[0].offset == 0 and idx.frames[0].content_size == dmatrace.HDR_SIZE
    assert sum(f.size for f in idx.frames) == idx.file_size == FRAMES.stat().st_size
    data = tracefile.read_bytes(FRAMES)
    assert data == frame_by_frame(FRAMES) and len(data) == idx.decoded_size
    assert (len(data) - dmatrace.HDR_SIZE) % dmatrace.REC_SIZE == 0


def test_compressed_and_raw_decode_alike(tmp_path: Path) -> None:
    raw = tmp_path / "dmatrace-0.bin"
    raw.write_bytes(tracefile.read_bytes(FRAMES))
    assert not tracefile.is_compressed(raw) and tracefile.is_compressed(FRAMES)
    comp = tmp_path / "dmatrace-1.bin"
    comp.write_bytes(FRAMES.read_bytes())
    a, b = dmatrace.read_trace(raw), dmatrace.read_trace(comp)
    assert a.records == b.records and len(a.records) == 3 * 2041
    kinds = (dmatrace.Kind.DATA, dmatrace.Kind.CPL_WRITE)
    assert dmatrace.read_kinds(comp, kinds) == dmatrace.read_kinds(raw, kinds)
    assert len(dmatrace.read_kinds(comp, iter(kinds))) == 2 * 2041  # an iterator is fine too
    buf = tracefile.trace_buffer(raw)
    assert isinstance(buf, mmap.mmap) and bytes(buf) == raw.read_bytes()
    assert bytes(tracefile.trace_buffer(comp)) == raw.read_bytes()
    assert tracefile.scan(raw).decoded_size == raw.stat().st_size


def test_skip_decodes_only_from_the_offset() -> None:
    data = tracefile.read_bytes(FRAMES)
    for skip in (0, 24, 25, 4096, len(data) - 64, len(data)):
        assert b"".join(tracefile.iter_chunks(FRAMES, skip=skip)) == data[skip:]


@pytest.mark.parametrize("cut", [1, 3, 5, 9, -1])
def test_a_file_being_written_reads_up_to_its_last_whole_frame(tmp_path: Path, cut: int) -> None:
    """Cut inside the last frame (magic, header, blocks, checksum): the complete
    frames decode; the rest is reported, not an error."""
    idx = tracefile.scan(FRAMES)
    last = idx.frames[-1]
    part = tmp_path / "dmatrace-0.bin"
    part.write_bytes(FRAMES.read_bytes()[:last.offset + (cut if cut > 0 else last.size + cut)])
    pidx = tracefile.scan(part)
    assert pidx.frames == idx.frames[:-1] and pidx.partial_tail > 0
    assert tracefile.read_bytes(part) == tracefile.read_bytes(FRAMES)[:-last.content_size]


def test_drop_marker_reported_and_skipped() -> None:
    idx = tracefile.scan(DROPS)
    assert len(idx.drops) >= 1 and idx.dropped == idx.drops[-1].total > 0
    assert all(d.at <= idx.decoded_size for d in idx.drops)
    data = tracefile.read_bytes(DROPS)
    assert data == frame_by_frame(DROPS)  # decoders skip the marker
    trace = dmatrace.decode(data)
    assert not trace.problems and len(trace.records) == (len(data) - 24) // 64


def test_not_a_trace(tmp_path: Path) -> None:
    bad = tmp_path / "x.bin"
    bad.write_bytes(FRAMES.read_bytes()[:tracefile.scan(FRAMES).frames[1].offset] + b"junkjunk")
    with pytest.raises(tracefile.TraceFileError, match="no zstd frame"):
        tracefile.scan(bad)
    empty = tmp_path / "e.bin"
    empty.write_bytes(b"")
    assert tracefile.read_bytes(empty) == b"" and tracefile.trace_buffer(empty) == b""


def test_disk_bytes_counts_allocated_blocks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dense").write_bytes(os.urandom(1 << 20))
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(64 << 20)  # 64 MiB long, nothing allocated
    got = disk_bytes(tmp_path)
    assert (1 << 20) <= got < (1 << 20) + (256 << 10)
    (tmp_path / "initrd.img").write_bytes(os.urandom(1 << 20))
    assert disk_bytes(tmp_path, skip=("initrd.img",)) == got < disk_bytes(tmp_path)


def test_stream_size_places_records_in_a_compressed_file() -> None:
    # Scenarios note a trace's size before and after a workload and take the records
    # in between (scenarios.odp.window_of): for zstd frames that must be the stream's
    # size, not the file's (the odp audits then saw records of other workloads).
    stream = tracefile.stream_size(FRAMES)
    assert stream == len(tracefile.read_bytes(FRAMES))
    assert stream != FRAMES.stat().st_size
    trace = dmatrace.read_trace(FRAMES)
    w = window_of(0, stream, rec_size=trace.header.rec_size)
    assert (w.first, w.end) == (0, len(trace.rows))
    assert tracefile.stream_size(FRAMES.with_name("no-such-trace.bin")) == 0

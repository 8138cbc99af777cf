"""Open a device's DMA trace file, raw (old) or zstd-compressed (new), as its bytes.

The devices (qemu-devices/hw/misc/hmm-common/dmatrace.c) write the stream
as independent zstd frames, one per chunk of records, so a file that is
still being written is readable up to its last complete frame, and a reader
can skip frames without decompressing them: each frame's header carries its
content size and the blocks' headers their sizes. When the device's writer
fell behind, a zstd skippable frame (magic ``DROP_MAGIC``) stands where the
lost records would have been, with their count; :func:`scan` reports them.

Files from before compression are the raw stream itself; every function
here takes either. The decoded bytes are the same in both cases: the
24-byte header, then 64-byte records (see harness/checks/dmatrace.py).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MIN, SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F
DROP_MAGIC = 0x184D2A5D  # HMM_DMATRACE_DROP_MAGIC in dmatrace.h
DROP_PAYLOAD = struct.Struct("<QQ")  # records dropped here, dropped in all so far
RAW_BLOCK = 16 << 20  # bytes per piece when streaming a raw file
DECODE_THREADS = min(2, os.cpu_count() or 1)


class TraceFileError(ValueError):
    """Not a trace file this module can read (neither raw nor our zstd frames)."""


@dataclass(frozen=True)
class Frame:
    offset: int  # in the file
    size: int  # compressed bytes, header to checksum
    content_size: int  # decoded bytes


@dataclass(frozen=True)
class Drop:
    """Records the device dropped: they would have started at byte ``at`` of the stream."""

    at: int  # offset in the decoded stream
    records: int
    total: int  # the device's dmatrace-dropped counter after this loss


@dataclass
class TraceIndex:
    compressed: bool
    frames: list[Frame] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    decoded_size: int = 0
    file_size: int = 0
    partial_tail: int = 0  # bytes of an incomplete last frame (file still being written)

    @property
    def dropped(self) -> int:
        return sum(d.records for d in self.drops)


def is_compressed(path: Path) -> bool:
    """Whether ``path`` starts with a zstd frame (a raw trace starts with "HMMGTRC1")."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4:
        return False
    (magic,) = struct.unpack("<I", head)
    return magic == ZSTD_MAGIC or SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX


def _frame_header(fh: _Reader) -> tuple[int, bool, int] | None:
    """After the magic: (content size or -1, has checksum, header length); None if cut."""
    d = fh.read(1)
    if not d:
        return None
    desc = d[0]
    fcs_flag, single, checksum, dict_flag = desc >> 6, (desc >> 5) & 1, (desc >> 2) & 1, desc & 3
    if desc & 0x08:
        raise TraceFileError(f"zstd frame at {fh.pos - 5}: reserved descriptor bit set")
    window = 0 if single else 1
    dict_len = (0, 1, 2, 4)[dict_flag]
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    rest = fh.read(window + dict_len + fcs_len)
    if len(rest) < window + dict_len + fcs_len:
        return None
    fcs = rest[window + dict_len:]
    size = int.from_bytes(fcs, "little") + (256 if fcs_len == 2 else 0) if fcs_len else -1
    return size, bool(checksum), 1 + len(rest)


class _Reader:
    """A file read forward with a position, for walking frame and block headers."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.pos = 0
        self.size = size

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> bool:
        if self.pos + n > self.size:
            return False
        self.fh.seek(n, os.SEEK_CUR)
        self.pos += n
        return True


def _walk_blocks(r: _Reader) -> bool:
    """Skip a frame's blocks; False if the file ends first."""
    while True:
        h = r.read(3)
        if len(h) < 3:
            return False
        bh = int.from_bytes(h, "little")
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 3:
            raise TraceFileError(f"zstd block at {r.pos - 3}: reserved block type")
        if not r.skip(1 if btype == 1 else bsize):
            return False
        if last:
            return True


def _scan_one(path: Path, r: _Reader, idx: TraceIndex) -> bool:
    """Index the frame at ``r``'s position; False if the file ends inside it."""
    start = r.pos
    head = r.read(4)
    if len(head) < 4:
        return False
    (magic,) = struct.unpack("<I", head)
    if SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
        ln = r.read(4)
        if len(ln) < 4:
            return False
        (n,) = struct.unpack("<I", ln)
        payload = r.read(n)
        if len(payload) < n:
            return False
        if magic == DROP_MAGIC and n == DROP_PAYLOAD.size:
            records, total = DROP_PAYLOAD.unpack(payload)
            idx.drops.append(Drop(at=idx.decoded_size, records=records, total=total))
        return True
    if magic != ZSTD_MAGIC:
        raise TraceFileError(f"{path}: no zstd frame at offset {start} (magic {magic:#010x})")
    hdr = _frame_header(r)
    if hdr is None:
        return False
    content, checksum, _ = hdr
    if content < 0:
        raise TraceFileError(f"{path}: frame at {start} has no content size")
    if not _walk_blocks(r) or (checksum and not r.skip(4)):
        return False
    idx.frames.append(Frame(offset=start, size=r.pos - start, content_size=content))
    idx.decoded_size += content
    return True


def scan(path: Path) -> TraceIndex:
    """Index a trace file from its frame headers alone (nothing is decompressed)."""
    size = os.path.getsize(path)
    if not is_compressed(path):
        return TraceIndex(compressed=False, decoded_size=size, file_size=size)
    idx = TraceIndex(compressed=True, file_size=size)
    with open(path, "rb") as fh:
        r = _Reader(fh, size)
        while r.pos < size:
            start = r.pos
            if not _scan_one(path, r, idx):
                idx.partial_tail = size - start  # cut short: still being written
                break
    return idx


def stream_size(path: Path) -> int:
    """How many bytes of the trace stream a file holds so far (the decoded size of its
    complete frames; a raw file's own size; 0 before the device made it). What a
    scenario notes before and after a workload to find the records it wrote: the
    size on disk of a compressed file says nothing about where its records are."""
    try:
        return scan(path).decoded_size
    except FileNotFoundError:
        return 0


def iter_chunks(path: Path, skip: int = 0, index: TraceIndex | None = None) -> Iterator[bytes]:
    """The decoded stream piece by piece (a frame each, or RAW_BLOCK of a raw file),
    from decoded offset ``skip`` on; frames wholly before it are not decompressed.

    A compressed file's pieces hold whole records (the device frames whole
    records; the first frame is the header alone); a raw file's do not.
    """
    if not is_compressed(path):
        with open(path, "rb") as fh:
            fh.seek(skip)
            while piece := fh.read(RAW_BLOCK):
                yield piece
        return
    dctx = zstandard.ZstdDecompressor()
    pos = 0
    with open(path, "rb") as fh:
        for frame in (index or scan(path)).frames:
            end = pos + frame.content_size
            if end > skip:
                fh.seek(frame.offset)
                data = dctx.decompress(fh.read(frame.size), max_output_size=frame.content_size)
                yield data[skip - pos:] if skip > pos else data
            pos = end


def read_bytes(path: Path) -> bytes:
    """The whole decoded stream in memory (small files, tests)."""
    return b"".join(iter_chunks(path))


def trace_buffer(path: Path) -> bytes | mmap.mmap:
    """The decoded stream as one buffer: a raw file is mapped (no copy; pages come
    from the page cache on demand), a compressed one decoded into memory.
    Either supports the buffer protocol (``numpy.frombuffer``, ``memoryview``)."""
    if not is_compressed(path):
        if os.path.getsize(path) == 0:
            return b""
        with open(path, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    idx = scan(path)
    # anonymous memory the kernel fills in one go (MAP_POPULATE): a fresh buffer's page
    # faults one by one cost about what decompressing into it does, and huge pages
    # (numpy's choice) stall for seconds when the kernel must compact memory first.
    # Each frame is decompressed straight into its place, the frames spread over a
    # few threads (zstd runs without the GIL).
    if not idx.decoded_size:
        return b""
    out = mmap.mmap(-1, idx.decoded_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                    | getattr(mmap, "MAP_POPULATE", 0))
    view = memoryview(out)
    starts = [0]
    for frame in idx.frames:
        starts.append(starts[-1] + frame.content_size)
    workers = max(1, min(DECODE_THREADS, len(idx.frames)))
    with open(path, "rb") as fh, ThreadPoolExecutor(workers) as pool:
        def decode(k: int) -> None:
            frame = idx.frames[k]
            pos, end = starts[k], starts[k + 1]
            reader = zstandard.ZstdDecompressor().stream_reader(
                os.pread(fh.fileno(), frame.size, frame.offset))
            while pos < end:
                got = reader.readinto(view[pos:end])
                if not got:
                    raise TraceFileError(f"{path}: the frame at {frame.offset} decodes to "
                                         f"{end - pos} bytes fewer than its header says")
                pos += got

        list(pool.map(decode, range(len(idx.frames))))
    view.release()
    return out

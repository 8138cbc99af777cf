"""Decoder for the host-side DMA trace stream of hmm-gpu and hmm-nic.

The device writes one ``struct hmm_gpu_trace_hdr`` and then one
``struct hmm_gpu_trace_rec`` per DMA it issues to its ``dmatrace`` chardev
(``qemu-devices/include/hmm_gpu_regs.h``; tests/unit/test_abi.py checks the
layouts below against that header with a C compiler). hmm-nic writes the
same stream; only its engine numbers differ (``enum hmm_nic_trace_engine``
in ``hmm_nic_regs.h``), and nothing in the stream says which device wrote
it, so the caller says so, or the file's name does (the launcher names
hmm-nic's traces ``dmatrace-nicN.bin``).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.checks import tracefile

TRACE_MAGIC = 0x31435254474D4D48  # "HMMGTRC1"
TRACE_VERSION = 2  # what the device writes since ABI 1.1
READ_VERSIONS = (1, 2)  # version 1 (40-byte records, no va/aux/level) is still read

# struct hmm_gpu_trace_hdr: magic, version, rec_size, devfn, rsvd
HDR_FORMAT = "<QIIII"
HDR_FIELDS = ("magic", "version", "rec_size", "devfn", "rsvd")
# struct hmm_gpu_trace_rec (v2): timestamp_ns, addr, len, cmd_id, va, aux, ctx, engine,
# kind, dir, result, level, rsvd[7]
REC_FORMAT = "<QQQQQQIBBBBB7s"
REC_FIELDS = ("timestamp_ns", "addr", "len", "cmd_id", "va", "aux", "ctx", "engine", "kind",
              "dir", "result", "level", "rsvd")
# Version 1 records: timestamp_ns, addr, len, cmd_id, ctx, engine, kind, dir, result
REC_V1_FORMAT = "<QQQQIBBBB"
HDR = struct.Struct(HDR_FORMAT)
REC = struct.Struct(REC_FORMAT)
REC_V1 = struct.Struct(REC_V1_FORMAT)
HDR_SIZE = HDR.size  # 24
REC_SIZE = REC.size  # 64
REC_V1_SIZE = REC_V1.size  # 40

# struct hmm_gpu_ctx_desc and struct hmm_gpu_fault_rec (device MMU, ABI 1.1)
CTX_DESC_FORMAT = "<QII"
CTX_DESC_FIELDS = ("pt_root", "flags", "rsvd")
FAULT_REC_FORMAT = "<QQQIHBBB7s24s"
FAULT_REC_FIELDS = ("va", "cmd_id", "timestamp_ns", "ctx", "token", "access", "reason",
                    "engine", "rsvd0", "rsvd1")

# Device page-table entries (what PTW records carry in ``aux``).
PAGE_SHIFT = 12
PT_LEVELS = 4
PTE_VALID = 1 << 0
PTE_READ = 1 << 1
PTE_WRITE = 1 << 2
PTE_ATOMIC = 1 << 3
PTE_LEAF = 1 << 4  # level 1: a 2 MiB page
PTE_VRAM = 1 << 5
PTE_ADDR_MASK = 0x000FFFFFFFFFF000
ALL = (1 << 64) - 1  # EV_TLB_INV aux (length) meaning "the whole context"


def pt_shift(level: int) -> int:
    """HMM_GPU_PT_SHIFT(level): log2 of the span one entry of ``level`` maps."""
    return PAGE_SHIFT + 9 * level


class Engine(IntEnum):
    """enum hmm_gpu_trace_engine"""

    QUEUE = 0
    COPY = 1
    MMU = 2
    MIGRATE = 3  # 1.2 copy engine (MIGRATE between system memory and VRAM)


class NicEngine(IntEnum):
    """enum hmm_nic_trace_engine"""

    QUEUE = 0  # WQE fetch, CQE and event writes
    REQ = 1  # the requester's payload
    MMU = 2  # walks, fault records, events
    RESP = 4  # the responder's payload


GPU = "hmm-gpu"
NIC = "hmm-nic"
# device type -> its engine enum
ENGINES: dict[str, type[IntEnum]] = {GPU: Engine, NIC: NicEngine}


def device_of(path: Path) -> str:
    """Which device wrote a trace file, from the name the launcher gives it."""
    return NIC if Path(path).name.startswith("dmatrace-nic") else GPU


class Kind(IntEnum):
    """enum hmm_gpu_trace_kind"""

    CMD_FETCH = 0
    CPL_WRITE = 1
    DATA = 2
    CTX_FETCH = 3  # context descriptor read
    PTW = 4  # page-table entry read (va: the address walked, aux: the entry, level)
    FAULT_WRITE = 5  # fault record write
    COPY_LIST = 6  # MIGRATE copy list read
    VRAM = 7  # device-internal VRAM access, not DMA (addr: the VRAM offset)
    EV_TLB_INV = 16  # event: TLB_INVALIDATE completed (va, aux = len, ~0 = all)
    EV_REPLAY = 17  # event: FAULT_REPLAY
    EV_CANCEL = 18  # event: FAULT_CANCEL (aux = token)
    EV_CLOCK_SYNC = 19  # event (1.4): the driver's clock (va = guest ns, aux = sequence number)

    @property
    def is_event(self) -> bool:
        return self >= Kind.EV_TLB_INV


class Dir(IntEnum):
    """HMM_GPU_DIR_*"""

    READ = 0  # the device reads guest memory
    WRITE = 1  # the device writes guest memory
    NONE = 2  # an event, no DMA


# The C names of every constant above, for the ABI test.
C_CONSTANTS: dict[str, int] = {
    "HMM_GPU_TRACE_MAGIC": TRACE_MAGIC,
    "HMM_GPU_TRACE_VERSION": TRACE_VERSION,
    **{f"HMM_GPU_ENGINE_{e.name}": int(e) for e in Engine},
    **{f"HMM_GPU_TRACE_{k.name}": int(k) for k in Kind},
    **{f"HMM_GPU_DIR_{d.name}": int(d) for d in Dir},
    "HMM_GPU_PT_LEVELS": PT_LEVELS,
    "HMM_GPU_PTE_VALID": PTE_VALID,
    "HMM_GPU_PTE_READ": PTE_READ,
    "HMM_GPU_PTE_WRITE": PTE_WRITE,
    "HMM_GPU_PTE_ATOMIC": PTE_ATOMIC,
    "HMM_GPU_PTE_LEAF": PTE_LEAF,
    "HMM_GPU_PTE_VRAM": PTE_VRAM,
    "HMM_GPU_PTE_ADDR_MASK": PTE_ADDR_MASK,
    "HMM_GPU_PT_SHIFT(0)": pt_shift(0),
    "HMM_GPU_PT_SHIFT(1)": pt_shift(1),
}


# hmm_nic_regs.h's constants, for the ABI test
NIC_C_CONSTANTS: dict[str, int] = {f"HMM_NIC_ENGINE_{e.name}": int(e) for e in NicEngine}


class TraceError(ValueError):
    """The data is not a DMA trace this decoder understands."""


def _enum(cls: type[IntEnum], value: int) -> IntEnum | int:
    try:
        return cls(value)
    except ValueError:
        return value  # unknown value: kept as a plain int and reported


def _name(value: IntEnum | int) -> str:
    return value.name if isinstance(value, IntEnum) else f"?{value}"


@dataclass(frozen=True)
class TraceHeader:
    magic: int
    version: int
    rec_size: int
    devfn: int
    rsvd: int

    @property
    def slot(self) -> int:
        return self.devfn >> 3

    @property
    def function(self) -> int:
        return self.devfn & 7


@dataclass(frozen=True)
class TraceRecord:
    timestamp_ns: int
    addr: int
    len: int
    cmd_id: int
    ctx: int
    engine: IntEnum | int  # Engine or NicEngine, as the trace's device numbers them
    kind: Kind | int
    dir: Dir | int
    result: int  # MemTxResult, 0 = OK
    va: int = 0  # v2: virtual address (DATA of VA jobs, PTW, events)
    aux: int = 0  # v2: PTW: the entry read; EV_TLB_INV: length; EV_CANCEL: token
    level: int = 0  # v2: PTW: table level 3..0

    @property
    def end(self) -> int:
        return self.addr + self.len

    @property
    def ok(self) -> bool:
        return self.result == 0

    @property
    def is_event(self) -> bool:
        return isinstance(self.kind, Kind) and self.kind.is_event

    def describe(self) -> str:
        head = f"{self.timestamp_ns:>14} {_name(self.engine):<5} {_name(self.kind):<11} "
        if self.kind == Kind.EV_TLB_INV:
            span = "all" if self.aux == ALL else f"len=0x{self.aux:x}"
            return head + f"va=0x{self.va:x} {span} cmd={self.cmd_id} ctx={self.ctx}"
        if self.kind == Kind.EV_CLOCK_SYNC:
            return head + f"guest_ns={self.va} seq={self.aux}"
        if self.is_event:
            return head + f"aux=0x{self.aux:x} cmd={self.cmd_id} ctx={self.ctx}"
        text = (head + f"{_name(self.dir):<5} addr=0x{self.addr:x} len={self.len} "
                f"cmd={self.cmd_id} ctx={self.ctx}")
        if self.kind == Kind.PTW:
            text += f" va=0x{self.va:x} L{self.level} pte=0x{self.aux:x}"
        elif self.va:
            text += f" va=0x{self.va:x}"
        return text + ("" if self.ok else f" result={self.result}")

    def to_dict(self) -> dict[str, Any]:
        return {"timestamp_ns": self.timestamp_ns, "engine": _name(self.engine),
                "kind": _name(self.kind), "dir": _name(self.dir), "addr": self.addr,
                "len": self.len, "cmd_id": self.cmd_id, "ctx": self.ctx, "va": self.va,
                "aux": self.aux, "level": self.level, "result": self.result}


# ---- the record layout as a numpy dtype ---------------------------------------------

# The fields the decoder works with, in TraceRecord's order; every trace is read
# into rows of REC_DTYPE (a version-1 trace is widened, its va/aux/level zero).
COLUMNS = ("timestamp_ns", "addr", "len", "cmd_id", "ctx", "engine", "kind", "dir", "result",
           "va", "aux", "level")
_NP_CODE = {"Q": "<u8", "I": "<u4", "H": "<u2", "B": "u1"}


def _layout(fmt: str, fields: Sequence[str]) -> dict[str, tuple[int, str]]:
    """{field: (offset, numpy type)} of a little-endian struct format, byte arrays left out:
    the offsets come from the same format the ABI test checks against the C header."""
    codes = re.findall(r"\d*[a-zA-Z]", fmt[1:])
    out = {}
    for i, name in enumerate(fields):
        if codes[i] in _NP_CODE:
            out[name] = (struct.calcsize(fmt[0] + "".join(codes[:i])), _NP_CODE[codes[i]])
    return out


_V1_FIELDS = ("timestamp_ns", "addr", "len", "cmd_id", "ctx", "engine", "kind", "dir", "result")


def rec_dtype(version: int = TRACE_VERSION, rec_size: int | None = None) -> np.dtype[Any]:
    """The numpy dtype of one record of a trace of this version, ``rec_size`` apart
    (a newer device may append fields we do not read)."""
    fmt, fields = (REC_FORMAT, REC_FIELDS) if version >= 2 else (REC_V1_FORMAT, _V1_FIELDS)
    lay = _layout(fmt, fields)
    names = [c for c in COLUMNS if c in lay]
    return np.dtype({"names": names, "formats": [lay[n][1] for n in names],
                     "offsets": [lay[n][0] for n in names],
                     "itemsize": rec_size or struct.calcsize(fmt)})


REC_DTYPE = rec_dtype()
_REC_DTYPE_V1 = rec_dtype(1)
# records per pass of the streaming checks: bounds their temporaries (a few bytes per
# record each) whatever the trace's size; the mapped file itself is paged in and out
# by the kernel
CHUNK = 1 << 18
# records per block of strided reads (a field of a row is a strided read that loads the
# whole row): 2 MiB of rows, so that a block's reads after its first hit the CPU's cache
_BLOCK = 1 << 15
# threads the checks spread their work over: numpy's loops run without the GIL
WORKERS = min(2, os.cpu_count() or 1)


def _widen(rows: np.ndarray) -> np.ndarray:
    """Version-1 rows as REC_DTYPE rows (a copy; v1 traces are old and small)."""
    out = np.zeros(len(rows), REC_DTYPE)
    for name in rows.dtype.names or ():
        out[name] = rows[name]
    return out


def rows_of(records: Sequence[TraceRecord] | np.ndarray) -> np.ndarray:
    """The rows behind a sequence of records: no copy for a :class:`Records` view or an
    array, else (a list of TraceRecord built by hand) packed into a REC_DTYPE array."""
    if isinstance(records, Records):
        return records.rows
    if isinstance(records, np.ndarray):
        return records
    out = np.zeros(len(records), REC_DTYPE)
    if len(records):
        out[:] = [tuple(int(getattr(r, c)) for c in COLUMNS) for r in records]
    return out


class Records(Sequence[TraceRecord]):
    """A trace's records as a sequence of :class:`TraceRecord`, each built when asked
    for from a row of a numpy structured array (usually a view of a memory-mapped
    file). Slicing gives another view, without copying."""

    def __init__(self, rows: np.ndarray, device: str = GPU) -> None:
        self.rows = rows
        self.device = device
        self._engines = ENGINES[device]

    def __len__(self) -> int:
        return len(self.rows)

    def _make(self, v: Sequence[int]) -> TraceRecord:
        ts, addr, ln, cmd, ctx, eng, kind, dr, res, va, aux, level = v
        return TraceRecord(ts, addr, ln, cmd, ctx, _enum(self._engines, eng), _enum(Kind, kind),
                           _enum(Dir, dr), res, va, aux, level)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Records(self.rows[i], self.device)
        return self._make(self.rows[i].tolist())

    def __iter__(self) -> Iterator[TraceRecord]:
        for lo in range(0, len(self.rows), 4096):  # tolist() per block: C speed
            for v in self.rows[lo:lo + 4096].tolist():
                yield self._make(v)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Trace:
    header: TraceHeader
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, REC_DTYPE))
    truncated_bytes: int = 0  # an incomplete last record (QEMU killed mid-write)
    problems: list[str] = field(default_factory=list)
    device: str = GPU  # which engine names the records carry

    @property
    def records(self) -> Records:
        return Records(self.rows, self.device)

    def data(self) -> list[TraceRecord]:
        return list(Records(self.rows[self.rows["kind"] == Kind.DATA], self.device))


TraceBuffer = bytes | bytearray | memoryview | mmap.mmap


def trace_buffer(path: Path) -> TraceBuffer:
    """The bytes of a trace file, memory-mapped (read-only) so that nothing is read
    before it is used. The one place that knows how a trace is stored."""
    # raw (before the writer compressed) mapped; zstd frames decoded (harness.checks.tracefile)
    return tracefile.trace_buffer(Path(path))


def _header(data: TraceBuffer) -> TraceHeader:
    if len(data) == 0:
        raise TraceError("empty trace: the device wrote no header")
    if len(data) < HDR_SIZE:
        raise TraceError(f"truncated header: {len(data)} of {HDR_SIZE} bytes")
    header = TraceHeader(*HDR.unpack_from(data, 0))
    if header.magic != TRACE_MAGIC:
        raise TraceError(
            f"bad magic 0x{header.magic:016x} (want 0x{TRACE_MAGIC:016x}): not a hmm-gpu trace"
        )
    if header.version not in READ_VERSIONS:
        raise TraceError(f"trace version {header.version}, this decoder reads "
                         f"{', '.join(map(str, READ_VERSIONS))}")
    size = REC_SIZE if header.version >= 2 else REC_V1_SIZE
    if header.rec_size < size:
        raise TraceError(f"record size {header.rec_size} is smaller than {size} "
                         f"(version {header.version})")
    return header


def _check_device(device: str) -> None:
    if device not in ENGINES:
        raise ValueError(f"unknown device {device!r} (known: {', '.join(ENGINES)})")


def decode(data: TraceBuffer, device: str = GPU, limit: int | None = None) -> Trace:
    """Decode a trace stream that ``device`` (a key of :data:`ENGINES`) wrote.

    The records are a numpy view of ``data`` (nothing is copied for version 2).
    Raises :class:`TraceError` if the header is missing or not ours. A
    truncated last record is tolerated and reported in ``truncated_bytes``
    and ``problems``; records with unknown enum values are kept (as ints)
    and reported too. ``limit``: only the first that many records (and no
    check of the rest).
    """
    header = _header(data)
    _check_device(device)
    step = header.rec_size  # a larger size means fields appended we do not read
    body = len(data) - HDR_SIZE
    whole = body // step
    count = whole if limit is None else min(whole, limit)
    rows = np.frombuffer(data, rec_dtype(header.version, step), count, HDR_SIZE)
    if header.version < 2:
        rows = _widen(rows)
    trace = Trace(header, rows, device=device)
    trace.problems.extend(_enum_problems(rows, device))
    rest = body - whole * step
    if rest and limit is None:
        trace.truncated_bytes = rest
        trace.problems.append(
            f"truncated last record: {rest} of {step} bytes after record {whole - 1}"
        )
    return trace


def _enum_problems(rows: np.ndarray, device: str, base: int = 0) -> list[str]:
    known = {"engine": _known(ENGINES[device]), "kind": _known(Kind), "dir": _known(Dir)}
    out: list[str] = []
    for lo in range(0, len(rows), _BLOCK):  # a block's reads after its first hit the cache
        chunk = rows[lo:lo + _BLOCK]
        bad = {f: ~ok[chunk[f]] for f, ok in known.items()}
        for i in np.flatnonzero(bad["engine"] | bad["kind"] | bad["dir"]).tolist():
            for f in ("engine", "kind", "dir"):
                if bad[f][i]:
                    out.append(f"record {base + lo + i}: unknown {f} {int(chunk[f][i])}")
    return out


def _table(values: Iterable[int]) -> np.ndarray:
    """A lookup table: byte value -> is one of ``values``."""
    table = np.zeros(256, bool)
    table[[int(v) for v in values]] = True
    return table


_EVENT = _table(k for k in Kind if k.is_event)


def _known(cls: type[IntEnum]) -> np.ndarray:
    """A lookup table: byte value -> is a member of the enum."""
    table = np.zeros(256, bool)
    table[[int(m) for m in cls]] = True
    return table


def read_trace(path: Path, device: str | None = None, limit: int | None = None) -> Trace:
    """Decode a trace file; ``device`` defaults to what its name says (:func:`device_of`)."""
    return decode(trace_buffer(path), device or device_of(path), limit)


def read_kinds(path: Path, kinds: Iterable[Kind], device: str | None = None) -> list[TraceRecord]:
    """Only the records of these kinds, in order, from a trace file: a fault or event
    scan over a multi-GiB trace that builds no object for the rest. Header errors as
    :func:`decode`; a truncated last record is left out."""
    trace = read_trace(path, device)
    want = np.zeros(256, bool)
    want[[int(k) for k in kinds]] = True
    picked = [trace.rows[lo:lo + CHUNK][want[trace.rows["kind"][lo:lo + CHUNK]]]
              for lo in range(0, len(trace.rows), CHUNK)]
    rows = np.concatenate(picked) if picked else trace.rows[:0]
    return list(Records(rows, trace.device))


# ---- summary -------------------------------------------------------------------

@dataclass
class TraceSummary:
    records: int
    commands: int
    bytes_by: dict[str, int]  # "DATA/READ" -> bytes
    count_by: dict[str, int]
    errors: int
    first_ns: int | None
    last_ns: int | None
    problems: list[str]
    by_engine: dict[str, int] = field(default_factory=dict)  # "MMU" -> records

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "commands": self.commands, "bytes": self.bytes_by,
            "counts": self.count_by, "errors": self.errors, "first_ns": self.first_ns,
            "last_ns": self.last_ns, "problems": self.problems, "engines": self.by_engine,
        }

    def format(self) -> str:
        lines = [f"{self.records} records, {self.commands} commands, {self.errors} DMA errors"]
        if self.first_ns is not None and self.last_ns is not None:
            lines.append(f"span {(self.last_ns - self.first_ns) / 1e6:.3f} ms (virtual clock)")
        for key in sorted(self.count_by):
            n, b = self.count_by[key], self.bytes_by[key]
            lines.append(f"  {key:<16} {n:>8} records {b:>12} bytes")
        if self.by_engine:
            lines.append("engines: " + ", ".join(f"{k} {n}" for k, n in self.by_engine.items()))
        lines.extend(f"problem: {p}" for p in self.problems)
        return "\n".join(lines)


@dataclass
class _Tally:
    """summarize's counts over a range of records; tallies of ranges add up."""

    # per kind | dir << 8 (the two bytes side by side in a record): records and bytes
    counts: np.ndarray = field(default_factory=lambda: np.zeros(1 << 16, np.int64))
    nbytes: dict[int, int] = field(default_factory=dict)
    per_engine: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    engine_first: dict[int, int] = field(default_factory=dict)  # engine -> first record
    cmds: set[int] = field(default_factory=set)
    errors: int = 0
    first: int | None = None
    last: int | None = None

    def add(self, o: _Tally) -> None:
        self.counts += o.counts
        for k, v in o.nbytes.items():
            self.nbytes[k] = self.nbytes.get(k, 0) + v
        self.per_engine += o.per_engine
        for e, i in o.engine_first.items():
            self.engine_first[e] = min(i, self.engine_first.get(e, i))
        self.cmds |= o.cmds
        self.errors += o.errors
        if o.first is not None:
            self.first = o.first if self.first is None else min(self.first, o.first)
        if o.last is not None:
            self.last = o.last if self.last is None else max(self.last, o.last)


# a record's 64-bit words: where each field is (word, bit shift), from REC_DTYPE
_REC_FIELDS: Mapping[str, Any] = REC_DTYPE.fields or {}
_WORD = {name: (_REC_FIELDS[name][1] // 8, _REC_FIELDS[name][1] % 8 * 8) for name in COLUMNS}
assert _WORD["dir"] == (_WORD["kind"][0], _WORD["kind"][1] + 8), "kind, dir side by side"
assert all(_WORD[f][0] == _WORD["kind"][0] for f in ("engine", "result"))


def _words(c: np.ndarray) -> np.ndarray:
    """Records as rows of 64-bit words (a view; a copy in REC_DTYPE's layout for rows
    that are not contiguous or whose size is not a multiple of 8)."""
    if c.dtype.itemsize % 8 or c.dtype.fields != REC_DTYPE.fields or (
            len(c) > 1 and c.strides[0] != c.dtype.itemsize):
        packed = np.zeros(len(c), REC_DTYPE)
        for name in COLUMNS:
            packed[name] = c[name]
        c = packed
    return c.view(np.uint64).reshape(len(c), c.dtype.itemsize // 8)


def _field(w6: np.ndarray, name: str, bits: int = 8) -> np.ndarray:
    return (w6 >> np.uint64(_WORD[name][1])) & np.uint64((1 << bits) - 1)


def _tally(rows: np.ndarray, lo: int, hi: int) -> _Tally:
    """Per chunk bincounts of kind | dir << 8 and of the engines, from each block's
    word of kind, dir, engine and result read once (in the CPU's cache); Python sees
    only the few values present."""
    t = _Tally()
    kw, ts_w, len_w, cmd_w = (_WORD[f][0] for f in ("kind", "timestamp_ns", "len", "cmd_id"))
    for clo in range(lo, hi, CHUNK):
        w = _words(rows[clo:min(clo + CHUNK, hi)])
        key = np.empty(len(w), np.uint16)
        ln = np.empty(len(w), np.uint64)
        data_cmds: list[np.ndarray] = []
        for blo in range(0, len(w), _BLOCK):
            b = w[blo:blo + _BLOCK]
            w6 = np.ascontiguousarray(b[:, kw])
            k2 = _field(w6, "kind", 16)
            key[blo:blo + len(b)] = k2
            ln[blo:blo + len(b)] = b[:, len_w]
            eng = _field(w6, "engine")
            e_counts = np.bincount(eng.astype(np.intp), minlength=256)
            for e in np.flatnonzero(e_counts).tolist():
                if e not in t.engine_first:
                    t.engine_first[e] = clo + blo + int(np.argmax(eng == e))
            t.per_engine += e_counts
            cmd = b[:, cmd_w][(k2 & np.uint64(0xFF)) == Kind.DATA]
            if len(cmd):  # a command's records come together: runs first
                data_cmds.append(cmd[np.r_[True, cmd[1:] != cmd[:-1]]])
            t.errors += int(np.count_nonzero(_field(w6, "result")))
            ts = b[:, ts_w]
            if len(ts):
                lo_ts, hi_ts = int(ts.min()), int(ts.max())
                t.first = lo_ts if t.first is None else min(t.first, lo_ts)
                t.last = hi_ts if t.last is None else max(t.last, hi_ts)
        counts = np.bincount(key, minlength=1 << 16)
        t.counts += counts
        # per-key byte sums in float64 are exact: a chunk's 32-bit halves add up to < 2**53
        low = np.bincount(key, ln & np.uint64(0xFFFFFFFF), 1 << 16)
        up = ln >> np.uint64(32)
        high = np.bincount(key, up, 1 << 16) if up.any() else low * 0
        for k in np.flatnonzero(counts).tolist():
            t.nbytes[k] = t.nbytes.get(k, 0) + int(low[k]) + (int(high[k]) << 32)
        if data_cmds:
            t.cmds.update(np.unique(np.concatenate(data_cmds)).tolist())
    return t


def _parts(n: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of whole chunks, one per worker thread (numpy's loops run
    without the GIL: the threads share the CPUs)."""
    chunks = -(-n // CHUNK)
    per = -(-chunks // max(1, min(WORKERS, chunks)))
    return [(lo, min(lo + per * CHUNK, n)) for lo in range(0, n, per * CHUNK)] or [(0, 0)]


def summarize(trace: Trace) -> TraceSummary:
    """Counts and bytes by kind (and direction), per engine: ranges of the records
    tallied on :data:`WORKERS` threads, then added up."""
    rows = trace.rows
    parts = _parts(len(rows))
    if len(parts) == 1:
        tallies = [_tally(rows, *parts[0])]
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            tallies = list(pool.map(lambda p: _tally(rows, *p), parts))
    t = tallies[0]
    for other in tallies[1:]:
        t.add(other)
    return _summary(t, len(rows), trace.device, trace.problems)


def _summary(t: _Tally, records: int, device: str, problems: list[str]) -> TraceSummary:
    engines = ENGINES[device]
    bytes_by: dict[str, int] = {}
    count_by: dict[str, int] = {}
    for k, nbytes in sorted(t.nbytes.items()):
        kind = _enum(Kind, k & 0xFF)
        # an event's direction is not told: events are counted by kind alone
        event = isinstance(kind, Kind) and kind.is_event
        name = _name(kind) if event else f"{_name(kind)}/{_name(_enum(Dir, k >> 8))}"
        count_by[name] = count_by.get(name, 0) + int(t.counts[k])
        bytes_by[name] = bytes_by.get(name, 0) + nbytes
    by_engine = {_name(_enum(engines, e)): int(t.per_engine[e])
                 for e in sorted(t.engine_first, key=t.engine_first.__getitem__)}
    return TraceSummary(
        records=records, commands=len(t.cmds), bytes_by=bytes_by, count_by=count_by,
        errors=t.errors, first_ns=t.first, last_ns=t.last, problems=list(problems),
        by_engine=by_engine,
    )


# ---- checking DMA against the workload's mappings ----------------------------------

@dataclass(frozen=True)
class MapRange:
    role: str  # "src" | "dst"
    dma: int
    len: int
    uaddr: int = 0

    @property
    def end(self) -> int:
        return self.dma + self.len


def _int(v: Any) -> int:
    return int(v, 0) if isinstance(v, str) else int(v)


def parse_maps(maps: Iterable[Mapping[str, Any]]) -> list[MapRange]:
    """The workload's reported maps ``[{role, uaddr, dma, len}]`` (hex strings or ints)."""
    return [
        MapRange(role=str(m["role"]), dma=_int(m["dma"]), len=_int(m["len"]),
                 uaddr=_int(m.get("uaddr", 0)))
        for m in maps
    ]


def _merged(ranges: Iterable[MapRange]) -> list[tuple[int, int]]:
    spans = sorted((m.dma, m.end) for m in ranges)
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _covered(spans: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in spans)


@dataclass(frozen=True)
class Expectation:
    """One workload request: what the device must have moved, and where."""

    name: str
    length: int
    maps: tuple[MapRange, ...]
    ncmds: int | None = None  # commands it took, to find its records in the trace
    ctx: int | None = None  # device context id stamped on its commands

    @property
    def is_copy(self) -> bool:
        return any(m.role == "src" for m in self.maps)


def expectation_from_result(obj: Mapping[str, Any]) -> Expectation:
    """From one line of the smoke workload's JSON output."""
    ncmds, ctx = obj.get("ncmds"), obj.get("ctx")
    return Expectation(
        name=str(obj.get("test", "?")),
        length=_int(obj.get("len", 0)),
        maps=tuple(parse_maps(obj.get("maps", []))),
        ncmds=_int(ncmds) if ncmds is not None else None,
        ctx=_int(ctx) if ctx is not None else None,
    )


def _spans_arrays(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([min(a, ALL) for a, _ in spans], np.uint64)
    hi = np.array([min(b, ALL) for _, b in spans], np.uint64)
    return lo, hi


def _covered_rows(spans: list[tuple[int, int]], addr: np.ndarray, length: np.ndarray
                  ) -> np.ndarray:
    """Vectorised :func:`_covered` over merged (sorted, disjoint) spans."""
    if not spans or not len(addr):
        return np.zeros(len(addr), bool)
    lo, hi = _spans_arrays(spans)
    end = addr + length  # wraps past 2**64: such a DMA is outside every map
    j = np.searchsorted(lo, addr, side="right") - 1
    jj = np.maximum(j, 0)
    return (j >= 0) & (end <= hi[jj]) & (end >= addr)


def check_records(exp: Expectation, records: Sequence[TraceRecord] | np.ndarray) -> list[str]:
    """Problems with one request's DATA records (empty list: all good).

    Device READs must lie within the src maps and WRITEs within the dst maps
    (a FILL has only dst maps, so it must not read data at all), every DMA
    must have succeeded, and the bytes read (COPY) and written must equal the
    requested length.
    """
    rows = rows_of(records)
    rows = rows[rows["kind"] == Kind.DATA]
    src = _merged(m for m in exp.maps if m.role == "src")
    dst = _merged(m for m in exp.maps if m.role == "dst")
    addr, length, dr = rows["addr"], rows["len"], rows["dir"]
    is_r, is_w = dr == Dir.READ, dr == Dir.WRITE
    read = int(length[is_r].sum(dtype=np.uint64))
    written = int(length[is_w].sum(dtype=np.uint64))
    failed = rows["result"] != 0
    bad_r = is_r & (~_covered_rows(src, addr, length) if exp.is_copy else True)
    bad_w = is_w & ~_covered_rows(dst, addr, length)
    problems: list[str] = []
    # only the bad records become objects, so the messages come out in record order
    for i in np.flatnonzero(failed | bad_r | bad_w | ~(is_r | is_w)).tolist():
        r = Records(rows[i:i + 1])[0]
        where = f"{exp.name}: DATA {_name(r.dir)} 0x{r.addr:x}+{r.len} (cmd {r.cmd_id})"
        if not r.ok:
            problems.append(f"{where} failed with MemTxResult {r.result}")
        if is_r[i]:
            if not exp.is_copy:
                problems.append(f"{where}: a fill must not read data")
            elif bad_r[i]:
                problems.append(f"{where} is outside every src mapping")
        elif is_w[i]:
            if bad_w[i]:
                problems.append(f"{where} is outside every dst mapping")
        else:
            problems.append(f"{where}: unknown direction")
    if exp.is_copy and read != exp.length:
        problems.append(f"{exp.name}: device read {read} bytes, request was {exp.length}")
    if written != exp.length:
        problems.append(f"{exp.name}: device wrote {written} bytes, request was {exp.length}")
    return problems


def _first_mmu_activity(rows: np.ndarray) -> int:
    """Index of the first record of the device's MMU work (a walk, an event, a DMA of a
    VA job), or len(rows). A clock sync is no work of the device's: the driver writes
    one at probe and the harness around every scenario."""
    plain = _table((Kind.CMD_FETCH, Kind.CPL_WRITE, Kind.DATA, Kind.EV_CLOCK_SYNC))
    for lo in range(0, len(rows), CHUNK):
        c = rows[lo:lo + CHUNK]
        sync = c["kind"] == Kind.EV_CLOCK_SYNC
        hit = (((c["va"] != 0) | (c["engine"] == Engine.MMU)) & ~sync) | ~plain[c["kind"]]
        if hit.any():
            return lo + int(hit.argmax())
    return len(rows)


def _xfer_mask(c: np.ndarray, ctxs: np.ndarray | None) -> np.ndarray:
    # XFER jobs are the copy engine's bus-address (va 0) DMA; MIGRATE's is
    # also va 0 but on the MIGRATE engine
    m = (c["kind"] == Kind.DATA) & (c["va"] == 0) & (c["engine"] == Engine.COPY)
    return m if ctxs is None else m & np.isin(c["ctx"], ctxs)


def check_trace(expectations: Sequence[Expectation], trace: Trace,
                only_first: bool = False) -> list[str]:
    """Match the trace's DATA records to the workload's requests, in order.

    Requests that report their context id (``ctx``) are matched only against
    records of those contexts. When every request reports how many commands
    it took (``ncmds``), DATA
    records are grouped by command id in order of appearance and each request
    takes its share. Otherwise all requests are checked together: every DMA
    within some mapping of its role, total bytes equal to the requests'.

    ``only_first``: the device did more work after these requests (later
    scenarios using the MMU), so only the records before the first MMU
    activity (a walk, an event, a DMA of a VA job) are the workload's.
    """
    problems = [f"trace: {p}" for p in trace.problems if not p.startswith("truncated")]
    rows = trace.rows
    if only_first:
        rows = rows[:_first_mmu_activity(rows)]
    ctxs = None
    if expectations and all(e.ctx is not None for e in expectations):
        # Only the workload's own contexts (the driver may DMA for itself too).
        ctxs = np.array(sorted({e.ctx or 0 for e in expectations}), np.uint64)
    # indices of the XFER DATA records and of the completions, chunk by chunk
    data_idx, cpl_idx = [], []
    for lo in range(0, len(rows), CHUNK):
        c = rows[lo:lo + CHUNK]
        data_idx.append(np.flatnonzero(_xfer_mask(c, ctxs)) + lo)
        cpl = c["kind"] == Kind.CPL_WRITE
        if ctxs is not None:
            cpl &= np.isin(c["ctx"], ctxs)
        cpl_idx.append(np.flatnonzero(cpl) + lo)
    didx = np.concatenate(data_idx) if data_idx else np.zeros(0, np.int64)
    data = rows[didx]
    if not (expectations and all(e.ncmds is not None for e in expectations)):
        return problems + _check_pooled(expectations, data)
    # A command's DATA records run from its first one to its completion
    # (CPL_WRITE with its id); jobs may interleave (the engine works in
    # chunks) and ids may repeat once a command has completed.
    cidx = np.concatenate(cpl_idx) if cpl_idx else np.zeros(0, np.int64)
    ev = np.concatenate([didx, cidx])
    is_data = np.concatenate([np.ones(len(didx), bool), np.zeros(len(cidx), bool)])
    order = np.lexsort((ev, rows["cmd_id"][ev]))  # by command, then in trace order
    ev, is_data, cmd = ev[order], is_data[order], rows["cmd_id"][ev[order]]
    same_cmd = np.r_[False, cmd[1:] == cmd[:-1]]
    after_cpl = np.r_[False, ~is_data[:-1]]
    opens = is_data & ~(same_cmd & ~after_cpl)  # a DATA record opening a new group
    group = np.cumsum(opens) - 1
    ngroups = int(opens.sum())
    # groups numbered in order of their first record, as the requests come
    rank = np.empty(ngroups, np.int64)
    rank[np.argsort(ev[opens], kind="stable")] = np.arange(ngroups)
    d_rank, d_idx = rank[group[is_data]], ev[is_data]
    by_group = np.lexsort((d_idx, d_rank))
    d_rank, d_idx = d_rank[by_group], d_idx[by_group]
    want = sum(e.ncmds or 0 for e in expectations)
    if ngroups != want:
        problems.append(
            f"trace has DATA records for {ngroups} commands, the workload reported {want}"
        )
        return problems + _check_pooled(expectations, data)
    i = 0
    for exp in expectations:
        n = exp.ncmds or 0
        a, b = np.searchsorted(d_rank, [i, i + n])
        i += n
        problems.extend(check_records(exp, rows[d_idx[a:b]]))
    return problems


def _check_pooled(expectations: Sequence[Expectation],
                  data: Sequence[TraceRecord] | np.ndarray) -> list[str]:
    rows = rows_of(data)
    pooled = Expectation(
        name="all requests",
        length=0,
        maps=tuple(m for e in expectations for m in e.maps),
    )
    problems = []
    for p in check_records(pooled, rows):
        if "bytes, request was" not in p:  # totals checked below
            problems.append(p)
    want_w = sum(e.length for e in expectations)
    want_r = sum(e.length for e in expectations if e.is_copy)
    got_w = int(rows["len"][rows["dir"] == Dir.WRITE].sum(dtype=np.uint64))
    got_r = int(rows["len"][rows["dir"] == Dir.READ].sum(dtype=np.uint64))
    if got_r != want_r:
        problems.append(f"device read {got_r} bytes in all, the requests add up to {want_r}")
    if got_w != want_w:
        problems.append(f"device wrote {got_w} bytes in all, the requests add up to {want_w}")
    return problems


# ---- checking VA jobs against TLB invalidations ----------------------------------

@dataclass(frozen=True)
class Translation:
    """A leaf the device MMU read: [va, va + size) -> [pa, pa + size)."""

    va: int
    size: int
    pa: int
    index: int  # record index of the PTW that read it
    vram: bool = False  # pa is a VRAM offset (PTE_VRAM), not a bus address


@dataclass
class InvalidateCheck:
    """Outcome of :func:`check_invalidations` over one trace."""

    data_checked: int = 0  # VA DATA records checked
    pages_checked: int = 0
    walks: int = 0  # leaf PTW records (valid or not)
    invalidations: int = 0  # EV_TLB_INV events
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0  # problems found (only the first ``limit`` are listed)

    def to_dict(self) -> dict[str, Any]:
        return {"data_checked": self.data_checked, "pages_checked": self.pages_checked,
                "walks": self.walks, "invalidations": self.invalidations,
                "problem_count": self.problem_count}

    def format(self) -> str:
        lines = [f"{self.data_checked} VA DATA records ({self.pages_checked} pages) checked "
                 f"against {self.walks} leaf walks and {self.invalidations} TLB invalidations"]
        lines.extend(self.problems)
        if self.problem_count > len(self.problems):
            lines.append(f"... {self.problem_count - len(self.problems)} more problems")
        return "\n".join(lines)


# ---- the audits' vectorised machinery ------------------------------------------------

# column positions in a row tuple (COLUMNS' order), for the messages
_TS, _ADDR, _LEN, _CMD, _CTX, _ENG, _KIND, _DIR, _RES, _VA, _AUX, _LEVEL = range(len(COLUMNS))
_DATA_OR_VRAM = _table((Kind.DATA, Kind.VRAM))
_U0 = np.uint64(0)
_PAGE_OFF = np.uint64((1 << PAGE_SHIFT) - 1)


def _bits(n: int) -> int:
    return int(n).bit_length()


def _packed(ctx: np.ndarray, key: np.ndarray, room: int) -> np.ndarray:
    """One uint64 per (ctx, key) pair, equal exactly where the pairs are, in at most
    ``64 - room`` bits (the low ``room`` bits of a word are left for a position). The
    pair is packed as it is when it fits (context ids and page numbers are small in
    practice), else renumbered densely (np.unique)."""
    ctx = ctx.astype(np.uint64, copy=False)
    key = key.astype(np.uint64, copy=False)
    if not len(key):
        return key
    cb, kb = _bits(int(ctx.max())), _bits(int(key.max()))
    if cb + kb > 64 - room:
        key = np.unique(key, return_inverse=True)[1].astype(np.uint64).reshape(-1)
        kb = _bits(len(key))
    out = (ctx << np.uint64(kb)) | key
    if cb + kb > 64 - room:
        out = np.unique(out, return_inverse=True)[1].astype(np.uint64).reshape(-1)
    return out


@dataclass
class _Near:
    """What :func:`_neighbours` found: per asked element the latest event of its key
    before it and (if asked for) the first after it, -1 for none; and the sort
    itself (per sorted position: the element, its packed key, whether an event)."""

    prev: np.ndarray
    next: np.ndarray | None
    at: np.ndarray
    key: np.ndarray
    event: np.ndarray


def _neighbours(ctx: np.ndarray, key: np.ndarray, event: np.ndarray, asks: np.ndarray,
                after: bool = False) -> _Near:
    """For elements laid out in time order, each with a (ctx, key) and a flag ``event``:
    at each element of ``asks`` (indices), the index of the latest event of the same
    (ctx, key) before it (-1: none) and, with ``after``, of the first event after it.

    What a per-key state machine walked in order would have at that element, as one
    sort of packed (key, position) words and a running maximum (minimum) over them."""
    n = len(key)
    eb = _bits(n)
    low = np.uint64((1 << eb) - 1)
    packed = _packed(ctx, key, eb)
    if n and int(packed.max()) < 1 << 16:
        # few keys (a VRAM's pages): a stable radix argsort of 16-bit keys keeps each
        # key's elements in time order, several times faster than sorting the words
        at = np.argsort(packed.astype(np.uint16), kind="stable")
        v = (packed[at] << np.uint64(eb)) | (at.astype(np.uint64) + np.uint64(1))
    else:
        v = (packed << np.uint64(eb)) | np.arange(1, n + 1, dtype=np.uint64)
        v.sort()
        at = (v & low).astype(np.int64) - 1  # the element each sorted word stands for
    ev = event[at]
    high = v >> np.uint64(eb)
    last = np.maximum.accumulate(np.where(ev, v, _U0))
    prev = np.where((last != 0) & ((last >> np.uint64(eb)) == high),
                    (last & low).astype(np.int64) - 1, -1)
    out = np.empty(n, np.int64)
    out[at] = prev
    nxt = None
    if after:
        first = np.minimum.accumulate(np.where(ev, v, np.uint64(ALL))[::-1])[::-1]
        following = np.where((first != ALL) & ((first >> np.uint64(eb)) == high),
                             (first & low).astype(np.int64) - 1, -1)
        nxt = np.empty(n, np.int64)
        nxt[at] = following
        nxt = nxt[asks]
    return _Near(out[asks], nxt, at, high, ev)


def _run_edges(key: np.ndarray, last: bool) -> np.ndarray:
    """Where each run of equal values in ``key`` ends (``last``) or starts."""
    if not len(key):
        return np.zeros(0, bool)
    change = key[1:] != key[:-1]
    return np.r_[change, True] if last else np.r_[True, change]


def _gather(col: np.ndarray, idx: np.ndarray, fill: Any) -> np.ndarray:
    """``col[idx]``, ``fill`` where idx is -1 (or ``col`` empty)."""
    if not len(col):
        return np.full(len(idx), fill, col.dtype)
    return np.where(idx >= 0, col[idx], fill)


def _spread(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items with ``counts`` elements each, laid out one item after the other:
    the item of each element and its position within the item."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


# What a selected record is to the stale-translation audit
_USE, _SET4K, _SET2M, _CLEAR, _INV = range(5)


@dataclass
class _Tlb:
    """One table of the simulated device MMU between chunks of the trace: the live
    translations, one per (ctx, key), key = va >> ``shift``."""

    shift: int
    ctx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    rec: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the PTW's index
    base: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # its va
    pa: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    vram: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def take(self, j: np.ndarray) -> _Tlb:
        return _Tlb(self.shift, self.ctx[j], self.key[j], self.rec[j], self.base[j],
                    self.pa[j], self.vram[j])


@dataclass
class _Chunk:
    """The records of one chunk the stale-translation audit selected, as columns."""

    rec: np.ndarray  # record index in the trace
    cat: np.ndarray  # _USE, _SET4K, ...
    ctx: np.ndarray  # uint64
    va: np.ndarray
    aux: np.ndarray
    first: np.ndarray  # a use's first 4 KiB page (va >> 12)
    ask: np.ndarray  # how many pages of it to look up (0: it is a READ_VA's partner)


def _lookup(tlb: _Tlb, ch: _Chunk, set_cat: int) -> tuple[_Tlb, np.ndarray, _Tlb]:
    """Run one table of the MMU over a chunk: walks of ``set_cat`` put translations in,
    non-present walks and TLB invalidations take them out. Returns the table the
    chunk's uses saw (the carried entries, then the chunk's walks), for each page of
    each use (in order) the index in it of the live translation of that page (-1:
    none), and the table at the chunk's end."""
    shift = np.uint64(tlb.shift)
    mine = np.flatnonzero(ch.cat == set_cat)
    size = np.uint64(1 << tlb.shift)
    aux = ch.aux[mine]
    pa = aux & np.uint64(PTE_ADDR_MASK) & ~(size - np.uint64(1))
    seen = _Tlb(tlb.shift, np.concatenate([tlb.ctx, ch.ctx[mine]]),
                np.concatenate([tlb.key, ch.va[mine] >> shift]),
                np.concatenate([tlb.rec, ch.rec[mine]]),
                np.concatenate([tlb.base, ch.va[mine] & ~(size - np.uint64(1))]),
                np.concatenate([tlb.pa, pa]),
                np.concatenate([tlb.vram, (aux & np.uint64(PTE_VRAM)) != 0]))
    is_use = ch.cat == _USE
    nq = int(ch.ask.sum())
    carried = len(tlb.key)
    if not len(seen.key):  # nothing was ever mapped here: every page misses
        return seen, np.full(nq, -1, np.int64), tlb
    # the (ctx, key)s that ever held a translation, sorted: what an invalidation can drop
    order = np.lexsort((seen.key, seen.ctx))
    k_ctx, k_key = seen.ctx[order], seen.key[order]
    uniq = np.r_[True, (k_ctx[1:] != k_ctx[:-1]) | (k_key[1:] != k_key[:-1])]
    k_ctx, k_key = k_ctx[uniq], k_key[uniq]
    # each invalidation becomes one "drop" per such key in its range (all of its ctx's
    # for a whole-context one)
    inv = np.flatnonzero(ch.cat == _INV)
    i_ctx, i_va, i_len = ch.ctx[inv], ch.va[inv], ch.aux[inv]
    a = np.searchsorted(k_ctx, i_ctx, "left")
    b = np.searchsorted(k_ctx, i_ctx, "right")
    whole = (i_len == np.uint64(ALL)) | (i_len > np.uint64(ALL) - i_va)
    ranged = ~whole & (i_len != 0)
    b[~whole & ~ranged] = a[~whole & ~ranged]
    if ranged.any():
        lo_k = i_va >> shift
        hi_k = (i_va + i_len - np.uint64(1)) >> shift
        for c in np.unique(i_ctx[ranged]).tolist():
            m = ranged & (i_ctx == c)
            s, e = int(a[m][0]), int(b[m][0])
            a[m], b[m] = (s + np.searchsorted(k_key[s:e], lo_k[m], "left"),
                          s + np.searchsorted(k_key[s:e], hi_k[m], "right"))
    drops = np.zeros(len(ch.cat), np.int64)
    drops[inv] = b - a
    start = np.zeros(len(ch.cat), np.int64)
    start[inv] = a
    # the chunk's elements, in trace order: a walk is one (put or drop), an
    # invalidation its drops, a use one question per page
    counts = np.where(ch.cat == set_cat, 1, 0) + (ch.cat == _CLEAR) + drops
    counts[is_use] = ch.ask[is_use]
    owner, within = _spread(counts)
    cat = ch.cat[owner]
    key = np.empty(len(owner), np.uint64)
    m = (cat == set_cat) | (cat == _CLEAR)
    key[m] = ch.va[owner[m]] >> shift
    m = cat == _INV
    key[m] = k_key[start[owner[m]] + within[m]]
    m = cat == _USE
    q_at = np.flatnonzero(m)
    key[m] = (ch.first[owner[m]] + within[m].astype(np.uint64)) >> (shift - np.uint64(PAGE_SHIFT))
    # carried entries first, the questions of the chunk's end last
    n_el = carried + len(owner)
    ctx = np.concatenate([tlb.ctx, ch.ctx[owner], k_ctx])
    keys = np.concatenate([tlb.key, key, k_key])
    event = np.concatenate([np.ones(carried, bool), cat != _USE, np.zeros(len(k_key), bool)])
    # element -> its entry in ``seen`` (puts only)
    entry = np.full(len(keys) + 1, -1, np.int64)
    entry[:carried] = np.arange(carried)
    entry[carried + np.flatnonzero(cat == set_cat)] = np.arange(carried, len(seen.key))
    asks = np.concatenate([carried + q_at, n_el + np.arange(len(k_key))])
    # a question about a (ctx, key) that no walk ever put in has no answer: left out
    # of the sort when the keys that had one are few (the 2 MiB table: a VA job's
    # pages are asked there too)
    asked = _had_entry(k_ctx, k_key, ctx[carried + q_at], key[q_at]) if len(k_key) < (
        len(q_at) >> 4) else None
    if asked is not None and not asked.all():
        keep = np.ones(len(keys), bool)
        keep[carried + q_at[~asked]] = False
        at = np.flatnonzero(keep)  # the elements left, still in time order
        where = np.full(len(keys), -1, np.int64)
        where[at] = np.arange(len(at))
        near = _neighbours(ctx[at], keys[at], event[at], where[asks[np.r_[asked, np.ones(
            len(k_key), bool)]]])
        prev = np.full(len(asks), -1, np.int64)
        found = np.where(near.prev >= 0, at[near.prev], -1)
        prev[np.r_[asked, np.ones(len(k_key), bool)]] = found
    else:
        prev = _neighbours(ctx, keys, event, asks).prev
    live = entry[prev]  # prev -1 reads the sentinel
    at_end = live[nq:]
    return seen, live[:nq], seen.take(at_end[at_end >= 0])


def _had_entry(k_ctx: np.ndarray, k_key: np.ndarray, ctx: np.ndarray, key: np.ndarray
               ) -> np.ndarray | None:
    """Whether each (ctx, key) is one of the sorted, distinct (k_ctx, k_key); None when
    the pairs do not pack into a word (then nobody is left out)."""
    cb = _bits(int(max(k_ctx.max(), ctx.max(initial=0))))
    kb = _bits(int(max(k_key.max(), key.max(initial=0))))
    if cb + kb > 64:
        return None
    packed = (k_ctx << np.uint64(kb)) | k_key  # sorted: (ctx, key) order
    q = (ctx << np.uint64(kb)) | key
    i = np.minimum(np.searchsorted(packed, q), len(packed) - 1)
    return packed[i] == q


_Pick = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def _columns(c: np.ndarray, kinds: np.ndarray, specs: Sequence[tuple[_Pick, Sequence[str]]]
             ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per (pick, fields) of ``specs``: the records of ``c`` it selects (their indices
    in ``c``) and those fields of them, each a contiguous array. A block of rows at a
    time (a field of a row is a strided read that loads the whole row; the block's
    later reads come from the CPU's cache): the records whose kind ``kinds`` (a lookup
    table) names are gathered once, and the picks look at those alone."""
    wanted = sorted({f for _, fs in specs for f in fs} | _PICK_FIELDS)
    out: list[tuple[list[np.ndarray], dict[str, list[np.ndarray]]]] = [
        ([], {f: [] for f in fs}) for _, fs in specs]
    for lo in range(0, len(c), _BLOCK):
        b = c[lo:lo + _BLOCK]
        cand = np.flatnonzero(kinds[b["kind"]])
        got = {f: b[f][cand] for f in wanted}
        for (pick, fields), (idx, cols) in zip(specs, out, strict=True):
            m = pick(got)
            idx.append(cand[m] + lo)
            for f in fields:
                cols[f].append(got[f][m])
    return [(np.concatenate(idx) if idx else np.zeros(0, np.int64),
             {f: np.concatenate(v) if v else np.zeros(0, _REC_FIELDS[f][0])
              for f, v in cols.items()}) for idx, cols in out]


# what the picks look at
_PICK_FIELDS = {"kind", "aux", "level", "result", "va", "engine", "dir"}


def _pick_invalidation_audit(b: Mapping[str, np.ndarray]) -> np.ndarray:
    kind, aux, level = b["kind"], b["aux"], b["level"]
    leafy = (((aux & np.uint64(PTE_VALID)) == 0) | (level == 0)
             | ((level == 1) & ((aux & np.uint64(PTE_LEAF)) != 0)))
    return (((kind == Kind.PTW) & (b["result"] == 0) & leafy) | (kind == Kind.EV_TLB_INV)
            | (_DATA_OR_VRAM[kind] & (b["va"] != 0)))


_AUDIT_FIELDS = ("kind", "ctx", "va", "aux", "level", "addr", "len", "dir", "cmd_id")
_VRAM_FIELDS = ("kind", "dir", "aux", "level", "addr", "len")


# ---- a trace file streamed through the checks ---------------------------------------

# decoded pieces (a frame each: 1 Ki records) kept ready ahead of the checks
AHEAD = 64


def _ahead(pieces: Iterator[bytes], pool: ThreadPoolExecutor, depth: int) -> Iterator[bytes]:
    """``pieces`` produced up to ``depth`` ahead on ``pool``'s (one) thread: zstd
    decompresses without the GIL, alongside the checks."""
    queue = deque(pool.submit(next, pieces, None) for _ in range(depth))
    while (piece := queue.popleft().result()) is not None:
        queue.append(pool.submit(next, pieces, None))
        yield piece


class _Stream:
    """A version-2 trace file's rows, read forward for the checks that go through them
    once in order (:func:`check_file`): a window holding the rows of the last slice
    asked for, decoded frame by frame; the rows before a slice's start are let go, so
    the decoded trace is never whole in memory. Every row is tallied for the summary
    (on ``pool``'s thread) when it enters the window. A row before the window (the
    VRAM audit's messages name earlier records) is decoded again from its frame."""

    def __init__(self, path: Path, header: TraceHeader, index: tracefile.TraceIndex,
                 device: str, pool: ThreadPoolExecutor) -> None:
        self.path, self.index, self.device, self.pool = path, index, device, pool
        self.step = header.rec_size
        self.dtype = rec_dtype(header.version, self.step)
        body = max(0, index.decoded_size - HDR_SIZE)
        self.n = body // self.step
        self.tail = body - self.n * self.step  # an incomplete last record
        self._pieces = _ahead(tracefile.iter_chunks(path, HDR_SIZE, index), pool, AHEAD)
        self._buf: bytes = b""
        self._lo = 0  # the row _buf starts with
        self.fed = 0  # rows tallied so far
        self.tally = _Tally()
        self._tallying: Future[_Tally] | None = None
        self.problems: list[str] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._window(i.start or 0, min(self.n, i.stop))
        if self._lo <= i < self._lo + len(self._buf) // self.step:
            return np.frombuffer(self._buf, self.dtype, 1, (i - self._lo) * self.step)[0]
        if not 0 <= i < self.n:
            raise IndexError(i)
        piece = next(tracefile.iter_chunks(self.path, HDR_SIZE + i * self.step, self.index))
        return np.frombuffer(piece, self.dtype, 1)[0]

    def _window(self, lo: int, hi: int) -> np.ndarray:
        # the checks ask for overlapping or adjacent slices: no row goes untallied
        assert self._lo <= lo <= self.fed, (lo, self._lo, self.fed)
        cut = (lo - self._lo) * self.step
        parts: list[bytes | memoryview] = [memoryview(self._buf)[cut:]]
        have = len(self._buf) - cut
        while have < (hi - lo) * self.step and (piece := next(self._pieces, None)) is not None:
            parts.append(piece)
            have += len(piece)
        if len(parts) > 1 or cut:
            self._buf, self._lo = b"".join(parts), lo
        self._feed()
        return np.frombuffer(self._buf, self.dtype, max(0, min(hi, self.fed) - lo), 0)

    def _feed(self) -> None:
        top = min(self.n, self._lo + len(self._buf) // self.step)
        if top <= self.fed:
            return
        rows = np.frombuffer(self._buf, self.dtype, top - self.fed,
                             (self.fed - self._lo) * self.step)
        self.problems.extend(_enum_problems(rows, self.device, self.fed))
        self._collect()
        self._tallying = self.pool.submit(_tally_at, rows, self.fed)
        self.fed = top

    def _collect(self) -> None:
        if self._tallying is not None:
            self.tally.add(self._tallying.result())
            self._tallying = None

    def drain(self) -> None:
        """Tally the rows no check asked for (when no audit ran)."""
        while self.fed < self.n:
            self._window(self.fed, min(self.n, self.fed + CHUNK))
        self._collect()


def _tally_at(rows: np.ndarray, base: int) -> _Tally:
    t = _tally(rows, 0, len(rows))
    t.engine_first = {e: base + i for e, i in t.engine_first.items()}
    return t


_Rows = np.ndarray | _Stream


@dataclass
class FileChecks:
    header: TraceHeader
    summary: TraceSummary
    invalidations: InvalidateCheck | None
    vram: VramCheck | None


def check_file(path: Path, device: str | None = None, invalidations: bool = True,
               vram: bool = True, limit: int = 50) -> FileChecks:
    """:func:`summarize` and :func:`audit` of a trace file in one forward pass over its
    decoded stream, the same answers as over :func:`read_trace`'s whole trace but with
    only a chunk of it in memory at a time (the decoded trace of a long run is several
    times its compressed size). Header errors as :func:`decode`."""
    path = Path(path)
    device = device or device_of(path)
    _check_device(device)
    index = tracefile.scan(path)
    head = b""
    for piece in tracefile.iter_chunks(path, 0, index):
        head += piece[:HDR_SIZE - len(head)]
        if len(head) >= HDR_SIZE:
            break
    header = _header(head)
    if header.version < 2:  # old traces are small, and their rows are widened: whole
        trace = read_trace(path, device)
        return FileChecks(header, summarize(trace),
                          *audit(trace.records, invalidations, vram, limit))
    with ThreadPoolExecutor(1) as pool:
        rows = _Stream(path, header, index, device, pool)
        inv, vr = audit(rows, invalidations, vram, limit)
        rows.drain()
    problems = rows.problems
    if rows.tail:
        problems.append(f"truncated last record: {rows.tail} of {rows.step} bytes after "
                        f"record {rows.n - 1}")
    return FileChecks(header, _summary(rows.tally, rows.n, device, problems), inv, vr)


def check_invalidations(records: Sequence[TraceRecord] | np.ndarray,
                        limit: int = 50) -> InvalidateCheck:
    """Every data DMA of a VA job used a translation obtained after the last
    TLB invalidation covering its address in its context.

    The device's MMU is simulated over the trace in order: a leaf PTW puts a
    translation into a per-context table (a walk ending on a non-present
    entry removes the walked page's), an EV_TLB_INV removes every translation
    of its context overlapping its range (``aux`` = length, ~0 = the whole
    context). Each
    DATA record with a ``va`` is split at 4 KiB pages; for each page the
    translation must exist and map exactly to the record's bus address.
    A DMA that used a translation cached before an invalidation shows up as
    "no translation" (or as a bus address the current translation does not
    give), i.e. the device touched a page after the driver unmapped it.

    In chunks of records, the MMU's tables carried from one to the next: per
    table, one sort of the chunk's walks, drops and uses by (ctx, page) and
    position finds each use's latest put or drop (:func:`_neighbours`); only
    the records with a problem become Python objects, for the messages.
    """
    inv, _ = audit(records, vram=False, limit=limit)
    assert inv is not None
    return inv


def audit(records: Sequence[TraceRecord] | np.ndarray | _Stream, invalidations: bool = True,
          vram: bool = True, limit: int = 50) -> tuple[InvalidateCheck | None, VramCheck | None]:
    """:func:`check_invalidations` and :func:`check_vram_lifetime` (those asked for) in
    one pass over the records: each block's fields are read once for both. ``records``
    may be a :class:`_Stream` (:func:`check_file`): it is read forward, a chunk at a time."""
    rows = records if isinstance(records, _Stream) else rows_of(records)
    n = len(rows)
    inv = InvalidateCheck() if invalidations else None
    small, huge = _Tlb(PAGE_SHIFT), _Tlb(pt_shift(1))
    vr = VramCheck() if vram else None
    # each VRAM page's last copy so far: its record and whether it copied in
    last = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, bool))
    # uses after a copy out, waiting for the page's next copy: record, page, the copy out
    waiting = (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64))
    found: list[tuple[np.ndarray, ...]] = []  # (record, page, copy before, copy after)
    specs = (([(_pick_invalidation_audit, _AUDIT_FIELDS)] if inv else [])
             + ([(_pick_vram_audit, _VRAM_FIELDS)] if vr else []))
    kinds = _table(k for k in (Kind.PTW, Kind.EV_TLB_INV, Kind.DATA, Kind.VRAM))
    # with both audits, a chunk's VRAM audit runs on a second thread while the
    # stale-translation one runs here: they share only the chunk's columns
    pool = ThreadPoolExecutor(1) if inv is not None and vr is not None and WORKERS > 1 else None
    lo = 0
    try:
        while lo < n and specs:
            # one record more: the WRITE_VA partner of a READ_VA at the chunk's end
            picked = _columns(rows[lo:lo + CHUNK + 1], kinds, specs)
            length = min(CHUNK, n - lo)
            if inv is not None:
                a_i, c_i = picked[0]
                starts = _pair_starts(a_i, c_i)
                if len(starts) and a_i[starts[-1]] == length - 1:
                    length += 1  # the pair stays in this chunk
            later = None
            if vr is not None:
                a_v, c_v = picked[-1]
                keep = int(np.searchsorted(a_v, length))
                args = (vr, lo, a_v[:keep], {f: v[:keep] for f, v in c_v.items()}, last,
                        waiting, found)
                if pool is not None:
                    later = pool.submit(_vram_chunk, *args)
                else:
                    last, waiting = _vram_chunk(*args)
            if inv is not None:
                keep = int(np.searchsorted(a_i, length))
                small, huge = _invalidations_chunk(inv, rows, lo, a_i[:keep],
                                                   {f: v[:keep] for f, v in c_i.items()},
                                                   starts[starts < keep - 1], small, huge,
                                                   limit)
            if later is not None:
                last, waiting = later.result()
            lo += length
    finally:
        if pool is not None:
            pool.shutdown()
    if vr is not None:
        _vram_problems(vr, rows, found, limit)
    return inv, vr


def _pair_starts(at: np.ndarray, cols: dict[str, np.ndarray]) -> np.ndarray:
    """The READ_VA records that have their WRITE_VA partner right after them (indices
    into the selected records): one side is the VA, the other a bus address (tagged
    with the same va), the same command, context and length."""
    use = _DATA_OR_VRAM[cols["kind"]]
    va, dr, ln, addr = cols["va"], cols["dir"], cols["len"], cols["addr"]
    return np.flatnonzero(
        use[:-1] & use[1:] & (at[1:] == at[:-1] + 1) & (dr[:-1] == Dir.READ)
        & (dr[1:] == Dir.WRITE) & (va[1:] == va[:-1]) & (ln[1:] == ln[:-1])
        & (cols["cmd_id"][1:] == cols["cmd_id"][:-1]) & (cols["ctx"][1:] == cols["ctx"][:-1])
        & (addr[1:] != addr[:-1]))


def _invalidations_chunk(out: InvalidateCheck, rows: _Rows, lo: int, at: np.ndarray,
                         cols: dict[str, np.ndarray], starts: np.ndarray, small: _Tlb,
                         huge: _Tlb, limit: int) -> tuple[_Tlb, _Tlb]:
    kind, aux, va, ln = cols["kind"], cols["aux"], cols["va"], cols["len"]
    if not len(kind):
        return small, huge
    valid = (aux & np.uint64(PTE_VALID)) != 0
    walk = kind == Kind.PTW
    cat = np.full(len(kind), _USE, np.uint8)
    cat[walk & valid & (cols["level"] == 0)] = _SET4K
    cat[walk & valid & (cols["level"] != 0)] = _SET2M
    cat[walk & ~valid] = _CLEAR
    cat[kind == Kind.EV_TLB_INV] = _INV
    is_use = cat == _USE
    out.walks += int(np.count_nonzero(walk))
    out.invalidations += int(np.count_nonzero(cat == _INV))
    out.data_checked += int(np.count_nonzero(is_use))
    npages = np.where(is_use & (ln != 0),
                      (((va & _PAGE_OFF) + ln - np.uint64(1)) >> np.uint64(PAGE_SHIFT))
                      + np.uint64(1), _U0).astype(np.int64)
    partner = np.zeros(len(kind), bool)
    partner[starts + 1] = True
    out.pages_checked += int(npages[is_use & ~partner].sum()) + int(
        np.count_nonzero(npages[starts] == 0))  # a pair counts max(pages, 1)
    # a partner's pages are its READ_VA's (same va and length, nothing in between):
    # only the READ_VA asks the tables
    ask = np.where(partner, 0, npages)
    ch = _Chunk(lo + at, cat, cols["ctx"].astype(np.uint64), va, aux,
                va >> np.uint64(PAGE_SHIFT), ask)
    seen_s, t_s, small = _lookup(small, ch, _SET4K)
    seen_h, t_h, huge = _lookup(huge, ch, _SET2M)
    # per page asked: the translation it got (the latest walk's of the two tables)
    q_of = np.repeat(np.arange(len(kind)), ask)
    r_s, r_h = _gather(seen_s.rec, t_s, -1), _gather(seen_h.rec, t_h, -1)
    from_h = r_h > r_s
    found = (r_s >= 0) | from_h

    def pick(col: str, fill: Any) -> np.ndarray:
        return np.where(from_h, _gather(getattr(seen_h, col), t_h, fill),
                        _gather(getattr(seen_s, col), t_s, fill))

    t_base, t_pa, t_vram = pick("base", _U0), pick("pa", _U0), pick("vram", False)
    # whether it gives the use's address (pa - va == addr - va, and on the same side:
    # the subtractions wrap) in the use's space; for the READ_VA's partner too
    addr, is_vram = cols["addr"], kind == Kind.VRAM
    t_delta, t_neg = t_pa - t_base, t_pa < t_base

    def good(q: np.ndarray | slice, rec: np.ndarray) -> np.ndarray:
        return (found[q] & (t_delta[q] == addr[rec] - va[rec])
                & (t_neg[q] == (addr[rec] < va[rec])) & (t_vram[q] == is_vram[rec]))

    ok = good(slice(None), q_of)
    bad = np.bincount(q_of[~ok], minlength=len(kind))
    paired = np.zeros(len(kind), bool)
    paired[starts] = True
    w_q = np.flatnonzero(paired[q_of])
    ok_w = np.ones(len(q_of), bool)
    ok_w[w_q] = good(w_q, q_of[w_q] + 1)
    bad += np.roll(np.bincount(q_of[~ok_w], minlength=len(kind)), 1)
    lone = is_use & ~paired & ~partner
    both = starts[(bad[starts] > 0) & (bad[starts + 1] > 0)]
    out.problem_count += int(bad[lone].sum()) + len(both)
    if len(out.problems) >= limit:
        return small, huge
    # the messages: only the records with a problem, in order
    q_first = np.cumsum(ask) - ask
    tabs = (seen_s, seen_h)

    def miss(j: int, m: int, q: int) -> tuple[str, bool]:
        """The problem of page ``m`` of selected record ``j``, asked as ``q``; whether
        it had no translation."""
        i = int(lo + at[j])
        r = rows[i].tolist()
        first_va = r[_VA]
        pva = first_va if m == 0 else ((first_va >> PAGE_SHIFT) + m) << PAGE_SHIFT
        paddr = r[_ADDR] + (pva - first_va)
        where = _where(i, r, pva, paddr)
        if not found[q]:
            return (f"{where}: no translation of this page since the last TLB invalidation "
                    "covering it (a stale TLB entry was used)"), True
        tab, t = (tabs[1], int(t_h[q])) if from_h[q] else (tabs[0], int(t_s[q]))
        space = "VRAM offset" if tab.vram[t] else "bus address"
        want = int(tab.pa[t]) + (pva - int(tab.base[t]))
        return (f"{where}: the current translation (PTW record {int(tab.rec[t])}) maps it "
                f"to {space} 0x{want:x}"), False

    def misses(j: int, okay: np.ndarray) -> list[tuple[str, bool]]:
        first = int(q_first[j])
        pages = np.flatnonzero(~okay[first:first + int(npages[j])]).tolist()
        return [miss(j, m, first + m) for m in pages]

    in_pair = np.zeros(len(kind), bool)
    in_pair[both] = True
    for j in np.flatnonzero((lone & (bad > 0)) | in_pair).tolist():
        if in_pair[j]:
            first = int(q_first[j])
            pages = range(int(npages[j]))
            found_r = [miss(j, m, first + m) for m in pages if not ok[first + m]]
            found_w = [miss(j + 1, m, first + m) for m in pages if not ok_w[first + m]]
            stale = [t for t, none in found_r + found_w if none]
            out.problems.append((stale or [t for t, _ in found_r + found_w])[0])
        else:
            for text, _ in misses(j, ok):
                if len(out.problems) >= limit:
                    break
                out.problems.append(text)
        if len(out.problems) >= limit:
            break
    return small, huge


def _where(i: int, r: Sequence[int], va: int, addr: int) -> str:
    kind = r[_KIND]
    kname = Kind(kind).name if kind in Kind._value2member_map_ else kind
    return (f"record {i} (t={r[_TS]}): {kname} {_name(_enum(Dir, r[_DIR]))} cmd={r[_CMD]} "
            f"ctx={r[_CTX]} va=0x{va:x} addr=0x{addr:x}")


def _leaf(va: int, pte: int, level: int) -> tuple[int, int, int, bool] | Literal[False] | None:
    """What a PTW record says, on plain ints: (va base, size, pa, vram) of a valid leaf."""
    if not pte & PTE_VALID:
        return None
    if level == 0 or (level == 1 and pte & PTE_LEAF):
        size = 1 << pt_shift(level)
        return va & ~(size - 1), size, pte & PTE_ADDR_MASK & ~(size - 1), bool(pte & PTE_VRAM)
    return False


def leaf_of(rec: TraceRecord) -> Translation | Literal[False] | None:
    """What a PTW record says about the walk it is part of.

    Returns a :class:`Translation` for a valid leaf (a level-0 entry, or a
    level-1 entry with PTE_LEAF), ``None`` when the walk ended on a
    non-present entry (no translation), ``False`` for an intermediate
    table entry (the walk goes on).
    """
    leaf = _leaf(rec.va, rec.aux, rec.level)
    if not leaf:
        return leaf
    va, size, pa, vram = leaf
    return Translation(va=va, size=size, pa=pa, index=-1, vram=vram)


# ---- checking that VRAM pages are used only while they hold a page's data -------

@dataclass
class VramCheck:
    """Outcome of :func:`check_vram_lifetime` over one trace."""

    copies_in: int = 0  # pages the copy engine moved into VRAM
    copies_out: int = 0  # pages it moved out
    walks: int = 0  # leaf PTW records mapping VRAM
    accesses: int = 0  # VRAM records of VA jobs
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"copies_in": self.copies_in, "copies_out": self.copies_out,
                "walks": self.walks, "accesses": self.accesses,
                "problem_count": self.problem_count}

    def format(self) -> str:
        lines = [f"{self.accesses} VA-job VRAM accesses and {self.walks} VRAM leaf walks "
                 f"checked against {self.copies_in} pages copied into VRAM and "
                 f"{self.copies_out} copied out"]
        lines.extend(self.problems)
        if self.problem_count > len(self.problems):
            lines.append(f"... {self.problem_count - len(self.problems)} more problems")
        return "\n".join(lines)


def check_vram_lifetime(records: Sequence[TraceRecord] | np.ndarray,
                        limit: int = 50) -> VramCheck:
    """Device jobs reach a VRAM page only while it holds a migrated page's data.

    The copy engine copies a page into VRAM (MIGRATE DATA, dir READ: system
    memory -> VRAM, ``aux`` = VRAM offset; a hole is copied from a zero page,
    so every page in use had one) and out of it (dir WRITE). A copy out
    usually ends the page's life (the page went back to system memory and
    the device page was freed), but not always: a migration that copied and
    then could not move the page (someone held a reference: a CPU fault on it
    in another thread, for instance) leaves it in VRAM, and it is copied out
    again later. So per VRAM page the copies are a sequence, and a leaf walk
    mapping the page or a VA job's access to it is stale when

    - no page was ever copied into it before, or
    - the last copy before it was a copy out and the next copy after it is
      a copy in: the page was free in between, the device used it anyway
      (e.g. a fault serviced with a device page that a concurrent migration
      had just moved back and freed).

    Between two copies out the page still held its data; after the last
    copy out of the trace nothing tells, and nothing is reported.

    In chunks of records: per chunk one sort of its copies and uses by VRAM
    page and position finds each use's copies before and after it
    (:func:`_neighbours`); each page's last copy is carried to the next chunk,
    and so are the uses after a copy out whose next copy is not seen yet.
    """
    _, out = audit(records, invalidations=False, limit=limit)
    assert out is not None
    return out


def _vram_problems(out: VramCheck, rows: _Rows, found: list[tuple[np.ndarray, ...]],
                   limit: int) -> None:
    rec, page, before, after = (np.concatenate(f) for f in zip(*found, strict=True)) if found \
        else (np.zeros(0, np.int64),) * 4
    out.problem_count = len(rec)
    # in the order of the uses: by record, then page
    for k in np.lexsort((page, rec))[:limit].tolist():
        i, off = int(rec[k]), int(page[k]) << PAGE_SHIFT
        if before[k] < 0:
            why = "no page was ever copied into it"
        else:
            why = (f"its data was copied out (record {int(before[k])}) and the next copy is a "
                   f"new page copied in (record {int(after[k])}): it was free in between")
        r = rows[i].tolist()
        if r[_KIND] == Kind.PTW:
            out.problems.append(f"record {i} (t={r[_TS]}): ctx={r[_CTX]} walk of va=0x{r[_VA]:x} "
                                f"found a leaf mapping VRAM offset 0x{off:x}: {why}")
        else:
            out.problems.append(f"record {i} (t={r[_TS]}): {_name(_enum(Dir, r[_DIR]))} "
                                f"cmd={r[_CMD]} ctx={r[_CTX]} va=0x{r[_VA]:x} touched VRAM "
                                f"offset 0x{off:x}: {why}")


_Last = tuple[np.ndarray, np.ndarray, np.ndarray]
_Waiting = tuple[np.ndarray, np.ndarray, np.ndarray]


def _pick_vram_audit(b: Mapping[str, np.ndarray]) -> np.ndarray:
    kind, aux, level = b["kind"], b["aux"], b["level"]
    ok = b["result"] == 0
    copy = (kind == Kind.DATA) & (b["engine"] == Engine.MIGRATE) & ok & (b["dir"] <= Dir.WRITE)
    walk = ((kind == Kind.PTW) & ok & ((aux & np.uint64(PTE_VALID | PTE_VRAM))
                                       == np.uint64(PTE_VALID | PTE_VRAM))
            & ((level == 0) | ((level == 1) & ((aux & np.uint64(PTE_LEAF)) != 0))))
    return copy | walk | ((kind == Kind.VRAM) & (b["va"] != 0))


def _vram_chunk(out: VramCheck, lo: int, at: np.ndarray, cols: dict[str, np.ndarray],
                last: _Last, waiting: _Waiting, found: list[tuple[np.ndarray, ...]]
                ) -> tuple[_Last, _Waiting]:
    if not len(at):
        return last, waiting
    kind, dr, aux, addr = cols["kind"], cols["dir"], cols["aux"], cols["addr"]
    # what _pick_vram_audit took: copies (MIGRATE DATA), VRAM leaf walks, VRAM accesses
    is_copy, walk = kind == Kind.DATA, kind == Kind.PTW
    n_in = int(np.count_nonzero(is_copy & (dr == Dir.READ)))
    out.copies_in += n_in
    out.copies_out += int(np.count_nonzero(is_copy)) - n_in
    out.walks += int(np.count_nonzero(walk))
    out.accesses += int(np.count_nonzero(kind == Kind.VRAM))
    # the first VRAM page and the page count of each: a copy's page is aux's; a leaf's
    # its (4 KiB or 2 MiB) frame's; an access's, those [addr, addr + max(len, 1)) touches
    huge = cols["level"] == 1
    frame = aux & np.uint64(PTE_ADDR_MASK) & ~np.where(huge, np.uint64((1 << pt_shift(1)) - 1),
                                                       _U0)
    first = np.where(is_copy, aux, np.where(walk, frame, addr)) >> np.uint64(PAGE_SHIFT)
    span = ((addr & _PAGE_OFF) + np.maximum(cols["len"], np.uint64(1)) - np.uint64(1)) >> np.uint64(
        PAGE_SHIFT)
    npages = np.where(is_copy, 1, np.where(walk, np.where(huge, 512, 1),
                                           span.astype(np.int64) + 1))
    owner, within = _spread(npages)
    c_pages = first[owner] + within.astype(np.uint64)
    # the carried last copies of the pages this chunk uses go into its sort; the
    # others wait aside (most pages of a big VRAM are not used in a given chunk)
    l_page, l_rec, l_in = last
    used = _members(l_page, c_pages[~is_copy[owner]])
    aside = (l_page[~used], l_rec[~used], l_in[~used])
    l_page, l_rec, l_in = l_page[used], l_rec[used], l_in[used]
    carried = len(l_page)
    pages = np.concatenate([l_page, c_pages])
    is_ev = np.concatenate([np.ones(carried, bool), is_copy[owner]])
    e_rec = np.concatenate([l_rec, lo + at[owner]])
    e_in = np.concatenate([l_in, (dr == Dir.READ)[owner]])
    uses = np.flatnonzero(~is_ev)
    near = _neighbours(np.zeros(len(pages), np.uint64), pages, is_ev, uses, after=True)
    prev, nxt = near.prev, near.next
    assert nxt is not None
    u_page, u_rec = pages[uses], e_rec[uses]
    never = prev < 0
    freed = ~never & ~e_in[prev]  # after a copy out
    reused = freed & (nxt >= 0) & e_in[nxt]
    found.append((u_rec[never], u_page[never], np.full(int(never.sum()), -1), np.full(
        int(never.sum()), -1)))
    found.append((u_rec[reused], u_page[reused], e_rec[prev[reused]], e_rec[nxt[reused]]))
    # from the sort by page: each page's first copy in this chunk, and its last copy
    # (carried or this chunk's)
    s_ev = np.flatnonzero(near.event)
    k_ev = near.key[s_ev]
    last_el = near.at[s_ev[_run_edges(k_ev, last=True)]]
    s_c = s_ev[near.at[s_ev] >= carried]
    k_c = near.key[s_c]
    first_el = near.at[s_c[_run_edges(k_c, last=False)]]  # by page, ascending
    # the waiting uses of earlier chunks meet their page's first copy in this one
    w_rec, w_page, w_prev = waiting
    f_page = pages[first_el]
    k = np.minimum(np.searchsorted(f_page, w_page), max(len(f_page) - 1, 0))
    met = (f_page[k] == w_page) if len(f_page) else np.zeros(len(w_page), bool)
    f_el = first_el[k] if len(f_page) else np.zeros(len(w_page), np.int64)
    bad = met & e_in[f_el]
    found.append((w_rec[bad], w_page[bad], w_prev[bad], e_rec[f_el[bad]]))
    still = freed & (nxt < 0)
    waiting = (np.concatenate([w_rec[~met], u_rec[still]]),
               np.concatenate([w_page[~met], u_page[still]]),
               np.concatenate([w_prev[~met], e_rec[prev[still]]]))
    # each page's last copy after the chunk: the sort's, else the one set aside
    n_page = pages[last_el]
    kept = ~_members(n_page, aside[0], among=True)
    merged = [np.concatenate([a, b]) for a, b in zip(
        (n_page, e_rec[last_el], e_in[last_el]), (x[kept] for x in aside), strict=True)]
    order = np.argsort(merged[0], kind="stable")  # two sorted runs: a merge
    return (merged[0][order], merged[1][order], merged[2][order]), waiting


def _members(sorted_keys: np.ndarray, keys: np.ndarray, among: bool = False) -> np.ndarray:
    """Which of ``sorted_keys`` (sorted, distinct) are in ``keys``; with ``among``,
    which of ``keys`` are in ``sorted_keys``."""
    if not len(sorted_keys) or not len(keys):
        return np.zeros(len(keys) if among else len(sorted_keys), bool)
    i = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    hit = sorted_keys[i] == keys
    if among:
        return hit
    out = np.zeros(len(sorted_keys), bool)
    out[i[hit]] = True
    return out


# ---- queries (hmmlab trace) ----------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """Which records to pick; every given condition must hold."""

    kinds: tuple[int, ...] = ()  # these kinds only
    addr: tuple[int, int] | None = None  # DMA overlapping [lo, hi): addr/len, not events
    t_from: int | None = None  # timestamp_ns >= t_from
    t_to: int | None = None  # timestamp_ns < t_to
    ctx: int | None = None

    def mask(self, c: np.ndarray) -> np.ndarray:
        m = np.ones(len(c), bool)
        if self.kinds:
            m &= _table(self.kinds)[c["kind"]]
        if self.addr is not None:
            lo, hi = self.addr
            addr = c["addr"]
            # [addr, addr + max(len, 1)) overlaps [lo, hi); events carry no DMA address
            m &= ~_EVENT[c["kind"]] & (addr < hi) & (addr + np.maximum(c["len"], 1) > lo)
        if self.t_from is not None:
            m &= c["timestamp_ns"] >= self.t_from
        if self.t_to is not None:
            m &= c["timestamp_ns"] < self.t_to
        if self.ctx is not None:
            m &= c["ctx"] == self.ctx
        return m


def select(trace: Trace, query: Query, limit: int | None = None) -> np.ndarray:
    """Indices of the records ``query`` picks, in order, at most ``limit``: a chunked
    scan that stops once it has enough."""
    found: list[np.ndarray] = []
    n = 0
    for lo in range(0, len(trace.rows), CHUNK):
        hit = np.flatnonzero(query.mask(trace.rows[lo:lo + CHUNK])) + lo
        found.append(hit)
        n += len(hit)
        if limit is not None and n >= limit:
            break
    idx = np.concatenate(found) if found else np.zeros(0, np.int64)
    return idx if limit is None else idx[:limit]


def fault_lives(trace: Trace, key: int, limit: int = 10) -> list[np.ndarray]:
    """The life of each fault whose record has ``key`` as its token or whose va is in
    the page of ``key``: record indices, in order, of the fault record; the walks of
    that page in its context just before it (the miss) and after its answer (the
    rewalk); TLB invalidations of the page in between; the answer (the next replay,
    or the cancel of its token) and the first access of the page after it."""
    rows = trace.rows
    page = key >> PAGE_SHIFT
    faults = select(trace, Query(kinds=(Kind.FAULT_WRITE,)))
    f_rows = rows[faults]
    faults = faults[(f_rows["aux"] == key) | ((f_rows["va"] >> PAGE_SHIFT) == page)][:limit]
    lives = []
    for f in faults.tolist():
        ctx, va, token = (int(rows[f][c]) for c in ("ctx", "va", "aux"))
        vpage = va >> PAGE_SHIFT
        # the walk that missed: the PTWs of the page in the records just before
        lo = max(0, f - 64)
        before = rows[lo:f]
        walk = lo + np.flatnonzero((before["kind"] == Kind.PTW) & (before["ctx"] == ctx)
                                   & ((before["va"] >> PAGE_SHIFT) == vpage))
        # the answer: the first replay after it, or its token's cancel
        answer = None
        for lo2 in range(f + 1, len(rows), CHUNK):
            c = rows[lo2:lo2 + CHUNK]
            hit = (c["kind"] == Kind.EV_REPLAY) | ((c["kind"] == Kind.EV_CANCEL)
                                                  & (c["aux"] == token))
            if hit.any():
                answer = lo2 + int(hit.argmax())
                break
        end = answer if answer is not None else len(rows) - 1
        tail: list[int] = []
        if answer is not None:
            # after the answer: the rewalk of the page and the first access of it
            for lo3 in range(answer + 1, len(rows), CHUNK):
                c = rows[lo3:lo3 + CHUNK]
                mine = (c["ctx"] == ctx) & ((c["va"] >> PAGE_SHIFT) == vpage)
                use = np.flatnonzero(mine & _DATA_OR_VRAM[c["kind"]])
                stop = int(use[0]) + 1 if len(use) else len(c)
                tail.extend((lo3 + np.flatnonzero(mine[:stop] & (
                    (c["kind"][:stop] == Kind.PTW) | _DATA_OR_VRAM[c["kind"][:stop]]))).tolist())
                if len(use):
                    break
        mid = rows[f + 1:end]
        inv = mid["kind"] == Kind.EV_TLB_INV
        covers = inv & (mid["ctx"] == ctx) & (
            (mid["aux"] == ALL) | ((mid["va"] <= va) & (va - mid["va"] < mid["aux"])))
        between = (f + 1 + np.flatnonzero(covers)).tolist()
        lives.append(np.array(sorted({*walk.tolist(), f, *between,
                                      *([answer] if answer is not None else []), *tail}),
                              np.int64))
    return lives

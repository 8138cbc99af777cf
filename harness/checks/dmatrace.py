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
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    CLOCK_SYNC = 19  # alias of EV_CLOCK_SYNC

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
CHUNK = 1 << 20


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


def _enum_problems(rows: np.ndarray, device: str) -> list[str]:
    known = {"engine": _known(ENGINES[device]), "kind": _known(Kind), "dir": _known(Dir)}
    out: list[str] = []
    for lo in range(0, len(rows), CHUNK):
        chunk = rows[lo:lo + CHUNK]
        bad = {f: ~ok[chunk[f]] for f, ok in known.items()}
        for i in np.flatnonzero(bad["engine"] | bad["kind"] | bad["dir"]).tolist():
            for f in ("engine", "kind", "dir"):
                if bad[f][i]:
                    out.append(f"record {lo + i}: unknown {f} {int(chunk[f][i])}")
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


def summarize(trace: Trace) -> TraceSummary:
    """Counts and bytes by kind (and direction), per engine, in chunked numpy passes."""
    rows = trace.rows
    engines = ENGINES[trace.device]
    # (kind, dir) -> [records, bytes]; engine -> (first record index, records): the
    # engine dict keeps the order of first appearance, as the record walk did
    per_key: dict[tuple[int, int], list[int]] = {}
    per_engine: dict[int, list[int]] = {}
    cmds: set[int] = set()
    errors = 0
    first = last = None
    for lo in range(0, len(rows), CHUNK):
        c = rows[lo:lo + CHUNK]
        kind = c["kind"]
        event = _EVENT[kind]
        # events are keyed by kind alone: their dir is folded to one value (0x100)
        key = kind.astype(np.uint16) << 9 | np.where(event, 0x100, c["dir"].astype(np.uint16))
        uniq, inv = np.unique(key, return_inverse=True)
        lens = c["len"]
        for j, k in enumerate(uniq.tolist()):
            sel = inv == j
            acc = per_key.setdefault((k >> 9, k & 0x1FF), [0, 0])
            acc[0] += int(sel.sum())
            acc[1] += int(lens[sel].sum(dtype=np.uint64))
        eng = c["engine"]
        e_uniq, e_first, e_count = np.unique(eng, return_index=True, return_counts=True)
        for e, f, n in zip(e_uniq.tolist(), e_first.tolist(), e_count.tolist(), strict=True):
            per_engine.setdefault(e, [lo + f, 0])[1] += n
        cmds.update(np.unique(c["cmd_id"][kind == int(Kind.DATA)]).tolist())
        errors += int(np.count_nonzero(c["result"]))
        ts = c["timestamp_ns"]
        if len(ts):
            lo_ts, hi_ts = int(ts.min()), int(ts.max())
            first = lo_ts if first is None else min(first, lo_ts)
            last = hi_ts if last is None else max(last, hi_ts)
    bytes_by: dict[str, int] = {}
    count_by: dict[str, int] = {}
    for (k, d), (n, b) in per_key.items():
        kname = _name(_enum(Kind, k))
        name = kname if d == 0x100 else f"{kname}/{_name(_enum(Dir, d))}"
        count_by[name] = count_by.get(name, 0) + n
        bytes_by[name] = bytes_by.get(name, 0) + b
    by_engine = {_name(_enum(engines, e)): n
                 for e, (_, n) in sorted(per_engine.items(), key=lambda kv: kv[1][0])}
    return TraceSummary(
        records=len(rows), commands=len(cmds), bytes_by=bytes_by, count_by=count_by,
        errors=errors, first_ns=first, last_ns=last, problems=list(trace.problems),
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


def _selected(rows: np.ndarray, pick: Callable[[np.ndarray], np.ndarray]
              ) -> Iterator[tuple[int, tuple[int, ...], tuple[int, ...] | None]]:
    """(index, row, next row if it is the next record and selected too) of the records
    ``pick`` selects, chunk by chunk: the stateful audits see only the records that
    matter to them, as tuples of ints (TraceRecord's field order), never objects."""
    idx = np.concatenate([np.flatnonzero(pick(rows[lo:lo + CHUNK])) + lo
                          for lo in range(0, len(rows), CHUNK)] or [np.zeros(0, np.int64)])
    block = 1 << 16
    for lo in range(0, len(idx), block):
        part = idx[lo:lo + block + 1]  # one more: the lookahead of the block's last
        vals = rows[part].tolist()
        where = part.tolist()
        for j in range(min(block, len(where))):
            nxt = vals[j + 1] if j + 1 < len(where) and where[j + 1] == where[j] + 1 else None
            yield where[j], vals[j], nxt


# column positions in a row tuple (COLUMNS' order)
_TS, _ADDR, _LEN, _CMD, _CTX, _ENG, _KIND, _DIR, _RES, _VA, _AUX, _LEVEL = range(len(COLUMNS))
_DATA_OR_VRAM = _table((Kind.DATA, Kind.VRAM))


def _leaf(va: int, pte: int, level: int) -> tuple[int, int, int, bool] | Literal[False] | None:
    """:func:`leaf_of` on plain ints: (va base, size, pa, vram) of a valid leaf."""
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


def _pick_invalidation_audit(c: np.ndarray) -> np.ndarray:
    kind = c["kind"]
    aux, level = c["aux"], c["level"]
    leafy = ((aux & PTE_VALID) == 0) | (level == 0) | ((level == 1) & ((aux & PTE_LEAF) != 0))
    ptw = (kind == Kind.PTW) & (c["result"] == 0) & leafy
    return ptw | (kind == Kind.EV_TLB_INV) | (_DATA_OR_VRAM[kind] & (c["va"] != 0))


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

    Only the walks, invalidations and VA-job accesses are visited, as ints.
    """
    out = InvalidateCheck()
    # ctx -> {va >> 12: Translation} and {va >> 21: Translation}
    small: dict[int, dict[int, Translation]] = {}
    huge: dict[int, dict[int, Translation]] = {}
    hshift = pt_shift(1)
    paired = -1  # the WRITE record already checked with its READ (the one before it)

    def problem(text: str) -> None:
        out.problem_count += 1
        if len(out.problems) < limit:
            out.problems.append(text)

    rows = rows_of(records)
    for i, r, nxt in _selected(rows, _pick_invalidation_audit):
        kind, ctx, va = r[_KIND], r[_CTX], r[_VA]
        if kind == Kind.PTW:
            leaf = _leaf(va, r[_AUX], r[_LEVEL])
            out.walks += 1
            if leaf is None:
                # Nothing maps the walked page: the device missed in its TLB
                # for it, so no translation of that page was cached. Other
                # pages under the same cleared entry keep theirs until an
                # invalidation: a driver clears entries (and detaches tables)
                # before the fence, and a job may legitimately go on using
                # its cached translations until the fence completes.
                page = 1 << PAGE_SHIFT
                _drop(small.get(ctx), huge.get(ctx), va & ~(page - 1), page)
            elif r[_LEVEL] == 0:
                assert leaf
                small.setdefault(ctx, {})[va >> PAGE_SHIFT] = Translation(
                    leaf[0], leaf[1], leaf[2], i, leaf[3])
            else:
                assert leaf
                huge.setdefault(ctx, {})[va >> hshift] = Translation(
                    leaf[0], leaf[1], leaf[2], i, leaf[3])
        elif kind == Kind.EV_TLB_INV:
            out.invalidations += 1
            aux = r[_AUX]
            if aux == ALL or va + aux > ALL:
                small.pop(ctx, None)
                huge.pop(ctx, None)
            else:
                _drop(small.get(ctx), huge.get(ctx), va, aux)
        else:
            # VRAM accesses of VA jobs (PTE_VRAM pages) are checked like DMA:
            # reaching a VRAM page through a stale translation is the same bug.
            if i == paired:
                continue
            if (nxt is not None and nxt[_KIND] in (Kind.DATA, Kind.VRAM)
                    and r[_DIR] == Dir.READ and nxt[_DIR] == Dir.WRITE and nxt[_VA] == va
                    and nxt[_CMD] == r[_CMD] and nxt[_CTX] == ctx and nxt[_LEN] == r[_LEN]
                    and nxt[_ADDR] != r[_ADDR]):
                # READ_VA / WRITE_VA: one side is the VA, the other a bus address
                # (tagged with the same va). One of them must be the translation.
                paired = i + 1
                out.data_checked += 2
                side_r = _translated(i, r, small, huge)
                side_w = _translated(i + 1, nxt, small, huge)
                out.pages_checked += max(len(side_r), 1)
                if any(side_r) and any(side_w):  # neither side is the translated one
                    misses = [p for p in (*side_r, *side_w) if p]
                    stale = [p for p in misses if p[4] is None]  # "no translation"
                    problem(_miss_text((stale or misses)[0]))
                continue
            out.data_checked += 1
            found = _translated(i, r, small, huge)
            out.pages_checked += len(found)
            for p in found:
                if p:
                    problem(_miss_text(p))
    return out


# a page's problem, formatted only if it is reported: (index, row, va, addr, translation)
_Miss = tuple[int, Sequence[int], int, int, "Translation | None"]


def _translated(i: int, r: Sequence[int], small: dict[int, dict[int, Translation]],
                huge: dict[int, dict[int, Translation]]) -> list[_Miss | None]:
    """Per 4 KiB page of the DATA/VRAM record ``r`` (a row tuple): None if its bus
    address is what the current translation of its va gives, else the problem
    (see :func:`_miss_text`)."""
    page = 1 << PAGE_SHIFT
    hshift = pt_shift(1)
    out: list[_Miss | None] = []
    ctx, vram = r[_CTX], r[_KIND] == Kind.VRAM
    va, addr, left = r[_VA], r[_ADDR], r[_LEN]
    s_tab, h_tab = small.get(ctx, {}), huge.get(ctx, {})
    while left > 0:
        chunk = min(left, page - (va & (page - 1)))
        s, h = s_tab.get(va >> PAGE_SHIFT), h_tab.get(va >> hshift)
        t = s if h is None else h if s is None else max(s, h, key=lambda t: t.index)
        if t is not None and t.pa + (va - t.va) == addr and t.vram == vram:
            out.append(None)
        else:
            out.append((i, r, va, addr, t))
        va, addr, left = va + chunk, addr + chunk, left - chunk
    return out


def _miss_text(miss: _Miss) -> str:
    i, r, va, addr, t = miss
    if t is None:
        return (f"{_where(i, r, va, addr)}: no translation of this page since the last "
                "TLB invalidation covering it (a stale TLB entry was used)")
    space = "VRAM offset" if t.vram else "bus address"
    return (f"{_where(i, r, va, addr)}: the current translation (PTW record "
            f"{t.index}) maps it to {space} 0x{t.pa + (va - t.va):x}")


def _where(i: int, r: Sequence[int], va: int, addr: int) -> str:
    kind = r[_KIND]
    kname = Kind(kind).name if kind in Kind._value2member_map_ else kind
    return (f"record {i} (t={r[_TS]}): {kname} {_name(_enum(Dir, r[_DIR]))} cmd={r[_CMD]} "
            f"ctx={r[_CTX]} va=0x{va:x} addr=0x{addr:x}")


def _drop(small: dict[int, Translation] | None, huge: dict[int, Translation] | None,
          lo: int, length: int) -> None:
    """Remove the translations overlapping [lo, lo + length) from a context's tables."""
    if length <= 0:
        return
    hi = lo + length - 1
    for table, shift in ((small, PAGE_SHIFT), (huge, pt_shift(1))):
        if not table:
            continue
        klo, khi = lo >> shift, hi >> shift
        if khi - klo + 1 < len(table):
            for k in range(klo, khi + 1):
                table.pop(k, None)
        else:
            for k in [k for k in table if klo <= k <= khi]:
                table.pop(k)


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


def _pick_vram_audit(c: np.ndarray) -> np.ndarray:
    kind, aux, level = c["kind"], c["aux"], c["level"]
    migrate = (kind == Kind.DATA) & (c["engine"] == Engine.MIGRATE)
    vram_leaf = (((aux & PTE_VALID) != 0) & ((aux & PTE_VRAM) != 0)
                 & ((level == 0) | ((level == 1) & ((aux & PTE_LEAF) != 0))))
    walk = (kind == Kind.PTW) & (c["result"] == 0) & vram_leaf
    return migrate | walk | ((kind == Kind.VRAM) & (c["va"] != 0))


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

    Only the copies, VRAM leaf walks and VA-job VRAM accesses are visited.
    """
    import bisect

    out = VramCheck()
    # VRAM page number (offset >> 12) -> record indices and directions of its copies
    copies: dict[int, list[int]] = {}
    is_in: dict[int, list[bool]] = {}
    # (record index, VRAM page) of every use: ints only, the row is fetched again
    # for the few that are reported
    use_at: list[int] = []
    use_page: list[int] = []

    def problem(text: str) -> None:
        out.problem_count += 1
        if len(out.problems) < limit:
            out.problems.append(text)

    rows = rows_of(records)
    for i, r, _ in _selected(rows, _pick_vram_audit):
        kind = r[_KIND]
        if kind == Kind.DATA:
            if r[_RES] != 0 or r[_DIR] not in (Dir.READ, Dir.WRITE):
                continue
            page = r[_AUX] >> PAGE_SHIFT
            copies.setdefault(page, []).append(i)
            is_in.setdefault(page, []).append(r[_DIR] == Dir.READ)
            if r[_DIR] == Dir.READ:
                out.copies_in += 1
            else:
                out.copies_out += 1
        elif kind == Kind.PTW:
            leaf = _leaf(r[_VA], r[_AUX], r[_LEVEL])
            assert leaf
            out.walks += 1
            first = leaf[2] >> PAGE_SHIFT
            npages = leaf[1] >> PAGE_SHIFT
            use_at.extend([i] * npages)
            use_page.extend(range(first, first + npages))
        else:
            out.accesses += 1
            last = (r[_ADDR] + max(r[_LEN], 1) - 1) >> PAGE_SHIFT
            use_at.extend([i] * (last + 1 - (r[_ADDR] >> PAGE_SHIFT)))
            use_page.extend(range(r[_ADDR] >> PAGE_SHIFT, last + 1))

    reported: set[tuple[int, int]] = set()  # one problem per record and page
    for i, page in zip(use_at, use_page, strict=True):
        idx = copies.get(page, [])
        k = bisect.bisect_left(idx, i)
        prev_in = is_in[page][k - 1] if k > 0 else None
        next_in = is_in[page][k] if k < len(idx) else None
        if prev_in is None:
            why = "no page was ever copied into it"
        elif not prev_in and next_in:
            why = (f"its data was copied out (record {idx[k - 1]}) and the next copy is a "
                   f"new page copied in (record {idx[k]}): it was free in between")
        else:
            continue
        if (i, page) in reported:
            continue
        reported.add((i, page))
        off = page << PAGE_SHIFT
        r = rows[i].tolist()
        if r[_KIND] == Kind.PTW:
            problem(f"record {i} (t={r[_TS]}): ctx={r[_CTX]} walk of va=0x{r[_VA]:x} "
                    f"found a leaf mapping VRAM offset 0x{off:x}: {why}")
        else:
            problem(f"record {i} (t={r[_TS]}): {_name(_enum(Dir, r[_DIR]))} cmd={r[_CMD]} "
                    f"ctx={r[_CTX]} va=0x{r[_VA]:x} touched VRAM offset 0x{off:x}: {why}")
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

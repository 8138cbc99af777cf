"""The record-at-a-time DMA trace decoder and checks, as they were before the numpy
rewrite of :mod:`harness.checks.dmatrace` (commit 672d996): kept, unchanged (but for
what ABI additions need: 1.4's EV_CLOCK_SYNC, which the checks ignore), as the
reference the new implementation is tested against on real and synthetic traces, and
as the "old" column of ``hmmlab bench trace``. Not used by the scenarios.

Decoder for the host-side DMA trace stream of hmm-gpu and hmm-nic.

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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

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


@dataclass
class Trace:
    header: TraceHeader
    records: list[TraceRecord] = field(default_factory=list)
    truncated_bytes: int = 0  # an incomplete last record (QEMU killed mid-write)
    problems: list[str] = field(default_factory=list)
    device: str = GPU  # which engine names the records carry

    def data(self) -> list[TraceRecord]:
        return [r for r in self.records if r.kind == Kind.DATA]


def decode(data: bytes, device: str = GPU) -> Trace:
    """Decode a whole trace stream that ``device`` (a key of :data:`ENGINES`) wrote.

    Raises :class:`TraceError` if the header is missing or not ours. A
    truncated last record is tolerated and reported in ``truncated_bytes``
    and ``problems``; records with unknown enum values are kept (as ints)
    and reported too.
    """
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
    rec_struct = REC if header.version >= 2 else REC_V1
    if header.rec_size < rec_struct.size:
        raise TraceError(f"record size {header.rec_size} is smaller than {rec_struct.size} "
                         f"(version {header.version})")

    try:
        engines = ENGINES[device]
    except KeyError:
        raise ValueError(f"unknown device {device!r} (known: {', '.join(ENGINES)})") from None
    trace = Trace(header, device=device)
    step = header.rec_size  # a larger size means fields appended we do not read
    body = memoryview(data)[HDR_SIZE:]
    whole = len(body) // step
    for i in range(whole):
        rec = _record(rec_struct, header.version, body, i * step, engines)
        for fname, val in (("engine", rec.engine), ("kind", rec.kind), ("dir", rec.dir)):
            if not isinstance(val, IntEnum):
                trace.problems.append(f"record {i}: unknown {fname} {val}")
        trace.records.append(rec)
    rest = len(body) - whole * step
    if rest:
        trace.truncated_bytes = rest
        trace.problems.append(
            f"truncated last record: {rest} of {step} bytes after record {whole - 1}"
        )
    return trace


def _record(rec_struct: struct.Struct, version: int, buf: Any, offset: int,
            engines: type[IntEnum]) -> TraceRecord:
    v = rec_struct.unpack_from(buf, offset)
    if version >= 2:
        ts, addr, length, cmd, va, aux, ctx, eng, kind, dr, res, level, _ = v
    else:
        ts, addr, length, cmd, ctx, eng, kind, dr, res = v
        va = aux = level = 0
    return TraceRecord(
        timestamp_ns=ts, addr=addr, len=length, cmd_id=cmd, ctx=ctx,
        engine=_enum(engines, eng), kind=_enum(Kind, kind), dir=_enum(Dir, dr),
        result=res, va=va, aux=aux, level=level,
    )


def read_trace(path: Path, device: str | None = None) -> Trace:
    """Decode a trace file; ``device`` defaults to what its name says (:func:`device_of`)."""
    return decode(Path(path).read_bytes(), device or device_of(path))


# where a record's kind byte is: after timestamp..aux (v2) or ..ctx (v1), and the engine
_KIND_OFFSET = {2: struct.calcsize("<QQQQQQIB"), 1: struct.calcsize("<QQQQIB")}


def read_kinds(path: Path, kinds: Iterable[Kind], device: str | None = None) -> list[TraceRecord]:
    """Only the records of these kinds, in order, from a trace file: a fault or event
    scan over a multi-GiB trace without decoding the rest (which :func:`read_trace`
    would, into several times the file's size of memory). Header errors as
    :func:`decode`; a truncated last record is left out."""
    path = Path(path)
    engines = ENGINES[device or device_of(path)]
    with path.open("rb") as f:
        head = f.read(HDR_SIZE)
        header = decode(head, device or device_of(path)).header  # checks the header
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty body cannot be mapped
            return []
    with mm:
        version = 2 if header.version >= 2 else 1
        rec_struct = REC if version == 2 else REC_V1
        step = header.rec_size
        whole = (len(mm) - HDR_SIZE) // step
        # every record's kind byte, one bytes object, searched at C speed
        kind_bytes = mm[HDR_SIZE + _KIND_OFFSET[version]:HDR_SIZE + whole * step:step]
        wanted = re.compile(b"[" + b"".join(re.escape(bytes([int(k)])) for k in kinds) + b"]")
        return [_record(rec_struct, version, mm, HDR_SIZE + m.start() * step, engines)
                for m in wanted.finditer(kind_bytes)]


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
    bytes_by: Counter[str] = Counter()
    count_by: Counter[str] = Counter()
    by_engine: Counter[str] = Counter()
    for r in trace.records:
        by_engine[_name(r.engine)] += 1
        key = _name(r.kind) if r.is_event else f"{_name(r.kind)}/{_name(r.dir)}"
        bytes_by[key] += r.len
        count_by[key] += 1
    stamps = [r.timestamp_ns for r in trace.records]
    return TraceSummary(
        records=len(trace.records),
        commands=len({r.cmd_id for r in trace.records if r.kind == Kind.DATA}),
        bytes_by=dict(bytes_by),
        count_by=dict(count_by),
        errors=sum(1 for r in trace.records if not r.ok),
        first_ns=min(stamps) if stamps else None,
        last_ns=max(stamps) if stamps else None,
        problems=list(trace.problems),
        by_engine=dict(by_engine),
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


def check_records(exp: Expectation, records: Sequence[TraceRecord]) -> list[str]:
    """Problems with one request's DATA records (empty list: all good).

    Device READs must lie within the src maps and WRITEs within the dst maps
    (a FILL has only dst maps, so it must not read data at all), every DMA
    must have succeeded, and the bytes read (COPY) and written must equal the
    requested length.
    """
    problems: list[str] = []
    src = _merged(m for m in exp.maps if m.role == "src")
    dst = _merged(m for m in exp.maps if m.role == "dst")
    read = written = 0
    for r in records:
        if r.kind != Kind.DATA:
            continue
        where = f"{exp.name}: DATA {_name(r.dir)} 0x{r.addr:x}+{r.len} (cmd {r.cmd_id})"
        if not r.ok:
            problems.append(f"{where} failed with MemTxResult {r.result}")
        if r.dir == Dir.READ:
            read += r.len
            if not exp.is_copy:
                problems.append(f"{where}: a fill must not read data")
            elif not _covered(src, r.addr, r.end):
                problems.append(f"{where} is outside every src mapping")
        elif r.dir == Dir.WRITE:
            written += r.len
            if not _covered(dst, r.addr, r.end):
                problems.append(f"{where} is outside every dst mapping")
        else:
            problems.append(f"{where}: unknown direction")
    if exp.is_copy and read != exp.length:
        problems.append(f"{exp.name}: device read {read} bytes, request was {exp.length}")
    if written != exp.length:
        problems.append(f"{exp.name}: device wrote {written} bytes, request was {exp.length}")
    return problems


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
    records = trace.records
    if only_first:
        cut = next((i for i, r in enumerate(records) if r.kind != Kind.EV_CLOCK_SYNC
                    and (r.va or r.engine == Engine.MMU
                         or r.kind not in (Kind.CMD_FETCH, Kind.CPL_WRITE, Kind.DATA))),
                   len(records))
        records = records[:cut]
    # XFER jobs are the copy engine's bus-address (va 0) DMA; MIGRATE's is
    # also va 0 but on the MIGRATE engine
    data = [r for r in records
            if r.kind == Kind.DATA and r.va == 0 and r.engine == Engine.COPY]
    if expectations and all(e.ctx is not None for e in expectations):
        # Only the workload's own contexts (the driver may DMA for itself too).
        ctxs = {e.ctx for e in expectations}
        data = [r for r in data if r.ctx in ctxs]
    if expectations and all(e.ncmds is not None for e in expectations):
        # A command's DATA records run from its first one to its completion
        # (CPL_WRITE with its id); jobs may interleave (the engine works in
        # chunks) and ids may repeat once a command has completed.
        ctx_ok = {e.ctx for e in expectations} if all(
            e.ctx is not None for e in expectations) else None
        ordered: list[list[TraceRecord]] = []
        open_: dict[int, list[TraceRecord]] = {}
        for r in records:
            if ctx_ok is not None and r.ctx not in ctx_ok:
                continue
            if r.kind == Kind.DATA and r.va == 0 and r.engine == Engine.COPY:
                group = open_.get(r.cmd_id)
                if group is None:
                    group = open_[r.cmd_id] = []
                    ordered.append(group)
                group.append(r)
            elif r.kind == Kind.CPL_WRITE:
                open_.pop(r.cmd_id, None)
        want = sum(e.ncmds or 0 for e in expectations)
        if len(ordered) != want:
            problems.append(
                f"trace has DATA records for {len(ordered)} commands, the workload reported {want}"
            )
            return problems + _check_pooled(expectations, data)
        i = 0
        for exp in expectations:
            n = exp.ncmds or 0
            recs = [r for g in ordered[i:i + n] for r in g]
            i += n
            problems.extend(check_records(exp, recs))
        return problems
    return problems + _check_pooled(expectations, data)


def _check_pooled(expectations: Sequence[Expectation], data: Sequence[TraceRecord]) -> list[str]:
    pooled = Expectation(
        name="all requests",
        length=0,
        maps=tuple(m for e in expectations for m in e.maps),
    )
    problems = []
    for p in check_records(pooled, data):
        if "bytes, request was" not in p:  # totals checked below
            problems.append(p)
    want_w = sum(e.length for e in expectations)
    want_r = sum(e.length for e in expectations if e.is_copy)
    got_w = sum(r.len for r in data if r.dir == Dir.WRITE)
    got_r = sum(r.len for r in data if r.dir == Dir.READ)
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


def leaf_of(rec: TraceRecord) -> Translation | Literal[False] | None:
    """What a PTW record says about the walk it is part of.

    Returns a :class:`Translation` for a valid leaf (a level-0 entry, or a
    level-1 entry with PTE_LEAF), ``None`` when the walk ended on a
    non-present entry (no translation), ``False`` for an intermediate
    table entry (the walk goes on).
    """
    pte = rec.aux
    if not pte & PTE_VALID:
        return None
    if rec.level == 0 or (rec.level == 1 and pte & PTE_LEAF):
        size = 1 << pt_shift(rec.level)
        base = rec.va & ~(size - 1)
        return Translation(va=base, size=size, pa=pte & PTE_ADDR_MASK & ~(size - 1), index=-1,
                           vram=bool(pte & PTE_VRAM))
    return False


def check_invalidations(records: Sequence[TraceRecord], limit: int = 50) -> InvalidateCheck:
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
    """
    out = InvalidateCheck()
    # ctx -> {va >> 12: Translation} and {va >> 21: Translation}
    small: dict[int, dict[int, Translation]] = {}
    huge: dict[int, dict[int, Translation]] = {}
    hshift = pt_shift(1)
    paired: set[int] = set()  # WRITE records already checked with their READ

    def problem(text: str) -> None:
        out.problem_count += 1
        if len(out.problems) < limit:
            out.problems.append(text)

    for i, r in enumerate(records):
        if r.kind == Kind.PTW:
            if not r.ok:  # the entry was not read: no outcome
                continue
            leaf = leaf_of(r)
            if leaf is False:
                continue
            out.walks += 1
            if leaf is None:
                # Nothing maps the walked page: the device missed in its TLB
                # for it, so no translation of that page was cached. Other
                # pages under the same cleared entry keep theirs until an
                # invalidation: a driver clears entries (and detaches tables)
                # before the fence, and a job may legitimately go on using
                # its cached translations until the fence completes.
                page = 1 << PAGE_SHIFT
                _drop(small.get(r.ctx), huge.get(r.ctx), r.va & ~(page - 1), page)
            elif r.level == 0:
                small.setdefault(r.ctx, {})[r.va >> PAGE_SHIFT] = Translation(
                    leaf.va, leaf.size, leaf.pa, i, leaf.vram)
            else:
                huge.setdefault(r.ctx, {})[r.va >> hshift] = Translation(
                    leaf.va, leaf.size, leaf.pa, i, leaf.vram)
        elif r.kind == Kind.EV_TLB_INV:
            out.invalidations += 1
            if r.aux == ALL or r.va + r.aux > ALL:
                small.pop(r.ctx, None)
                huge.pop(r.ctx, None)
            else:
                _drop(small.get(r.ctx), huge.get(r.ctx), r.va, r.aux)
        elif r.kind in (Kind.DATA, Kind.VRAM) and r.va:
            # VRAM accesses of VA jobs (PTE_VRAM pages) are checked like DMA:
            # reaching a VRAM page through a stale translation is the same bug.
            if i in paired:
                continue
            nxt = records[i + 1] if i + 1 < len(records) else None
            if (nxt is not None and nxt.kind in (Kind.DATA, Kind.VRAM) and r.dir == Dir.READ
                    and nxt.dir == Dir.WRITE and nxt.va == r.va and nxt.cmd_id == r.cmd_id
                    and nxt.ctx == r.ctx and nxt.len == r.len and nxt.addr != r.addr):
                # READ_VA / WRITE_VA: one side is the VA, the other a bus address
                # (tagged with the same va). One of them must be the translation.
                paired.add(i + 1)
                out.data_checked += 2
                side_r = _translated(i, r, small, huge)
                side_w = _translated(i + 1, nxt, small, huge)
                out.pages_checked += max(len(side_r), 1)
                if any(side_r) and any(side_w):  # neither side is the translated one
                    problems = [p for p in (*side_r, *side_w) if p]
                    stale = [p for p in problems if "no translation" in p]
                    problem((stale or problems)[0])
                continue
            out.data_checked += 1
            found = _translated(i, r, small, huge)
            out.pages_checked += len(found)
            for p in found:
                if p:
                    problem(p)
    return out


def _translated(i: int, r: TraceRecord, small: dict[int, dict[int, Translation]],
                huge: dict[int, dict[int, Translation]]) -> list[str | None]:
    """Per 4 KiB page of DATA record ``r``: None if its bus address is what the
    current translation of its va gives, else the problem."""
    page = 1 << PAGE_SHIFT
    hshift = pt_shift(1)
    out: list[str | None] = []
    va, addr, left = r.va, r.addr, r.len
    while left > 0:
        chunk = min(left, page - (va & (page - 1)))
        cands = [t for t in (small.get(r.ctx, {}).get(va >> PAGE_SHIFT),
                             huge.get(r.ctx, {}).get(va >> hshift)) if t is not None]
        kind = r.kind.name if isinstance(r.kind, Kind) else r.kind
        where = (f"record {i} (t={r.timestamp_ns}): {kind} {_name(r.dir)} cmd={r.cmd_id} "
                 f"ctx={r.ctx} va=0x{va:x} addr=0x{addr:x}")
        if not cands:
            out.append(f"{where}: no translation of this page since the last TLB "
                       "invalidation covering it (a stale TLB entry was used)")
        else:
            t = max(cands, key=lambda t: t.index)
            want = t.pa + (va - t.va)
            space = "VRAM offset" if t.vram else "bus address"
            out.append(None if want == addr and t.vram == (r.kind == Kind.VRAM) else
                       f"{where}: the current translation (PTW record {t.index}) maps it "
                       f"to {space} 0x{want:x}")
        va, addr, left = va + chunk, addr + chunk, left - chunk
    return out


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


def check_vram_lifetime(records: Sequence[TraceRecord], limit: int = 50) -> VramCheck:
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
    """
    import bisect

    out = VramCheck()
    # VRAM page number (offset >> 12) -> record indices and directions of its copies
    copies: dict[int, list[int]] = {}
    is_in: dict[int, list[bool]] = {}
    uses: list[tuple[int, int, TraceRecord, str]] = []  # (index, page, record, what)

    def problem(text: str) -> None:
        out.problem_count += 1
        if len(out.problems) < limit:
            out.problems.append(text)

    for i, r in enumerate(records):
        if r.kind == Kind.DATA and r.engine == Engine.MIGRATE:
            if not r.ok or r.dir not in (Dir.READ, Dir.WRITE):
                continue
            page = r.aux >> PAGE_SHIFT
            copies.setdefault(page, []).append(i)
            is_in.setdefault(page, []).append(r.dir == Dir.READ)
            if r.dir == Dir.READ:
                out.copies_in += 1
            else:
                out.copies_out += 1
        elif r.kind == Kind.PTW and r.ok:
            leaf = leaf_of(r)
            if not isinstance(leaf, Translation) or not leaf.vram:
                continue
            out.walks += 1
            for p in range(leaf.pa >> PAGE_SHIFT, (leaf.pa + leaf.size) >> PAGE_SHIFT):
                uses.append((i, p, r, "walk"))
        elif r.kind == Kind.VRAM and r.va:
            out.accesses += 1
            last = (r.addr + max(r.len, 1) - 1) >> PAGE_SHIFT
            for p in range(r.addr >> PAGE_SHIFT, last + 1):
                uses.append((i, p, r, "access"))

    reported: set[tuple[int, int]] = set()  # one problem per record and page
    for i, page, r, what in uses:
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
        if what == "walk":
            problem(f"record {i} (t={r.timestamp_ns}): ctx={r.ctx} walk of va=0x{r.va:x} "
                    f"found a leaf mapping VRAM offset 0x{off:x}: {why}")
        else:
            problem(f"record {i} (t={r.timestamp_ns}): {_name(r.dir)} cmd={r.cmd_id} "
                    f"ctx={r.ctx} va=0x{r.va:x} touched VRAM offset 0x{off:x}: {why}")
    return out

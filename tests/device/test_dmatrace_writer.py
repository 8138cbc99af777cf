"""The devices' trace writer: zstd frames off the big lock, counted drops.

hmm-common/dmatrace.c hands chunks of records to a thread of the device
that compresses each into one zstd frame; when that thread cannot keep up,
chunks are dropped, counted (QOM "dmatrace-dropped") and announced in the
stream (a skippable frame), while the VM keeps running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import threading
import time
from pathlib import Path

import pytest
import zstandard
from hmmgpu import DST, TRACE_HDR, Gpu, H, Launch, fill, parse_trace
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.checks import tracefile

pytestmark = pytest.mark.device

FILL_KINDS = [H.TRACE_CMD_FETCH, H.TRACE_DATA, H.TRACE_CPL_WRITE]
# Set UPDATE_TRACE_FIXTURE=1 to refresh the unit tests' device-written samples.
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "data"


def fills(n: int, first_id: int) -> list:
    """n FILLs of one page each, distinct cmd_ids and pages."""
    return [fill(DST + (i % 256) * 4096, 4096, i & 0xFF, cmd_id=first_id + i) for i in range(n)]


def run_batches(gpu: Gpu, batches: int, per_batch: int) -> int:
    """Run batches of FILLs (each a full ring); returns how many ran."""
    done = 0
    for b in range(batches):
        cpls = gpu.run(*fills(per_batch, 1 + b * per_batch))
        assert all(c.status == H.ERR_NONE for c in cpls)
        done += per_batch
    return done


def test_trace_is_zstd_frames_with_the_commands_records(launch: Launch, tmp_path: Path) -> None:
    """On disk: independent zstd frames, the first the header alone; decoded, the
    records the commands issued; much smaller than the raw stream."""
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", "dmatrace-flush-ms=0", qmp=True,
                 extra=("-chardev", f"file,id=t0,path={path}"))
    gpu.setup(cmdq_size=256, cplq_size=256)
    (cpl,) = gpu.run(fill(DST, 4096, 0x5A, cmd_id=0xF111))
    assert cpl.status == H.ERR_NONE
    n = run_batches(gpu, 8, 255)

    assert tracefile.is_compressed(path)
    idx = tracefile.scan(path)
    assert idx.partial_tail == 0 and idx.drops == [] and gpu.qom_get("dmatrace-dropped") == 0
    assert idx.frames[0].content_size == TRACE_HDR.size  # the header is written at realize
    assert len(idx.frames) >= 3
    # every frame decodes on its own: a reader can start at any frame
    raw = path.read_bytes()
    dctx = zstandard.ZstdDecompressor()
    pieces = [dctx.decompress(raw[f.offset:f.offset + f.size]) for f in idx.frames]
    data = b"".join(pieces)
    assert data == tracefile.read_bytes(path) and len(data) == idx.decoded_size
    # skipping: frames before the offset are not needed
    skip = idx.frames[0].content_size + idx.frames[1].content_size + 64
    assert b"".join(tracefile.iter_chunks(path, skip=skip)) == data[skip:]

    magic, version, _, devfn, _ = TRACE_HDR.unpack_from(data, 0)
    assert (magic, version, devfn) == (H.TRACE_MAGIC, H.TRACE_VERSION, gpu.devfn)
    recs = parse_trace(data)
    first = [r for r in recs if r.cmd_id == 0xF111]
    assert [r.kind for r in first] == FILL_KINDS
    assert (first[1].addr, first[1].length, first[1].dir) == (DST, 4096, H.DIR_WRITE)
    assert len(recs) == 3 * (n + 1)
    # flush_ms 0 writes each run as its own (small) frame; still well under raw
    assert len(raw) * 3 < len(data), (len(raw), len(data))
    if os.environ.get("UPDATE_TRACE_FIXTURE"):
        FIXTURES.mkdir(exist_ok=True)
        shutil.copy(path, FIXTURES / "dmatrace-frames.zst.bin")


def test_trace_readable_while_written(launch: Launch, tmp_path: Path) -> None:
    """With the default flush delay the running device's file decodes, complete
    frames only, and grows to hold every record without a stop."""
    path = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=t0", extra=("-chardev", f"file,id=t0,path={path}"))
    gpu.setup(cmdq_size=256, cplq_size=256)
    n = run_batches(gpu, 4, 255)
    deadline = time.monotonic() + 5.0
    recs: list = []
    while time.monotonic() < deadline:
        recs = parse_trace(tracefile.read_bytes(path))
        if len(recs) == 3 * n:
            break
        time.sleep(0.02)
    assert len(recs) == 3 * n
    assert tracefile.scan(path).partial_tail == 0


def _qmp(gpu: Gpu, timeout: float = 10.0) -> QEMUMonitorProtocol:
    """A QMP connection, or a failure if QEMU's main loop does not greet in time
    (connect() itself has no timeout: a stalled main loop would hang the test)."""
    assert gpu.qt.qmp_path is not None
    mon = QEMUMonitorProtocol(str(gpu.qt.qmp_path))
    t = threading.Thread(target=mon.connect, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"QMP did not answer within {timeout}s: main loop stalled"
    mon.settimeout(timeout)
    return mon


def _dropped(gpu: Gpu) -> int:
    mon = _qmp(gpu)
    try:
        return mon.cmd("qom-get", path="/machine/peripheral/gpu0", property="dmatrace-dropped")
    finally:
        mon.close()


def _small_fifo(path: Path) -> int:
    """A FIFO of one page, held open (read and write) so it outlives QEMU's end."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)
    return fd


def _drain(fd: int, out: bytearray, stop: threading.Event) -> None:
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            with contextlib.suppress(BlockingIOError):  # another reader won the race
                out += os.read(fd, 1 << 16)


def test_slow_consumer_drops_counted_and_marked(launch: Launch, tmp_path: Path) -> None:
    """A consumer that does not read: the writer thread blocks, the device and
    QMP go on, whole chunks are dropped and counted, and once the consumer reads
    again, a VM stop writes everything still queued, the drop marker first."""
    fifo = tmp_path / "trace.fifo"
    fd = _small_fifo(fifo)
    stop = threading.Event()
    try:
        gpu = launch("dmatrace=t0", "dmatrace-queue=1", qmp=True,
                     extra=("-chardev", f"pipe,id=t0,path={fifo}"))
        gpu.setup(cmdq_size=256, cplq_size=256)
        n = 0
        for _ in range(40):  # until the writer is stuck and a chunk had no room
            n += run_batches(gpu, 1, 255)
            if _dropped(gpu):
                break
        dropped = _dropped(gpu)
        assert dropped > 0
        # the writer is blocked on the full FIFO; QMP and the device still answer
        mon = _qmp(gpu)
        qom = {"path": "/machine/peripheral/gpu0", "property": "dmatrace-dropped"}
        try:
            t0 = time.monotonic()
            assert mon.cmd("query-status")["running"] is True
            assert time.monotonic() - t0 < 2.0
            n += run_batches(gpu, 2, 255)
            assert mon.cmd("qom-get", **qom) >= dropped

            # the consumer reads again; stop writes the rest and returns after it
            got = bytearray()
            reader = threading.Thread(target=_drain, args=(fd, got, stop), daemon=True)
            reader.start()
            mon.cmd("stop")
            dropped = mon.cmd("qom-get", **qom)
            time.sleep(0.3)  # what stop wrote is in the pipe: let the reader take it
        finally:
            mon.close()
        stop.set()
        reader.join(timeout=10)
    finally:
        stop.set()
        os.close(fd)

    out = tmp_path / "dmatrace.bin"
    out.write_bytes(bytes(got))
    idx = tracefile.scan(out)
    assert idx.partial_tail == 0
    assert idx.drops, "no drop marker in the stream"
    assert sum(d.records for d in idx.drops) == dropped
    assert idx.drops[-1].total == dropped
    recs = parse_trace(tracefile.read_bytes(out))
    # nothing lost beyond what was counted: written + dropped = every record
    assert len(recs) + dropped == 3 * n
    # the marker stands where the records are missing: fill runs break there
    for d in idx.drops:
        assert (d.at - TRACE_HDR.size) % 64 == 0
    if os.environ.get("UPDATE_TRACE_FIXTURE"):
        FIXTURES.mkdir(exist_ok=True)
        shutil.copy(out, FIXTURES / "dmatrace-drops.zst.bin")

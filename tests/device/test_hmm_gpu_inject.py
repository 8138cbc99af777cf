"""hmm-gpu's inject-dma-fault knob over qtest: data DMAs sent astray.

``qom-set gpu0 inject-dma-fault N`` makes the next N data DMAs go to their
bus address with bit 47 flipped. Behind a vIOMMU that is a DMA remapping
fault (tests/e2e/test_iommu.py); here, without one, it is an access to
nothing: the command fails with a DMA error, guest RAM is untouched, and
the count runs down to zero so later commands work again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hmmgpu import DST, SRC, Gpu, H, Launch, copy, parse_trace

from harness.checks import tracefile

pytestmark = pytest.mark.device

ASTRAY = 1 << 47


def qom_set(gpu: Gpu, prop: str, value: int) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    assert gpu.qt.qmp_path is not None
    mon = QEMUMonitorProtocol(str(gpu.qt.qmp_path))
    mon.connect()
    mon.settimeout(10)
    try:
        mon.cmd("qom-set", path="/machine/peripheral/gpu0", property=prop, value=value)
    finally:
        mon.close()


def test_knob_sends_data_dma_astray_once(launch: Launch, tmp_path: Path) -> None:
    trace = tmp_path / "dmatrace.bin"
    gpu = launch("dmatrace=tr0", "dmatrace-flush-ms=0", qmp=True,
                 extra=("-chardev", f"file,id=tr0,path={trace}"))
    gpu.setup()
    assert gpu.qom_get("inject-dma-fault") == 0
    gpu.qt.write(SRC, b"payload!")
    gpu.qt.write(DST, b"........")

    qom_set(gpu, "inject-dma-fault", 1)
    (cpl,) = gpu.run(copy(SRC, DST, 8, cmd_id=1))
    assert (cpl.status, cpl.nbytes) == (H.ERR_DMA_READ, 0)
    assert gpu.error_addr() == SRC  # the address the guest gave
    assert gpu.qt.read(DST, 8) == b"........"
    assert gpu.qom_get("inject-dma-fault") == 0
    assert gpu.qom_get("dma-errors") == 1

    (cpl,) = gpu.run(copy(SRC, DST, 8, cmd_id=2))  # used up: works again
    assert (cpl.status, cpl.nbytes) == (H.ERR_NONE, 8)
    assert gpu.qt.read(DST, 8) == b"payload!"
    assert gpu.qt.alive()

    # the device flushes its trace at the end of every engine run
    data = [r for r in parse_trace(tracefile.read_bytes(trace)) if r.kind == H.TRACE_DATA]
    # the record shows where the DMA really went, and that it failed
    assert (data[0].addr, data[0].result != 0) == (SRC ^ ASTRAY, True)
    assert [(r.addr, r.result) for r in data[1:]] == [(SRC, 0), (DST, 0)]


def test_knob_applies_to_migrate_too(launch: Launch) -> None:
    gpu = launch(qmp=True)
    gpu.setup()
    gpu.qt.write(SRC, b"\x5a" * 4096)
    qom_set(gpu, "inject-dma-fault", 1)
    cpl = gpu.to_vram([(SRC, 0)])
    assert (cpl.status, cpl.nbytes) == (H.ERR_DMA_READ, 0)
    cpl = gpu.to_vram([(SRC, 0)])
    assert (cpl.status, cpl.nbytes) == (H.ERR_NONE, 4096)


def test_spurious_faults_on_a_mapped_page(launch: Launch) -> None:
    """inject-spurious-faults N: the next N translations fault although the page is
    mapped; replays then go through, and the count runs down to zero."""
    from hmmgpu import PageTables, read_va

    gpu = launch(qmp=True)
    gpu.setup(intr_mask=H.INTR_CPL | H.INTR_ERROR | H.INTR_FAULT)
    pt = PageTables(gpu, 4)
    pt.set_ctx(1)
    pt.enable()
    gpu.setup_faultq()
    va, pa = 0x7F12_3460_0000, 0x0300_0000
    pt.map(1, va, pa, H.PTE_READ | H.PTE_WRITE)
    gpu.qt.write(pa, b"mapped!!")

    qom_set(gpu, "inject-spurious-faults", 2)
    gpu.push(read_va(va, DST, 8, ctx=1, cmd_id=0x51, flags=H.CMD_F_IRQ))
    for round_ in range(2):  # two injected faults, each on the mapped page
        (rec,) = gpu.faults(1)
        assert (rec.va, rec.cmd_id, rec.reason) == (va, 0x51, H.FAULT_NOT_PRESENT), round_
        assert gpu.pending_cpls() == 0
        gpu.set_reg("FAULT_REPLAY", 1)
    (c,) = gpu.reap(1)
    assert (c.cmd_id, c.status, c.nbytes) == (0x51, H.ERR_NONE, 8)
    assert gpu.qt.read(DST, 8) == b"mapped!!"
    assert gpu.qom_get("inject-spurious-faults") == 0
    assert gpu.qom_get("injected-faults") == 2
    assert gpu.qom_get("faults-raised") == 2

"""intel-iommu end to end: translation is on, the device's DMA uses IOVAs,
and a DMA the IOMMU refuses fails the run.

The DMA remapping fault is provoked from the host: hmm-gpu's
``inject-dma-fault`` knob (QOM, set over QMP while the guest runs) sends
the device's next data DMA to its bus address with bit 47 flipped, an IOVA
nothing maps, as a device that corrupted an address would. The guest's DMAR
driver reports the fault on the console, QEMU's intel-iommu on its stderr.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.build import Artifacts
from harness.checks import dmatrace
from harness.core import config
from harness.core.results import Results, Status
from harness.guest.vm import AccelProbe
from harness.run import runner
from harness.scenarios import Scenario, Session
from harness.scenarios.smoke import Smoke

pytestmark = pytest.mark.e2e

ASTRAY = 1 << 47
ONE_GPU = "devices: [{type: hmm-gpu}]\n"


class GuestRam:
    """A test-only scenario: note the guest's RAM ranges (/proc/iomem)."""

    name = "guest-ram"

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def run(self, s: Session) -> None:
        out = s.ssh.run("grep 'System RAM' /proc/iomem", 30).stdout
        for line in out.splitlines():
            m = re.match(r"\s*([0-9a-f]+)-([0-9a-f]+) : System RAM", line)
            if m:
                self.ranges.append((int(m.group(1), 16), int(m.group(2), 16) + 1))
        s.results.add_status("guest-ram", Status.PASS if self.ranges else Status.ERROR, out)

    def finish(self, s: Session) -> None:
        pass


class InjectDmaFault:
    """A test-only scenario: make gpu0's next data DMA go astray (QMP qom-set)."""

    name = "inject"

    def run(self, s: Session) -> None:
        assert s.guest.qmp is not None
        s.guest.qmp.execute("qom-set", {"path": "/machine/peripheral/gpu0",
                                        "property": "inject-dma-fault", "value": 1})
        s.results.add_status("inject", Status.PASS, "inject-dma-fault = 1 on gpu0")

    def finish(self, s: Session) -> None:
        pass


def run(artifacts: Artifacts, probe: AccelProbe, results: Path, yaml: str,
        scenarios: list[Scenario]) -> tuple[Results, list[tuple[int, int]]]:
    """Run ``scenarios`` after noting the guest's RAM; (results, RAM ranges)."""
    ram = GuestRam()
    res = runner.run(config.load_text(yaml, "test.yaml"), results, artifacts=artifacts,
                     probe=probe, scenarios=[ram, *scenarios])
    print(res.table())
    return res, ram.ranges


def statuses(res: Results) -> dict[str, Status]:
    return {t.path: t.status for t in res.tests}


def entry(res: Results, path: str) -> str:
    return next(t.log_excerpt for t in res.tests if t.path == path)


def in_ram(addr: int, ram: list[tuple[int, int]]) -> bool:
    return any(lo <= addr < hi for lo, hi in ram)


def data_addresses(results: Path) -> list[int]:
    trace = dmatrace.read_trace(results / "dmatrace-0.bin")
    return [r.addr for r in trace.records
            if r.kind == dmatrace.Kind.DATA and r.engine == dmatrace.Engine.COPY]


def test_smoke_under_intel_iommu_uses_iovas(artifacts: Artifacts, accel_probe: AccelProbe,
                                            tmp_path: Path) -> None:
    results = tmp_path / "iommu"
    res, ram = run(artifacts, accel_probe, results, "iommu: intel-iommu\n" + ONE_GPU, [Smoke()])
    st = statuses(res)
    assert st["iommu.enabled"] == Status.PASS, entry(res, "iommu.enabled")
    assert "0000:00:02.0 0x1234:0x4d47 group" in entry(res, "iommu.enabled")
    assert st["iommu.dmar-faults"] == Status.PASS
    assert {st[p] for p in ("driver.load", "smoke.copy", "smoke.fill", "smoke.dmatrace",
                            "smoke.counters", "console.splat")} == {Status.PASS}
    assert res.exit_code() == 0
    # Every data DMA went to an address that is not guest RAM: an IOVA, which
    # only the IOMMU turns into the buffer's guest-physical address.
    assert ram, "no System RAM in the guest's /proc/iomem"
    addrs = data_addresses(results)
    assert addrs and not [hex(a) for a in addrs if in_ram(a, ram)]
    assert "intel_iommu=on" in (results / "console.log").read_text()


def test_without_iommu_the_device_uses_guest_physical_addresses(
    artifacts: Artifacts, accel_probe: AccelProbe, tmp_path: Path
) -> None:
    """The contrast: the same DMA without a vIOMMU lands on guest RAM directly."""
    results = tmp_path / "off"
    res, ram = run(artifacts, accel_probe, results, ONE_GPU, [Smoke()])
    st = statuses(res)
    assert "iommu.enabled" not in st and "iommu.dmar-faults" not in st
    assert st["smoke.dmatrace"] == Status.PASS
    addrs = data_addresses(results)
    assert addrs and all(in_ram(a, ram) for a in addrs)


def test_dma_the_iommu_refuses_fails_the_run(artifacts: Artifacts, accel_probe: AccelProbe,
                                             tmp_path: Path) -> None:
    results = tmp_path / "fault"
    res, _ = run(artifacts, accel_probe, results, "iommu: intel-iommu\n" + ONE_GPU,
                 [InjectDmaFault(), Smoke()])
    st = statuses(res)
    assert st["iommu.enabled"] == Status.PASS
    faults = entry(res, "iommu.dmar-faults")
    assert st["iommu.dmar-faults"] == Status.FAIL, faults
    # the guest's report: the first data DMA of smoke's copy, a read, astray
    m = re.search(r"DMAR: \[DMA Read NO_PASID\] Request device \[00:02\.0\] "
                  r"fault addr (0x[0-9a-f]+)", faults)
    assert m, faults
    astray = int(m.group(1), 16)
    assert astray & ASTRAY
    assert "vtd_iommu_translate: detected translation failure (dev=00:02:00, " \
           f"iova={astray:#x})" in faults
    # the device failed the command cleanly (a device error, not a crash)
    assert st["smoke.copy"] == Status.FAIL
    assert '"status": 4' in entry(res, "smoke.copy")  # DMA_READ
    assert st["smoke.fill"] == Status.PASS  # and went on working
    assert res.devices["gpu0"]["dma-errors"] == 1
    # the trace shows where the DMA went, and the smoke check catches it too
    assert astray in data_addresses(results)
    assert st["smoke.dmatrace"] == Status.FAIL
    assert res.exit_code() == 1

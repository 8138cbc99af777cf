"""vIOMMU decisions on text captured from real 6.12 guests and QEMU 10.0.

iommu_listing_*.txt: harness.checks.iommu.GUEST_LISTING_CMD's output in a q35 guest
without a vIOMMU, with intel-iommu translating (the harness's command line)
and with intel-iommu in passthrough (``iommu.passthrough=1``).
iommu_dmar_fault.*: the console and QEMU stderr of a guest whose gpu0 was
made to DMA astray (``qom-set gpu0 inject-dma-fault 1``) during smoke.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks import iommu
from harness.core.results import Status

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_translated_guest_passes() -> None:
    entry = iommu.enabled_result(read("iommu_listing_translated.txt"), 0.4)
    assert entry.status == Status.PASS, entry.log_excerpt
    assert entry.path == "iommu.enabled"
    assert entry.extra["groups"] == {
        "0000:00:02.0": {"group": "2", "domain": "DMA"},
        "0000:00:03.0": {"group": "3", "domain": "DMA"},
        "0000:00:04.0": {"group": "4", "domain": "DMA"},
    }
    assert "0000:00:02.0 0x1234:0x4d47 group 2 DMA" in entry.log_excerpt


def test_guest_without_viommu_fails() -> None:
    entry = iommu.enabled_result(read("iommu_listing_off.txt"))
    assert entry.status == Status.FAIL
    assert "did not initialise" in entry.log_excerpt
    assert "0000:00:02.0 (hmm-gpu) is in no IOMMU group" in entry.log_excerpt


def test_passthrough_is_not_translation() -> None:
    entry = iommu.enabled_result(read("iommu_listing_passthrough.txt"))
    assert entry.status == Status.FAIL
    assert "did not initialise" not in entry.log_excerpt  # DMAR is up...
    assert ("0000:00:03.0 (hmm-gpu) is in IOMMU group 3 with a identity domain"
            in entry.log_excerpt)  # ...but the devices bypass it


def test_lazy_flush_domains_translate_too() -> None:
    text = read("iommu_listing_translated.txt").replace(" DMA\n", " DMA-FQ\n")
    assert iommu.enabled_result(text).status == Status.PASS


def test_no_hmm_gpu_in_the_guest_fails() -> None:
    text = "\n".join(ln for ln in read("iommu_listing_translated.txt").splitlines()
                     if "0x4d47" not in ln)
    entry = iommu.enabled_result(text)
    assert entry.status == Status.FAIL
    assert "no hmm-gpu PCI function" in entry.log_excerpt


def test_parse_listing() -> None:
    funcs, dmesg = iommu.parse_listing(read("iommu_listing_off.txt"))
    assert [f.bdf for f in funcs if f.is_hmm_gpu] == [
        "0000:00:02.0", "0000:00:03.0", "0000:00:04.0"]
    assert all(f.group is None and f.domain is None for f in funcs)
    assert dmesg[-1].endswith("DMA domain TLB invalidation policy: lazy mode")


def test_dmar_faults_on_a_real_console() -> None:
    lines = iommu.dmar_fault_lines(read("iommu_dmar_fault.console").splitlines())
    assert lines == [
        "[    2.487704] DMAR: DRHD: handling fault status reg 2",
        "[    2.487885] DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr "
        "0x8000ffd00000 [fault reason 0x06] PTE Read access is not set",
    ]


def test_vtd_errors_on_real_qemu_stderr() -> None:
    lines = iommu.vtd_error_lines(read("iommu_dmar_fault.stderr").splitlines())
    assert len(lines) == 3
    assert "vtd_iommu_translate: detected translation failure (dev=00:02:00, " \
           "iova=0x8000ffd00000)" in lines[1]
    assert "New fault is not recorded" in lines[2]


@pytest.mark.parametrize("line", [
    # drivers/iommu/intel/dmar.c's other two formats (dmar_fault_do_one)
    "[    9.0] DMAR: [INTR-REMAP] Request device [00:03.0] fault index 0x3 "
    "[fault reason 0x25] Blocked a compatibility format interrupt request",
    "[    9.0] DMAR: [DMA Write PASID 0x1] Request device [00:02.0] fault addr 0x1000 "
    "[fault reason 0x05] PTE Write access is not set",
])
def test_other_fault_formats(line: str) -> None:
    assert iommu.dmar_fault_lines([line]) == [line]


def test_a_clean_console_has_no_fault() -> None:
    console = read("iommu_listing_translated.txt").splitlines() + read("benign.txt").splitlines()
    assert iommu.dmar_fault_lines(console) == []
    entry = iommu.faults_result([], [])
    assert entry.status == Status.PASS and entry.path == "iommu.dmar-faults"


def test_faults_fail_the_run_with_their_lines() -> None:
    console = iommu.dmar_fault_lines(read("iommu_dmar_fault.console").splitlines())
    qemu = iommu.vtd_error_lines(read("iommu_dmar_fault.stderr").splitlines())
    entry = iommu.faults_result(console, qemu)
    assert entry.status == Status.FAIL
    assert entry.log_excerpt.startswith("2 DMAR fault line(s) on the guest console:\n")
    assert "fault addr 0x8000ffd00000" in entry.log_excerpt
    assert "3 intel-iommu error(s) on QEMU's stderr:" in entry.log_excerpt
    assert entry.extra == {"guest_faults": 2, "qemu_errors": 3}
    # QEMU's report alone (e.g. the guest's fault interrupt never came) also fails
    assert iommu.faults_result([], qemu).status == Status.FAIL

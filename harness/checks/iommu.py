"""vIOMMU checks: did the guest translate the devices' DMA, and did any DMA fault?

Two entries for a run with ``iommu: intel-iommu``:

- ``iommu.enabled``: the guest's DMAR driver initialised and every hmm-gpu
  sits in an IOMMU group whose default domain translates (``DMA`` or
  ``DMA-FQ``, not ``identity``). FAIL otherwise: the run asked for
  translation and did not get it.
- ``iommu.dmar-faults``: the guest's DMAR fault reports on the console
  (``DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr ...``,
  ``DMAR: DRHD: handling fault status reg 2``) and the translation errors
  QEMU's intel-iommu printed on its stderr (``vtd_iommu_translate: detected
  translation failure ...``). FAIL with those lines when there is any.

The decisions are pure functions of the text the guest and QEMU produced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.core.results import Status, TestResult

HMM_GPU_PCI_ID = ("0x1234", "0x4d47")  # qemu-devices/include/hmm_gpu_regs.h
TRANSLATED_DOMAINS = ("DMA", "DMA-FQ")
DMAR_READY = "DMAR: Intel(R) Virtualization Technology for Directed I/O"

# One line per PCI function: "BDF VENDOR DEVICE GROUP TYPE" ("-" when not in a group).
GUEST_LISTING_CMD = (
    "for d in /sys/bus/pci/devices/*; do "
    'g=-; t=-; if [ -e "$d/iommu_group" ]; then '
    'g=$(basename "$(readlink "$d/iommu_group")"); t=$(cat "$d/iommu_group/type" 2>/dev/null); fi; '
    'echo "${d##*/} $(cat "$d/vendor") $(cat "$d/device") $g ${t:--}"; done; '
    "echo '--- dmesg'; dmesg | grep -E 'DMAR|iommu' | tail -n 50"
)

# The guest's reports (drivers/iommu/intel/dmar.c), any kernel since 5.x:
#   DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr 0xffd00000 [fault reason 0x06] ...
#   DMAR: [INTR-REMAP] Request device [00:02.0] fault index 0x3 [fault reason 0x25] ...
#   DMAR: DRHD: handling fault status reg 2
_DMAR_FAULT_RE = re.compile(
    r"DMAR: (?:\[(?:DMA (?:Read|Write)|INTR-REMAP)[^\]]*\] Request device \[|"
    r"DRHD: handling fault status)"
)
# QEMU's intel-iommu (hw/i386/intel_iommu.c) reports guest-caused translation
# and invalidation errors with error_report_once("%s: ...", __func__), and
# faults it could not record for the guest without the function name.
_VTD_ERROR_RE = re.compile(
    r"\bvtd_\w+: |New fault is not recorded|There are pending faults already"
    r"|Next Fault Recording Reg is used"
)


@dataclass(frozen=True)
class PciFunction:
    bdf: str
    vendor: str
    device: str
    group: str | None  # IOMMU group number, None when not in one
    domain: str | None  # the group's default domain type ("DMA", "identity", ...)

    @property
    def is_hmm_gpu(self) -> bool:
        return (self.vendor, self.device) == HMM_GPU_PCI_ID


def parse_listing(text: str) -> tuple[list[PciFunction], list[str]]:
    """The PCI functions and the dmesg lines of :data:`GUEST_LISTING_CMD`'s output."""
    funcs: list[PciFunction] = []
    dmesg: list[str] = []
    in_dmesg = False
    for line in text.splitlines():
        if line.strip() == "--- dmesg":
            in_dmesg = True
            continue
        if in_dmesg:
            dmesg.append(line)
            continue
        parts = line.split()
        if len(parts) != 5:
            continue
        bdf, vendor, device, group, domain = parts
        funcs.append(PciFunction(bdf, vendor.lower(), device.lower(),
                                 None if group == "-" else group,
                                 None if domain == "-" else domain))
    return funcs, dmesg


def enabled_result(listing: str, duration: float = 0.0) -> TestResult:
    """``iommu.enabled`` from the guest's PCI/IOMMU-group listing and DMAR dmesg lines."""
    funcs, dmesg = parse_listing(listing)
    gpus = [f for f in funcs if f.is_hmm_gpu]
    problems = []
    if not any(DMAR_READY in line for line in dmesg):
        problems.append(f'the guest never printed "{DMAR_READY}": its DMAR driver did not '
                        "initialise (kernel without CONFIG_INTEL_IOMMU, or intel_iommu=off?)")
    if not gpus:
        problems.append("no hmm-gpu PCI function in the guest")
    for f in gpus:
        if f.group is None:
            problems.append(f"{f.bdf} (hmm-gpu) is in no IOMMU group: its DMA is not translated")
        elif f.domain not in TRANSLATED_DOMAINS:
            problems.append(f"{f.bdf} (hmm-gpu) is in IOMMU group {f.group} with a "
                            f"{f.domain or 'unknown'} domain, not a translating DMA domain")
    table = "\n".join(f"{f.bdf} {f.vendor}:{f.device} group {f.group or '-'} {f.domain or '-'}"
                      for f in funcs)
    text = "\n".join([*problems, table, *dmesg[-20:]]).strip()
    extra = {"groups": {f.bdf: {"group": f.group, "domain": f.domain} for f in gpus}}
    return TestResult("iommu.enabled", Status.FAIL if problems else Status.PASS, duration,
                      text, ["console.log"], extra)


def dmar_fault_lines(console: Iterable[str]) -> list[str]:
    """The guest's DMAR fault report lines."""
    return [line.rstrip("\r\n") for line in console if _DMAR_FAULT_RE.search(line)]


def vtd_error_lines(stderr: Iterable[str]) -> list[str]:
    """The translation/invalidation errors QEMU's intel-iommu printed."""
    return [line.rstrip("\r\n") for line in stderr if _VTD_ERROR_RE.search(line)]


def faults_result(console_faults: Sequence[str], qemu_errors: Sequence[str]) -> TestResult:
    """``iommu.dmar-faults``: FAIL with the fault lines when the guest or QEMU reported any."""
    if not console_faults and not qemu_errors:
        return TestResult("iommu.dmar-faults", Status.PASS, None,
                          "no DMAR fault in the guest, no translation error in QEMU",
                          ["console.log", "qemu.stderr"])
    parts = []
    if console_faults:
        parts.append(f"{len(console_faults)} DMAR fault line(s) on the guest console:")
        parts += console_faults[:40]
    if qemu_errors:
        parts.append(f"{len(qemu_errors)} intel-iommu error(s) on QEMU's stderr:")
        parts += qemu_errors[:20]
    return TestResult("iommu.dmar-faults", Status.FAIL, None, "\n".join(parts),
                      ["console.log", "qemu.stderr"],
                      {"guest_faults": len(console_faults), "qemu_errors": len(qemu_errors)})

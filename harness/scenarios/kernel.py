"""What the booted kernel offers, and why a scenario cannot run on it.

The payload builder writes ``/opt/hmmlab/kernel.json`` into the guest
(:func:`harness.build.payload.manifest`): the kernel's name, its features
(from its .config: "device_private", "test_hmm", ...), the W=1 warnings of
the driver build and which hmm-tests need device-private memory. Scenarios
read it once per session (:func:`guest_kernel`) and SKIP, with the reason
:func:`unmet` gives, what the kernel cannot do, instead of failing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.core.results import Status
from harness.scenarios import Session
from harness.scenarios.common import guest_run

MANIFEST = "/opt/hmmlab/kernel.json"
READ_TIMEOUT = 30.0

# scenario -> the kernel features it cannot run without
REQUIRES: dict[str, tuple[str, ...]] = {
    "svm-race": ("device_private",),      # its stress migrates to VRAM and back
    "dmirror-edge": ("device_private",),  # MIGRATE_TO_DEV edge cases
    "svm-migrate": ("device_private",),
    "vram-pressure": ("device_private",),
    "atomics": ("device_private",),
    "odp-gpu": ("device_private",),  # the ODP MR is over pages in hmm-gpu's VRAM
}

# feature -> what a kernel without it lacks, as a SKIP reason says it
MISSING: dict[str, str] = {
    "device_private": "kernel built without CONFIG_DEVICE_PRIVATE",
    "test_hmm": "kernel built without CONFIG_TEST_HMM (no lib/test_hmm.ko)",
    "gup_test": "kernel built without CONFIG_GUP_TEST",
    "swap": "kernel built without CONFIG_SWAP",
    "ramdisk": "kernel built without a built-in RAM disk (CONFIG_BLK_DEV_RAM=y) to swap on",
    "rdma_rxe": "kernel built without rxe, the software RoCE (CONFIG_RDMA_RXE=y)",
    "rdma_odp": "kernel built without RDMA on-demand paging "
                "(CONFIG_INFINIBAND_ON_DEMAND_PAGING=y)",
    "rdma_user": "kernel built without RDMA user verbs (CONFIG_INFINIBAND_USER_ACCESS=y)",
}


@dataclass(frozen=True)
class GuestKernel:
    name: str  # "6.12.107-1", "Debian stock 6.1", ...
    features: frozenset[str]
    release: str = ""
    driver_warnings: tuple[str, ...] = ()
    hmm_tests: tuple[str, ...] = ()  # "fixture.test"
    hmm_tests_device_private: frozenset[str] = field(default_factory=frozenset)
    hmm_tests_variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # its kselftest harness can leave tests out (-T), and survives a failing one
    hmm_tests_selectable: bool = True

    def hmm_test_names(self) -> list[str]:
        """Every hmm-tests result name ("fixture.variant.test"), as a run prints them."""
        out = []
        for t in self.hmm_tests:
            fixture, _, test = t.partition(".")
            out += [f"{fixture}.{v}.{test}" for v in self.hmm_tests_variants.get(fixture, ())]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestKernel:
        ht = data.get("hmm_tests") or {}
        return cls(
            name=str(data.get("name", "")),
            features=frozenset(data.get("features", ())),
            release=str(data.get("release", "")),
            driver_warnings=tuple(data.get("driver_warnings", ())),
            hmm_tests=tuple(ht.get("tests", ())),
            hmm_tests_device_private=frozenset(ht.get("device_private", ())),
            hmm_tests_variants={f: tuple(v) for f, v in (ht.get("variants") or {}).items()},
            hmm_tests_selectable=bool(ht.get("selectable", True)),
        )


def unmet(needs: Iterable[str], features: Iterable[str], kernel_name: str) -> str | None:
    """Why a kernel with ``features`` cannot do what ``needs`` lists, or None.

    E.g. "kernel built without CONFIG_DEVICE_PRIVATE (Debian stock 6.1)".
    """
    have = set(features)
    for f in needs:
        if f not in have:
            what = MISSING.get(f, f"kernel without {f}")
            return f"{what} ({kernel_name})" if kernel_name else what
    return None


def scenario_unmet(name: str, features: Iterable[str], kernel_name: str) -> str | None:
    """Why scenario ``name`` cannot run on this kernel, or None."""
    return unmet(REQUIRES.get(name, ()), features, kernel_name)


def guest_kernel(s: Session) -> GuestKernel | None:
    """The guest's kernel.json (read once per session); None if it cannot be read."""
    if "guest_kernel" not in s.state:
        c = guest_run(s, f"cat {MANIFEST}", READ_TIMEOUT)
        k = None
        if c.ok:
            try:
                k = GuestKernel.from_json(json.loads(c.out))
            except (ValueError, AttributeError, TypeError):
                k = None
        s.state["guest_kernel"] = k
    return s.state["guest_kernel"]


def skip_unsupported(s: Session, name: str) -> bool:
    """Add a SKIP entry for scenario ``name`` and return True if the kernel cannot run it."""
    if name not in REQUIRES:
        return False
    k = guest_kernel(s)
    if k is None:  # no manifest: run it and let the outcome speak
        return False
    why = scenario_unmet(name, k.features, k.name)
    if why is None:
        return False
    s.results.add_status(name, Status.SKIP, why)
    return True

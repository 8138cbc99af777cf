"""Scenarios: what runs in a booted guest.

A scenario's ``run`` gets a live :class:`Session` (guest, SSH, results); its
``finish`` runs after the guest has shut down, for checks on files QEMU wrote
(the DMA trace is complete only once QEMU has exited).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from harness.build import Artifacts
    from harness.core.config import RunConfig
    from harness.core.results import Results
    from harness.guest.ssh import SSHClient
    from harness.guest.vm import Guest

# name -> module with a make() returning the Scenario (imported only when used)
_REGISTRY: dict[str, str] = {
    "smoke": "harness.scenarios.smoke",
    "hmm-tests": "harness.scenarios.hmm_tests",
    "svm-mirror": "harness.scenarios.svm",
    "svm-invalidate": "harness.scenarios.svm",
    "svm-race": "harness.scenarios.svm",
    "svm-reclaim": "harness.scenarios.svm",
    "dmirror-edge": "harness.scenarios.svm",
    "svm-migrate": "harness.scenarios.dmem",
    "vram-pressure": "harness.scenarios.dmem",
    "atomics": "harness.scenarios.dmem",
    "dma-bounce": "harness.scenarios.bounce",
    "bench-svm": "harness.scenarios.bench",
    "odp-tests": "harness.scenarios.rdma_tests",
    "odp-rc": "harness.scenarios.odp",
    "odp-implicit": "harness.scenarios.odp",
    "odp-gpu": "harness.scenarios.odp_gpu",
    "perftest": "harness.scenarios.perftest",
    "bench-odp": "harness.scenarios.bench_odp",
    "odp-cross-vm": "harness.scenarios.odp_xvm",
}


@dataclass
class Session:
    cfg: RunConfig
    run_dir: Path
    guest: Guest
    ssh: SSHClient
    results: Results
    # scenario-private data carried from run() to finish()
    state: dict[str, Any] = field(default_factory=dict)
    # what booted the guest (harness.build.Artifacts), for a scenario that boots
    # a second one (odp-cross-vm)
    artifacts: Artifacts | None = None


class Scenario(Protocol):
    name: str

    def run(self, session: Session) -> None: ...

    def finish(self, session: Session) -> None: ...


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def create(name: str) -> Scenario:
    try:
        module = importlib.import_module(_REGISTRY[name])
    except KeyError:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(_REGISTRY)})") from None
    return module.make(name) if _takes_name(module) else module.make()


def _takes_name(module: object) -> bool:
    import inspect

    return bool(inspect.signature(module.make).parameters)  # type: ignore[attr-defined]

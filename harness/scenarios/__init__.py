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

from harness.core.catalog import SCENARIOS

if TYPE_CHECKING:
    from harness.build import Artifacts
    from harness.core.config import RunConfig
    from harness.core.results import Results
    from harness.guest.ftrace import Collector
    from harness.guest.ssh import SSHClient
    from harness.guest.vm import Guest

# name -> module with a make() returning the Scenario (imported only when used)
_REGISTRY: dict[str, str] = SCENARIOS


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
    # the guest's ftrace when the run collects it: told of module loads (a module's
    # trace events exist only once it is loaded)
    ftrace: Collector | None = None


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

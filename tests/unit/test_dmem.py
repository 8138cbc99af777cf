"""Device-memory scenarios and migration figures: registry, payload, bench rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import scenarios
from harness.build import payload
from harness.scenarios.dmem import ARGS, PRESSURE_KEYS, DmemWorkload

NEW = ("svm-migrate", "vram-pressure", "atomics")


@pytest.mark.parametrize("name", NEW)
def test_registered_and_built(name: str, repo_root: Path) -> None:
    sc = scenarios.create(name)
    assert isinstance(sc, DmemWorkload) and sc.name == name
    assert sc.binary == f"/opt/hmmlab/bin/{name}" and sc.args == ARGS[name]
    assert name in payload.WORKLOADS
    makefile = (repo_root / "guest-images" / "workloads" / "Makefile").read_text()
    progs = re.search(r"^PROGS := (.*)$", makefile, re.M)
    assert progs is not None and name in progs.group(1).split()
    assert (repo_root / "guest-images" / "workloads" / f"{name}.c").exists()


def test_vram_pressure_picks_the_smallest_vram_device() -> None:
    # no -d: the workload chooses the device (the default config's gpu2 has 8 MiB)
    assert "-d" not in ARGS["vram-pressure"].split()
    assert {"chunks_evicted", "bytes_moved", "pages_evicted"} <= set(PRESSURE_KEYS)


def test_atomics_is_time_bounded() -> None:
    args = ARGS["atomics"].split()
    assert float(args[args.index("-t") + 1]) <= 5

"""Device-memory scenarios and migration figures: registry, payload, bench rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import scenarios
from harness.build import payload
from harness.scenarios import bench
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


def test_bench_migration_rows() -> None:
    fig = bench.figures({
        "hmm-gpu": {"migrate_to_dev_MBps": 900.0, "migrate_to_sys_MBps": 1200.0,
                    "migrate_MBps": 1000.0, "cpu_fault_us": 30.0},
        "test_hmm": {"migrate_to_dev_MBps": 600.0, "migrate_to_sys_MBps": 600.0,
                     "migrate_MBps": 500.0, "cpu_fault_us": 15.0},
    })
    rows = {r["metric"]: r for r in fig["rows"]}
    assert rows["migrate_MBps"]["ratio"] == 2.0
    assert rows["migrate_to_sys_MBps"]["ratio"] == 2.0
    assert rows["cpu_fault_us"]["ratio"] == 2.0 and not rows["cpu_fault_us"]["higher_is_better"]
    assert rows["fault_latency_us"]["hmm-gpu"] is None
    text = bench.format_figures(fig)
    assert "migrate, both directions" in text and "CPU fault-back" in text

"""``hmmlab bench svm|odp|ftrace``: figures, each next to its baseline, round after round.

``svm``: HMM mirror figures, hmm_gpu.ko next to test_hmm.ko (the
``bench-svm`` scenario). ``odp``: perftest bandwidth between two cabled
hmm-nics next to rxe, ODP fault and invalidation costs, and hmm-nic's fault
round trip next to hmm-gpu's (``bench-odp``; its guest has the two hmm-nics
and a hmm-gpu whatever the configuration's devices, and the
7.2 kernel unless a configuration is given: rxe has ODP from 6.15). ``ftrace``:
what collecting the guest's ftrace costs, hmm-bench with tracing on next
to off (``bench-ftrace``). Boots
the configuration with only that scenario and gives the table (medians with
min-max, ratios, targets) to print from ``bench.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.config import DEFAULT_ROUNDS, DeviceConfig, RunConfig
from harness.core.results import EXIT_FAIL, Results

if TYPE_CHECKING:
    from harness.build import Artifacts

BENCHES = {"svm": "bench-svm", "odp": "bench-odp", "ftrace": "bench-ftrace"}
# two cabled hmm-nics for perftest; a hmm-gpu for the fault round trip to compare with
ODP_DEVICES = (DeviceConfig("hmm-nic", link="nic1"), DeviceConfig("hmm-nic"),
               DeviceConfig("hmm-gpu"))
ODP_KERNEL = "7.2"  # the default kernel of `hmmlab bench odp`: rxe has ODP from 6.15


def bench_config(cfg: RunConfig, which: str) -> RunConfig:
    """``cfg`` with its scenarios replaced by the benchmark's (odp: and its devices)."""
    cfg = dataclasses.replace(cfg, scenarios=(BENCHES[which],))
    if which == "odp":
        cfg = dataclasses.replace(cfg, devices=ODP_DEVICES)
    return cfg


def run_bench(cfg: RunConfig, which: str, results_dir: Path, *, rounds: int = DEFAULT_ROUNDS,
              build: Callable[[Path], Artifacts] | None = None,
              artifacts: Artifacts | None = None) -> tuple[Results, dict[str, Any] | None]:
    from harness.run import runner
    from harness.scenarios.bench import BenchSvm
    from harness.scenarios.bench_ftrace import BenchFtrace
    from harness.scenarios.bench_odp import BenchOdp

    scenario: BenchOdp | BenchSvm | BenchFtrace = (
        BenchOdp(rounds) if which == "odp" else BenchSvm(rounds))
    if which == "ftrace":
        scenario = BenchFtrace(rounds)
    res = runner.run(bench_config(cfg, which), results_dir, build=build, artifacts=artifacts,
                     scenarios=[scenario])
    path = results_dir / "bench.json"
    fig = json.loads(path.read_text()) if path.exists() else None
    return res, fig


def report(res: Results, fig: dict[str, Any] | None) -> tuple[str, int]:
    """The text to print and the exit status (1 unless every round measured both
    drivers, 2 if the run itself hit an infrastructure error)."""
    from harness.scenarios.bench import complete, format_figures
    from harness.scenarios.bench_odp import format_odp

    if fig is None:
        return res.table() + "\nno figures: the benchmark did not run", max(res.exit_code(),
                                                                             EXIT_FAIL)
    code = res.exit_code() or (0 if complete(fig) else EXIT_FAIL)
    text = format_odp(fig) if fig.get("what") == "perftest" else format_figures(fig)
    if code:
        text += "\n\n" + res.failures()
    return text, code

"""``hmmlab bench svm``: HMM mirror figures, hmm_gpu.ko next to test_hmm.ko.

Boots the configuration (the default one unless given) with only the
``bench-svm`` scenario, which runs hmm-bench against both drivers in the
same guest, round after round, and gives the table (medians with min-max,
ratios, targets) to print from ``bench.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import RunConfig
from harness.results import EXIT_FAIL, Results

if TYPE_CHECKING:
    from harness.build import Artifacts

BENCHES = {"svm": "bench-svm"}
DEFAULT_ROUNDS = 5  # here, not in the scenario: `hmmlab --help` needs it, not paramiko


def bench_config(cfg: RunConfig, which: str) -> RunConfig:
    """``cfg`` with its scenarios replaced by the benchmark's."""
    return dataclasses.replace(cfg, scenarios=(BENCHES[which],))


def run_bench(cfg: RunConfig, which: str, results_dir: Path, *, rounds: int = DEFAULT_ROUNDS,
              build: Callable[[Path], Artifacts] | None = None,
              artifacts: Artifacts | None = None) -> tuple[Results, dict[str, Any] | None]:
    from harness import runner
    from harness.scenarios.bench import BenchSvm

    res = runner.run(bench_config(cfg, which), results_dir, build=build, artifacts=artifacts,
                     scenarios=[BenchSvm(rounds)])
    path = results_dir / "bench.json"
    fig = json.loads(path.read_text()) if path.exists() else None
    return res, fig


def report(res: Results, fig: dict[str, Any] | None) -> tuple[str, int]:
    """The text to print and the exit status (1 unless every round measured both
    drivers, 2 if the run itself hit an infrastructure error)."""
    from harness.scenarios.bench import complete, format_figures

    if fig is None:
        return res.table() + "\nno figures: the benchmark did not run", max(res.exit_code(),
                                                                             EXIT_FAIL)
    code = res.exit_code() or (0 if complete(fig) else EXIT_FAIL)
    text = format_figures(fig)
    if code:
        text += "\n\n" + res.failures()
    return text, code

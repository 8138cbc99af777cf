"""One matrix cell, in its own process: ``python -m harness.matrix.cell``.

The scheduler starts one per cell so that a cell that crashes or hangs
cannot take the others down. The cell gets its run file (``cell.yaml``) and
the artifacts the scheduler built (``artifacts.pickle``: it builds
nothing itself) and runs :func:`harness.run.runner.run` into its own directory. Exit
status as ``hmmlab run``: 0, 1 or 2.

SIGTERM (the scheduler's timeout or Ctrl-C) unwinds like Ctrl-C: the runner
stops QEMU and writes the results.json it has so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

from harness.build import Artifacts
from harness.core.proc import die_with_parent, raise_interrupt


def save_artifacts(a: Artifacts, directory: Path) -> Path:
    """``artifacts.pickle`` for the cells (same code both sides: nothing is lost on the
    way) and ``artifacts.json`` for people; returns the pickle's path."""
    path = directory / "artifacts.pickle"
    path.write_bytes(pickle.dumps(a))
    (directory / "artifacts.json").write_text(json.dumps(_plain(a), indent=2) + "\n")
    return path


def load_artifacts(path: Path) -> Artifacts:
    a = pickle.loads(path.read_bytes())
    if not isinstance(a, Artifacts):
        raise TypeError(f"{path}: not build artifacts")
    return a


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, frozenset | set):
        return sorted(_plain(x) for x in v)
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.matrix.cell",
                                description="Run one matrix cell (the scheduler starts this).")
    p.add_argument("--config", type=Path, required=True, help="the cell's run file")
    p.add_argument("--artifacts", type=Path, required=True, help="artifacts.pickle")
    p.add_argument("--results", type=Path, required=True, help="the cell's results directory")
    p.add_argument("--kernel-tree", metavar="PATH")
    args = p.parse_args(argv)

    from harness.core import config
    from harness.core.config import ConfigError
    from harness.core.logs import setup_logging
    from harness.core.results import EXIT_INFRA
    from harness.run import runner

    signal.signal(signal.SIGTERM, raise_interrupt)
    # SIGTERM this cell when the scheduler dies, however it dies (the cell runs in a
    # session of its own, so nothing else would stop it and its QEMU)
    die_with_parent(signal.SIGTERM)
    setup_logging(verbose=False)
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"hmmlab cell: {e}", file=sys.stderr)
        return EXIT_INFRA
    if args.kernel_tree:
        cfg = dataclasses.replace(cfg, kernel_tree=args.kernel_tree)
    arts = load_artifacts(args.artifacts)
    try:
        res = runner.run(cfg, args.results.resolve(), artifacts=arts)
    except KeyboardInterrupt as e:  # results.json has what ran until then
        print(f"hmmlab cell: stopped ({e or 'interrupted'})", file=sys.stderr)
        return 128 + signal.SIGTERM
    print(res.table())
    return res.exit_code()


if __name__ == "__main__":
    sys.exit(main())

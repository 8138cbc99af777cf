"""Runs a matrix: build each kernel once, then every cell in its own process.

Results directory::

    results.json          the merged results (kind "matrix", version 2)
    matrix.yaml           the matrix file as it was
    run.log               the scheduler's log (builds included)
    build/<kernel>/       build logs and artifacts.json per distinct kernel
    cells/<cell>/         each cell's own results.json, console.log, ... and
                          cell.yaml (its run file), cell.log (its process's output)

A build failure makes that kernel's cells ERROR and never stops the others;
a cell whose process dies, hangs past its timeout or is interrupted gets a
``<cell>.run`` entry saying so and MISS for the scenarios it never reached.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import harness
from harness.core.files import atomic_write
from harness.core.progress import Progress, count, duration
from harness.core.results import Event, Status, rollup, status_for, verdict
from harness.matrix.expand import Cell, Matrix, safe
from harness.report.publish import write_reports

if TYPE_CHECKING:
    from harness.build import Artifacts

log = logging.getLogger("harness.matrix")

MATRIX_RESULTS_VERSION = 2
# What a QEMU process takes beyond the guest's RAM (TCG translation cache,
# device and slirp state, the cell's Python): what the job count allows for.
QEMU_OVERHEAD_MIB = 512
# A cell's process beyond its scenarios: boot, SSH, shutdown, the trace checks.
CELL_MARGIN = 300.0
VCPUS_PER_CORE = 2  # TCG guests' vCPUs that one host core carries (see default_jobs)
TERM_GRACE = 20.0  # after SIGTERM, time for a cell to stop QEMU and write its results
POLL = 0.5
RERUN_STATUSES = (Status.FAIL, Status.ERROR, Status.MISS)


# ---- decisions (pure) -----------------------------------------------------------------

@dataclass(frozen=True)
class BuildKey:
    """What one build_all call makes: the cells sharing it share the artifacts."""

    kernel: str
    flavor: str
    kernel_tree: str | None

    @property
    def label(self) -> str:
        """Directory name under build/: "6.12", "6.12-debug", "tree-linux"."""
        base = f"tree-{safe(Path(self.kernel_tree).name)}" if self.kernel_tree else self.kernel
        return base if self.flavor == "default" else f"{base}-{self.flavor}"

    @classmethod
    def of(cls, cell: Cell) -> BuildKey:
        c = cell.config
        return cls(c.kernel, c.flavor, c.kernel_tree)


def mem_available_mib(meminfo: str) -> int | None:
    """MemAvailable from /proc/meminfo's text, in MiB."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return None


def default_jobs(cpu_count: int, mem_mib: int | None, cells: Sequence[Cell]) -> tuple[int, str]:
    """How many cells run at once, and why.

    A TCG guest keeps about one host core busy whatever its vCPUs (its
    workloads mostly run one thread; 2-vCPU cells used about 0.75 core
    here), so one guest per core for every two vCPUs: on this
    2-core machine two 2-vCPU guests finished 4 cells in 166 s on average
    against 256 s one at a time (README "Matrix"). Each needs its RAM plus
    QEMU's own.
    """
    if not cells:
        return 1, "no cells"
    cpus = max(c.config.cpus for c in cells)
    mem = max(c.config.memory for c in cells) + QEMU_OVERHEAD_MIB
    per_cell = max(1, cpus // VCPUS_PER_CORE)
    jobs = max(1, cpu_count // per_cell)
    why = f"{count(cpu_count, 'core')}, {per_cell} per cell of {cpus} vCPUs"
    if mem_mib is not None:
        by_mem = max(1, mem_mib // mem)
        if by_mem < jobs:
            jobs, why = by_mem, f"{mem_mib} MiB available / {mem} MiB per cell"
    return min(jobs, len(cells)), why


# Guest commands of up to timeouts.scenario each that a scenario runs: hmm-tests
# one per column (harness.scenarios.hmm_tests.DRIVERS); others one, counted twice.
SCENARIO_COMMANDS = {"hmm-tests": 3}


def cell_timeout(cell: Cell) -> float:
    """When to kill a cell's process: the runner's own timeouts should fire first.

    Boot, then per scenario its commands of ``timeouts.scenario`` (at least
    two) and a minute of set-up, then a margin.
    """
    t = cell.config.timeouts
    return t.boot + sum(max(2, SCENARIO_COMMANDS.get(sc, 0)) * t.scenario + 60.0
                        for sc in cell.config.scenarios) + CELL_MARGIN


def rerun_selection(previous: dict[str, Any]) -> list[str]:
    """The cells of a previous matrix results.json that did not pass."""
    if previous.get("kind") != "matrix":
        raise ValueError("not the results of a matrix run (no \"kind\": \"matrix\")")
    return [c["name"] for c in previous["matrix"]["cells"]
            if c.get("status") in {str(s) for s in RERUN_STATUSES}]


def load_previous(results_dir: Path) -> dict[str, Any]:
    path = results_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _entry(cell: str, path: str, status: Status, why: str, files: Sequence[str] = (),
           seconds: float | None = None) -> dict[str, Any]:
    """A merged entry the scheduler adds itself; ``seconds`` only when it timed something."""
    return {"path": f"{cell}.{path}", "cell": cell, "status": str(status),
            "duration": None if seconds is None else round(seconds, 3), "log_excerpt": why,
            "output_files": list(files)}


def missing_scenarios(cell: Cell, tests: Sequence[dict[str, Any]], why: str,
                      event: Event = Event.KILLED) -> list[dict[str, Any]]:
    """MISS for each scenario of the cell with no entry among ``tests`` (merged paths):
    ``event`` (its cell not built, killed, interrupted) kept it from running."""
    status = status_for(event)
    out = []
    for sc in cell.config.scenarios:
        prefix = f"{cell.name}.{sc}"
        if not any(t["path"] == prefix or t["path"].startswith(prefix + ".") for t in tests):
            out.append(_entry(cell.name, sc, status, f"not run: {why}"))
    return out


# How a cell's process ends when SIGTERM or Ctrl-C stopped it (harness.matrix.cell, Python).
INTERRUPTED_EXITS = (128 + signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGINT)


def cell_end_event(exit_status: int | None) -> Event:
    """What a cell's process that did not end as a run does (0, 1, 2 and its
    results.json) went through: stopped by a signal someone sent it, or a crash."""
    return Event.INTERRUPTED if exit_status in INTERRUPTED_EXITS else Event.HARNESS_ERROR


def cell_tests(cell: str, dir_rel: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell's results.json entries as merged entries: paths and files prefixed."""
    out = []
    for t in doc.get("tests", []):
        e = dict(t)
        e["path"] = f"{cell}.{t['path']}"
        e["cell"] = cell
        e["output_files"] = [f"{dir_rel}/{f}" for f in t.get("output_files", [])]
        out.append(e)
    return out


@dataclass
class CellOutcome:
    """What became of one cell."""

    cell: Cell
    dir: str  # relative to the top results directory: "cells/<name>"
    tests: list[dict[str, Any]] = field(default_factory=list)  # merged form
    tables: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    exit_status: int | None = None  # of the cell's process; None if it never ran
    kernel_build: str = ""  # what the build made: "6.12.107-1+debug", "tree:v6.13-rc1-5-g..."

    @property
    def status(self) -> Status:
        return rollup([Status(t["status"]) for t in self.tests])

    def counts(self) -> dict[str, int]:
        out = {str(s): 0 for s in Status}
        for t in self.tests:
            out[t["status"]] += 1
        return out

    def bad(self) -> list[str]:
        return [t["path"].removeprefix(self.cell.name + ".") for t in self.tests
                if t["status"] in (Status.FAIL, Status.ERROR)]


def summary(tests: Sequence[dict[str, Any]], outcomes: Sequence[CellOutcome],
            nothing: str = "no test ran") -> dict[str, Any]:
    """Counts and the exit status; ``nothing``: why, when there are no cells at all."""
    counts = {str(s): 0 for s in Status}
    for t in tests:
        counts[t["status"]] += 1
    cells = {str(s): 0 for s in Status}
    for o in outcomes:
        cells[str(o.status)] += 1
    # a cell without a single entry never ran (the scheduler gives each one, but still)
    statuses = [Status(t["status"]) for t in tests] + [
        status_for(Event.INTERRUPTED) for o in outcomes if not o.tests]
    v = verdict(statuses, nothing)
    return {"total": len(tests), **counts,
            "cells": {"total": len(outcomes), **cells},
            "exit_status": v.exit_status,
            **({"reason": v.reason} if v.exit_status else {})}


def no_cells_reason(m: Matrix, chosen: Sequence[Cell]) -> str:
    """Why a matrix run of ``chosen`` cells of ``m`` tested nothing, should it be empty."""
    return m.empty_reason() if not m.cells else "no cell of the matrix was chosen"


def merge(m: Matrix, outcomes: Sequence[CellOutcome], environment: dict[str, Any],
          rerun_of: str | None = None) -> dict[str, Any]:
    """The top results.json of a matrix run."""
    tests = [t for o in outcomes for t in o.tests]
    tables: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        for name, table in o.tables.items():
            tables.setdefault(name, {})[o.cell.name] = table
    cells = [{
        "name": o.cell.name,
        "axes": dict(o.cell.axes),
        "dir": o.dir,
        "status": str(o.status),
        "duration": round(o.duration, 3),
        "summary": o.counts(),
        "kernel": o.cell.kernel_label,
        "kernel_build": o.kernel_build,
        "kernel_release": o.environment.get("kernel_release", ""),
        "origin": o.cell.origin,
        "exit_status": o.exit_status,
    } for o in outcomes]
    return {
        "version": MATRIX_RESULTS_VERSION,
        "kind": "matrix",
        "matrix": {
            "source": m.source,
            "kernel_tree": m.kernel_tree,
            "rerun_of": rerun_of,
            "axes": m.axes(),
            "varying": m.varying(),
            "cells": cells,
            "dropped": [{"axes": d.axes, "rule": d.rule} for d in m.dropped],
        },
        "environment": environment,
        "tests": tests,
        "tables": tables,
        "summary": summary(tests, outcomes,
                           no_cells_reason(m, [o.cell for o in outcomes])),
    }


# ---- building -------------------------------------------------------------------------------

BuildFn = Callable[[BuildKey, Path], "Artifacts"]


def build_with_harness(key: BuildKey, logdir: Path) -> Artifacts:
    from harness.build import build_all
    from harness.build.cache import Cache

    return build_all(Cache.default(), logdir, kernel=key.kernel, flavor=key.flavor,
                     kernel_tree=Path(key.kernel_tree) if key.kernel_tree else None)


@dataclass
class Built:
    key: BuildKey
    dir: Path
    artifacts: Artifacts | None = None
    error: str = ""
    seconds: float = 0.0

    def logs(self, top: Path) -> list[str]:
        return sorted(str(p.relative_to(top)) for p in self.dir.rglob("*")
                      if p.is_file() and not p.name.startswith("artifacts."))

    def to_dict(self, top: Path) -> dict[str, Any]:
        a = self.artifacts
        return {"kernel": self.key.kernel, "flavor": self.key.flavor,
                "kernel_tree": self.key.kernel_tree,
                "status": "PASS" if a is not None else "ERROR",
                "seconds": round(self.seconds, 1), "error": self.error,
                "kernel_version": a.kernel_version if a else "",
                "kernel_label": a.kernel_label if a else "",
                "logs": str(self.dir.relative_to(top))}


# ---- running -------------------------------------------------------------------------------

@dataclass
class _Running:
    outcome: CellOutcome
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    deadline: float
    killed: str = ""  # why the scheduler stopped it


CommandFn = Callable[[Cell, Path, Path], list[str]]


def cell_command(cell: Cell, cell_dir: Path, artifacts: Path) -> list[str]:
    """The command line of a cell's own process (:mod:`harness.matrix.cell`)."""
    argv = [sys.executable, "-m", "harness.matrix.cell", "--config", str(cell_dir / "cell.yaml"),
            "--artifacts", str(artifacts), "--results", str(cell_dir)]
    if cell.config.kernel_tree:
        argv += ["--kernel-tree", cell.config.kernel_tree]
    return argv


@dataclass
class Scheduler:
    matrix: Matrix
    cells: Sequence[Cell]
    dir: Path
    jobs: int
    jobs_reason: str = ""
    build: BuildFn = build_with_harness
    command: CommandFn = cell_command
    timeout: Callable[[Cell], float] = cell_timeout
    rerun_of: str | None = None
    interrupted: bool = False

    def run(self) -> dict[str, Any]:
        """Build, run every cell, write results.json; returns its content."""
        self.dir.mkdir(parents=True, exist_ok=True)
        from harness.run.runner import run_log

        t0 = time.monotonic()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        (self.dir / "matrix.yaml").write_text(self.matrix.text)
        outcomes = {c.name: CellOutcome(c, f"cells/{c.name}") for c in self.cells}
        builds: dict[BuildKey, Built] = {}
        with run_log(self.dir / "run.log"):
            log.info("matrix %s: %s, %d at a time (%s); results: %s", self.matrix.source,
                     count(len(self.cells), "cell"), self.jobs, self.jobs_reason, self.dir)
            for c in self.cells:
                d = self.dir / "cells" / c.name
                d.mkdir(parents=True, exist_ok=True)
                (d / "cell.yaml").write_text(c.text)
                # A cell that dies early must not be judged by an earlier run's results.
                (d / "results.json").unlink(missing_ok=True)
            try:
                builds = self._builds()
                self._run_cells(outcomes, builds)
            except KeyboardInterrupt:
                self.interrupted = True
                log.warning("interrupted: the cells not finished are MISS")
            for o in outcomes.values():
                if not o.tests:  # never started (interrupted before its turn)
                    why = "the matrix run was interrupted before this cell started"
                    o.tests = [_entry(o.cell.name, "run", status_for(Event.INTERRUPTED), why)]
                    o.tests += missing_scenarios(o.cell, o.tests, why, Event.INTERRUPTED)
            env = self._environment(builds, outcomes.values(), started, time.monotonic() - t0)
            doc = merge(self.matrix, list(outcomes.values()), env, self.rerun_of)
            _write_json(self.dir / "results.json", doc)
            write_reports(self.dir)
            log.info("matrix done in %s: %s", duration(time.monotonic() - t0),
                     ", ".join(f"{n} {s}" for s, n in doc["summary"]["cells"].items()
                               if n and s != "total"))
        return doc

    def _builds(self) -> dict[BuildKey, Built]:
        keys = list(dict.fromkeys(BuildKey.of(c) for c in self.cells))
        out: dict[BuildKey, Built] = {}
        for i, key in enumerate(keys, 1):
            b = Built(key, self.dir / "build" / key.label)
            b.dir.mkdir(parents=True, exist_ok=True)
            n = sum(1 for c in self.cells if BuildKey.of(c) == key)
            log.info("build %d/%d: kernel %s (%s)", i, len(keys), key.label, count(n, "cell"))
            t0 = time.monotonic()
            try:
                b.artifacts = self.build(key, b.dir)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a build failure is that kernel's cells' ERROR
                b.error = str(e) or type(e).__name__
                log.error("build %s failed: %s", key.label, b.error.splitlines()[0][:300])
                log.debug("build failure", exc_info=True)
            b.seconds = time.monotonic() - t0
            if b.artifacts is not None:
                from harness.matrix.cell import save_artifacts

                save_artifacts(b.artifacts, b.dir)
                log.info("build %s: ready in %s", key.label, duration(b.seconds))
            out[key] = b
        return out

    def _run_cells(self, outcomes: dict[str, CellOutcome], builds: dict[BuildKey, Built]
                   ) -> None:
        progress = Progress(len(self.cells), self.jobs)
        queue: deque[Cell] = deque()
        for c in self.cells:
            b = builds[BuildKey.of(c)]
            outcomes[c.name].kernel_build = b.artifacts.kernel_label if b.artifacts else ""
            if b.artifacts is None:
                o = outcomes[c.name]
                o.tests = [_entry(c.name, "build", status_for(Event.BUILD_FAILED),
                                  f"building kernel {b.key.label} failed: {b.error}",
                                  [*b.logs(self.dir), "run.log"], b.seconds)]
                o.tests += missing_scenarios(c, o.tests, f"the {b.key.label} build failed",
                                             Event.NOT_BUILT)
                progress.finished(c.name, str(o.status), o.counts(), o.bad(), ran=False)
            else:
                queue.append(c)
        running: dict[str, _Running] = {}
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    c = queue.popleft()
                    running[c.name] = self._start(outcomes[c.name],
                                                  builds[BuildKey.of(c)].dir / "artifacts.pickle")
                    progress.started(c.name)
                for name, r in list(running.items()):
                    if r.proc.poll() is None and time.monotonic() > r.deadline and not r.killed:
                        r.killed = (f"killed after {duration(time.monotonic() - r.started)}: "
                                    f"the cell's timeout ({duration(r.deadline - r.started)}, "
                                    "from its timeouts) passed")
                        log.warning("cell %s: %s", name, r.killed)
                        _stop(r.proc, TERM_GRACE)
                    if r.proc.poll() is not None:
                        del running[name]
                        self._finish(r)
                        progress.finished(name, str(r.outcome.status), r.outcome.counts(),
                                          r.outcome.bad())
                progress.beat()
                if running:
                    time.sleep(POLL)
        except KeyboardInterrupt:
            for name, r in running.items():
                r.killed = "the matrix run was interrupted (Ctrl-C, SIGTERM) while it ran"
                _stop(r.proc, TERM_GRACE)
                self._finish(r, Event.INTERRUPTED)
                progress.finished(name, str(r.outcome.status), r.outcome.counts(),
                                  r.outcome.bad())
            raise

    def _start(self, o: CellOutcome, artifacts: Path) -> _Running:
        d = self.dir / o.dir
        argv = self.command(o.cell, d, artifacts)
        fh = open(d / "cell.log", "ab")  # noqa: SIM115 - closed in _finish
        env = dict(os.environ)
        # The cell imports this very harness, installed or not.
        root = str(Path(harness.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        log.debug("cell %s: %s", o.cell.name, " ".join(argv))
        # Its own session: Ctrl-C reaches only the scheduler, which stops the
        # cell; killing the group takes the cell's QEMU with it.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=d, env=env,
                                start_new_session=True)
        now = time.monotonic()
        return _Running(o, proc, fh, now, now + self.timeout(o.cell))

    def _finish(self, r: _Running, killed: Event = Event.KILLED) -> None:
        """Read what the cell wrote; ``killed``: what stopped it, if the scheduler did."""
        o, d = r.outcome, self.dir / r.outcome.dir
        r.log.close()
        o.duration = time.monotonic() - r.started
        o.exit_status = r.proc.returncode
        doc: dict[str, Any] = {}
        problem = ""
        try:
            doc = json.loads((d / "results.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            problem = f"the cell wrote no results.json ({e})"
        o.tests = cell_tests(o.cell.name, o.dir, doc)
        o.tables = doc.get("tables", {})
        o.environment = doc.get("environment", {})
        files = [f"{o.dir}/cell.log"]
        if r.killed:
            o.tests.append(_entry(o.cell.name, "run", status_for(killed), r.killed, files,
                                  o.duration))
        elif o.exit_status not in (0, 1, 2) or problem:
            why = f"the cell's process exited with status {o.exit_status}"
            why += f" and {problem}" if problem else ""
            o.tests.append(_entry(o.cell.name, "run", status_for(cell_end_event(o.exit_status)),
                                  f"{why}\n{_tail(d / 'cell.log')}", files, o.duration))
        why = r.killed or "the cell's process ended before it"
        o.tests += missing_scenarios(o.cell, o.tests, why,
                                     killed if r.killed else Event.KILLED)

    def _environment(self, builds: dict[BuildKey, Built], outcomes: Any, started: str,
                     wall: float) -> dict[str, Any]:
        cells_env = [o.environment for o in outcomes if o.environment]
        first = cells_env[0] if cells_env else {}
        return {
            "hmmlab": harness.__version__,
            "host": platform.node(),
            "python": sys.version.split()[0],
            "started": started,
            "wall_seconds": round(wall, 1),
            "jobs": self.jobs,
            "jobs_reason": self.jobs_reason,
            "cpu_count": os.cpu_count(),
            "interrupted": self.interrupted,
            "qemu": first.get("qemu", ""),
            "accel": sorted({e["accel"] for e in cells_env if e.get("accel")}),
            "builds": {k.label: b.to_dict(self.dir) for k, b in builds.items()},
        }


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the cell (it stops its QEMU and writes its results), then kill its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Whatever is left of it (a QEMU it could not stop).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _write_json(path: Path, doc: Any) -> None:
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


def run_matrix(m: Matrix, results_dir: Path, *, cells: Sequence[Cell] | None = None,
               jobs: int | None = None,
               timeout: Callable[[Cell], float] | None = None, rerun_of: str | None = None,
               build: BuildFn = build_with_harness) -> dict[str, Any]:
    """Run ``cells`` (default: all) of ``m`` into ``results_dir``; the merged results."""
    chosen = list(m.cells if cells is None else cells)
    if jobs is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            meminfo = ""
        jobs, why = default_jobs(os.cpu_count() or 1, mem_available_mib(meminfo), chosen)
    else:
        why = "-j"
    s = Scheduler(m, chosen, results_dir, jobs, why, build, cell_command,
                  timeout or cell_timeout, rerun_of)
    return s.run()

"""``bench-trace``: what the DMA trace costs a workload, tracing on against off in
one guest (``hmmlab bench trace``).

Not a test: it measures. The guest has two hmm-gpus alike but for their trace:
the first with its ``dmatrace`` chardev, the second with ``trace: false``
(no chardev: the device records nothing). The same workload runs on each in
turn, ``rounds`` times; which goes first alternates from round to round, so a
drift of the shared machine's load hits both alike. A round's figure is the
workload's wall time on the traced device over that on the untraced one;
the benchmark reports the median of the rounds' ratios with their min-max.

Which workload: the DMA-heaviest of :data:`CANDIDATES`, measured first in
the same guest: each runs once on the traced device, and the one whose run
wrote the most trace records per second wins (the trace's cost grows with
its records). ``hmm-tests`` writes the most records of a cell (7.2's THP
benchmark), but opens /dev/hmm_dmirror0 and 1 by name: it cannot be pointed
at one device of the two. Each measurement checks, from the devices'
counters, that the device meant did the work and the other did nothing.

Entries ``bench-trace.candidate.<name>``, ``bench-trace.round<N>.<traced|
untraced>`` say whether each measurement was taken; the figures go to
``bench.json`` (and ``tables["bench-trace"]``).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.checks import dmatrace, tracefile
from harness.core.config import DEFAULT_ROUNDS, DeviceConfig
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import BIN, HMM_GPU_KO, bench_rounds, guest_run, load_module

log = logging.getLogger(__name__)

NAME = "bench-trace"
TRACED, UNTRACED = "traced", "untraced"
TRACE_SETTLE_S = 0.5  # the device flushes its trace every 10 ms (dmatrace-flush-ms)
VRAM = "128M"  # each GPU's: vram-pressure's working set is twice this
TARGET = 1.1  # traced / untraced wall time, issue 12
# cmds-completed: did the device work; the DMA bytes: how much it moved
WORK = "cmds-completed"
DMA = ("dma-read-bytes", "dma-write-bytes")


@dataclass(frozen=True)
class Workload:
    name: str
    args: str  # {gpu}: the device's index, for /dev/hmm_gpuN and /dev/hmm_dmirrorN

    def command(self, gpu: int) -> str:
        return f"{BIN}/{self.name} {self.args.format(gpu=gpu)}"


# as their scenarios (and bench-svm) run them, pointed at one device
CANDIDATES = (
    Workload("hmm-bench", "-d /dev/hmm_dmirror{gpu} -s 64 -n 200 -r 4"),
    Workload("svm-migrate", "-d /dev/hmm_gpu{gpu} -s 8"),
    Workload("vram-pressure", "-d /dev/hmm_gpu{gpu} -p 1024 -x 2"),
)

# the guest: two GPUs alike, the second untraced
DEVICES = (DeviceConfig("hmm-gpu", {"vram-size": VRAM}),
           DeviceConfig("hmm-gpu", {"vram-size": VRAM}, trace=False))


def gpus(devices: Sequence[DeviceConfig]) -> tuple[int, int] | None:
    """The indexes of a traced and an untraced hmm-gpu, or None."""
    ours = [d for d in devices if d.type == "hmm-gpu"]
    traced = next((i for i, d in enumerate(ours) if d.trace), None)
    untraced = next((i for i, d in enumerate(ours) if not d.trace), None)
    return None if traced is None or untraced is None else (traced, untraced)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    return {"median": statistics.median(values) if values else None,
            "min": min(values) if values else None, "max": max(values) if values else None}


def pick(candidates: Sequence[dict[str, Any]]) -> str | None:
    """The candidate that wrote the most trace records per second (of those that ran)."""
    ran = [c for c in candidates if c.get("records_per_s") is not None]
    return max(ran, key=lambda c: c["records_per_s"])["name"] if ran else None


def figures(candidates: Sequence[dict[str, Any]], workload: str | None,
            rounds: Sequence[dict[str, Any]], dropped: int | None) -> dict[str, Any]:
    """bench.json: the candidates, each round's wall times and their ratio, and the
    median (min-max) of the ratios."""
    ratios = [r["ratio"] for r in rounds if r.get("ratio") is not None]
    ratio = spread(ratios)
    return {"what": "trace-onoff", "workload": workload, "candidates": list(candidates),
            "rounds": list(rounds), "ratio": ratio, "target": TARGET,
            "meets_target": None if ratio["median"] is None else ratio["median"] <= TARGET,
            "dropped": dropped,
            "traced_s": spread([r[TRACED] for r in rounds if r.get(TRACED) is not None]),
            "untraced_s": spread([r[UNTRACED] for r in rounds if r.get(UNTRACED) is not None])}


def _delta(before: dict[str, Any], after: dict[str, Any], keys: Sequence[str]) -> int | None:
    try:
        return sum(int(after[k]) - int(before[k]) for k in keys)
    except (KeyError, TypeError, ValueError):  # a counter QMP could not read
        return None


class BenchTrace:
    name = NAME

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        self.rounds = bench_rounds(NAME, rounds)

    def run(self, s: Session) -> None:
        pair = gpus(s.cfg.devices)
        if pair is None:
            s.results.add_status(NAME, Status.ERROR, "needs a traced and an untraced hmm-gpu: "
                                 "devices: [{type: hmm-gpu}, {type: hmm-gpu, trace: false}]")
            return
        nodes = tuple(f"/dev/{n}{i}" for i in pair for n in ("hmm_gpu", "hmm_dmirror"))
        load = load_module(s, HMM_GPU_KO, "hmm_gpu", nodes)
        if not load.ok:
            s.results.add(TestResult(f"{NAME}.load", load.status_if_error if load.error
                                     else Status.FAIL, load.seconds, load.text()))
            return
        candidates = [self._candidate(s, w, pair) for w in CANDIDATES]
        chosen = pick(candidates)
        workload = next((w for w in CANDIDATES if w.name == chosen), None)
        rounds: list[dict[str, Any]] = []
        if workload is None:
            s.results.add_status(NAME, Status.FAIL, "no candidate workload ran")
        else:
            log.info("%s: %s wrote the most trace records per second", NAME, chosen)
            for i in range(1, self.rounds + 1):
                order = (TRACED, UNTRACED) if i % 2 else (UNTRACED, TRACED)
                rnd: dict[str, Any] = {"round": i, "order": list(order)}
                for which in order:
                    gpu = pair[0] if which == TRACED else pair[1]
                    rnd[which] = self._measure(s, f"{NAME}.round{i}.{which}", workload, gpu,
                                               pair)
                t, u = rnd.get(TRACED), rnd.get(UNTRACED)
                rnd["ratio"] = t / u if t is not None and u else None
                rounds.append(rnd)
        fig = figures(candidates, chosen, rounds, self._dropped(s, pair[0]))
        s.results.tables[NAME] = fig
        (s.run_dir / "bench.json").write_text(json.dumps(fig, indent=2) + "\n")

    def _counters(self, s: Session, gpu: int) -> dict[str, Any]:
        return dict(s.guest.counters().get(f"gpu{gpu}", {}))

    def _run(self, s: Session, path: str, w: Workload, gpu: int,
             pair: tuple[int, int]) -> tuple[float | None, dict[str, Any]]:
        """Run ``w`` on ``gpu``: its wall time if it passed and only that device worked,
        and what was measured around it."""
        other = pair[1] if gpu == pair[0] else pair[0]
        before = {g: self._counters(s, g) for g in pair}
        c = guest_run(s, w.command(gpu), s.cfg.timeouts.scenario)
        after = {g: self._counters(s, g) for g in pair}
        data: dict[str, Any] = {"seconds": round(c.seconds, 3),
                                "commands": _delta(before[gpu], after[gpu], (WORK,)),
                                "dma_bytes": _delta(before[gpu], after[gpu], DMA),
                                "other_commands": _delta(before[other], after[other], (WORK,))}
        problem = ""
        if c.ok and not data["commands"]:
            problem = f"gpu{gpu} completed no command: the workload did not use it"
        elif c.ok and data["other_commands"]:
            problem = f"gpu{other} completed {data['other_commands']} commands meanwhile"
        status = (c.status_if_error if c.error else
                  Status.PASS if c.ok and not problem else Status.FAIL)
        s.results.add(TestResult(path, status, c.seconds,
                                 "\n".join(x for x in (problem, c.text()) if x), extra=data))
        return (c.seconds if status == Status.PASS else None), data

    def _candidate(self, s: Session, w: Workload, pair: tuple[int, int]) -> dict[str, Any]:
        trace = s.guest.files.dmatrace(pair[0])
        size0 = tracefile.stream_size(trace)
        seconds, data = self._run(s, f"{NAME}.candidate.{w.name}", w, pair[0], pair)
        time.sleep(TRACE_SETTLE_S)
        records = (tracefile.stream_size(trace) - size0) // dmatrace.REC_SIZE
        out = {"name": w.name, "command": w.command(pair[0]), **data, "records": records,
               "records_per_s": records / seconds if seconds else None}
        log.info("%s candidate %s: %s", NAME, w.name, out)
        return out

    def _measure(self, s: Session, path: str, w: Workload, gpu: int,
                 pair: tuple[int, int]) -> float | None:
        return self._run(s, path, w, gpu, pair)[0]

    def _dropped(self, s: Session, gpu: int) -> int | None:
        """The traced device's dmatrace-dropped counter: records its writer lost (a
        trace that dropped records cost less than a whole one would have)."""
        if s.guest.qmp is None:
            return None
        try:
            return int(s.guest.qmp.execute("qom-get", {"path": f"/machine/peripheral/gpu{gpu}",
                                                       "property": "dmatrace-dropped"},
                                           timeout=10))
        except Exception as e:  # QMP gone: the figure is absent, the rounds still count
            log.warning("%s: dmatrace-dropped of gpu%d not read: %s", NAME, gpu, e)
            return None

    def finish(self, s: Session) -> None:
        return None


def make() -> BenchTrace:
    return BenchTrace()

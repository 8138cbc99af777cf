"""``bench-ftrace``: what collecting the guest's ftrace costs, measured side by side.

Not a test: in one guest, hmm_gpu.ko loaded with ``prefault=0`` (the device
faults and the driver services its fault ring: the path the driver's
tracepoints are on), the run file's ftrace events enabled as a run with
``ftrace: true`` enables them (mono clock, its buffer size), then in each
round hmm-bench twice, once with ``tracing_on`` 0 and once with 1, the
order alternating from round to round so a drift of the shared machine
hits both alike. Figures as bench-svm's: per metric the median with min and
max over the rounds, and the ratio of the medians (on / off) with the
spread of the rounds' own ratios; plus the events each traced run wrote
(and lost) to the ring buffer.

Entries ``bench.load``, ``bench.ftrace`` (the setup) and
``bench.round<N>.ftrace-<on|off>``; the figures go to ``bench.json`` and
``results.json`` (``tables["bench-ftrace"]``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from harness.checks import ftrace as ftrace_text
from harness.core.config import DEFAULT_ROUNDS
from harness.core.results import Status, TestResult
from harness.guest import ftrace
from harness.scenarios import Session
from harness.scenarios.bench import BENCH, METRICS, figures, format_figures
from harness.scenarios.common import (
    add_cmd_result,
    bench_rounds,
    guest_run,
    load_module,
    unload_module,
)
from harness.scenarios.hmm_tests import DRIVERS, HMM_GPU_DEVFAULT, NODES
from harness.scenarios.smoke import parse_workload_output

log = logging.getLogger(__name__)

ON, OFF = "ftrace-on", "ftrace-off"
# the same figures as bench-svm's, without its targets (they compare drivers)
FTRACE_METRICS = tuple(dataclasses.replace(m, target=None) for m in METRICS)


class BenchFtrace:
    name = "bench-ftrace"
    args = "-s 64 -n 200 -r 4"

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        self.rounds = bench_rounds("bench-ftrace", rounds)

    def run(self, s: Session) -> None:
        for module in dict.fromkeys(x.module for x in DRIVERS):
            unload_module(s, module)
        d = HMM_GPU_DEVFAULT
        c = load_module(s, d.ko, d.module, NODES[:1], args=d.insmod_args)
        if not add_cmd_result(s, "bench.load", c):
            return
        collector = self._tracing(s)
        if collector is None:
            return
        rounds: list[dict[str, dict[str, Any] | None]] = []
        traced: list[dict[str, int]] = []
        for i in range(1, self.rounds + 1):
            got: dict[str, dict[str, Any] | None] = {}
            for mode in (OFF, ON) if i % 2 else (ON, OFF):
                got[mode] = self._measure(s, i, mode, traced)
            rounds.append(got)
        guest_run(s, f"echo 0 > {ftrace.TRACING}/tracing_on; : > {ftrace.TRACING}/set_event",
                  ftrace.COMMAND_TIMEOUT)
        unload_module(s, d.module)
        fig = figures(rounds, FTRACE_METRICS, columns=[ON, OFF], what=f"hmm-bench {self.args}")
        fig["traced"] = traced  # per traced run: events written, lost
        fig["events"] = collector.enabled
        fig["notes"] = fig["notes"] + [
            "the order alternates per round (odd rounds: off first); "
            f"driver {d.label} (prefault=0); events: {', '.join(s.cfg.ftrace.events)}; "
            f"buffer {s.cfg.ftrace.buffer_kb} KiB per CPU; traced runs wrote "
            + ", ".join(f"{t['written']} ({t['lost']} lost)" for t in traced) + " events"]
        s.results.tables["bench-ftrace"] = fig
        (s.run_dir / "bench.json").write_text(json.dumps(fig, indent=2) + "\n")
        log.debug("bench ftrace:\n%s", format_figures(fig))

    def _tracing(self, s: Session) -> ftrace.Collector | None:
        """The run file's events on, as a traced run has them (tracing_on left 1)."""
        def run(cmd: str, timeout: float) -> tuple[int, str, str]:
            rc, out, err = s.ssh.run(cmd, timeout, abort=s.guest.exit_reason)
            return rc, out, err

        cfg = dataclasses.replace(s.cfg.ftrace, enabled=True)
        collector = ftrace.Collector(cfg, s.run_dir, run)
        t0 = time.monotonic()
        try:
            collector.setup()
            collector.module_loaded()
            _rc, out, _err = run(f"cat {ftrace.TRACING}/set_event", ftrace.COMMAND_TIMEOUT)
            collector.enabled = out.split()
        except Exception as e:  # SSH trouble or a kernel without tracefs
            s.results.add(TestResult("bench.ftrace", Status.ERROR, time.monotonic() - t0,
                                     f"could not set up ftrace: {e}"))
            return None
        s.results.add(TestResult("bench.ftrace", Status.PASS, time.monotonic() - t0,
                                 "enabled: " + " ".join(collector.enabled)
                                 + (f"\nmissing: {' '.join(collector.missing)}"
                                    if collector.missing else "")))
        return collector

    def _measure(self, s: Session, i: int, mode: str, traced: list[dict[str, int]]
                 ) -> dict[str, Any] | None:
        path = f"bench.round{i}.{mode}"
        t = ftrace.TRACING
        on = int(mode == ON)
        c = guest_run(s, f": > {t}/trace && echo {on} > {t}/tracing_on", ftrace.COMMAND_TIMEOUT)
        if not c.ok:
            add_cmd_result(s, path, c)
            return None
        run = guest_run(s, f"{BENCH} -d {NODES[0]} {self.args}", s.cfg.timeouts.scenario)
        objs, _ = parse_workload_output(run.out)
        obj = objs[-1] if objs else {}
        ok = obj.get("ok") is True and not run.error
        status = Status.PASS if ok else (run.status_if_error if run.error else Status.FAIL)
        s.results.add(TestResult(path, status, run.seconds, run.text(), extra={"data": obj}))
        if on:
            stats = guest_run(s, f"for c in {t}/per_cpu/cpu*; do cat $c/stats; done",
                              ftrace.COMMAND_TIMEOUT)
            written = lost = 0
            for block in stats.out.split("entries:")[1:]:
                st = ftrace_text.parse_stats("entries:" + block)
                written += st.get("entries", 0) + st.get("overrun", 0)
                lost += ftrace_text.lost_of(st)
            traced.append({"round": i, "written": written, "lost": lost})
        return obj if ok else None

    def finish(self, s: Session) -> None:
        return None


def make() -> BenchFtrace:
    return BenchFtrace()

"""``hmmlab bench ftrace``: its figures, tracing on next to off (the guest run is e2e)."""

from __future__ import annotations

import pytest

from harness.run import bench
from harness.scenarios import create
from harness.scenarios.bench import complete, format_figures
from harness.scenarios.bench_ftrace import FTRACE_METRICS, OFF, ON, BenchFtrace, figures


def test_it_is_a_bench_of_hmmlab_bench_and_a_scenario():
    assert bench.BENCHES["ftrace"] == "bench-ftrace"
    assert isinstance(create("bench-ftrace"), BenchFtrace)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        BenchFtrace(0)


def test_the_figures_put_tracing_on_next_to_off_without_the_driver_targets():
    rounds = [{ON: {"fault_pages_per_s": 900.0, "fault_latency_us": 60.0},
               OFF: {"fault_pages_per_s": 1000.0, "fault_latency_us": 50.0}},
              {ON: {"fault_pages_per_s": 800.0, "fault_latency_us": 66.0},
               OFF: {"fault_pages_per_s": 1000.0, "fault_latency_us": 55.0}},
              {ON: {"fault_pages_per_s": 950.0, "fault_latency_us": 63.0},
               OFF: {"fault_pages_per_s": 1000.0, "fault_latency_us": 60.0}}]
    fig = figures(rounds, FTRACE_METRICS, columns=[ON, OFF])
    assert complete(fig)
    row = {r["metric"]: r for r in fig["rows"]}
    assert row["fault_pages_per_s"]["ratio"] == pytest.approx(0.9)
    assert row["fault_pages_per_s"]["ratio_min"] == pytest.approx(0.8)
    assert row["fault_latency_us"]["ratio"] == pytest.approx(63 / 55)
    assert all(r["target"] is None for r in fig["rows"])
    text = format_figures(fig)
    assert "ftrace-on median (min-max)" in text and "0.90x (0.80x-0.95x)" in text
    assert "targets met: 0 of 0" in text

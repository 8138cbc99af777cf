"""``hmmlab bench svm``'s figures: medians over rounds, spreads, ratios, targets, the table.

The measurements themselves come from a real guest (tests/e2e/test_svm.py);
here the hmm-bench JSON lines are given.
"""

from __future__ import annotations

import json

import pytest

from harness.core.results import Results, Status
from harness.run.bench import report
from harness.scenarios.bench import METRICS, BenchSvm, complete, figures, format_figures


def line(**figs: float) -> dict[str, object]:
    return {"test": "bench", "ok": True, **figs}


# three rounds; hmm-gpu's figures vary, test_hmm's too
ROUNDS = [
    {"hmm-gpu": line(fault_pages_per_s=500000, fault_latency_us=100.0, cpu_fault_us=20.0,
                     migrate_MBps=900.0, migrate_to_dev_MBps=1000.0),
     "test_hmm": line(fault_pages_per_s=100000, fault_latency_us=20.0, cpu_fault_us=15.0,
                      migrate_MBps=400.0, migrate_to_dev_MBps=400.0)},
    {"hmm-gpu": line(fault_pages_per_s=400000, fault_latency_us=80.0, cpu_fault_us=18.0,
                     migrate_MBps=1000.0, migrate_to_dev_MBps=900.0),
     "test_hmm": line(fault_pages_per_s=200000, fault_latency_us=10.0, cpu_fault_us=12.0,
                      migrate_MBps=500.0, migrate_to_dev_MBps=500.0)},
    {"hmm-gpu": line(fault_pages_per_s=600000, fault_latency_us=90.0, cpu_fault_us=13.0,
                     migrate_MBps=1100.0, migrate_to_dev_MBps=800.0),
     "test_hmm": line(fault_pages_per_s=100000, fault_latency_us=30.0, cpu_fault_us=10.0,
                      migrate_MBps=600.0, migrate_to_dev_MBps=500.0)},
]


def rows(fig: dict) -> dict[str, dict]:
    return {r["metric"]: r for r in fig["rows"]}


def test_median_min_max_per_driver_and_ratio_of_medians() -> None:
    fig = figures(ROUNDS)
    r = rows(fig)["fault_pages_per_s"]
    assert r["hmm-gpu"] == {"median": 500000, "min": 400000, "max": 600000,
                            "values": [500000, 400000, 600000]}
    assert r["test_hmm"]["median"] == 100000
    assert r["ratio"] == 5.0  # 500000 / 100000, not the median of the rounds' ratios (5)
    assert (r["ratio_min"], r["ratio_max"]) == (2.0, 6.0)  # rounds: 5, 2, 6
    lat = rows(fig)["fault_latency_us"]
    assert lat["ratio"] == 4.5  # 90 / 20
    assert (lat["ratio_min"], lat["ratio_max"]) == (3.0, 8.0)  # 5, 8, 3


def test_targets_the_project_tracks() -> None:
    targets = {m.key: (m.target, m.higher_is_better) for m in METRICS if m.target}
    # migration: the round trip's bandwidth is the target, each leg is only shown
    assert targets == {"cpu_fault_us": (1.5, False), "fault_latency_us": (1.5, False),
                       "migrate_MBps": (2.0, True)}
    r = rows(figures(ROUNDS))
    # CPU fault-back: 18 / 12 = 1.5: at most 1.5x is met (on the line)
    assert r["cpu_fault_us"]["ratio"] == 1.5 and r["cpu_fault_us"]["meets_target"] is True
    assert r["fault_latency_us"]["meets_target"] is False  # 4.5x
    assert r["migrate_to_dev_MBps"]["ratio"] == 1.8  # 900 / 500
    assert r["migrate_to_dev_MBps"]["meets_target"] is None
    assert r["migrate_MBps"]["ratio"] == 2.0 and r["migrate_MBps"]["meets_target"] is True
    assert r["migrate_to_sys_MBps"]["meets_target"] is None  # not measured: not judged
    assert r["read_MBps"]["target"] is None and r["read_MBps"]["meets_target"] is None
    assert r["migrate_MBps"]["target"] == {"ratio": 2.0, "at_least": True}


def test_every_rounds_raw_data_is_kept() -> None:
    fig = figures(ROUNDS)
    assert fig["rounds"] == 3 and [r["round"] for r in fig["raw"]] == [1, 2, 3]
    assert fig["raw"][1]["hmm-gpu"]["fault_latency_us"] == 80.0
    assert json.loads(json.dumps(fig)) == fig  # bench.json holds it as is
    assert complete(fig)


def test_a_round_that_measured_one_driver_only() -> None:
    rounds = [ROUNDS[0], {"hmm-gpu": ROUNDS[1]["hmm-gpu"], "test_hmm": None}]
    fig = figures(rounds)
    r = rows(fig)["fault_pages_per_s"]
    assert r["hmm-gpu"]["median"] == 450000 and r["test_hmm"]["values"] == [100000, None]
    assert r["ratios"] == [5.0, None] and r["ratio"] == 4.5
    assert not complete(fig)
    assert rows(figures([]))["read_MBps"]["ratio"] is None


def test_the_table() -> None:
    text = format_figures(figures(ROUNDS))
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "unit", "hmm-gpu", "median", "(min-max)", "test_hmm",
                                "median", "(min-max)", "ratio", "(min-max)", "target", "met"]
    fault = next(x for x in lines if x.startswith("pages faulted+mapped "))
    assert "500,000 (400,000-600,000)" in fault and "5.00x (2.00x-6.00x)" in fault
    lat = next(x for x in lines if x.startswith("fault round trip"))
    assert lat.split()[-2:] == ["<=1.50x", "NO"]
    cpu = next(x for x in lines if x.startswith("CPU fault-back"))
    assert cpu.split()[-2:] == ["<=1.50x", "yes"]
    thp = next(x for x in lines if x.startswith("READ, mirrored, THP"))
    assert thp.split()[-4:] == ["-", "-", "-", "-"]  # not measured here: no figure
    assert "3 rounds, each hmm-bench on hmm-gpu then on test_hmm" in text
    assert "targets met: 2 of 3" in text  # cpu fault-back, migrate both directions
    assert text.count("pages faulted+mapped ") == 1


def test_thp_notes_are_shown() -> None:
    r = [{"hmm-gpu": line(thp_note="only 12 of 64 MiB in huge pages"), "test_hmm": line()}]
    fig = figures(r)
    assert fig["notes"] == ["only 12 of 64 MiB in huge pages"]
    assert format_figures(fig).endswith("note: only 12 of 64 MiB in huge pages")


def test_exit_status(tmp_path) -> None:
    res = Results(tmp_path)
    res.add_status("boot", Status.PASS)
    assert report(res, figures(ROUNDS))[1] == 0
    partial = figures([ROUNDS[0], {"hmm-gpu": None, "test_hmm": ROUNDS[0]["test_hmm"]}])
    text, code = report(res, partial)
    assert code == 1 and text.count("targets met") == 1
    assert report(res, None)[1] == 1
    res.add_status("bench.round1.hmm-gpu", Status.ERROR, "timeout")
    assert report(res, figures(ROUNDS))[1] == 2


def test_rounds_must_be_positive() -> None:
    assert BenchSvm().rounds == 5 and BenchSvm(2).rounds == 2
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        BenchSvm(0)

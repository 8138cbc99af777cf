"""``hmmlab bench odp``: perftest parsing, ODP/pinned ratios, fault round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import bench, config, dmatrace
from harness.scenarios import bench_odp
from harness.scenarios.bench_odp import COLUMNS, METRICS, parse_bw, with_ratios

# ib_write_bw's client output, hmmnic1 -> hmmnic0 over the link, 7.2 guest
WRITE_BW = """\
---------------------------------------------------------------------------------------
 local address: LID 0x02 QPN 0x0002 PSN 0x63d5b6 RKey 0x000101 VAddr 0x007f09e19e9000
 remote address: LID 0x01 QPN 0x0002 PSN 0xbef88e RKey 0x000101 VAddr 0x007fd54d8c3000
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]
 65536      200              257.77             249.88 \t\t     0.003998
---------------------------------------------------------------------------------------
"""


def test_parse_bw() -> None:
    assert parse_bw(WRITE_BW) == 249.88
    assert parse_bw(" #bytes #iterations BW peak[MiB/sec]\nCompletion with error\n") is None
    assert parse_bw("") is None


def test_odp_over_pinned() -> None:
    obj = with_ratios({"write_odp_MiBps": 180.0, "write_pinned_MiBps": 200.0,
                       "read_odp_MiBps": None, "read_pinned_MiBps": 50.0})
    assert obj["write_odp_over_pinned"] == pytest.approx(0.9)
    assert obj["read_odp_over_pinned"] is None


def test_figures_and_targets() -> None:
    rounds = [{"hmm-nic": with_ratios({"write_odp_MiBps": w, "write_pinned_MiBps": 250.0,
                                       "read_odp_MiBps": 300.0, "read_pinned_MiBps": 310.0}),
               "rxe": with_ratios({"write_odp_MiBps": 50.0, "write_pinned_MiBps": 45.0,
                                   "read_odp_MiBps": 120.0, "read_pinned_MiBps": 100.0})}
              for w in (240.0, 260.0, 100.0)]
    from harness.scenarios.bench import figures
    fig = figures(rounds, METRICS, COLUMNS, what="perftest")
    fig["odp_over_pinned_met"] = bench_odp.odp_over_pinned_met(fig)
    rows = {r["metric"]: r for r in fig["rows"]}
    assert rows["write_odp_MiBps"]["hmm-nic"]["median"] == 240.0
    assert rows["write_odp_MiBps"]["ratio"] == pytest.approx(4.8)
    assert rows["write_odp_MiBps"]["meets_target"] is True
    assert rows["read_odp_MiBps"]["meets_target"] is False  # 2.5x < 3x
    assert fig["odp_over_pinned_met"] == {"write_odp_over_pinned": True,
                                          "read_odp_over_pinned": True}
    text = bench_odp.format_odp(fig)
    assert "3 rounds, each perftest on hmm-nic then on rxe" in text
    assert "write_odp_over_pinned: hmm-nic's median vs >=0.90: yes" in text


def _trace(path: Path, events: list[tuple[int, dmatrace.Kind]]) -> Path:
    data = dmatrace.HDR.pack(dmatrace.TRACE_MAGIC, dmatrace.TRACE_VERSION, dmatrace.REC_SIZE,
                             0x18, 0)
    for ts, kind in events:
        data += dmatrace.REC.pack(ts, 0, 0, 0, 0, 0, 1, 3, kind, 0, 0, 0, b"\0" * 7)
    path.write_bytes(data)
    return path


def test_fault_round_trips(tmp_path: Path) -> None:
    F, R, D = dmatrace.Kind.FAULT_WRITE, dmatrace.Kind.EV_REPLAY, dmatrace.Kind.DATA
    a = _trace(tmp_path / "dmatrace-nic0.bin",
               [(1000, F), (2000, D), (11000, R),         # 10 us
                (20000, F), (21000, F), (41000, R),       # 21 and 20 us: one replay, two faults
                (50000, R), (60000, F)])                  # a replay with no fault; no replay
    b = _trace(tmp_path / "dmatrace-nic1.bin", [(0, F), (5000, R)])
    assert bench_odp.fault_round_trips([a, b]) == [10.0, 21.0, 20.0, 5.0]
    assert bench_odp.percentile([10.0, 21.0, 20.0, 5.0], 0.99) == 21.0
    assert bench_odp.percentile([], 0.5) is None


def test_bench_config_cables_two_nics() -> None:
    cfg = bench.bench_config(config.load(None), "odp")
    assert cfg.scenarios == ("bench-odp",)
    assert config.nic_links(cfg.devices) == [("nic0", "nic1")]
    assert bench.bench_config(config.load(None), "svm").devices == config.load(None).devices


def test_the_benchmark_measures_memory_once_faulted_in() -> None:
    cmd = bench_odp.perftest(bench_odp.PAIRS[0], "write", "odp", 18600, bench_odp.DURATION)
    assert "ib_write_bw -s 65536 -D 3 --margin 1 -p 18600 --odp -d hmmnic0" in cmd
    assert "-d hmmnic1 127.0.0.1" in cmd
    # the perftest scenario: a fixed count, first touch included
    assert "-n 400" in bench_odp.perftest(bench_odp.PAIRS[0], "send", "odp", 1)

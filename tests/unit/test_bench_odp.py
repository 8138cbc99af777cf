"""``hmmlab bench odp``: perftest parsing, ODP/pinned ratios, fault round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks import dmatrace
from harness.core import config
from harness.run import bench
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
    assert config.gpu_ids(cfg.devices) == ["gpu0"]  # hmm-gpu's fault round trip
    assert bench.bench_config(config.load(None), "svm").devices == config.load(None).devices


def test_the_benchmark_measures_memory_once_faulted_in() -> None:
    cmd = bench_odp.perftest(bench_odp.PAIRS[0], "write", "odp", 18600, bench_odp.DURATION)
    assert "ib_write_bw -s 65536 -D 3 --margin 1 -p 18600 --odp -d hmmnic0" in cmd
    assert "-d hmmnic1 127.0.0.1" in cmd
    # the perftest scenario: a fixed count, first touch included
    assert "-n 400" in bench_odp.perftest(bench_odp.PAIRS[0], "send", "odp", 1)


def _trace_aux(path: Path, events: list[tuple[int, dmatrace.Kind, int]]) -> Path:
    """Like _trace, with each record's aux (a fault record's or a cancel's token)."""
    data = dmatrace.HDR.pack(dmatrace.TRACE_MAGIC, dmatrace.TRACE_VERSION, dmatrace.REC_SIZE,
                             0x18, 0)
    for ts, kind, aux in events:
        data += dmatrace.REC.pack(ts, 0, 0, 0, 0, aux, 1, 3, kind, 0, 0, 0, b"\0" * 7)
    path.write_bytes(data)
    return path


F, R, C = dmatrace.Kind.FAULT_WRITE, dmatrace.Kind.EV_REPLAY, dmatrace.Kind.EV_CANCEL


def test_fault_trips_one_per_record_cancelled_ones_none(tmp_path: Path) -> None:
    t = _trace_aux(tmp_path / "dmatrace-nic0.bin",
                   [(1000, F, 1), (2000, F, 2), (3000, C, 1), (11000, R, 0),  # 1 cancelled
                    (20000, F, 3)])                                          # not answered
    assert bench_odp.fault_trips(t) == [None, 9.0, None]


def test_round_trips_are_cut_by_the_rounds_record_counts(tmp_path: Path) -> None:
    nic = _trace_aux(tmp_path / "dmatrace-nic0.bin",
                     [(0, F, 1), (1000, R, 0),                      # perftest's, not counted
                      (10000, F, 2), (14000, R, 0), (20000, F, 3), (26000, R, 0),  # round 1
                      (30000, F, 4), (38000, R, 0)])                # round 2
    gpu = _trace_aux(tmp_path / "dmatrace-0.bin",
                     [(0, F, 1), (2000, R, 0), (5000, F, 2), (9000, R, 0)])
    spans = [{"hmm-nic": (1, 3), "hmm-gpu": (0, 1)}, {"hmm-nic": (3, 4), "hmm-gpu": (1, 2)}]
    totals = {"nic0": 4, "gpu0": 2}
    fig, notes = bench_odp.round_trip_figures(spans, {"hmm-nic": nic, "hmm-gpu": gpu},
                                              {"hmm-nic": "nic0", "hmm-gpu": "gpu0"},
                                              totals.get)
    assert notes == []
    row = next(r for r in fig["rows"] if r["metric"] == "fault_rt_us")
    assert row["hmm-nic"]["values"] == [5.0, 8.0]  # medians of (4, 6) and (8)
    assert row["hmm-gpu"]["values"] == [2.0, 4.0]
    assert row["ratios"] == [2.5, 2.0]
    assert row["meets_target"] is False  # 6.5 / 3.0 > 2x
    assert "fault round trip" in bench_odp.format_odp(
        {**_empty_fig(), "fault_round_trip": fig})


def test_round_trips_refused_when_the_trace_lost_records(tmp_path: Path) -> None:
    nic = _trace_aux(tmp_path / "dmatrace-nic0.bin", [(0, F, 1), (1000, R, 0)])
    fig, notes = bench_odp.round_trip_figures([{"hmm-nic": (0, 2)}], {"hmm-nic": nic},
                                              {"hmm-nic": "nic0"}, {"nic0": 2}.get)
    assert fig is None
    assert notes == ["hmm-nic: dmatrace-nic0.bin holds 1 fault records, the device counted 2:"
                     " no per-round round trips"]


def test_last_json() -> None:
    assert bench_odp.last_json('noise\n{"ok": true, "x": 1}\n') == {"ok": True, "x": 1}
    assert bench_odp.last_json("no json here") is None
    assert bench_odp.last_json("{broken\n") is None


def _empty_fig() -> dict:
    from harness.scenarios.bench import figures
    return figures([], METRICS, COLUMNS, what="perftest")


def test_read_kinds_is_read_trace_filtered(tmp_path: Path) -> None:
    """The fast scan returns exactly the records a full decode has of those kinds (the
    kind byte found at its offset, every field decoded), a truncated tail left out."""
    D, T = dmatrace.Kind.DATA, dmatrace.Kind.EV_TLB_INV
    path = _trace_aux(tmp_path / "dmatrace-nic0.bin",
                      [(1, D, 0), (2, F, 7), (3, T, 4096), (4, R, 0), (5, F, 8), (6, C, 8)])
    path.write_bytes(path.read_bytes() + b"\x05" * 20)  # a record QEMU did not finish
    kinds = (F, R, C)
    full = [r for r in dmatrace.read_trace(path).records if r.kind in kinds]
    assert dmatrace.read_kinds(path, kinds) == full
    assert [r.timestamp_ns for r in full] == [2, 4, 5, 6]
    assert [r.timestamp_ns for r in dmatrace.read_kinds(path, (T,))] == [3]

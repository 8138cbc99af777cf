"""``hmmlab bench trace``: the five trace targets' figures and table from a run's files
(no guest here: the decode figures run bench_trace's real child processes on a
real, small, compressed trace), and the on/off scenario's arithmetic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.checks import dmatrace, tracefile
from harness.cli import main
from harness.core import config
from harness.core.config import DeviceConfig
from harness.run import trace_targets as tt
from harness.scenarios import bench_trace as onoff

DATA = Path(__file__).parent / "data"
ZST = DATA / "dmatrace-frames.zst.bin"  # 6123 records in zstd frames, as QEMU writes them


def test_the_cell_is_the_default_runs_gpu_part() -> None:
    cfg = tt.cell_config(config.load(None))
    assert {d.type for d in cfg.devices} == {"hmm-gpu"} and len(cfg.devices) == 3
    assert cfg.scenarios == tt.GPU_SCENARIOS
    oo = tt.onoff_config(cfg)
    assert oo.scenarios == ("bench-trace",) and not oo.timeline.enabled
    assert [d.trace for d in oo.devices] == [True, False]
    assert onoff.gpus(oo.devices) == (0, 1)
    assert onoff.gpus(cfg.devices) is None  # every GPU traced: no pair to compare


def test_find_cell(tmp_path: Path) -> None:
    matrix = {"kind": "matrix", "matrix": {"cells": [
        {"name": "6.12", "dir": "cells/6.12", "axes": {"kernel": "6.12"}, "duration": 60},
        {"name": "7.2", "dir": "cells/7.2", "axes": {"kernel": "7.2"}, "duration": 301.5}]}}
    (tmp_path / "m").mkdir()
    (tmp_path / "m/results.json").write_text(json.dumps(matrix))
    assert tt.find_cell(tmp_path / "m") == (tmp_path / "m/cells/7.2", 301.5)
    (tmp_path / "single").mkdir()
    (tmp_path / "single/results.json").write_text(json.dumps({"version": 1}))
    assert tt.find_cell(tmp_path / "single") == (tmp_path / "single", None)
    (tmp_path / "bench/cell").mkdir(parents=True)  # an earlier bench trace's results
    (tmp_path / "bench/cell/results.json").write_text("{}")
    assert tt.find_cell(tmp_path / "bench") == (tmp_path / "bench/cell", None)
    with pytest.raises(ValueError, match=r"no results\.json"):
        tt.find_cell(tmp_path / "nothing")


def test_biggest_gpu_trace_by_records_not_file_size(tmp_path: Path) -> None:
    raw = tmp_path / "dmatrace-0.bin"  # smaller stream, bigger file
    raw.write_bytes(tracefile.read_bytes(ZST)[:dmatrace.HDR_SIZE + 5000 * dmatrace.REC_SIZE])
    shutil.copy(ZST, tmp_path / "dmatrace-1.bin")
    shutil.copy(ZST, tmp_path / "dmatrace-nic0.bin")  # a NIC's: not a GPU trace
    assert raw.stat().st_size > ZST.stat().st_size
    assert tt.gpu_traces(tmp_path) == [raw, tmp_path / "dmatrace-1.bin"]
    assert tt.biggest(tt.gpu_traces(tmp_path)) == tmp_path / "dmatrace-1.bin"


def test_raw_prefix_is_whole_records(tmp_path: Path) -> None:
    data = tracefile.read_bytes(ZST)
    out = tmp_path / "dmatrace-0.bin"
    n = tt.raw_prefix(ZST, out, 100_000)
    assert n == dmatrace.HDR_SIZE + (100_000 - dmatrace.HDR_SIZE) // 64 * 64
    assert out.read_bytes() == data[:n] and not tracefile.is_compressed(out)
    assert tt.raw_prefix(ZST, out, 10**9) == len(data)


def test_decode_figures_old_next_to_new(tmp_path: Path) -> None:
    """bench_trace's real child processes: the new path on the compressed file, the
    old one (which reads raw streams only) on a raw copy of its first 0.1 MiB."""
    trace = tmp_path / "dmatrace-0.bin"
    shutil.copy(ZST, trace)
    fig = tt.decode_figures(trace, 1, tmp_path, old_max_mb=0.1)
    new, old = fig["new"], fig["old"]
    assert new["records"] == 6123 and new["raw_bytes"] == fig["raw_bytes"]
    assert old["records"] == (int(0.1 * 2**20) - dmatrace.HDR_SIZE) // 64
    assert new["rate"] > 0 and old["rate"] > 0 and new["heap"] and not old["heap"]
    assert fig["old_note"].startswith(f"on the first 104.9 kB of the "
                                      f"{fig['raw_bytes'] / 1e3:.1f} kB stream")
    assert list(tmp_path.iterdir()) == [trace]  # the raw copy is gone


def test_checks_share_from_timings_or_estimated(tmp_path: Path) -> None:
    doc = {"tests": [{"path": "smoke.dmatrace", "duration": 10.0},
                     {"path": "svm-race.dmatrace", "duration": 20.0},
                     {"path": "svm-race.final", "duration": 99.0}],
           "environment": {"timeline": {"seconds": 4.0}}}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    est = tt.checks_figures(tmp_path, 300.0)
    assert est["checks_s"] == 30.0 and est["share"] == 0.1 and est["timeline_s"] == 4.0
    assert est["source"].startswith("estimated")
    assert tt.checks_figures(tmp_path, None)["source"].startswith("not recorded")
    doc["timings"] = {"wall_s": 200.0, "guest_s": 150.0, "checks_s": 12.0, "timeline_s": 5.0}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    rec = tt.checks_figures(tmp_path, 300.0)
    assert rec["share"] == 0.06 and rec["source"] == "the cell's timings in results.json"


def fig_of(rate: float, rss: float, ratio: float, share: float, onoff_median: float) -> dict:
    f = {"rate": rate, "rate_min": rate * 0.9, "rate_max": rate * 1.1, "rss_over_size": rss,
         "records": 10, "problems": 0, "raw_bytes": 1000, "heap_over_size": rss / 2}
    old = dict(f, rate=rate / 40, rate_min=rate / 41, rate_max=rate / 39, rss_over_size=6.0)
    return {"decode": {"trace": "t", "file_bytes": 250, "raw_bytes": 1000, "runs": 3,
                       "new": f, "old": old},
            "disk": {"files": 3, "file_bytes": int(1000 * ratio), "raw_bytes": 1000,
                     "ratio": ratio},
            "checks": {"checks_s": share * 100, "wall_s": 100.0, "share": share,
                       "source": "s", "timeline_s": 2.0},
            "onoff": {"workload": "hmm-bench", "candidates": [], "rounds": [],
                      "ratio": {"median": onoff_median, "min": 1.0, "max": 1.2},
                      "dropped": 0},
            "cell_disk_bytes": 5000}


def test_table_one_line_per_target_before_after_target_met() -> None:
    text = tt.format_table(fig_of(25e6, 0.8, 0.2, 0.05, 1.04))
    lines = text.splitlines()
    assert lines[0].split() == ["target", "before", "after", "target", "met"]
    body = lines[2:7]
    assert [line.split("  ")[0] for line in body] == [
        "decode+check rate", "checks' peak RSS / trace size", "trace on disk / raw",
        "7.2 cell: post-run checks / wall", "tracing on / off (wall time)"]
    assert all(line.rstrip().endswith("yes") for line in body), text
    assert "25.00 (22.50-27.50) M rec/s" in body[0] and "0.62 (0.61-0.64)" in body[0]
    assert "6.00x" in body[1] and "0.80x" in body[1]
    assert "1.0 kB (1.00x)" in body[2] and "200 B (0.20x)" in body[2]
    assert "50% (2 of 4 min)" in body[3] and "5.0% (5 of 100 s)" in body[3]
    assert "1.040x (1.000-1.200)" in body[4] and "n/a" in body[4]
    assert any(line.startswith("on/off before: not measurable") for line in lines)
    assert tt.complete(fig_of(25e6, 0.8, 0.2, 0.05, 1.04))
    bad = tt.format_table(fig_of(5e6, 1.5, 0.3, 0.2, 1.2)).splitlines()[2:7]
    assert all(line.rstrip().endswith("NO") for line in bad)


def test_an_unmeasured_figure_is_a_dash_and_incomplete() -> None:
    fig = fig_of(25e6, 0.8, 0.2, 0.05, 1.04)
    fig["onoff"], fig["onoff_note"] = None, "the on/off guest: exit status 2"
    fig["checks"]["share"] = None
    rows = {r.key: r for r in tt.rows(fig)}
    assert rows["onoff"].after == "-" and rows["onoff"].met is None
    assert rows["checks"].after == "-" and not tt.complete(fig)
    assert "on/off: not measured (the on/off guest: exit status 2)" in tt.format_table(fig)


def test_onoff_picks_the_most_records_per_second_and_takes_the_ratios_median() -> None:
    cands = [{"name": "hmm-bench", "records_per_s": 9e5}, {"name": "svm-migrate",
             "records_per_s": 2e6}, {"name": "vram-pressure", "records_per_s": None}]
    assert onoff.pick(cands) == "svm-migrate"
    assert onoff.pick([{"name": "x", "records_per_s": None}]) is None
    rounds = [{"traced": 11.0, "untraced": 10.0, "ratio": 1.1},
              {"traced": 10.2, "untraced": 10.0, "ratio": 1.02},
              {"traced": None, "untraced": 10.0, "ratio": None},
              {"traced": 10.5, "untraced": 10.0, "ratio": 1.05}]
    fig = onoff.figures(cands, "svm-migrate", rounds, 0)
    assert fig["ratio"] == {"median": 1.05, "min": 1.02, "max": 1.1}
    assert fig["meets_target"] is True and fig["traced_s"]["median"] == 10.5
    assert onoff.figures(cands, None, [], None)["meets_target"] is None


def test_workloads_are_pointed_at_one_device() -> None:
    cmds = {w.name: w.command(1) for w in onoff.CANDIDATES}
    assert cmds["hmm-bench"].endswith("hmm-bench -d /dev/hmm_dmirror1 -s 64 -n 200 -r 4")
    assert "-d /dev/hmm_gpu1" in cmds["svm-migrate"]
    assert "-d /dev/hmm_gpu1" in cmds["vram-pressure"]
    assert onoff.gpus((DeviceConfig("hmm-nic"), DeviceConfig("hmm-gpu", trace=False),
                       DeviceConfig("hmm-gpu"))) == (1, 0)


def test_from_run_is_for_bench_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "svm", "--from-run", str(tmp_path)]) == 2
    assert "--from-run is for bench trace" in capsys.readouterr().err


def test_from_an_earlier_bench_trace_no_guest_runs(tmp_path: Path) -> None:
    """Everything from an earlier ``bench trace``'s directory: nothing is built or booted,
    bench.json and the table come from its files (the decode figures measured anew)."""
    run = tmp_path / "earlier"
    (run / "cell").mkdir(parents=True)
    shutil.copy(ZST, run / "cell/dmatrace-0.bin")
    (run / "cell/results.json").write_text(json.dumps({
        "version": 1, "environment": {"disk_bytes": 7_000_000},
        "tests": [{"path": "smoke.dmatrace", "duration": 3.0}]}))
    (run / "bench.json").write_text(json.dumps({"checks": {"wall_s": 60.0}}))
    (run / "onoff").mkdir()
    (run / "onoff/bench.json").write_text(json.dumps(onoff.figures(
        [{"name": "hmm-bench", "records_per_s": 1e6}], "hmm-bench",
        [{"traced": 10.3, "untraced": 10.0, "ratio": 1.03}], 0)))

    def no_build(logdir: Path) -> None:
        raise AssertionError("nothing to boot: no build")

    out = tmp_path / "out"
    fig, text, code = tt.run_targets(config.load(None), out, no_build,  # type: ignore[arg-type]
                                     runs=1, from_run=run)
    assert code == 0 and fig is not None and tt.complete(fig)
    assert json.loads((out / "bench.json").read_text())["rows"] == fig["rows"]
    rows = {r["key"]: r for r in fig["rows"]}
    assert rows["checks"]["after"] == "5.0% (3 of 60 s)"
    assert rows["onoff"]["after"] == "1.030x (1.030-1.030)" and rows["onoff"]["met"]
    assert rows["disk"]["met"] is True  # the fixture: zstd frames of FILL records
    assert "the cell's results directory 7.0 MB" in text
    assert not (out / "cell").exists() and not (out / "onoff").exists()

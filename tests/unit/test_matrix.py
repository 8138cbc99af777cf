"""Matrix files: expansion (include, exclude, pairwise, the automatic rule), cell
names, the embedded default, and errors that say file:line:key."""

from __future__ import annotations

import itertools
import json
import logging
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.core import config
from harness.core.config import ConfigError, DeviceConfig
from harness.matrix import expand as matrix
from harness.matrix.expand import AXES
from harness.scenarios import names as scenario_names

SCENARIOS = scenario_names()
ALL = ("smoke", "hmm-tests", "svm-mirror", "svm-invalidate", "svm-race", "svm-migrate",
       "vram-pressure", "atomics", "svm-reclaim", "dmirror-edge", "odp-tests",
       "odp-rc", "odp-implicit", "odp-gpu", "perftest", "odp-cross-vm")


def load(text: str, name: str = "m.yaml", kernel_tree: str | None = None) -> matrix.Matrix:
    return matrix.load_text(textwrap.dedent(text), name, kernel_tree, SCENARIOS)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text)
    return str(exc.value)


# ---- the embedded default ----------------------------------------------------------------

def test_default_matrix_cells() -> None:
    m = matrix.load(None)
    assert [c.name for c in m.cells] == ["6.1", "6.1-iommu", "6.12", "6.12-iommu", "7.2",
                                         "7.2-iommu", "6.12-debug",
                                         "6.12-swiotlb-smoke+dma-bounce"]
    got = {c.name: (c.config.kernel, c.config.flavor, c.config.iommu, c.config.cmdline)
           for c in m.cells}
    assert got == {
        "6.1": ("6.1", "default", "off", ""),
        "6.1-iommu": ("6.1", "default", "intel-iommu", ""),
        "6.12": ("6.12", "default", "off", ""),
        "6.12-iommu": ("6.12", "default", "intel-iommu", ""),
        "7.2": ("7.2", "default", "off", ""), "7.2-iommu": ("7.2", "default", "intel-iommu", ""),
        "6.12-debug": ("6.12", "debug", "off", ""),
        "6.12-swiotlb-smoke+dma-bounce": ("6.12", "default", "off", "swiotlb=force"),
    }
    for c in m.cells:
        cfg = c.config
        assert (cfg.machine, cfg.cpus, cfg.memory, cfg.kernel_tree) == ("q35", 2, 2048, None)
        assert cfg.devices == (DeviceConfig("hmm-gpu"), DeviceConfig("hmm-gpu"),
                               DeviceConfig("hmm-gpu", {"vram-size": "8M"}),
                               DeviceConfig("hmm-nic", link="nic1"), DeviceConfig("hmm-nic"),
                               DeviceConfig("hmm-nic", link="peer"))
        assert cfg.scenarios == (ALL if not cfg.cmdline else ("smoke", "dma-bounce"))
    assert m.dropped == ()
    assert m.varying() == ["kernel", "flavor", "iommu", "cmdline", "scenarios"]


def test_default_matrix_stock_cell_is_one_line_away() -> None:
    text = matrix.default_text()
    line = "  # - {kernel: stock-6.1, scenarios: [smoke, hmm-tests]}"
    assert line in text
    m = matrix.load_text(text.replace(line, line.replace("# ", "", 1)), "d.yaml",
                         known_scenarios=SCENARIOS)
    assert len(m.cells) == 9
    stock = m.cells[-1]
    assert stock.name == "stock-6.1-smoke+hmm-tests"
    assert (stock.config.kernel, stock.config.scenarios) == ("stock-6.1", ("smoke", "hmm-tests"))


def test_default_matrix_with_a_kernel_tree(tmp_path: Path) -> None:
    tree = str(tmp_path / "linux")
    m = matrix.load(None, kernel_tree=tree)
    assert [c.name for c in m.cells] == ["linux", "linux-iommu", "linux-debug",
                                         "linux-swiotlb-smoke+dma-bounce"]
    assert {c.config.kernel_tree for c in m.cells} == {tree}
    assert {c.axes["kernel"] for c in m.cells} == {f"tree:{tree}"}
    assert [c.kernel_label for c in m.cells] == [f"tree:{tree}"] * 2 + [
        f"tree:{tree}-debug", f"tree:{tree}"]
    # The kernels that collapsed into the tree are listed, each with the cell it became.
    assert [(d.axes["kernel"], d.axes["iommu"], d.rule) for d in m.dropped] == [
        ("6.12", "off", "same as cell linux once --kernel-tree replaces the kernel"),
        ("6.12", "intel-iommu",
         "same as cell linux-iommu once --kernel-tree replaces the kernel"),
        ("7.2", "off", "same as cell linux once --kernel-tree replaces the kernel"),
        ("7.2", "intel-iommu",
         "same as cell linux-iommu once --kernel-tree replaces the kernel"),
    ]


def test_cell_text_is_the_cell_as_a_run_file() -> None:
    for c in matrix.load(None).cells:
        again = config.load_text(c.text, "cell.yaml", SCENARIOS)
        assert again.to_dict() | {"source": ""} == c.config.to_dict() | {"source": ""}


# ---- expansion ---------------------------------------------------------------------------------

def test_product_include_exclude_and_the_automatic_rule() -> None:
    m = load("""
        axes:
          kernel: ["6.1", "6.12"]
          machine: [q35, pc]
          iommu: ["off", intel-iommu]
        base: {cpus: 1, scenarios: [smoke]}
        exclude:
          - {kernel: "6.1", machine: pc}
        include:
          - {kernel: "7.2", flavor: debug}
          - {kernel: "6.12", machine: q35, iommu: "off"}   # already a cell
    """)
    names = [c.name for c in m.cells]
    assert names == ["6.1", "6.1-iommu", "6.12", "6.12-iommu", "6.12-pc", "7.2-debug"]
    assert all(c.config.cpus == 1 and c.config.scenarios == ("smoke",) for c in m.cells)
    debug = m.cell("7.2-debug").config
    # An include's unnamed axes take each axis's first value.
    assert (debug.kernel, debug.flavor, debug.machine, debug.iommu) == ("7.2", "debug", "q35",
                                                                        "off")
    rules = [(d.axes, d.rule) for d in m.dropped]
    assert ({"kernel": "6.1", "machine": "pc", "iommu": "off"}, "exclude[0] (m.yaml:8)") in rules
    assert ({"kernel": "6.1", "machine": "pc", "iommu": "intel-iommu"},
            "exclude[0] (m.yaml:8)") in rules
    assert ({"kernel": "6.12", "machine": "pc", "iommu": "intel-iommu"},
            "intel-iommu needs machine q35 (automatic rule)") in rules
    assert any(d.rule == "same as cell 6.12 (include[1])" for d in m.dropped)
    assert m.combinations == 8
    assert len(m.dropped) == 4


def test_include_values_outside_the_axes_and_inline_sets() -> None:
    m = load("""
        axes:
          kernel: ["6.12"]
          devices:
            one: [{type: hmm-gpu}]
          scenarios: {quick: [smoke]}
        include:
          - {kernel: stock-6.1, scenarios: [smoke, hmm-tests], cpus: 1, memory: 1G}
          - devices: [{type: hmm-gpu}, {type: hmm-gpu, props: {vram-size: 16M}}]
          - {scenarios: atomics}
    """)
    assert [c.name for c in m.cells] == ["6.12", "stock-6.1-1cpu-1G-smoke+hmm-tests",
                                         f"6.12-{m.cells[2].axes['devices']}", "6.12-atomics"]
    stock = m.cells[1].config
    assert (stock.kernel, stock.cpus, stock.memory) == ("stock-6.1", 1, 1024)
    assert m.cells[2].axes["devices"].startswith("2dev-")
    assert m.cells[2].config.devices[1].props == {"vram-size": "16M"}
    assert m.cells[3].config.scenarios == ("atomics",)


def test_scenarios_axis_forms() -> None:
    m = load("""
        axes:
          scenarios: [smoke, [hmm-tests, atomics]]
    """)
    assert [c.config.scenarios for c in m.cells] == [("smoke",), ("hmm-tests", "atomics")]
    assert [c.name for c in m.cells] == ["6.12", "6.12-hmm-tests+atomics"]


def test_every_cell_axis_value_is_in_the_table() -> None:
    m = load("""
        axes:
          cpus: [1, 2]
          memory: [1536, 2G]
    """)
    assert [c.name for c in m.cells] == ["6.12", "6.12-2G", "6.12-2cpu", "6.12-2cpu-2G"]
    assert m.cells[1].axes == {"kernel": "6.12", "flavor": "default", "machine": "q35",
                               "iommu": "off", "cmdline": "none", "cpus": "1", "memory": "2G",
                               "devices": "base", "scenarios": "base"}
    assert m.axes()["memory"] == ["1536M", "2G"]


def test_pairwise_covers_every_allowed_pair_with_fewer_cells() -> None:
    text = """
        axes:
          kernel: ["6.1", "6.12", "7.2"]
          machine: [q35, pc]
          iommu: ["off", intel-iommu]
          cpus: [1, 2]
          memory: [1G, 2G]
        exclude:
          - {kernel: "7.2", cpus: 1}
        pairwise: true
    """
    m = load(text)
    full = load(text.replace("pairwise: true", "pairwise: false"))
    assert m.pairwise and not full.pairwise
    assert len(m.cells) < len(full.cells)
    assert m.pairwise_dropped == len(full.cells) - len(m.cells)
    assert [c.name for c in load(text).cells] == [c.name for c in m.cells]  # deterministic

    def pairs(cells: list[matrix.Cell]) -> set[tuple[str, str, str, str]]:
        return {(a, c.axes[a], b, c.axes[b]) for c in cells
                for a, b in itertools.combinations(AXES, 2)}

    assert pairs(list(m.cells)) == pairs(list(full.cells))
    for c in m.cells:  # nothing the rules drop comes back
        assert not (c.axes["machine"] == "pc" and c.axes["iommu"] == "intel-iommu")
        assert not (c.axes["kernel"] == "7.2" and c.axes["cpus"] == "1")


def test_names_are_unique_short_and_filesystem_safe() -> None:
    m = load("""
        axes:
          kernel: ["6.1", "6.12", "7.2"]
          flavor: [default, debug]
          machine: [q35, pc]
          devices:
            "a b": [{type: hmm-gpu}]
            a_b: [{type: hmm-gpu}, {type: hmm-gpu}]
    """.replace('"a b"', "a.b"))
    names = [c.name for c in m.cells]
    assert len(set(names)) == len(names) == 24
    assert all(re.fullmatch(r"[A-Za-z0-9._+-]+", n) for n in names)
    assert "6.1" in names and "7.2-debug-pc-a_b" in names
    assert matrix.safe("tree:/a b/c") == "tree_a_b_c"


def test_is_matrix_text() -> None:
    assert matrix.is_matrix_text("axes:\n  kernel: ['6.12']\n")
    assert not matrix.is_matrix_text("kernel: '6.12'\n")
    assert not matrix.is_matrix_text("")
    assert not matrix.is_matrix_text("a: [")


def test_describe() -> None:
    text = matrix.describe(load("""
        axes:
          machine: [q35, pc]
          iommu: ["off", intel-iommu]
    """))
    lines = text.splitlines()
    assert lines[0] == "matrix: m.yaml"
    assert lines[1].split() == ["cell", *AXES]
    assert lines[2].split() == ["6.12", "6.12", "default", "q35", "off", "none", "2", "2G",
                                "base", "base"]
    assert "  machine=pc iommu=intel-iommu: intel-iommu needs machine q35 (automatic rule)" \
        in lines
    assert lines[-1] == "3 cells (3 of 4 combinations of the axes, 0 included), 1 dropped"


# ---- errors: file:line:key ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("axes:\n  kernel: ['6.12']\nbase:\n  memory: lots\n",
     'm.yaml:4: base.memory: expected MiB as an integer or like "1G", got "lots"'),
    ("axes:\n  kernel: ['6.12', '6.10']\n",
     'm.yaml:2: axes.kernel[1]: expected one of 6.1, 6.12, 7.2, stock-6.1'),
    ("axes:\n  kernel:\n    - '6.12'\n    - 6.3\n",
     "m.yaml:4: axes.kernel[1]: expected one of"),
    ("axes:\n  cpus: [2, 0]\n", "m.yaml:2: axes.cpus[1]: expected an integer from 1 to 64"),
    ("axes:\n  machine: [q35, q53]\n", 'axes.machine[1]: expected "q35" or "pc", got "q53"; '
                                       'did you mean "q35"?'),
    ("axes:\n  devices:\n    big:\n      - type: hmm-gpu\n        props: {id: x}\n",
     "m.yaml:5: axes.devices.big[0].props.id: set by the launcher itself; remove it"),
    ("axes:\n  devices: [{type: hmm-gpu}]\n",
     "m.yaml:2: axes.devices: expected named sets, like {name: [...]}, of device lists"),
    ("axes:\n  scenarios:\n    quick: [smoke, smok]\n",
     'm.yaml:3: axes.scenarios.quick[1]: expected "smoke" or'),
    ("axes:\n  scenarios: [smoke, bogus]\n",
     'm.yaml:2: axes.scenarios[1]: not a scenario set or scenario: "bogus"'),
    ("axes:\n  kernel: []\n", "m.yaml:2: axes.kernel: needs at least one value"),
    ("axes:\n  kernel: ['6.12', '6.12']\n", "m.yaml:2: axes.kernel[1]: 6.12 is listed twice"),
    ("axes:\n  kernal: ['6.12']\n", 'm.yaml:2: axes.kernal: unknown key; did you mean "kernel"?'),
    ("axis:\n  kernel: ['6.12']\n", 'm.yaml:1: axis: unknown key; did you mean "axes"?'),
    ("base: {cpus: 2}\n", "m.yaml:1: axes: missing: a matrix needs axes:"),
    ("axes:\n  iommu: ['off', intel-iommu]\nbase:\n  iommu: 'off'\n",
     "m.yaml:4: base.iommu: iommu is an axis here (line 2): set it in one place"),
    ("axes:\n  kernel: ['6.12']\ninclude:\n  - {kernel: '6.12', devices: huge}\n",
     'm.yaml:4: include[0].devices: no device set named "huge"'),
    ("axes:\n  kernel: ['6.12']\ninclude:\n  - {kernel: ['6.1', '7.2']}\n",
     "m.yaml:4: include[0].kernel: one value here, not a list"),
    ("axes:\n  kernel: ['6.12']\nexclude:\n  - {}\n",
     "m.yaml:4: exclude[0]: give at least one axis"),
    ("axes:\n  kernel: ['6.12']\nexclude:\n  - {kernel: '6.12', accel: tcg}\n",
     "m.yaml:4: exclude[0].accel: unknown key"),
    ("axes:\n  kernel: ['6.12']\ninclude:\n  - {machine: pc, iommu: intel-iommu}\n",
     'm.yaml:4: include[0]: intel-iommu needs machine q35: set machine: q35 or iommu: "off"'),
    ("axes:\n  kernel: ['6.12']\npairwise: yes please\n",
     'm.yaml:3: pairwise: expected true or false, got "yes please"'),
    ("axes:\n  kernel: ['6.12'\n", "m.yaml:3: not valid YAML"),
])
def test_errors_say_where(text: str, message: str) -> None:
    assert message in error(text)


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        matrix.load(tmp_path / "missing.yaml")


# ---- the command line ----------------------------------------------------------------------------

@pytest.fixture
def _restore_logging() -> Any:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.usefixtures("_restore_logging")
def test_cli_matrix_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["matrix", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "matrix: <default matrix>"
    assert any(line.split()[:5] == ["6.12-debug", "6.12", "debug", "q35", "off"]
               for line in out.splitlines())
    assert out.splitlines()[-1] == "8 cells (6 of 6 combinations of the axes, 2 included), " \
                                   "0 dropped"
    assert main(["matrix", "list", "--kernel-tree", str(tmp_path / "linux")]) == 0
    assert f"tree:{tmp_path}/linux" in capsys.readouterr().out


@pytest.mark.usefixtures("_restore_logging")
def test_cli_matrix_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("axes:\n  iommu: ['off', intel-iommu]\n  memory: [1G, lots]\n")
    assert main(["matrix", "list", str(f)]) == 2
    assert f'{f}:3: axes.memory[1]: expected MiB' in capsys.readouterr().err
    r = tmp_path / "r"
    assert main(["run", str(f), "--results", str(r)]) == 2
    assert f'{f}:3: axes.memory[1]' in capsys.readouterr().err
    assert not r.exists()


@pytest.mark.usefixtures("_restore_logging")
def test_cli_matrix_options_need_a_matrix(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("cpus: 1\n")
    assert main(["run", str(f), "-j", "2"]) == 2
    assert "-j is for matrix files" in capsys.readouterr().err
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "results.json").write_text(json.dumps({"version": 1, "tests": []}))
    assert main(["run", "--rerun-failed", str(prev)]) == 2
    assert "not the results of a matrix run" in capsys.readouterr().err


@pytest.mark.usefixtures("_restore_logging")
def test_cli_rerun_failed_with_nothing_to_rerun(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "matrix.yaml").write_text("axes:\n  kernel: ['6.12']\n")
    (prev / "results.json").write_text(json.dumps({"kind": "matrix", "matrix": {
        "kernel_tree": None, "cells": [{"name": "6.12", "status": "PASS"},
                                       {"name": "gone", "status": "FAIL"}]}}))
    assert main(["run", "--rerun-failed", str(prev), "--results", str(tmp_path / "r")]) == 0
    io = capsys.readouterr()
    assert "not in " in io.err and "gone" in io.err
    assert "nothing to rerun" in io.out
    assert not (tmp_path / "r").exists()


def test_describe_keeps_long_drop_lists_short() -> None:
    text = matrix.describe(load("""
        axes:
          machine: [pc]
          iommu: [intel-iommu]
          cpus: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        include:
          - {machine: q35}
    """))
    assert text.count("intel-iommu needs machine q35 (automatic rule)") == 9
    assert "  ... and 2 more: intel-iommu needs machine q35 (automatic rule)" in text
    assert text.splitlines()[-1] == "1 cell (0 of 10 combinations of the axes, 1 included), " \
                                    "10 dropped"


def test_a_matrix_whose_exclude_drops_everything_says_so() -> None:
    m = matrix.load_text(textwrap.dedent("""
        axes:
          kernel: ["6.1", "6.12"]
          iommu: ["off"]
        exclude: [{iommu: "off"}]
    """), "all-out.yaml")
    assert m.cells == ()
    why = "the matrix has no cells after exclude (all 2 combinations of its axes dropped)"
    assert m.empty_reason() == why
    assert matrix.describe(m).splitlines()[-1] == f"nothing to run: {why}"


# ---- cell_keys: run-file keys that are no axis, for some cells ---------------------------

def test_the_default_matrix_traces_the_guest_in_one_cell() -> None:
    m = matrix.load(None)
    traced = [c.name for c in m.cells if c.config.ftrace.enabled]
    assert traced == ["6.12"]
    cell = m.cell("6.12")
    assert cell.keys == ("ftrace",)
    # cell.yaml says so, and reads back as the same cell
    again = config.load_text(cell.text, "cell.yaml", SCENARIOS)
    assert again.ftrace == cell.config.ftrace and again.ftrace.events == config.FTRACE_EVENTS
    assert "6.12: also ftrace (cell_keys)" in matrix.describe(m)


def test_cell_keys_apply_in_order_to_the_cells_they_match() -> None:
    m = load("""\
        axes:
          kernel: ["6.1", "6.12"]
          iommu: ["off", intel-iommu]
        cell_keys:
          - where: {iommu: "off"}
            set: {ftrace: {enabled: true, buffer_kb: 1024}, timeouts: {scenario: 600}}
          - where: {kernel: "6.12", iommu: "off"}
            set: {ftrace: {enabled: true, events: [hmm_gpu]}}
        """)
    got = {c.name: (c.config.ftrace.enabled, c.config.ftrace.buffer_kb, c.config.ftrace.events,
                    c.config.timeouts.scenario) for c in m.cells}
    assert got["6.1"] == (True, 1024, config.FTRACE_EVENTS, 600.0)
    assert got["6.12"] == (True, 8192, ("hmm_gpu",), 600.0)  # the later entry's whole key
    assert got["6.1-iommu"][0] is False and got["6.12-iommu"][3] == 300.0


@pytest.mark.parametrize(("text", "message"), [
    ("axes: {kernel: ['6.12']}\ncell_keys:\n  - where: {kernel: '6.12'}\n"
     "    set: {iommu: intel-iommu}\n",
     "m.yaml:4: cell_keys[0].set.iommu: iommu is an axis"),
    ("axes: {kernel: ['6.12']}\ncell_keys:\n  - where: {kernel: '6.12'}\n"
     "    set: {ftrace: {buffer_kb: 1}}\n",
     "m.yaml:4: cell_keys[0].set.ftrace.buffer_kb: expected an integer from 64"),
    ("axes: {kernel: ['6.12']}\ncell_keys:\n  - where: {kernel: '6.12'}\n"
     "    set: {ftrase: true}\n",
     'm.yaml:4: cell_keys[0].set.ftrase: not a run-file key; did you mean "ftrace"?'),
    ("axes: {kernel: ['6.12']}\ncell_keys:\n  - set: {ftrace: true}\n",
     "m.yaml:3: cell_keys[0]: missing key where"),
    ("axes: {kernel: ['6.12']}\ncell_keys:\n  - where: {kernal: '6.12'}\n    set: {ftrace: true}\n",
     'm.yaml:3: cell_keys[0].where.kernal: unknown key; did you mean "kernel"?'),
])
def test_cell_keys_errors_say_where(text: str, message: str) -> None:
    assert error(text).startswith(message)

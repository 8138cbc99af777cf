"""harness/report.py: junit.xml and index.html from both kinds of results.json.

Data: ``data/report/single/results.json`` is a real ``./hmmlab run`` (208
entries, all PASS or SKIP); ``data/report/matrix-real/results.json`` a real
two-cell matrix run (smoke only, iommu off and intel-iommu);
``data/report/matrix/results.json`` a small hand-made matrix run (version 2)
with every status, dotted cell names, a ``<script>`` in a log excerpt and
control characters in another. ``data/report/traces`` holds real DMA traces of
one cell of a default matrix run (6.12): hmm-gpu 1's whole trace
(dmatrace-1.bin) and 6000 records of hmm-gpu 0's (dmatrace-0.bin, records
1414500-1420499 after its header: 35 faults, 12 replays, 4 cancels, 102
migration copies).
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import junitparser
import markupsafe
import numpy as np
import pytest

from harness.checks import dmatrace, tracefile
from harness.core.files import disk_bytes
from harness.core.results import Results, Status
from harness.report import plots, report

DATA = Path(__file__).parent / "data" / "report"
# Files a results tree has but that tests never name; the page lists them per cell.
CELL_FILES = ("console.log", "run.log", "qemu.log", "dmatrace-0.bin", "dmatrace-1.bin",
              "hmm-tests-hmm-gpu.log", "hmm-tests-test_hmm.log", "hmm-tests-table.txt")
MISSING = "svm-mirror.stderr"  # never created: the page must not link to it


def make_tree(kind: str, dest: Path) -> Path:
    """A results directory holding ``kind``'s results.json and the files it names."""
    dest.mkdir(parents=True)
    shutil.copy(DATA / kind / "results.json", dest / "results.json")
    doc = json.loads((dest / "results.json").read_text())
    dirs = [c["dir"] for c in doc["matrix"]["cells"]] if doc.get("kind") == "matrix" else [""]
    for d in dirs:
        (dest / d).mkdir(parents=True, exist_ok=True)
        for name in CELL_FILES:
            (dest / d / name).write_text(f"{name} of {d or 'the run'}\n")
    for t in doc["tests"]:
        for f in t["output_files"]:
            if Path(f).name != MISSING:
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                (dest / f).write_text(f"{f}\n")
    return dest


@pytest.fixture
def single(tmp_path: Path) -> Path:
    return make_tree("single", tmp_path / "single")


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    return make_tree("matrix", tmp_path / "matrix")


class Page(HTMLParser):
    """The parts of index.html the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.tds: list[dict[str, str]] = []  # status cells of the matrix table
        self.in_matrix = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "table":
            self.in_matrix = a.get("id") == "matrix-table"
        if tag == "td" and self.in_matrix and "data-status" in a:
            self.tds.append(a)


def page(results: Path) -> tuple[str, Page]:
    text = (results / "index.html").read_text()
    return text, Page(text)


def statuses(doc: dict) -> dict[str, int]:
    counts = dict.fromkeys(report.STATUSES, 0)
    for t in doc["tests"]:
        counts[t["status"]] += 1
    return counts


# --- both outputs ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "matrix", "matrix-real"])
def test_write_reports_writes_both_next_to_results_json(kind: str, tmp_path: Path) -> None:
    tree = make_tree(kind, tmp_path / kind)
    paths = report.write_reports(tree)
    assert paths == [tree / "junit.xml", tree / "index.html"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert not list(tree.glob("*.tmp"))


# --- JUnit ---------------------------------------------------------------------


def check_junit_shape(path: Path) -> ET.Element:
    """What Jenkins' and GitLab's JUnit readers rely on, checked on the raw XML."""
    root = ET.parse(path).getroot()  # also proves it is well-formed XML
    assert root.tag == "testsuites"
    for suite in root.findall("testsuite"):
        assert suite.get("name")
        cases = suite.findall("testcase")
        for attr, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
            assert int(suite.get(attr)) == sum(1 for c in cases if c.find(tag) is not None)
        assert int(suite.get("tests")) == len(cases)
        float(suite.get("time"))
        for case in cases:
            assert case.get("name") and case.get("classname") == suite.get("name")
            time = case.get("time")  # absent when nothing measured the test
            assert time is None or float(time) >= 0
            results = [c for c in case if c.tag in ("failure", "error", "skipped")]
            assert len(results) <= 1, f"{case.get('name')}: several results"
            for r in results:
                assert r.get("message"), f"{case.get('name')}: {r.tag} without message"
                if r.tag != "skipped":
                    assert r.get("type")
    for attr in ("tests", "failures", "errors", "skipped"):
        assert int(root.get(attr)) == sum(int(s.get(attr)) for s in root.findall("testsuite"))
    return root


def test_junit_single_run_counts_match_results(single: Path) -> None:
    report.write_reports(single)
    doc = json.loads((single / "results.json").read_text())
    check_junit_shape(single / "junit.xml")
    xml = junitparser.JUnitXml.fromfile(str(single / "junit.xml"))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert suite.name == "6.12-q35"  # named from the run's config
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (
        doc["summary"]["total"], doc["summary"]["FAIL"], doc["summary"]["ERROR"],
        doc["summary"]["SKIP"])
    assert suite.tests == 208 and suite.skipped == 58
    cases = list(suite)
    assert [c.name for c in cases] == [t["path"] for t in doc["tests"]]
    assert {c.classname for c in cases} == {"6.12-q35"}
    by_name = {c.name: c for c in cases}
    skip = next(t for t in doc["tests"] if t["status"] == "SKIP")
    [skipped] = by_name[skip["path"]].result
    assert isinstance(skipped, junitparser.Skipped)
    assert skipped.message == skip["reason"] == "DEVICE_COHERENT not available"
    assert by_name["boot"].system_out == doc["tests"][0]["log_excerpt"]
    props = {p.name: p.value for p in suite.properties()}
    assert props["kernel"] == "6.12" and props["kernel-version"] == "6.12.107"


def test_junit_matrix_one_suite_per_cell_and_every_status(matrix: Path) -> None:
    report.write_reports(matrix)
    doc = json.loads((matrix / "results.json").read_text())
    check_junit_shape(matrix / "junit.xml")
    xml = junitparser.JUnitXml.fromfile(str(matrix / "junit.xml"))
    suites = {s.name: s for s in xml}
    assert list(suites) == [c["name"] for c in doc["matrix"]["cells"]]
    for name, suite in suites.items():
        mine = [t for t in doc["tests"] if t["cell"] == name]
        assert [c.name for c in suite] == [t["path"][len(name) + 1:] for t in mine]
        assert {c.classname for c in suite} == {name}
        c = statuses({"tests": mine})
        assert suite.failures == c["FAIL"]
        assert suite.errors == c["ERROR"] + c["MISS"]  # MISS is an error: it never ran
        assert suite.skipped == c["SKIP"]
    assert xml.tests == len(doc["tests"]) == 27
    assert (xml.failures, xml.errors, xml.skipped) == (1, 1 + 4, 3)

    iommu = {c.name: c for c in suites["6.12-q35-intel-iommu"]}
    [fail] = iommu["svm-mirror.anon.read"].result
    assert isinstance(fail, junitparser.Failure) and fail.type == "FAIL"
    assert fail.message.startswith('{"test": "anon.read", "ok": false')
    assert "DMAR: [DMA Read NO_PASID]" in fail.text
    debug = {c.name: c for c in suites["6.12-debug"]}
    [err] = debug["boot"].result
    assert isinstance(err, junitparser.Error) and err.type == "ERROR"
    assert "BUG: KASAN" in err.message
    [miss] = debug["smoke.copy"].result
    assert isinstance(miss, junitparser.Error) and miss.type == "MISS"
    assert miss.message.startswith("not run")


def test_junit_control_characters_cannot_break_the_xml(matrix: Path) -> None:
    report.write_reports(matrix)
    raw = (matrix / "junit.xml").read_text()
    ET.fromstring(raw)
    assert "\x00" not in raw and "\x1b" not in raw
    assert "a NUL \\x00 byte" in raw  # shown, not dropped
    assert "colour and a NUL" in raw  # terminal colour codes removed


# --- HTML ----------------------------------------------------------------------


def test_html_matrix_has_one_status_per_cell_and_test(matrix: Path) -> None:
    report.write_reports(matrix)
    doc = json.loads((matrix / "results.json").read_text())
    _, p = page(matrix)
    cells = [c["name"] for c in doc["matrix"]["cells"]]
    paths = list(dict.fromkeys(t["path"][len(t["cell"]) + 1:] for t in doc["tests"]))
    assert len(p.tds) == len(cells) * len(paths)
    shown = {(td["data-cell"], td["data-status"]) for td in p.tds}
    expected = {(t["cell"], t["status"]) for t in doc["tests"]}
    assert expected <= shown
    got = [td["data-status"] for td in p.tds if td["data-status"]]
    assert sorted(got) == sorted(t["status"] for t in doc["tests"])
    # Tests some cells lack (7.2's extra hmm-test, the MISSing cell's) are blank, not PASS.
    assert sum(1 for td in p.tds if not td["data-status"]) == len(cells) * len(paths) - 27


def test_html_status_is_written_out_not_only_coloured(matrix: Path) -> None:
    report.write_reports(matrix)
    text, _ = page(matrix)
    for status in report.STATUSES:
        cell = re.search(rf'<td class="st {status}"[^>]*>(?:<a [^>]*>)?(\w+)', text)
        assert cell and cell.group(1) == status


def test_html_header_summary(matrix: Path) -> None:
    report.write_reports(matrix)
    text, _ = page(matrix)
    header = text[text.index("<header>"):text.index("</header>")]
    assert "exit 2 (infrastructure error)" in header
    assert "27 tests in 4 cells" in header
    for n, s in ((18, "PASS"), (1, "FAIL"), (1, "ERROR"), (4, "MISS"), (3, "SKIP")):
        assert f"{n} {s}" in header
    assert "10.0.13" in header and "matrix-sample.yaml" in header and ">vm<" in header


def test_html_single_run_from_real_results(single: Path) -> None:
    report.write_reports(single)
    doc = json.loads((single / "results.json").read_text())
    text, p = page(single)
    assert len(p.tds) == 208
    # Rows follow the results, grouped by the path's first component.
    order = {g: i for i, g in enumerate(dict.fromkeys(t["path"].split(".")[0]
                                                        for t in doc["tests"]))}
    grouped = sorted(doc["tests"], key=lambda t: order[t["path"].split(".")[0]])
    assert [td["data-status"] for td in p.tds] == [t["status"] for t in grouped]
    assert "exit 0 (all passed)" in text and "default.yaml" in text
    groups = re.findall(r'<tbody class="group" data-group="([^"]+)"', text)
    assert groups[:3] == ["boot", "driver", "smoke"] and "hmm-tests" in groups
    assert '<p id="nothing-failed">Nothing failed: no FAIL, ERROR or MISS.</p>' in text
    assert text.index('id="nothing-failed"') < text.index('id="matrix-table"')


def test_html_escapes_log_excerpts(matrix: Path) -> None:
    report.write_reports(matrix)
    text, _ = page(matrix)
    assert "<script>" not in text and "<b>bold</b>" not in text
    assert "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;" in text
    # In a title attribute too: the quote cannot close it.
    assert re.search(r'title="FAIL [^"]*&lt;script&gt;alert\(&#34;xss&#34;\)', text)
    assert "\x00" not in text and "\x1b" not in text


def test_html_links_resolve_to_files_in_the_tree(matrix: Path) -> None:
    report.write_reports(matrix)
    text, p = page(matrix)
    local = [h for h in p.hrefs if not h.startswith("#")]
    assert all(not urlsplit(h).scheme and not h.startswith("/") for h in local), local
    for h in local:
        assert (matrix / unquote(h)).is_file(), h
    # Each cell's logs and traces are linked from the page, inside its own directory.
    for c in ("6.1-q35", "6.12-q35-intel-iommu", "6.12-debug", "7.2-q35"):
        for name in ("console.log", "run.log", "qemu.log", "dmatrace-0.bin",
                     "hmm-tests-hmm-gpu.log"):
            assert f"cells/{c}/{name}" in local
    assert f"cells/6.1-q35/{MISSING}" not in text
    anchors = {h[1:] for h in p.hrefs if h.startswith("#")}
    assert anchors and all(f'id="{a}"' in text for a in anchors)


def test_html_single_run_links_resolve(single: Path) -> None:
    report.write_reports(single)
    _, p = page(single)
    local = [h for h in p.hrefs if not h.startswith("#")]
    assert "console.log" in local and "dmatrace-1.bin" in local and "junit.xml" in local
    for h in local:
        assert (single / unquote(h)).is_file(), h


def test_html_failures_section_lists_bad_entries_with_excerpts(matrix: Path) -> None:
    report.write_reports(matrix)
    text, _ = page(matrix)
    section = text[text.index('id="failures"'):]
    assert "Failures (6)" in text
    assert len(re.findall(r'<div class="failure" data-status="(FAIL|ERROR|MISS)"', section)) == 6
    assert "data mismatch at 0x1000" in section and "BUG: KASAN: slab-use-after-free" in section


def test_html_opens_with_what_failed_above_the_matrix(matrix: Path) -> None:
    report.write_reports(matrix)
    text, _ = page(matrix)
    doc = json.loads((matrix / "results.json").read_text())
    failures, cells, table = (text.index('<h2 id="failures">'), text.index('<h2 id="cells">'),
                              text.index('id="matrix-table"'))
    assert text.index("</header>") < failures < cells < table
    section = text[failures:cells]
    bad = [t for t in doc["tests"] if t["status"] in ("FAIL", "ERROR", "MISS")]
    assert bad
    for t in bad:
        path = t["path"][len(t["cell"]) + 1:]
        assert f'<code class="path">{path}</code>' in section, path
        piece = report.clean_text(t["log_excerpt"]).strip().splitlines()[-1][:40]
        assert str(markupsafe.escape(piece)) in section, piece
    assert 'id="nothing-failed"' not in text


def test_html_without_failures_says_so_in_one_line(single: Path) -> None:
    report.write_reports(single)
    text, _ = page(single)
    notes = re.findall(r'<p id="nothing-failed">[^<]*</p>', text)
    assert notes == ['<p id="nothing-failed">Nothing failed: no FAIL, ERROR or MISS.</p>']
    assert text.index('<h2 id="failures">') < text.index('id="matrix-table"')


def test_html_of_a_run_that_tested_nothing_gives_the_reason(tmp_path: Path) -> None:
    r = Results(tmp_path / "run", config={"kernel": "6.12"})
    r.add_status("hmm-tests", Status.SKIP, "no hmm-tests in this kernel")
    r.write()
    report.write_reports(r.dir)
    text = (r.dir / "index.html").read_text()
    assert "exit 2 (infrastructure error)" in text
    assert '<span id="exit-reason">every test was skipped (1 SKIP)</span>' in text
    assert "Nothing failed: no FAIL, ERROR or MISS (but see the exit status above)." in text


def test_html_hmm_tests_table_per_cell_and_driver(matrix: Path) -> None:
    report.write_reports(matrix)
    text, _ = page(matrix)
    rows = re.findall(r'<tr data-cell="([^"]+)" data-driver="([^"]+)">(.*?)</tr>', text, re.S)
    got = {(c, d): [int(n) for n in re.findall(r'<td class="num[^"]*"[^>]*>(\d+)</td>', body)]
           for c, d, body in rows}
    # tests, PASS, FAIL, SKIP, ERROR, not run
    assert got[("7.2-q35", "hmm-gpu")] == [3, 2, 0, 1, 0, 0]
    assert got[("7.2-q35", "test_hmm")] == [3, 1, 0, 0, 0, 2]
    assert got[("6.1-q35", "hmm-gpu")] == [2, 1, 0, 1, 0, 0]
    assert ("6.12-debug", "hmm-gpu") not in got  # it never booted: no table


def test_html_real_hmm_tests_totals(single: Path) -> None:
    report.write_reports(single)
    text, _ = page(single)
    body = re.search(r'<tr data-cell="6.12-q35" data-driver="test_hmm">(.*?)</tr>', text, re.S)
    assert body
    assert [int(n) for n in re.findall(r">(\d+)</td>", body.group(1))] == [58, 29, 0, 29, 0, 0]


def test_absent_durations_stay_absent(matrix: Path) -> None:
    """A null duration (nothing measured it) is no JUnit time and no figure on the page,
    never 0; measured ones are kept."""
    doc = json.loads((matrix / "results.json").read_text())
    fail = next(t for t in doc["tests"] if t["status"] == "FAIL")
    fail["duration"] = None
    measured = next(t for t in doc["tests"] if t["status"] == "PASS")
    measured["duration"] = 2.25
    missing_key = next(t for t in doc["tests"] if t["status"] == "SKIP")
    del missing_key["duration"]
    (matrix / "results.json").write_text(json.dumps(doc))
    report.write_reports(matrix)
    root = check_junit_shape(matrix / "junit.xml")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}

    def case(t: dict) -> ET.Element:
        return cases[(t["cell"], t["path"][len(t["cell"]) + 1:])]

    assert case(fail).get("time") is None and case(missing_key).get("time") is None
    assert case(measured).get("time") == "2.25"
    text, _ = page(matrix)
    cell = re.search(r'<td class="st FAIL"[^>]*title="([^"]*)"', text)
    assert cell and cell.group(1).startswith("FAIL&#10;")  # no "0.000s"
    assert re.search(r'<td class="st PASS"[^>]*title="PASS 2.250s&#10;', text)
    heads = re.findall(r"<h3>.*?</h3>", text[text.index('id="failures"'):])
    head = next(h for h in heads if fail["path"][len(fail["cell"]) + 1:] in h)
    assert "<small>" not in head and any("<small>120.0 s</small>" in h for h in heads)


def test_html_hmm_tests_three_columns(single: Path) -> None:
    """hmm-tests' table with hmm-gpu in both fault modes: one row per column."""
    doc = json.loads((single / "results.json").read_text())
    table = doc["tables"]["hmm-tests"]
    table["columns"] = ["hmm-gpu", "hmm-gpu-devfault", "test_hmm"]
    for r in table["rows"]:
        r["hmm-gpu-devfault"] = "FAIL" if r["hmm-gpu"] == "PASS" else r["hmm-gpu"]
    table["totals"]["hmm-gpu-devfault"] = {"PASS": 0, "FAIL": 29, "SKIP": 29, "ERROR": 0,
                                           "-": 0}
    (single / "results.json").write_text(json.dumps(doc))
    report.write_reports(single)
    text, _ = page(single)
    drivers = re.findall(r'<tr data-cell="6.12-q35" data-driver="([^"]+)">', text)
    assert drivers == ["hmm-gpu", "hmm-gpu-devfault", "test_hmm"]
    body = re.search(r'data-driver="hmm-gpu-devfault">(.*?)</tr>', text, re.S)
    assert body
    assert [int(n) for n in re.findall(r">(\d+)</td>", body.group(1))] == [58, 0, 29, 29, 0, 0]


def test_real_matrix_run(tmp_path: Path) -> None:
    tree = make_tree("matrix-real", tmp_path / "real")
    report.write_reports(tree)
    doc = json.loads((tree / "results.json").read_text())
    check_junit_shape(tree / "junit.xml")
    xml = junitparser.JUnitXml.fromfile(str(tree / "junit.xml"))
    assert [(s.name, s.tests, s.failures, s.errors) for s in xml] == [
        ("6.12", 16, 0, 0), ("6.12-iommu", 16, 0, 0)]
    assert xml.tests == doc["summary"]["total"] == 32
    text, p = page(tree)
    assert len(p.tds) == 32 and {td["data-status"] for td in p.tds} == {"PASS"}
    # Only the axis that differs heads the columns; the others are the same everywhere.
    axes = re.findall(r'<tr><th class="axis">(\w+)</th>', text)
    assert axes == ["iommu", "status", "logs"]
    assert '<th class="axis">intel-iommu</th>' in text
    assert "6.12.107" in text and "2026-11-21T20:12:07+00:00" in text
    for h in p.hrefs:
        if not h.startswith("#"):
            assert (tree / unquote(h)).is_file(), h
    assert "cells/6.12-iommu/console.log" in p.hrefs


# --- bad input -------------------------------------------------------------------


def test_missing_results_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(report.ReportInputError, match=r"results\.json: not found"):
        report.write_reports(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["tests"][2].update(status="DONE"),
     r"tests\[2\]\.status: 'DONE' is not one of FAIL, ERROR, MISS, PASS, SKIP"),
    (lambda d: d["tests"][0].update(cell="6.13"), r"tests\[0\]\.cell: '6\.13' is not a cell"),
    (lambda d: d["tests"][1].pop("path"), r"tests\[1\]\.path: missing"),
    (lambda d: d["tests"][1].update(duration="slow"), r"tests\[1\]\.duration: is str 'slow'"),
    (lambda d: d.update(version=3), r"version: 3 .* is not a results\.json this hmmlab reads"),
], ids=["status", "cell", "path", "duration", "version"])
def test_bad_matrix_input_names_file_and_key(matrix: Path, change, message: str) -> None:
    path = matrix / "results.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(report.ReportInputError, match=message) as e:
        report.write_reports(matrix)
    assert str(path) in str(e.value)
    assert not (matrix / "index.html").exists()


def test_not_json_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"version": 1,\n "tests": [\n')
    with pytest.raises(report.ReportInputError, match=r"results\.json:3: not JSON"):
        report.write_reports(tmp_path)


def test_a_cell_without_tests_still_shows_in_junit_and_html(matrix: Path) -> None:
    path = matrix / "results.json"
    doc = json.loads(path.read_text())
    doc["tests"] = [t for t in doc["tests"] if t["cell"] != "6.12-debug"]
    debug = next(c for c in doc["matrix"]["cells"] if c["name"] == "6.12-debug")
    debug["summary"] = "kernel build failed: see build-logs/kernel-6.12-debug.log"
    path.write_text(json.dumps(doc))
    report.write_reports(matrix)
    suite = next(s for s in junitparser.JUnitXml.fromfile(str(matrix / "junit.xml"))
                 if s.name == "6.12-debug")
    [case] = list(suite)
    [err] = case.result
    assert isinstance(err, junitparser.Error) and "kernel build failed" in err.message
    text, _ = page(matrix)
    assert "cell <code>6.12-debug</code> reported no tests" in text


def test_clean_text() -> None:
    assert report.clean_text("a\x1b[1;31mred\x1b[0m\tb\x00c\x7f\udc80\n") == (
        "ared\tb\\x00c\\x7f\\udc80\n")


# --- trace plots -----------------------------------------------------------------

TRACES = DATA / "traces"
AXIS_TITLES = {  # plot -> the axis titles its SVG must carry, as text
    "dma": ["DMA (MiB/s)", plots.TIME_AXIS],
    "events": ["events per second", plots.TIME_AXIS],
    "vram": ["VRAM in use (MiB)", plots.TIME_AXIS],
    "latency": ["faults", "fault latency (µs, fault record to replay or cancel)"],
}


class Sections(HTMLParser):
    """Per cell section of the Traces part: its figures, the texts in each <svg>,
    its notes and links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells: dict[str, dict] = {}
        self._cell: dict | None = None
        self._plot: str | None = None
        self._svg_depth = 0
        self._note = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and "cell-plots" in a.get("class", ""):
            self._cell = self.cells[a["data-cell"]] = {"plots": {}, "notes": [], "hrefs": []}
        if self._cell is None:
            return
        if tag == "figure":
            self._plot = a["data-plot"]
            self._cell["plots"][self._plot] = {"svgs": 0, "texts": []}
        if tag == "svg":
            self._svg_depth += 1
            if self._plot:
                self._cell["plots"][self._plot]["svgs"] += 1
        if tag == "a":
            self._cell["hrefs"].append(a["href"])
        self._note = tag == "p" and "plot-note" in a.get("class", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._cell = None
        if tag == "figure":
            self._plot = None
        if tag == "svg":
            self._svg_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is None:
            return
        if self._plot and self._svg_depth and data.strip():
            self._cell["plots"][self._plot]["texts"].append(data.strip())
        if self._note and data.strip():
            self._cell["notes"].append(data.strip())


def traced_tree(tmp_path: Path) -> Path:
    """The real two-cell matrix; its first cell (6.12) has the real traces."""
    tree = make_tree("matrix-real", tmp_path / "real")
    for f in (tree / "cells/6.12").glob("dmatrace-*.bin"):
        f.unlink()
    for f in TRACES.glob("dmatrace-*.bin"):
        shutil.copy(f, tree / "cells/6.12" / f.name)
    return tree


def test_html_cell_with_traces_gets_its_plots(tmp_path: Path) -> None:
    tree = traced_tree(tmp_path)
    (tree / "cells/6.12/timeline.pftrace").write_bytes(b"\x0a\x00")
    report.write_reports(tree)
    text, p = page(tree)
    cells = Sections(text).cells
    assert list(cells) == ["6.12", "6.12-iommu"]
    traced = cells["6.12"]
    assert list(traced["plots"]) == ["dma", "events", "vram", "latency"]
    for name, titles in AXIS_TITLES.items():
        plot = traced["plots"][name]
        assert plot["svgs"] == 1, name
        for title in titles:
            assert title in plot["texts"], (name, title, plot["texts"][:40])
    # one panel per device in the time plots, legends name the kinds
    assert {"hmm-gpu 0", "hmm-gpu 1", "DATA", "PTW"} <= set(traced["plots"]["dma"]["texts"])
    assert {"faults", "replays", "cancels", "TLB invalidations"} <= set(
        traced["plots"]["events"]["texts"])
    assert traced["notes"] == []
    # the timeline is linked, with how to open it
    assert "cells/6.12/timeline.pftrace" in traced["hrefs"]
    assert "https://ui.perfetto.dev" in traced["hrefs"]
    assert (tree / "cells/6.12/timeline.pftrace").is_file()
    assert "cells/6.12/timeline.pftrace" in p.hrefs and "#plots-1" in p.hrefs
    # a cell without a (valid) trace says so, and draws nothing
    plain = cells["6.12-iommu"]
    assert plain["plots"] == {}
    assert "https://ui.perfetto.dev" not in plain["hrefs"]
    assert any("no plots" in n and "bad magic" in n for n in plain["notes"]), plain["notes"]
    # element ids stay unique with several SVGs inline
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    assert "<script" not in text.lower()


def test_html_cell_without_any_trace_gets_a_note(tmp_path: Path) -> None:
    tree = make_tree("matrix-real", tmp_path / "real")
    for f in tree.glob("cells/*/dmatrace-*.bin"):
        f.unlink()
    report.write_reports(tree)
    cells = Sections(page(tree)[0]).cells
    assert list(cells) == ["6.12", "6.12-iommu"]
    for cell in cells.values():
        assert cell["plots"] == {}
        assert cell["notes"] == ["No DMA trace in this cell (no device, or tracing was off)."]


def oracle_latencies(records: list[dmatrace.TraceRecord]) -> tuple[list[int], int]:
    """Fault latencies the slow, obvious way, over dmatrace's record objects."""
    out, open_ = [], 0
    for i, r in enumerate(records):
        if r.kind != dmatrace.Kind.FAULT_WRITE:
            continue
        for later in records[i + 1:]:
            if later.kind == dmatrace.Kind.EV_REPLAY or (
                    later.kind == dmatrace.Kind.EV_CANCEL and later.aux == r.aux):
                out.append(later.timestamp_ns - r.timestamp_ns)
                break
        else:
            open_ += 1
    return sorted(out), open_


@pytest.mark.parametrize("name", ["dmatrace-0.bin", "dmatrace-1.bin"])
def test_reduced_trace_agrees_with_the_record_decoder(name: str) -> None:
    """The binned figures of a real trace against dmatrace's record-by-record
    decoder: bytes per kind, event counts, fault latencies."""
    path = TRACES / name
    trace = dmatrace.read_trace(path)
    device, recs = plots.read_records(path)
    assert device == dmatrace.GPU and len(recs) == len(trace.records)
    t0 = trace.records[0].timestamp_ns
    width = -(-(trace.records[-1].timestamp_ns - t0 + 1) // plots.BINS)
    s = plots.reduce_trace(path, device, recs, t0, width)
    summary = dmatrace.summarize(trace)
    for kind, bins in s.dma.items():
        want = sum(b for k, b in summary.bytes_by.items() if k.split("/")[0] == kind)
        assert bins.sum() == want, kind
    assert set(s.dma) == {k.split("/")[0] for k, b in summary.bytes_by.items()
                          if b and not k.startswith(("VRAM", "EV_"))}
    for kind, what in plots.EVENTS.items():
        n = sum(1 for r in trace.records if r.kind == kind)
        assert (s.events[what].sum() if what in s.events else 0) == n, what
    want, open_ = oracle_latencies(trace.records)
    assert sorted(s.latency_ns.tolist()) == want and s.unresolved == open_
    assert len(want) > 10
    # chunk boundaries change nothing (the VRAM state and record indices carry over)
    small = plots.reduce_trace(path, device, recs, t0, width, chunk=97)
    assert {k: v.tolist() for k, v in small.dma.items()} == {
        k: v.tolist() for k, v in s.dma.items()}
    assert s.vram_pages is not None and small.vram_pages is not None
    assert small.vram_pages.tolist() == s.vram_pages.tolist()
    assert sorted(small.latency_ns.tolist()) == want


def test_fault_latency_ends_at_the_first_replay_or_own_cancel() -> None:
    # faults at records 0, 2, 5, 9, 10 (tokens 1-5); a replay at 4; cancels:
    # token 2 at 3 (before the replay), 3 at 6, 1 at 7 (after the replay), 6 at 11
    # (nobody's: fault 5 stays open); time = record index * 10
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    lat, open_ = plots.fault_latencies(
        f_idx=i64(0, 2, 5, 9, 10), f_ts=i64(0, 20, 50, 90, 100), f_tok=i64(1, 2, 3, 4, 5),
        r_idx=i64(4), r_ts=i64(40),
        c_idx=i64(3, 6, 7, 11), c_ts=i64(30, 60, 70, 110), c_tok=i64(2, 3, 1, 6))
    assert lat.tolist() == [40, 10, 10] and open_ == 2


def test_vram_pages_follow_the_copies_across_chunks() -> None:
    v = plots.VramPages()
    # page 5 filled then emptied, page 6 filled
    assert v.deltas(np.array([5, 5, 6]), np.array([True, False, True])).tolist() == [1, -1, 1]
    # next chunk: 5 copied out again (a migration that did not complete): no change;
    # 6 emptied, 6 emptied again, 5 filled, 9 copied out without ever being filled
    assert v.deltas(np.array([5, 6, 6, 5, 9]),
                    np.array([False, False, False, True, False])).tolist() == [0, -1, 0, 1, 0]


def test_broken_and_empty_traces_are_notes_not_failures(tmp_path: Path) -> None:
    shutil.copy(TRACES / "dmatrace-1.bin", tmp_path / "dmatrace-1.bin")
    (tmp_path / "dmatrace-2.bin").write_bytes(b"")
    head = (TRACES / "dmatrace-1.bin").read_bytes()[:dmatrace.HDR_SIZE]
    (tmp_path / "dmatrace-3.bin").write_bytes(head + b"\x00" * 40)  # half a record
    (tmp_path / "dmatrace-4.bin").write_bytes(b"not a trace, just text\n" * 3)
    out = plots.cell_plots(tmp_path)
    assert [p.id for p in out.plots] == ["dma", "events", "vram", "latency"]
    assert out.notes[:2] == ["dmatrace-2.bin: no plots: empty trace: the device wrote no header",
                             "dmatrace-3.bin: no records"]
    assert re.fullmatch(r"dmatrace-4\.bin: no plots: bad magic 0x[0-9a-f]{16} "
                        r"\(want 0x31435254474d4d48\): not a hmm-gpu trace", out.notes[2])
    assert len(out.notes) == 3
    assert out.timeline is None


# --- disk use ----------------------------------------------------------------

ZST = Path(__file__).parent / "data" / "dmatrace-frames.zst.bin"  # zstd frames, as QEMU writes


class DiskCells(HTMLParser):
    """The header's disk line and each cell's disk column."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.header: dict[str, str] = {}
        self.cells: list[dict[str, str]] = []
        self.texts: dict[int, list[str]] = {}  # 0: the header, n: the n-th cell
        self._in = -1
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "dd" and a.get("id") == "disk":
            self.header, self._in = a, 0
        elif tag == "td" and "disk" in a.get("class", "").split():
            self.cells.append(a)
            self._in = len(self.cells)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("dd", "td"):
            self._in = -1

    def handle_data(self, data: str) -> None:
        if self._in >= 0:
            self.texts.setdefault(self._in, []).append(data)


def test_html_shows_disk_use_per_cell_and_for_the_run(tmp_path: Path) -> None:
    tree = make_tree("matrix-real", tmp_path / "real")
    for f in tree.glob("cells/*/dmatrace-*.bin"):
        f.unlink()
    first = tree / "cells/6.12"
    shutil.copy(ZST, first / "dmatrace-0.bin")  # compressed
    shutil.copy(TRACES / "dmatrace-1.bin", first / "dmatrace-1.bin")  # raw (older run)
    (first / "results.json").write_text(json.dumps({"environment": {"disk_bytes": 123_400_000}}))
    report.write_reports(tree)
    d = DiskCells(page(tree)[0])
    raw0 = len(tracefile.read_bytes(ZST))
    zst, raw1 = ZST.stat().st_size, (TRACES / "dmatrace-1.bin").stat().st_size
    assert zst < raw0  # the fixture is compressed
    # the first cell: what its run recorded, and its traces, on disk against raw
    assert d.cells[0]["data-bytes"] == "123400000"
    assert int(d.cells[0]["data-trace-bytes"]) == zst + raw1
    assert int(d.cells[0]["data-trace-raw-bytes"]) == raw0 + raw1
    text = " ".join(d.texts[1])
    assert "123.4 MB" in text and "2 files" in text
    assert f"({(zst + raw1) / (raw0 + raw1):.2f}x)" in text
    # the second: no disk_bytes recorded (an older run), no trace
    assert d.cells[1]["data-bytes"] == "" and " ".join(d.texts[2]) == "not recorded"
    # the run: the results directory as it is, and every cell's traces
    assert int(d.header["data-bytes"]) == disk_bytes(tree, skip=("index.html",)) > 0
    assert int(d.header["data-trace-bytes"]) == zst + raw1
    assert "in the results directory; DMA traces" in " ".join(d.texts[0])


def test_single_run_disk_use_from_its_environment(single: Path) -> None:
    doc = json.loads((single / "results.json").read_text())
    doc["environment"]["disk_bytes"] = 5_000_000
    (single / "results.json").write_text(json.dumps(doc))
    report.write_reports(single)
    d = DiskCells(page(single)[0])
    assert [c["data-bytes"] for c in d.cells] == ["5000000"]
    assert "5.0 MB" in " ".join(d.texts[1])


def test_disk_sizes_in_words() -> None:
    from harness.report import disk

    assert disk.size_text(None) == "not recorded"
    assert disk.size_text(999) == "999 B"
    assert disk.size_text(1_500_000) == "1.5 MB"
    assert disk.size_text(2_340_000_000) == "2.3 GB"
    assert disk.traces_text(disk.TraceDisk()) == "no DMA trace"
    t = disk.TraceDisk(2, 25_000_000, 100_000_000)
    assert t.ratio == 0.25
    assert disk.traces_text(t) == ("DMA traces 25.0 MB on disk for 100.0 MB of records "
                                   "(0.25x), 2 files")

"""index.html in a real browser: headless Chromium renders the report.

Chromium is Debian's ``chromium`` package, which the ``./hmmlab`` launcher
installs, so a missing browser is a FAIL with the fix, never a skip. Each
browser run has its own profile, its own process group (killed whole on
timeout) and a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from harness.report import disk, report

pytestmark = pytest.mark.browser

DATA = Path(__file__).parent.parent / "unit" / "data" / "report"
TIMEOUT = 90  # s per browser run; one takes 1-3 s here
WINDOW = (1400, 1500)
# matplotlib's first default line colours (C0 blue, C1 orange, C2 green): the plots' lines
PLOT_COLOURS = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E), "C2": (0x2C, 0xA0, 0x2C)}
# The page's status colours (templates/report.html.j2), as a person sees them.
COLOURS = {"PASS": (0xC8, 0xF0, 0xCF), "FAIL": (0xFF, 0x8F, 0x8F), "ERROR": (0xD9, 0xB8, 0xFF),
           "MISS": (0xC4, 0xC7, 0xCC), "SKIP": (0xFF, 0xF1, 0xA8)}


def find_chromium() -> str:
    """The browser, or a test FAILURE (called in the test, not a fixture: not an ERROR)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: the HTML report must be checked in a real "
                "browser. ./hmmlab installs Debian's chromium package (APT_PACKAGES in the "
                "launcher); by hand: apt-get install --no-install-recommends chromium")


def browse(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run; stdout and stderr go to files, not pipes, so a
    lingering helper process cannot hold us, and the whole group dies on timeout."""
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [chromium, "--headless=new", "--no-sandbox",  # root has no sandbox
            "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--mute-audio",
            f"--user-data-dir={tmp / 'profile'}", *args]
    with open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
            pytest.fail(f"chromium took over {TIMEOUT}s: {' '.join(argv)}\n"
                        f"{(tmp / 'stderr').read_text()[-2000:]}")
        finally:
            # Helpers (zygote, utility processes) of this run only: its own group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    cp = subprocess.CompletedProcess(argv, rc, (tmp / "stdout").read_text(),
                                     (tmp / "stderr").read_text())
    assert rc == 0, f"chromium exited {rc}: {cp.stderr[-2000:]}"
    return cp


class Dom(HTMLParser):
    """The rendered matrix table as the browser serialised it."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[str] = []
        self.columns: list[str] = []
        self.tds: list[dict[str, str]] = []
        self.scripts = 0
        self._in_matrix = False
        self.disk: dict[str, str] = {}  # "run", "cell-N" (the N-th row): disk use shown
        self._disk: str | None = None
        self._row = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self.tables.append(a.get("id", ""))
            self._in_matrix = a.get("id") == "matrix-table"
        if self._in_matrix and tag == "th" and "cellname" in a.get("class", "").split():
            self.columns.append(a["data-cell"])
        if self._in_matrix and tag == "td" and "data-status" in a:
            self.tds.append(a)
        if tag == "tr" and a.get("id", "").startswith("cell-"):
            self._row = a["id"]
        if tag == "dd" and a.get("id") == "disk":
            self._disk = "run"
        if tag == "td" and "disk" in a.get("class", "").split():
            self._disk = self._row

    def handle_endtag(self, tag: str) -> None:
        if tag in ("dd", "td"):
            self._disk = None

    def handle_data(self, data: str) -> None:
        if self._disk is not None:
            self.disk[self._disk] = self.disk.get(self._disk, "") + data


def make_tree(kind: str, dest: Path) -> Path:
    """``kind``'s results.json plus the files it names (empty), then the reports."""
    dest.mkdir(parents=True)
    shutil.copy(DATA / kind / "results.json", dest / "results.json")
    doc = json.loads((dest / "results.json").read_text())
    for t in doc["tests"]:
        for f in t["output_files"]:
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            (dest / f).write_text(f"{f}\n")
    report.write_reports(dest)
    return dest


@pytest.mark.parametrize("kind", ["single", "matrix"])
def test_browser_dom_has_the_matrix(kind: str, tmp_path: Path) -> None:
    chromium = find_chromium()
    tree = make_tree(kind, tmp_path / kind)
    doc = json.loads((tree / "results.json").read_text())
    cp = browse(chromium, tmp_path / "browser", "--dump-dom", (tree / "index.html").as_uri())
    dom = Dom(cp.stdout)
    assert "matrix-table" in dom.tables, cp.stdout[:2000]
    cells = [c["name"] for c in doc["matrix"]["cells"]] if kind == "matrix" else ["6.12-q35"]
    assert dom.columns == cells
    paths = {(t.get("cell", "6.12-q35"), t["path"].removeprefix(t.get("cell", "") + "."))
             for t in doc["tests"]}
    rows = len({p for _, p in paths})
    assert len(dom.tds) == rows * len(cells)
    got = sorted(td["data-status"] for td in dom.tds if td["data-status"])
    assert got == sorted(t["status"] for t in doc["tests"])
    assert dom.scripts == 0  # the <script> in a log excerpt stayed text
    if kind == "matrix":
        assert "&lt;script&gt;alert" in cp.stdout


def test_browser_screenshot_shows_every_status_colour(tmp_path: Path) -> None:
    chromium = find_chromium()
    tree = make_tree("matrix", tmp_path / "matrix")
    shot = tmp_path / "report.png"
    browse(chromium, tmp_path / "browser", f"--screenshot={shot}",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", (tree / "index.html").as_uri())
    keep = os.environ.get("HMMLAB_REPORT_SCREENSHOT")
    if keep:  # somewhere a person can look at it
        shutil.copy(shot, keep)
    img = Image.open(shot).convert("RGB")
    assert img.size == WINDOW
    total = WINDOW[0] * WINDOW[1]
    counts = {rgb: n for n, rgb in img.getcolors(maxcolors=total)}
    assert counts.get((255, 255, 255), 0) < 0.9 * total, "the screenshot is (nearly) blank"
    assert len(counts) > 50
    for status, rgb in COLOURS.items():
        n = counts.get(rgb, 0)
        assert n > 500, f"{status} colour {rgb} painted on only {n} pixels"


def test_browser_shows_the_trace_plots(tmp_path: Path) -> None:
    """The real matrix with real DMA traces in its first cell: the plots are in the
    rendered DOM as SVG, and painted (their line colours on the screenshot)."""
    chromium = find_chromium()
    tree = make_tree("matrix-real", tmp_path / "real")
    for f in (DATA / "traces").glob("dmatrace-*.bin"):
        shutil.copy(f, tree / "cells/6.12" / f.name)
    report.write_reports(tree)
    cp = browse(chromium, tmp_path / "dom", "--dump-dom", (tree / "index.html").as_uri())
    section = cp.stdout[cp.stdout.index('id="plots-1"'):cp.stdout.index('id="plots-2"')]
    assert section.count("<svg") == 4, section[:2000]
    for title in ("DMA (MiB/s)", "events per second", "VRAM in use (MiB)", "fault latency"):
        assert title in section
    assert "<svg" not in cp.stdout[cp.stdout.index('id="plots-2"'):]
    assert Dom(cp.stdout).scripts == 0
    # disk use: the run's line in the header, the traced cell's in its row
    dom = Dom(cp.stdout)
    assert "in the results directory; DMA traces" in dom.disk["run"], dom.disk
    raw = sum(f.stat().st_size for f in (DATA / "traces").glob("dmatrace-*.bin"))
    # the first cell (6.12) has the traces, raw ones: on disk as much as their records
    assert f"for {disk.size_text(raw)} of records (1.00x), 2 files" in dom.disk["cell-1"], \
        dom.disk
    # The plots are at the bottom of a long page: a window tall enough for all of it.
    shot = tmp_path / "plots.png"
    height = 9000
    browse(chromium, tmp_path / "shot", f"--screenshot={shot}",
           f"--window-size={WINDOW[0]},{height}", (tree / "index.html").as_uri())
    keep = os.environ.get("HMMLAB_REPORT_PLOTS_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    img = Image.open(shot).convert("RGB")
    counts = {rgb: n for n, rgb in img.getcolors(maxcolors=WINDOW[0] * height)}
    painted = {name: counts.get(rgb, 0) for name, rgb in PLOT_COLOURS.items()}
    # thin anti-aliased lines: only their cores have the exact colour (here about
    # 1800, 900 and 100 pixels); the page without plots has none
    assert sum(painted.values()) > 1000 and min(painted.values()) > 30, \
        f"plot line colours painted on {painted} pixels: the plots are not visible"
    # where the plots are painted, the page is not blank: the box around the
    # plot-coloured pixels holds lines, text and axes in many colours
    px = img.load()
    hits = [(x, y) for y in range(0, height, 2) for x in range(0, WINDOW[0], 2)
            if px[x, y] in PLOT_COLOURS.values()]
    assert hits, "no plot pixels"
    xs, ys = [x for x, _ in hits], [y for _, y in hits]
    box = img.crop((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    box_colours = box.getcolors(maxcolors=box.size[0] * box.size[1])
    assert len(box_colours) > 50
    white = dict((rgb, n) for n, rgb in box_colours).get((255, 255, 255), 0)
    # axes, ticks, text and lines cover about 5 % of the box here; a blank one, none
    assert white < 0.99 * box.size[0] * box.size[1], \
        f"the plot area {box.size} is (nearly) blank: {white} white pixels"

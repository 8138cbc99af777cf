"""Reports of a results directory: ``junit.xml`` for CI and ``index.html`` for people.

:func:`write_reports` reads ``results.json`` (a single run, version 1, or a
matrix run, version 2 with ``kind: matrix``) and writes both files next to it.
Both kinds are read into one model: a list of cells (a single run is one
cell) and their test entries, so the writers do not care which kind it was.

JUnit: one ``<testsuite>`` per cell, ``<testcase classname=CELL name=PATH>``.
FAIL is ``<failure>``, ERROR is ``<error>``, SKIP is ``<skipped>``, and MISS
(a test that should have run but did not, e.g. its guest died first) is an
``<error>`` whose message starts "not run": Jenkins and GitLab count
``<skipped>`` as harmless, and a test that never ran must not look harmless.

HTML: one static page (inline CSS, no script, no network), rendered by Jinja2
with autoescape from ``templates/report.html.j2``; every link is relative to
the results directory, so the directory can be copied or archived whole.
Per cell it shows plots of the cell's DMA traces (:mod:`harness.report.plots`,
inline SVG) and links the cell's Perfetto timeline when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import junitparser

from harness.core.files import atomic_write, replacing
from harness.core.results import Status, verdict
from harness.report import disk, plots

RESULTS_JSON = "results.json"
JUNIT_XML = "junit.xml"
INDEX_HTML = "index.html"

# KCIDB roll-up order, worst first: a group or cell shows its worst status.
STATUSES = ("FAIL", "ERROR", "MISS", "PASS", "SKIP")
BAD = ("FAIL", "ERROR", "MISS")
EXIT_MEANING = {0: "all passed", 1: "a test failed", 2: "infrastructure error"}

# Logs and traces a cell directory may hold, in the order the page lists them.
CELL_FILES = (
    "console.log", "run.log", "qemu.log", "qemu.stderr", "qemu.cmdline",
    "dmatrace-*.bin", "timeline.pftrace", "hmm-tests-*.log", "hmm-tests-table.txt",
    "cell.log", "cell.yaml", "results.json",
)
# A matrix run's own files, next to results.json.
TOP_FILES = ("run.log", "matrix.yaml")
TITLE_MAX = 600  # characters of log excerpt in a tooltip; the page has them all
MESSAGE_MAX = 200  # characters of a JUnit message attribute

# Not allowed in XML 1.0 (and unreadable in HTML): C0 controls but tab/LF/CR,
# DEL, C1 controls, lone surrogates (json.loads lets "\udc80" through).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ReportInputError(ValueError):
    """results.json cannot be reported on; the message names the file and key."""


def clean_text(text: str) -> str:
    """``text`` with terminal colour codes dropped and other control characters
    shown as ``\\xNN``, so it is valid XML and readable HTML."""
    text = _ANSI.sub("", text)
    return _BAD_CHARS.sub(_escape_char, text)


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def first_line(text: str, limit: int = MESSAGE_MAX) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def tail(text: str, limit: int) -> str:
    """The end of ``text``, where a failure usually is."""
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


@dataclass(frozen=True)
class Entry:
    """One test entry of one cell; ``path`` is relative to the cell."""

    cell: str
    path: str
    status: str
    duration: float | None  # None: nothing measured it (JSON null or no key)
    log_excerpt: str
    output_files: tuple[str, ...]  # relative to the results directory
    reason: str = ""

    @property
    def group(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def message(self) -> str:
        return first_line(self.reason) or first_line(self.log_excerpt) or self.status


@dataclass
class Cell:
    name: str
    axes: dict[str, str]
    dir: str  # relative to the results directory; "" for a single run
    kernel: str
    status: str  # as given, else the worst status of its entries
    duration: float | None = None
    note: str = ""  # the cell's own summary when it is a message
    entries: list[Entry] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(e.status for e in self.entries)
        return {s: c.get(s, 0) for s in STATUSES}


@dataclass
class Run:
    """Everything the writers need, whatever kind of results.json it came from."""

    results_dir: Path
    kind: str  # "single" | "matrix"
    source: str
    environment: dict[str, Any]
    axes: list[str]
    cells: list[Cell]
    exit_status: int
    written: dt.datetime
    hmm_tests: dict[str, dict[str, Any]]  # cell name -> tables["hmm-tests"] of that cell
    reason: str = ""  # why the exit status is not 0 (summary.reason)

    @property
    def entries(self) -> list[Entry]:
        return [e for c in self.cells for e in c.entries]

    def counts(self) -> dict[str, int]:
        c = Counter(e.status for e in self.entries)
        return {s: c.get(s, 0) for s in STATUSES}


def worst(statuses: Any) -> str:
    present = set(statuses)
    return next((s for s in STATUSES if s in present), "")


class _Reader:
    """Typed access to the parsed JSON with errors naming file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> ReportInputError:
        return ReportInputError(f"{self.path}: {where}: {problem}")

    def get(self, obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
            default: Any = ...) -> Any:
        if key not in obj:
            if default is ...:
                raise self.fail(f"{where}.{key}".lstrip("."),
                                "missing; results.json must come from hmmlab run")
            return default
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # JSON true is not a number, whatever Python's bool thinks.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = "/".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise self.fail(f"{where}.{key}".lstrip("."),
                            f"is {type(value).__name__} {value!r:.60}, expected {names}")
        return value

    def status(self, obj: dict[str, Any], where: str) -> str:
        status = self.get(obj, "status", str, where)
        if status not in STATUSES:
            raise self.fail(f"{where}.status",
                            f"{status!r} is not one of {', '.join(STATUSES)}")
        return status

    def entry(self, t: Any, where: str, cell: str, prefix: str) -> Entry:
        if not isinstance(t, dict):
            raise self.fail(where, f"is {type(t).__name__}, expected an object")
        path = self.get(t, "path", str, where)
        if prefix and path.startswith(prefix):
            path = path[len(prefix):]
        files = self.get(t, "output_files", list, where, [])
        if not all(isinstance(f, str) for f in files):
            raise self.fail(f"{where}.output_files", "expected a list of file names")
        duration = self.get(t, "duration", (int, float, type(None)), where, None)
        return Entry(
            cell=cell,
            path=path,
            status=self.status(t, where),
            duration=None if duration is None else float(duration),
            log_excerpt=clean_text(self.get(t, "log_excerpt", str, where, "")),
            output_files=tuple(files),
            reason=clean_text(str(t.get("reason") or "")),
        )


def _single_cell_name(config: dict[str, Any]) -> str:
    """A single run's one cell, named like a matrix cell would be: 6.12-q35 etc."""
    parts = [str(config.get("kernel", "kernel"))]
    if config.get("kernel_tree"):
        parts = ["kernel-tree"]
    if config.get("flavor", "default") != "default":
        parts.append(str(config["flavor"]))
    parts.append(str(config.get("machine", "")))
    if config.get("iommu", "off") != "off":
        parts.append(str(config["iommu"]))
    return "-".join(p for p in parts if p)


def _exit_status(r: _Reader, summary: dict[str, Any], entries: list[Entry]) -> tuple[int, str]:
    """The exit status and why, as results.json says, else by harness.core.results. rule."""
    if "exit_status" in summary:
        return (r.get(summary, "exit_status", int, "summary"),
                clean_text(str(summary.get("reason") or "")))
    v = verdict(Status(e.status) for e in entries)
    return v.exit_status, v.reason


def load(results_dir: Path) -> Run:
    """Read ``results_dir/results.json`` of either kind into a :class:`Run`."""
    path = results_dir / RESULTS_JSON
    r = _Reader(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except FileNotFoundError:
        raise ReportInputError(f"{path}: not found; give the results directory of a run") from None
    except json.JSONDecodeError as e:
        raise ReportInputError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise r.fail("top level", "expected an object")
    version = r.get(doc, "version", int, "")
    env = r.get(doc, "environment", dict, "", {})
    summary = r.get(doc, "summary", dict, "", {})
    tables = r.get(doc, "tables", dict, "", {})
    tests = r.get(doc, "tests", list, "")
    written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)

    if version == 1:
        config = r.get(doc, "config", dict, "", {})
        name = _single_cell_name(config)
        axes = {k: str(config[k]) for k in ("kernel", "flavor", "machine", "iommu", "cmdline",
                                              "cpus", "memory", "kernel_tree") if config.get(k)}
        entries = [r.entry(t, f"tests[{i}]", name, "") for i, t in enumerate(tests)]
        cell = Cell(name=name, axes=axes, dir="", kernel=str(env.get("kernel_release")
                    or config.get("kernel", "")), status=worst(e.status for e in entries),
                    duration=None, entries=entries)
        hmm = {name: tables["hmm-tests"]} if isinstance(tables.get("hmm-tests"), dict) else {}
        code, why = _exit_status(r, summary, entries)
        return Run(results_dir, "single", str(config.get("source", "")), env, list(axes),
                   [cell], code, written, hmm, why)

    if version != 2 or doc.get("kind") != "matrix":
        raise r.fail("version", f"{version!r} (kind {doc.get('kind')!r}) is not a results.json "
                     "this hmmlab reads (1, or 2 with kind: matrix)")
    matrix = r.get(doc, "matrix", dict, "")
    axis_values = r.get(matrix, "axes", dict, "matrix", {})
    cells: list[Cell] = []
    by_name: dict[str, Cell] = {}
    for i, c in enumerate(r.get(matrix, "cells", list, "matrix")):
        where = f"matrix.cells[{i}]"
        if not isinstance(c, dict):
            raise r.fail(where, "expected an object")
        name = r.get(c, "name", str, where)
        if name in by_name:
            raise r.fail(f"{where}.name", f"{name!r} names two cells")
        cell_summary = c.get("summary")
        cell = Cell(
            name=name,
            axes={str(k): str(v) for k, v in r.get(c, "axes", dict, where, {}).items()},
            dir=r.get(c, "dir", str, where, f"cells/{name}"),
            kernel=str(c.get("kernel_release") or c.get("kernel_build") or c.get("kernel")
                       or ""),
            status=r.status(c, where) if "status" in c else "",
            duration=float(r.get(c, "duration", (int, float), where, 0.0)) or None,
            note=clean_text(cell_summary) if isinstance(cell_summary, str) else "",
        )
        cells.append(cell)
        by_name[name] = cell
    for i, t in enumerate(tests):
        where = f"tests[{i}]"
        name = r.get(t, "cell", str, where) if isinstance(t, dict) else ""
        if name not in by_name:
            raise r.fail(f"{where}.cell", f"{name!r} is not a cell of matrix.cells")
        by_name[name].entries.append(r.entry(t, where, name, name + "."))
    for cell in cells:
        cell.status = cell.status or worst(e.status for e in cell.entries)
    hmm_all = tables.get("hmm-tests", {})
    hmm = {k: v for k, v in hmm_all.items() if isinstance(v, dict)} if isinstance(
        hmm_all, dict) else {}
    # Column headers show the axes that tell cells apart; all of them if none does.
    listed = matrix.get("varying")
    varying = [str(a) for a in listed] if isinstance(listed, list) and listed else [
        a for a, v in axis_values.items() if isinstance(v, list) and len(v) > 1]
    columns = [str(a) for a in varying or axis_values] or sorted({a for c in cells
                                                                   for a in c.axes})
    entries = [e for c in cells for e in c.entries]
    code, why = _exit_status(r, summary, entries)
    return Run(results_dir, "matrix", str(matrix.get("source", "")), env, columns, cells,
               code, written, hmm, why)


# --- JUnit -----------------------------------------------------------------


def junit_xml(run: Run) -> junitparser.JUnitXml:
    xml = junitparser.JUnitXml(name="hmmlab")
    host = str(run.environment.get("host", ""))
    stamp = run.written.strftime("%Y-%m-%dT%H:%M:%S")
    for cell in run.cells:
        suite = junitparser.TestSuite(cell.name)
        suite.timestamp = stamp
        if host:
            suite.hostname = host
        for axis, value in cell.axes.items():
            suite.add_property(axis, value)
        if cell.kernel and cell.kernel != cell.axes.get("kernel"):
            suite.add_property("kernel-version", cell.kernel)
        entries = cell.entries
        if not entries:
            # A cell that produced nothing (e.g. its build failed) must not vanish from CI.
            entries = [Entry(cell.name, "cell", cell.status if cell.status in BAD else "ERROR",
                             cell.duration, cell.note or
                             f"cell {cell.name} reported no test results", ())]
        for e in entries:
            # no time attribute when nothing measured the test (it is optional)
            case = junitparser.TestCase(e.path, classname=cell.name,
                                        time=None if e.duration is None else round(e.duration, 3))
            if e.status == "FAIL":
                result: Any = junitparser.Failure(e.message, "FAIL")
            elif e.status == "ERROR":
                result = junitparser.Error(e.message, "ERROR")
            elif e.status == "MISS":
                result = junitparser.Error(f"not run: {e.message}", "MISS")
            elif e.status == "SKIP":
                result = junitparser.Skipped(e.message)
            else:
                result = None
            if result is not None:
                if e.status != "SKIP":
                    result.text = e.log_excerpt
                case.result = [result]
            if e.log_excerpt:
                case.system_out = e.log_excerpt
            suite.add_testcase(case)
        suite.update_statistics()
        xml.add_testsuite(suite)
    xml.update_statistics()
    return xml


def write_junit(run: Run, path: Path) -> Path:
    with replacing(path) as tmp:
        junit_xml(run).write(str(tmp), pretty=True)
    return path


# --- HTML ------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    label: str
    href: str  # relative URL from index.html


@dataclass
class Row:
    path: str  # relative to the cell
    label: str  # path without its group
    by_cell: list[Entry | None]


@dataclass
class Group:
    name: str
    rows: list[Row]
    rollup: list[dict[str, int]]  # per cell: status -> count

    def worst(self, i: int) -> str:
        return worst(s for s, n in self.rollup[i].items() if n)


def _href(rel: str) -> str:
    return quote(rel, safe="/")


def _rel(cell: Cell, name: str) -> str:
    return f"{cell.dir}/{name}" if cell.dir else name


def cell_links(run: Run, cell: Cell) -> list[Link]:
    """Logs and traces present in the cell's directory, as relative links."""
    base = run.results_dir / cell.dir if cell.dir else run.results_dir
    links: list[Link] = []
    for pattern in CELL_FILES:
        for p in sorted(base.glob(pattern)):
            if p.is_file() and not (cell.dir == "" and p.name == RESULTS_JSON):
                links.append(Link(p.name, _href(_rel(cell, p.name))))
    return links


def top_links(run: Run) -> list[Link]:
    if run.kind != "matrix":
        return []  # a single run's files are its one cell's
    return [Link(n, _href(n)) for n in TOP_FILES if (run.results_dir / n).is_file()]


def entry_links(run: Run, e: Entry) -> list[Link]:
    """The entry's output files that exist (a report must not link to nothing)."""
    return [Link(Path(f).name, _href(f)) for f in e.output_files
            if (run.results_dir / f).is_file()]


def matrix_groups(run: Run) -> list[Group]:
    """Rows = test paths in order of first appearance, grouped by their first component."""
    index = {c.name: i for i, c in enumerate(run.cells)}
    rows: dict[str, list[Entry | None]] = {}
    for e in run.entries:
        row = rows.setdefault(e.path, [None] * len(run.cells))
        old = row[index[e.cell]]
        # The same path twice in a cell: show the worse, never hide a failure.
        if old is None or STATUSES.index(e.status) < STATUSES.index(old.status):
            row[index[e.cell]] = e
    groups: dict[str, Group] = {}
    for path, by_cell in rows.items():
        name = path.split(".", 1)[0]
        g = groups.setdefault(name, Group(name, [], [dict.fromkeys(STATUSES, 0)
                                                     for _ in run.cells]))
        label = path[len(name) + 1:] if path != name else "(whole)"
        g.rows.append(Row(path, label, by_cell))
        for i, entry in enumerate(by_cell):
            if entry is not None:
                g.rollup[i][entry.status] += 1
    return list(groups.values())


def hmm_tests_rows(run: Run) -> list[dict[str, Any]]:
    """Per cell and driver: hmm-tests counts by status (from tables["hmm-tests"])."""
    out = []
    for cell in run.cells:
        table = run.hmm_tests.get(cell.name)
        if not table:
            continue
        drivers = [str(d) for d in table.get("columns", [])]
        totals = table.get("totals") or {}
        rows = [r for r in table.get("rows", []) if isinstance(r, dict)]
        for d in drivers:
            t = totals.get(d)
            if not isinstance(t, dict):
                t = Counter(str(r.get(d, "-")) for r in rows)
            out.append({
                "cell": cell.name, "kernel": cell.kernel, "driver": d, "tests": len(rows),
                **{s: int(t.get(s, 0)) for s in ("PASS", "FAIL", "SKIP", "ERROR")},
                "absent": int(t.get("-", 0)),
            })
    return out


def cell_plots(run: Run) -> dict[str, plots.CellPlots]:
    """Each cell's trace plots, read from its directory (the report is a function of
    the results directory alone)."""
    return {c.name: plots.cell_plots(run.results_dir / c.dir if c.dir else run.results_dir,
                                     prefix=f"cell{i}")
            for i, c in enumerate(run.cells, 1)}


def cell_disks(run: Run) -> dict[str, disk.DiskUse]:
    """Each cell's disk use: a single run's from its environment, a matrix cell's from
    the cell's own results.json (the merged one does not carry it)."""
    return {c.name: disk.cell_disk(run.results_dir / c.dir if c.dir else run.results_dir,
                                   run.environment if run.kind == "single" else None)
            for c in run.cells}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "templates"),
        autoescape=True,  # every log excerpt is untrusted text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tail"] = tail
    return env


def render_html(run: Run) -> str:
    env = run.environment
    disks = cell_disks(run)
    return _environment().get_template("report.html.j2").render(
        disks=disks,
        run_disk=disk.run_disk(run.results_dir, disks.values()),
        size_text=disk.size_text,
        traces_text=disk.traces_text,
        run=run,
        counts=run.counts(),
        statuses=STATUSES,
        bad=BAD,
        exit_meaning=EXIT_MEANING.get(run.exit_status, "unknown"),
        # The run's own time when it records one, else when results.json was written.
        when=str(env.get("finished") or env.get("started")
                 or run.written.strftime("%Y-%m-%d %H:%M:%S UTC")),
        host=env.get("host", "?"),
        qemu=env.get("qemu", "?"),
        title_max=TITLE_MAX,
        groups=matrix_groups(run),
        cell_links={c.name: cell_links(run, c) for c in run.cells},
        top_links=top_links(run),
        wall=env.get("wall_seconds"),
        interrupted=bool(env.get("interrupted")),
        entry_links=lambda e: entry_links(run, e),
        failures=[e for e in run.entries if e.status in BAD],
        empty_bad_cells=[c for c in run.cells if not c.entries and c.status in BAD],
        hmm_rows=hmm_tests_rows(run),
        plots=cell_plots(run),
        rel=_rel,
        href=_href,
    )


def write_html(run: Run, path: Path) -> Path:
    return atomic_write(path, render_html(run))


def write_reports(results_dir: Path) -> list[Path]:
    """Write ``junit.xml`` and ``index.html`` next to ``results_dir/results.json``.

    Raises :class:`ReportInputError` naming the file and key when results.json
    is missing or malformed.
    """
    run = load(Path(results_dir))
    return [write_junit(run, run.results_dir / JUNIT_XML),
            write_html(run, run.results_dir / INDEX_HTML)]

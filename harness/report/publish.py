"""What a finished run leaves for people: the reports next to results.json and
the terminal's closing table. Shared by a single run (cli) and a matrix (scheduler).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.core.progress import count, duration

log = logging.getLogger(__name__)


def write_reports(results_dir: Path) -> None:
    """junit.xml and index.html from results.json; a problem there must not hide the
    results, so it is logged, not raised."""
    from harness.report import report

    try:
        paths = report.write_reports(results_dir)
    except Exception as e:
        log.error("writing the reports failed: %s", e)
        log.debug("report failure", exc_info=True)
        return
    log.info("reports: %s", ", ".join(str(p) for p in paths))


def table(doc: dict[str, Any]) -> str:
    """The terminal's closing summary: one line per cell, then the totals."""
    cells = doc["matrix"]["cells"]
    width = max((len(c["name"]) for c in cells), default=4)
    lines = []
    for c in cells:
        what = ", ".join(f"{n} {s}" for s, n in c["summary"].items() if n)
        lines.append(f"{c['name']:<{width}}  {c['status']:<5}  {duration(c['duration']):>6}  "
                     f"{what}")
    s = doc["summary"]
    cs = s["cells"]
    lines.append(f"{count(cs['total'], 'cell')}: " + ", ".join(
        f"{cs[k]} {k}" for k in ("PASS", "FAIL", "ERROR", "MISS", "SKIP") if cs[k]))
    lines.append(f"{s['total']} tests: {s['PASS']} passed, {s['FAIL']} failed, "
                 f"{s['ERROR']} errors, {s['SKIP']} skipped, {s['MISS']} missing")
    if s.get("reason"):
        lines.append(f"exit status {s['exit_status']}: {s['reason']}")
    return "\n".join(lines)

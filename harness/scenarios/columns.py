"""One test suite run against several implementations, side by side.

hmm-tests runs against hmm_gpu.ko (two ways) and test_hmm.ko; odp-tests runs
rdma-core's ODP tests against rxe (and later hmm-nic). Each run is a
*column*; its entries are ``<scenario>.<column>.<test>``. The table has one
row per test with its status in every column, and a parity entry holds a
column to the *reference* column: every test that passes there must pass
in the column too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from harness.core.results import Status, TestResult

# entries of a column that are not tests (its driver's load, the run itself, ...)
META = ("load", "unload", "run", "setup", "teardown")
STATUSES = ("PASS", "FAIL", "SKIP", "ERROR", "-")


def side_by_side(entries: Iterable[TestResult], columns: Sequence[str], reference: str,
                 scenario: str | None = None, meta: Sequence[str] = META) -> dict[str, Any]:
    """``{"columns": [...], "reference": ..., "rows": [{"test": name, <column>: status,
    ...}], "totals": {<column>: {status: n}}}``; "-" where a column has no such test.

    ``scenario``: only entries whose path starts with it (else any first part).
    """
    cols = list(columns)
    rows: dict[str, dict[str, str]] = {}
    for e in entries:
        parts = e.path.split(".", 2)
        if len(parts) != 3 or parts[1] not in cols:
            continue
        if scenario is not None and parts[0] != scenario:
            continue
        _, column, name = parts
        if name in meta:
            continue
        row = rows.setdefault(name, {"test": name, **{c: "-" for c in cols}})
        row[column] = str(e.status)
    totals = {c: {s: sum(1 for r in rows.values() if r[c] == s) for s in STATUSES}
              for c in cols}
    return {"columns": cols, "reference": reference, "rows": list(rows.values()),
            "totals": totals}


def empty_columns(table: Mapping[str, Any], columns: Iterable[str]) -> list[str]:
    """Of ``columns``, those with no test in ``table`` (a run that ran nothing)."""
    return [c for c in columns if not any(r.get(c, "-") != "-" for r in table["rows"])]


def parity(table: Mapping[str, Any], scenario: str, column: str, not_run: str = "",
           excused: Mapping[str, str] | None = None,
           key: Callable[[str], str] = lambda t: t, reference: str | None = None
           ) -> TestResult:
    """``<scenario>.parity.<column>``: every test that passes in the reference column
    (``reference``, else the table's) passes in ``column``.

    ``not_run``: why the reference or the column could not run here (nothing
    to compare: SKIP). ``excused``: tests (by ``key(test)``) the column cannot
    pass, with why; those SKIPped in the column are named, not counted behind.
    """
    path = f"{scenario}.parity.{column}"
    if not_run:
        return TestResult(path, Status.SKIP, log_excerpt=f"nothing to compare: {not_run}")
    ref = reference or table["reference"]
    excused = excused or {}
    rows = table["rows"]
    ahead = [r for r in rows if r.get(ref) == "PASS" and r.get(column) != "PASS"]
    skipped = [r["test"] for r in ahead
               if key(r["test"]) in excused and r.get(column) == "SKIP"]
    behind = [f"{r['test']} ({r.get(column, '-')})" for r in ahead if r["test"] not in skipped]
    both = sum(1 for r in rows if r.get(ref) == r.get(column) == "PASS")
    note = "".join(f"\nnot compared, {t}: {excused[key(t)]}" for t in skipped)
    if behind:
        return TestResult(path, Status.FAIL, log_excerpt=(
            f"{len(behind)} tests pass on {ref} but not on {column}:\n"
            + "\n".join(behind) + note))
    return TestResult(path, Status.PASS,
                      log_excerpt=f"{both} tests pass on {ref} and on {column}" + note)


def format_table(table: Mapping[str, Any]) -> str:
    cols = table["columns"]
    rows = table["rows"]
    w = max([len("test"), *(len(r["test"]) for r in rows)])
    cw = {c: max(8, len(c)) for c in cols}
    lines = [f"{'test':<{w}}  " + "  ".join(f"{c:<{cw[c]}}" for c in cols).rstrip()]
    lines += [f"{r['test']:<{w}}  " + "  ".join(f"{r[c]:<{cw[c]}}" for c in cols).rstrip()
              for r in rows]
    for c in cols:
        t = table["totals"][c]
        lines.append(f"{c}: " + ", ".join(f"{n} {k}" for k, n in t.items() if n))
    return "\n".join(lines)

"""Every third-party module the harness and the tests import is declared in
pyproject.toml: the harness's in ``dependencies``, the tests' there or in the
``test`` extra. A fresh ``pip install -e .[test]`` then has all of them."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(reqs: list[str]) -> set[str]:
    out = set()
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        assert m, f"pyproject.toml: cannot read requirement {req!r}"
        out.add(canonical(m.group(1)))
    return out


def third_party_imports(top: Path) -> dict[str, set[str]]:
    """Top-level modules imported under ``top`` that are neither the standard
    library nor ours, each with the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(top.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                mod = name.split(".")[0]
                if mod in sys.stdlib_module_names or mod in ("__future__", "harness", "tests"):
                    continue
                # pytest puts a test's directory on sys.path (tests/device's helpers),
                # and tests/ itself, the directory of the top conftest.py
                if any((d / f"{mod}.py").exists() or (d / mod).is_dir()
                       for d in (path.parent, REPO / "tests")):
                    continue
                found.setdefault(mod, set()).add(str(path.relative_to(REPO)))
    return found


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[str]:
    dists = importlib.metadata.packages_distributions()
    problems = []
    for mod, files in sorted(imports.items()):
        names = {canonical(d) for d in dists.get(mod, [])}
        if not names:
            problems.append(f"{mod} (imported by {', '.join(sorted(files))}) is not installed")
        elif not names & declared:
            problems.append(f"{mod} (imported by {', '.join(sorted(files))}) comes from "
                            f"{' or '.join(sorted(names))}, not declared in pyproject.toml")
    return problems


def project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_harness_imports_are_runtime_dependencies() -> None:
    runtime = requirement_names(project()["project"]["dependencies"])  # type: ignore[index]
    imports = third_party_imports(REPO / "harness")
    assert "yaml" in imports  # the scan sees the harness's imports at all
    assert undeclared(imports, runtime) == []


def test_test_imports_are_declared() -> None:
    proj = project()["project"]
    declared = (requirement_names(proj["dependencies"])  # type: ignore[index]
                | requirement_names(proj["optional-dependencies"]["test"]))  # type: ignore[index]
    imports = third_party_imports(REPO / "tests")
    assert "pytest" in imports
    assert undeclared(imports, declared) == []


def test_pytest_timeout_is_declared_where_it_is_configured() -> None:
    doc = project()
    test_extra = requirement_names(doc["project"]["optional-dependencies"]["test"])  # type: ignore[index]
    assert "timeout" in doc["tool"]["pytest"]["ini_options"]  # type: ignore[index]
    assert "pytest-timeout" in test_extra


def test_an_undeclared_import_is_named() -> None:
    """The check itself: cryptography imported but declared nowhere is reported."""
    problems = undeclared({"cryptography": {"harness/build/rootfs.py"}}, {"pyyaml"})
    assert problems == ["cryptography (imported by harness/build/rootfs.py) comes from "
                        "cryptography, not declared in pyproject.toml"]

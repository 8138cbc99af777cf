"""The harness's layers (docs/architecture.md): every import points down.

Read from the source with ``ast``, so imports inside functions and under
``TYPE_CHECKING`` count as much as the ones at the top of a module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "harness"

# Top to bottom. A part may import itself and any part of a lower rank; parts of
# one rank (checks, build) know nothing of each other.
RANK: dict[str, int] = {
    "cli": 7,
    "matrix": 6,
    "run": 5,
    "report": 4,
    "scenarios": 3,
    "guest": 2,
    "checks": 1,
    "build": 1,
    "core": 0,
    "": 0,  # harness/__init__.py: the version and nothing else
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. harness.matrix.cell
    line: int
    target: str  # the imported module, e.g. harness.cli
    names: tuple[str, ...]  # for `from X import a, b`: a, b


def module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(mod, node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            if target == "harness":
                # `from harness import runner`: each name is a module or subpackage
                out += [Import(mod, node.lineno, f"harness.{n}", ()) for n in names]
            else:
                out.append(Import(mod, node.lineno, target, names))
    return [i for i in out if i.target == "harness" or i.target.startswith("harness.")]


def part_of(module: str) -> str:
    """``harness.matrix.cell`` -> ``matrix``; ``harness.cli`` -> ``cli``."""
    return module.split(".")[1] if "." in module else ""


def all_imports() -> list[Import]:
    return [i for p in sorted(HARNESS.rglob("*.py")) for i in imports_of(p)]


def upward(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        src, dst = part_of(i.module), part_of(i.target)
        if src == dst:
            continue
        if RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and dst != ""):
            bad.append(f"{i.module}:{i.line} imports {i.target} ({src} -> {dst})")
    return bad


def test_every_part_has_a_layer() -> None:
    parts = {part_of(module_name(p)) for p in HARNESS.rglob("*.py")}
    assert parts - RANK.keys() == set(), "a new part of harness/ needs its place in RANK"


def test_no_import_points_up() -> None:
    bad = upward(all_imports())
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules() -> None:
    """``from harness.core.config import _Reader``: a private name used elsewhere is
    an interface nobody declared; make it public where it lives."""
    bad = [f"{i.module}:{i.line} imports {n} from {i.target}"
           for i in all_imports() for n in i.names
           if n.startswith("_") and not n.startswith("__") and i.target != i.module]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("src", "dst", "ok"), [
    ("harness.matrix.cell", "harness.cli", False),
    ("harness.core.config", "harness.scenarios", False),
    ("harness.checks.splat", "harness.build.cache", False),
    ("harness.guest.vm", "harness.checks.splat", True),
    ("harness.run.runner", "harness", True),
    ("harness.cli", "harness.matrix.scheduler", True),
])
def test_the_rule_itself(src: str, dst: str, ok: bool) -> None:
    assert (upward([Import(src, 1, dst, ())]) == []) is ok

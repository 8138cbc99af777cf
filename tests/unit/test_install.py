"""hmmlab installed from its wheel (not an editable checkout), run outside the tree.

The installed package has no guest-images/ or qemu-devices/ next to it: what
needs no source works; what does says how to point at it; HMMLAB_SOURCE does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --target install of the wheel built from this tree."""
    top = tmp_path_factory.mktemp("install")
    # a copy: setuptools leaves build/ and *.egg-info in the tree it builds
    src = top / "src"
    shutil.copytree(REPO / "harness", src / "harness",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", src)
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(top / "dist"),
         str(src)], capture_output=True, text=True, timeout=600)
    if wheel.returncode != 0:
        # pip fetches setuptools for the isolated build; without an index it cannot
        pytest.skip(f"pip wheel could not build the project here: {wheel.stderr[-500:]}")
    (whl,) = (top / "dist").glob("hmmlab-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(top / "T"), str(whl)], check=True, capture_output=True, timeout=300)
    return top / "T"


def hmmlab(target: Path, cwd: Path, *args: str, source: str | None = None,
           code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HMMLAB_SOURCE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    env["HMMLAB_CACHE"] = str(cwd / "cache")  # nothing of the real cache is touched
    if source is not None:
        env["HMMLAB_SOURCE"] = source
    argv = ["-c", code] if code else ["-m", "harness.cli", *args]
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


WHERE = ("import harness; from harness.build.cache import REPO_ROOT; "
         "print(harness.__file__); print(REPO_ROOT)")


def test_help_and_matrix_list_need_no_source(installed: Path, tmp_path: Path) -> None:
    p = hmmlab(installed, tmp_path, "--help")
    assert p.returncode == 0, p.stderr
    assert "usage: hmmlab" in p.stdout
    # the default matrix and run file are package data of the wheel
    p = hmmlab(installed, tmp_path, "matrix", "list")
    assert p.returncode == 0, p.stderr
    assert "8 cells" in p.stdout


def test_a_build_without_source_says_how_to_find_it(installed: Path, tmp_path: Path) -> None:
    p = hmmlab(installed, tmp_path, "build", "--kernel", "6.12")
    assert p.returncode == 2
    assert "HMMLAB_SOURCE" in p.stderr and "inside a checkout" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_hmmlab_source_points_at_the_tree(installed: Path, tmp_path: Path) -> None:
    p = hmmlab(installed, tmp_path, code=WHERE, source=str(REPO))
    assert p.returncode == 0, p.stderr
    module, root = p.stdout.splitlines()
    assert Path(module).is_relative_to(installed)  # the installed copy, not this tree
    assert Path(root) == REPO


def test_a_checkout_is_found_from_the_current_directory(installed: Path) -> None:
    p = hmmlab(installed, REPO / "guest-images" / "rootfs", code=WHERE)
    assert p.returncode == 0, p.stderr
    module, root = p.stdout.splitlines()
    assert Path(module).is_relative_to(installed)
    assert Path(root) == REPO


def test_a_bad_hmmlab_source_is_named(installed: Path, tmp_path: Path) -> None:
    p = hmmlab(installed, tmp_path, code=WHERE, source=str(tmp_path))
    assert p.returncode != 0
    assert f"HMMLAB_SOURCE={tmp_path}: no guest-images/" in p.stderr

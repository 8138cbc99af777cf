"""A developer's own kernel tree, built for real (``--kernel-tree``).

A git tree is made from Debian's linux-source-6.12 (hard-linked, so it costs
no disk), built out of tree into a private cache, rebuilt after an edit, and
checked to be untouched. It compiles a whole kernel (about 5 minutes on 2
cores), so it runs only when HMMLAB_SLOW_TESTS=1.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.build import kernel as k
from harness.build.cache import Cache

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(3600),  # a whole kernel build, twice on a loaded machine
    pytest.mark.skipif(not os.environ.get("HMMLAB_SLOW_TESTS"),
                       reason="builds a whole kernel from a source tree (~5 min on 2 cores); "
                              "set HMMLAB_SLOW_TESTS=1 to run it"),
]


def snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in (*filenames, *dirnames):
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(tree))] = (st.st_size, st.st_mtime_ns)
    return out


def git(tree: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tree), *args], check=True, env=env, timeout=1800,
                   capture_output=True)


@pytest.fixture(scope="module")
def linux_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Cache.default()
    logs = tmp_path_factory.mktemp("logs")
    deb = k.source_deb(cache, k.SOURCES["6.12"], logs, suite=k.SUITES["6.12"])
    src = k.unpack_source(cache, deb, k.SOURCES["6.12"], logs)
    tree = tmp_path_factory.mktemp("dev") / "linux"
    # hard links: free and fast; the test never writes a linked file in place
    subprocess.run(["cp", "-al", str(src), str(tree)], check=True, timeout=600)
    git(tree, "init", "-q")
    git(tree, "add", "-A", "--force")  # Debian's .gitignore ignores the whole top level
    git(tree, "commit", "-q", "-m", "linux-source-6.12")
    git(tree, "tag", "v6.12-hmmlab")
    return tree


def test_tree_builds_out_of_tree_and_rebuilds_after_an_edit(
        linux_tree: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    logs = tmp_path / "logs"
    before = snapshot(linux_tree)

    t0 = time.monotonic()
    art = k.get_kernel(cache, logs, kernel_tree=linux_tree)
    cold = time.monotonic() - t0
    assert art.label == "tree:v6.12-hmmlab"
    assert art.image.exists() and art.tree.is_relative_to(cache.root)
    assert art.source == linux_tree.resolve()
    assert {"device_private", "test_hmm", "hmm_mirror"} <= art.features
    assert (logs / "kernel-tree-default.log").exists()
    assert snapshot(linux_tree) == before, "the build wrote into the developer's tree"

    t0 = time.monotonic()
    again = k.get_kernel(cache, logs, kernel_tree=linux_tree)
    assert again == art and time.monotonic() - t0 < 30

    # an edit: same O= directory, rebuilt incrementally, new key and label
    hmm_c = linux_tree / "mm" / "hmm.c"
    text = hmm_c.read_text()
    hmm_c.unlink()  # break the hard link before writing
    hmm_c.write_text(text + "\n/* edited by hmmlab's tree test */\n")
    edited_snapshot = snapshot(linux_tree)
    t0 = time.monotonic()
    edited = k.get_kernel(cache, logs, kernel_tree=linux_tree)
    warm = time.monotonic() - t0
    assert edited.label == "tree:v6.12-hmmlab-dirty"
    assert edited.tree == art.tree
    print(f"\ntree kernel: cold build {cold:.0f}s, rebuild after a one-line edit {warm:.0f}s")
    assert warm < cold / 2, f"rebuild after a one-line edit took {warm:.0f}s (cold {cold:.0f}s)"
    assert snapshot(linux_tree) == edited_snapshot

"""The QEMU source tree is keyed by its patches' bytes, and the overlay never leaves a
stale device file in it. Real tar, xz and patch on a tiny source package."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.build import qemu
from harness.build.cache import Cache

PATCH = """--- a/hw/hello.c
+++ b/hw/hello.c
@@ -1 +1 @@
-int hello = 1;
+int hello = {value};
"""


def tarball(root: Path, out: Path, top: str) -> None:
    subprocess.run(["tar", "-cJf", str(out), "-C", str(root), top], check=True, timeout=60)


def source_package(tmp: Path, value: int) -> Path:
    """downloads/ with an orig tarball and a debian tarball whose one patch sets
    hello to ``value``."""
    dl = tmp / f"downloads-{value}"
    if dl.exists():
        return dl
    orig = tmp / f"orig-{value}" / "qemu-0.0.1"
    (orig / "hw").mkdir(parents=True)
    (orig / "hw" / "hello.c").write_text("int hello = 1;\n")
    (orig / "configure").write_text("#!/bin/sh\n")
    deb = tmp / f"deb-{value}"
    (deb / "debian" / "patches").mkdir(parents=True)
    (deb / "debian" / "patches" / "hello.patch").write_text(PATCH.format(value=value))
    dl.mkdir()
    tarball(orig.parent, dl / "qemu_0.0.1.orig.tar.xz", "qemu-0.0.1")
    tarball(deb, dl / "qemu_0.0.1-1.debian.tar.xz", "debian")
    return dl


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "QEMU_VERSION", "0.0.1")
    monkeypatch.setattr(qemu, "DEB_VERSION", "0.0.1-1")
    monkeypatch.setattr(qemu, "ORIG_TARBALL", "qemu_0.0.1.orig.tar.xz")
    monkeypatch.setattr(qemu, "DEBIAN_TARBALL", "qemu_0.0.1-1.debian.tar.xz")
    monkeypatch.setattr(qemu, "DEBIAN_PATCHES", ("hello.patch",))


def test_a_changed_patch_byte_gets_a_fresh_patched_tree(tmp_path: Path, tiny: None) -> None:
    cache = Cache(tmp_path / "cache")
    log = tmp_path / "log"
    first = qemu.unpack_source(cache, source_package(tmp_path, 2), log)
    assert (first / "hw" / "hello.c").read_text() == "int hello = 2;\n"
    assert qemu.unpack_source(cache, source_package(tmp_path, 2), log) == first  # warm
    second = qemu.unpack_source(cache, source_package(tmp_path, 3), log)
    assert second != first
    assert (second / "hw" / "hello.c").read_text() == "int hello = 3;\n"
    assert qemu.tree_key(tmp_path / "downloads-2") != qemu.tree_key(tmp_path / "downloads-3")
    assert qemu.build_key(qemu.tree_key(tmp_path / "downloads-2")) != qemu.build_key(
        qemu.tree_key(tmp_path / "downloads-3"))


def test_the_overlay_removes_a_device_file_that_is_gone(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    devices = tmp_path / "qemu-devices"
    (devices / "hw" / "misc").mkdir(parents=True)
    (devices / "include").mkdir()
    for rel in (*qemu.GLUE_FILES, *qemu.TRACE_FILES):
        (devices / rel).write_text("# ours\n")
    (devices / "hw" / "misc" / "old.c").write_text("old\n")
    (devices / "hw" / "misc" / "dev.c").write_text("v1\n")
    monkeypatch.setattr(qemu, "DEVICE_DIR", devices)
    tree = tmp_path / "tree"
    (tree / "hw" / "misc").mkdir(parents=True)
    for rel in (*qemu.GLUE_FILES, *qemu.TRACE_FILES):
        (tree / rel).write_text("upstream\n")
    qemu.apply_overlay(tree)
    assert (tree / "hw" / "misc" / "old.c").read_text() == "old\n"
    (devices / "hw" / "misc" / "old.c").unlink()
    (devices / "hw" / "misc" / "dev.c").write_text("v2\n")
    changed = qemu.apply_overlay(tree)
    assert not (tree / "hw" / "misc" / "old.c").exists()
    assert (tree / "hw" / "misc" / "dev.c").read_text() == "v2\n"
    assert changed == ["hw/misc/old.c (removed)", "hw/misc/dev.c"]
    assert qemu.apply_overlay(tree) == []

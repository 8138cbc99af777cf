"""The guest image's Debian packages: apt's closure, the pin, unpacking over the image."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness.build import guest_debs
from harness.build.guest_debs import Deb, DebSpec

DATA = Path(__file__).parent / "data"


def test_parse_simulation_of_real_apt_output() -> None:
    # apt-get -s install -t sid --no-install-recommends python3-pyverbs ... against a
    # status file that has rdma-core, systemd, udev and debconf "installed"
    debs = guest_debs.parse_simulation((DATA / "apt_simulate_rdma_sid.txt").read_text())
    names = [d.name for d in debs]
    assert len(debs) == 59
    assert Deb("python3-pyverbs", "65.0-1.1") in debs
    assert Deb("zlib1g", "1:1.3.dfsg+really1.3.2-4") in debs
    assert Deb("libc6", "2.43-7") in debs
    assert not {"rdma-core", "systemd", "udev", "debconf"} & set(names)
    assert len(set(names)) == len(names)


def test_parse_simulation_upgrade_line() -> None:
    line = "Inst systemd [262.1-0] (262.1-1 Debian:unstable [amd64])"
    assert guest_debs.parse_simulation(line) == [Deb("systemd", "262.1-1")]


def test_deb_filename_escapes_the_epoch() -> None:
    assert Deb("zlib1g", "1:1.3-4").filename_stem() == "zlib1g_1%3a1.3-4"
    assert Deb("zlib1g", "1:1.3-4").spec == "zlib1g=1:1.3-4"


def test_fake_status_is_above_every_archive_version() -> None:
    text = guest_debs.fake_status({"udev": ["262.1-1", "257.9-1"]})
    assert "Package: udev\nStatus: install ok installed\nVersion: 262.1-1+hmmlab\n" in text


def test_fake_status_names_an_unknown_package() -> None:
    with pytest.raises(RuntimeError, match="'systemdd' is unknown"):
        guest_debs.fake_status({"systemdd": []})


def test_pinned_reads_the_lock_without_apt(tmp_path: Path) -> None:
    spec = DebSpec("sid", ("python3",), ("udev",))
    lock = tmp_path / f"sid-{spec.digest()}.lock"
    lock.write_text(json.dumps({"debs": [{"name": "python3", "version": "3.14.8-1"}]}))
    apt = None  # never consulted when the pin exists
    assert guest_debs.pinned(apt, spec, tmp_path, tmp_path / "log") == [  # type: ignore[arg-type]
        Deb("python3", "3.14.8-1")]


def test_pinned_names_a_broken_lock(tmp_path: Path) -> None:
    spec = DebSpec("sid", ("python3",), ())
    (tmp_path / f"sid-{spec.digest()}.lock").write_text("{")
    with pytest.raises(RuntimeError, match="delete it to resolve"):
        guest_debs.pinned(None, spec, tmp_path, tmp_path / "log")  # type: ignore[arg-type]


def test_spec_digest_follows_what_is_asked() -> None:
    a = DebSpec("sid", ("python3",), ("udev",))
    assert a.digest() == DebSpec("sid", ("python3",), ("udev",), prune=("x",)).digest()
    assert a.digest() != DebSpec("trixie", ("python3",), ("udev",)).digest()
    assert a.digest() != DebSpec("sid", ("python3", "perftest"), ("udev",)).digest()


def _image(root: Path) -> None:
    """A staged image: merged /usr, a busybox applet link, a host library."""
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib64").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "bin").mkdir()
    (root / "bin/busybox").write_text("busybox")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/ip").symlink_to("/bin/busybox")
    (root / "lib/x86_64-linux-gnu/libc.so.6").write_text("host libc")
    (root / "lib64/ld-linux-x86-64.so.2").write_text("host ld")


def test_merge_replaces_applet_links_and_host_libraries(tmp_path: Path) -> None:
    root, deb = tmp_path / "root", tmp_path / "deb"
    _image(root)
    (deb / "usr/bin").mkdir(parents=True)
    (deb / "usr/bin/ip").write_text("iproute2")
    (deb / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (deb / "usr/lib/x86_64-linux-gnu/libc.so.6").write_text("sid libc")
    (deb / "usr/lib64").mkdir()
    (deb / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("../lib/x86_64-linux-gnu/ld.so")
    guest_debs.merge_tree(deb, root)
    # the applet link was replaced, not written through (busybox is intact)
    assert (root / "bin/busybox").read_text() == "busybox"
    assert not (root / "usr/bin/ip").is_symlink()
    assert (root / "usr/bin/ip").read_text() == "iproute2"
    assert (root / "lib/x86_64-linux-gnu/libc.so.6").read_text() == "sid libc"
    assert (root / "lib64").is_symlink()
    assert (root / "lib64/ld-linux-x86-64.so.2").readlink() == Path(
        "../lib/x86_64-linux-gnu/ld.so")


def test_merge_refuses_to_replace_a_directory(tmp_path: Path) -> None:
    root, deb = tmp_path / "root", tmp_path / "deb"
    (root / "usr/share/x").mkdir(parents=True)
    (deb / "usr/share").mkdir(parents=True)
    (deb / "usr/share/x").write_text("a file")
    with pytest.raises(RuntimeError, match="would replace the directory"):
        guest_debs.merge_tree(deb, root)


def test_tidy_prunes_docs_but_keeps_and_gunzips_the_tests(tmp_path: Path) -> None:
    tests = tmp_path / "usr/share/doc/rdma-core/tests"
    tests.mkdir(parents=True)
    (tests / "test_odp.py.gz").write_bytes(gzip.compress(b"class OdpTestCase: ...\n"))
    (tests / "run_tests.py").write_text("#!/usr/bin/env python3\n")
    (tmp_path / "usr/share/doc/libc6").mkdir(parents=True)
    (tmp_path / "usr/share/doc/libc6/copyright").write_text("c")
    (tmp_path / "usr/share/man/man1").mkdir(parents=True)
    guest_debs.tidy(tmp_path, guest_debs.RDMA)
    assert sorted(p.name for p in tests.iterdir()) == ["run_tests.py", "test_odp.py"]
    assert (tests / "test_odp.py").read_text() == "class OdpTestCase: ...\n"
    assert not (tmp_path / "usr/share/doc/libc6").exists()
    assert not (tmp_path / "usr/share/man").exists()


def test_rdma_spec_leaves_out_what_busybox_does() -> None:
    assert {"systemd", "udev"} <= set(guest_debs.RDMA.excluded)
    assert "python3-pyverbs" in guest_debs.RDMA.packages
    assert guest_debs.RDMA_TESTS_DIR.lstrip("/") in guest_debs.RDMA.keep

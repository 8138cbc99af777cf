"""Kernel builder logic without building: fragments, checks, features, cache keys, trees."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build import kernel as k
from harness.build.apt import PrivateApt
from harness.build.cache import Cache
from harness.build.kernel import KernelError

REPO_FRAGMENTS = sorted(k.FRAGMENT_DIR.glob("*.config"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- fragments ------------------------------------------------------------------


@pytest.mark.parametrize("frag", REPO_FRAGMENTS, ids=lambda p: p.name)
def test_repo_fragments_parse(frag: Path) -> None:
    assert k.parse_fragment(frag)


def test_fragments_per_series_and_flavor() -> None:
    assert k.fragments("6.12") == [k.FRAGMENT]
    assert k.fragments("6.12", "debug") == [k.FRAGMENT, k.DEBUG_FRAGMENT]
    # 6.1's tinyconfig picks SLOB: a per-series fragment follows the base one
    assert k.fragments("6.1") == [k.FRAGMENT, k.FRAGMENT_DIR / "hmm-6.1.config"]
    assert k.fragments("6.1", "debug") == [k.FRAGMENT, k.FRAGMENT_DIR / "hmm-6.1.config",
                                          k.DEBUG_FRAGMENT]
    assert k.fragments(None, "debug") == [k.FRAGMENT, k.DEBUG_FRAGMENT]


def test_unknown_flavor_names_the_choices() -> None:
    with pytest.raises(KernelError, match=r"flavor 'kasan' is not known; choose one of "
                                          r"default, debug"):
        k.fragments("6.12", "kasan")


def test_debug_fragment_has_the_detectors() -> None:
    want = k.parse_fragment(k.DEBUG_FRAGMENT)
    for opt in ("CONFIG_KASAN", "CONFIG_KASAN_GENERIC", "CONFIG_PROVE_LOCKING",
                "CONFIG_DEBUG_VM", "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_DETECT_HUNG_TASK",
                "CONFIG_SOFTLOCKUP_DETECTOR", "CONFIG_DEBUG_KERNEL"):
        assert want[opt] == "y", opt
    assert want["CONFIG_SLUB_TINY"] == "n"  # KASAN depends on !SLUB_TINY


def test_parse_fragment_values_and_not_set(tmp_path: Path) -> None:
    f = write(tmp_path / "a.config", "# comment\n\nCONFIG_A=y\nCONFIG_B=m\nCONFIG_N=8\n"
              'CONFIG_S="x y"\n# CONFIG_C is not set\n')
    assert k.parse_fragment(f) == {"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_N": "8",
                                   "CONFIG_S": '"x y"', "CONFIG_C": "n"}


def test_parse_fragment_error_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.config", "CONFIG_A=y\nKASAN=y\n")
    with pytest.raises(KernelError, match=r"bad\.config:2: expected CONFIG_NAME=value"):
        k.parse_fragment(f)


def test_later_fragments_override(tmp_path: Path) -> None:
    a = write(tmp_path / "a.config", "CONFIG_X=y\nCONFIG_Y=y\n")
    b = write(tmp_path / "b.config", "# CONFIG_X is not set\n")
    assert k.merged_wants([a, b]) == {"CONFIG_X": ("n", b), "CONFIG_Y": ("y", a)}


# --- check_config -------------------------------------------------------------------


def test_check_config_passes_when_everything_stuck(tmp_path: Path) -> None:
    frag = write(tmp_path / "f.config", "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_C is not set\n"
                 "# CONFIG_GONE is not set\n")
    cfg = write(tmp_path / ".config", "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_C is not set\n")
    k.check_config(cfg, [frag])
    k.check_config(cfg, frag)  # the old single-fragment form


def test_check_config_names_every_lost_option(tmp_path: Path) -> None:
    frag = write(tmp_path / "debug.config",
                 "CONFIG_A=y\nCONFIG_KASAN=y\nCONFIG_N=8\n# CONFIG_SLUB_TINY is not set\n")
    cfg = write(tmp_path / ".config",
                "CONFIG_A=y\n# CONFIG_KASAN is not set\nCONFIG_N=4\nCONFIG_SLUB_TINY=y\n")
    with pytest.raises(KernelError) as e:
        k.check_config(cfg, [frag])
    msg = str(e.value)
    assert "CONFIG_KASAN=y from debug.config (got n)" in msg
    assert "CONFIG_N=8 from debug.config (got 4)" in msg
    assert "CONFIG_SLUB_TINY=n from debug.config (got y)" in msg
    assert "CONFIG_A" not in msg
    assert "per-series fragment" in msg


def test_check_config_option_missing_from_kernel(tmp_path: Path) -> None:
    frag = write(tmp_path / "hmm.config", "CONFIG_NEW_IN_7=y\n")
    cfg = write(tmp_path / ".config", "CONFIG_A=y\n")
    with pytest.raises(KernelError, match=r"CONFIG_NEW_IN_7=y from hmm\.config \(got unset\)"):
        k.check_config(cfg, [frag])


# --- features -----------------------------------------------------------------------


def test_features_from_config_and_tree(tmp_path: Path) -> None:
    cfg = write(tmp_path / ".config", "CONFIG_DEVICE_PRIVATE=y\nCONFIG_HMM_MIRROR=y\n"
                "CONFIG_KASAN=y\nCONFIG_PROVE_LOCKING=y\nCONFIG_DEBUG_VM=y\n"
                "CONFIG_PVPANIC_PCI=m\n# CONFIG_GUP_TEST is not set\nCONFIG_TEST_HMM=m\n")
    feats = k.features_of(cfg, tmp_path)
    assert {"device_private", "hmm_mirror", "kasan", "lockdep", "debug_vm"} <= feats
    assert "pvpanic" not in feats  # a module nobody loads is not a feature
    assert "gup_test" not in feats
    assert "test_hmm" not in feats  # configured, but not built
    write(tmp_path / "lib" / "test_hmm.ko", "")
    assert "test_hmm" in k.features_of(cfg, tmp_path)


def test_stock_like_config_has_no_device_private(tmp_path: Path) -> None:
    cfg = write(tmp_path / "config", "CONFIG_HMM_MIRROR=y\nCONFIG_ZONE_DEVICE=y\n"
                "# CONFIG_DEVICE_PRIVATE is not set\n")
    feats = k.features_of(cfg)
    assert "device_private" not in feats and "test_hmm" not in feats
    assert {"hmm_mirror", "zone_device"} <= feats


# --- cache keys -----------------------------------------------------------------------


def test_debian_key_follows_fragment_flavor_and_package(tmp_path: Path) -> None:
    f = write(tmp_path / "hmm.config", "CONFIG_A=y\n")
    base = k.debian_key("linux-source-6.12_6.12.107-1_all.deb", "default", [f])
    assert base == k.debian_key("linux-source-6.12_6.12.107-1_all.deb", "default", [f])
    assert base != k.debian_key("linux-source-6.12_6.12.107-1_all.deb", "debug", [f])
    assert base != k.debian_key("linux-source-6.12_6.12.108-1_all.deb", "default", [f])
    d = write(tmp_path / "debug.config", "CONFIG_KASAN=y\n")
    assert base != k.debian_key("linux-source-6.12_6.12.107-1_all.deb", "default", [f, d])
    f.write_text("CONFIG_A=y\nCONFIG_B=y\n")
    assert base != k.debian_key("linux-source-6.12_6.12.107-1_all.deb", "default", [f])


def fake_tool(bindir: Path, name: str, first_line: str) -> None:
    """Another version of a host tool, first on PATH (prints ``first_line`` for --version)."""
    bindir.mkdir(parents=True, exist_ok=True)
    f = bindir / name
    f.write_text(f"#!/bin/sh\necho '{first_line}'\n")
    f.chmod(0o755)


def test_debian_key_follows_the_host_compiler(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "hmm.config", "CONFIG_A=y\n")
    deb = "linux-source-6.12_6.12.107-1_all.deb"
    base = k.debian_key(deb, "default", [f])
    assert base == k.debian_key(deb, "default", [f])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    fake_tool(tmp_path / "bin", "gcc", "gcc (Debian 14.2.0-19) 14.2.0")
    assert k.debian_key(deb, "default", [f]) != base
    gcc14 = k.debian_key(deb, "default", [f])
    fake_tool(tmp_path / "bin", "ld", "GNU ld (GNU Binutils for Debian) 2.44")
    assert k.debian_key(deb, "default", [f]) not in (base, gcc14)
    tools = {"gcc": "gcc (Debian 12.2.0-14) 12.2.0", "make": "GNU Make 4.3", "binutils": "x"}
    other = {**tools, "gcc": "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"}
    assert k.debian_key(deb, "default", [f], tools) != k.debian_key(deb, "default", [f], other)


def test_debian_key_follows_the_recipe_commands(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "hmm.config", "CONFIG_A=y\n")
    deb = "linux-source-6.12_6.12.107-1_all.deb"
    base = k.debian_key(deb, "default", [f])
    monkeypatch.setattr(k, "BUILD_STEP", (*k.BUILD_STEP, "headers_install"))
    assert k.debian_key(deb, "default", [f]) != base
    # what _make runs is what the key hashed
    assert k._expand(k.BUILD_STEP, Path("/s"), Path("/o"), jobs="2")[-1] == "headers_install"


def test_lock_names_per_series_flavor_and_tree(tmp_path: Path) -> None:
    names = {k.lock_name("6.12", "default"), k.lock_name("6.12", "debug"),
             k.lock_name("7.2", "default"), k.lock_name("6.12", "default", tmp_path),
             k.lock_name("6.12", "default", tmp_path / "other")}
    assert len(names) == 5


def test_debian_versions_sort_by_debian_rules() -> None:
    assert k.debian_version_key(["6.12.94-1", "6.12.107-1", "6.12.9-1"]) == [
        "6.12.9-1", "6.12.94-1", "6.12.107-1"]
    assert k.debian_version_key(["6.1.192-2", "6.1.192-1", "6.1.192-1~bpo"]) == [
        "6.1.192-1~bpo", "6.1.192-1", "6.1.192-2"]


def deb_repo(root: Path, package: str, versions: list[str]) -> str:
    """A flat apt repository offering ``package`` at ``versions`` (real .debs, built
    with dpkg-deb); returns its deb822 sources text."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    for v in versions:
        pkg = root / f"build-{v}"
        (pkg / "DEBIAN").mkdir(parents=True)
        (pkg / "DEBIAN" / "control").write_text(
            f"Package: {package}\nVersion: {v}\nArchitecture: all\nMaintainer: t <t@t>\n"
            "Description: test\n")
        subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg),
                        str(repo / f"{package}_{v}_all.deb")], check=True, timeout=60,
                       capture_output=True)
    packages = subprocess.run(["dpkg-scanpackages", "."], cwd=repo, check=True, timeout=60,
                              capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    return f"Types: deb\nURIs: file:{repo}\nSuites: ./\nTrusted: yes\n"


needs_dpkg_dev = pytest.mark.skipif(shutil.which("dpkg-scanpackages") is None,
                                    reason="dpkg-scanpackages (dpkg-dev) is not installed")


@needs_dpkg_dev
def test_the_archive_candidate_wins_over_an_older_download(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    write(cache.path("downloads") / "linux-source-9.9_9.9.1-1_all.deb", "")
    apt = PrivateApt(tmp_path / "apt", sources=deb_repo(tmp_path, "linux-source-9.9",
                                                        ["9.9.1-1", "9.9.3-1"]))
    got = k.source_deb(cache, "linux-source-9.9", tmp_path / "logs", apt=apt)
    assert got == cache.path("downloads") / "linux-source-9.9_9.9.3-1_all.deb"
    assert got.stat().st_size > 0  # really downloaded
    choice = k.resolve_source(cache, "linux-source-9.9", tmp_path / "logs", apt=apt)
    assert (choice.version, choice.warning) == ("9.9.3-1", "")
    # an exact version asked for is that version
    got = k.source_deb(cache, "linux-source-9.9", tmp_path / "logs", "9.9.1-1", apt=apt)
    assert got.name == "linux-source-9.9_9.9.1-1_all.deb"


def test_unreachable_archive_falls_back_to_the_newest_download_with_a_warning(
        tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    # bookworm-security's backport, downloaded by an unpinned call, sorts higher
    write(cache.path("downloads") / "linux-source-6.12_6.12.117-1~deb12u1_all.deb", "")
    for v in ("6.12.94-1", "6.12.107-1"):
        write(cache.path("downloads", "trixie") / f"linux-source-6.12_{v}_all.deb", "")
    gone = f"Types: deb\nURIs: file:{tmp_path}/no-such-repo\nSuites: ./\nTrusted: yes\n"
    apt = PrivateApt(tmp_path / "apt", sources=gone)
    choice = k.resolve_source(cache, "linux-source-6.12", tmp_path / "logs", suite="trixie",
                              apt=apt)
    assert choice.deb == cache.path("downloads", "trixie") / "linux-source-6.12_6.12.107-1_all.deb"
    assert "linux-source-6.12/trixie: could not resolve the archive's candidate" in choice.warning
    assert "building 6.12.107-1, the newest source already downloaded" in choice.warning
    assert set(k.SUITES) == set(k.SOURCES)
    with pytest.raises(KernelError, match="no source is downloaded"):
        k.resolve_source(cache, "linux-source-7.2", tmp_path / "logs", suite="sid", apt=apt)


def test_unknown_series_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=r"kernel '5\.10' is not known; choose one of "
                                          r"6\.1, 6\.12, 7\.2"):
        k.build_kernel(Cache(tmp_path), tmp_path, "5.10")


def test_stock_kernel_has_no_debug_flavor(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=r"Debian's own build: it has no 'debug' flavor"):
        k.get_kernel(Cache(tmp_path), tmp_path, "stock-6.1", "debug")


# --- a developer's tree ------------------------------------------------------------


def fake_tree(root: Path, patchlevel: int = 13) -> Path:
    write(root / "Makefile", f"VERSION = 6\nPATCHLEVEL = {patchlevel}\nSUBLEVEL = 0\n")
    write(root / "Kconfig", "")
    write(root / "arch" / "x86" / "Kconfig", "")
    write(root / "scripts" / "kconfig" / "merge_config.sh", "")
    write(root / "mm" / "hmm.c", "/* hmm */\n")
    return root


def git(tree: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True,
                          text=True, env=env, timeout=60).stdout


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_tree_state_git_follows_every_change(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "base")
    git(tree, "tag", "v6.13")
    clean = k.tree_state(tree)
    assert clean.describe == "v6.13"
    assert k.tree_state(tree) == clean  # stable

    (tree / "mm" / "hmm.c").write_text("/* hmm, edited */\n")
    edited = k.tree_state(tree)
    assert edited.describe == "v6.13-dirty"
    assert edited.digest != clean.digest

    (tree / "mm" / "hmm.c").write_text("/* hmm, edited again */\n")
    again = k.tree_state(tree)
    assert again.digest not in (clean.digest, edited.digest)

    (tree / "mm" / "hmm.c").write_text("/* hmm */\n")  # reverted: the clean key again
    assert k.tree_state(tree) == clean

    write(tree / "mm" / "new.c", "int x;\n")  # untracked files count
    untracked = k.tree_state(tree)
    assert untracked.digest != clean.digest and untracked.describe.endswith("-dirty")
    (tree / "mm" / "new.c").write_text("int y;\n")
    assert k.tree_state(tree).digest != untracked.digest

    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "new")
    committed = k.tree_state(tree)
    assert committed.describe.startswith("v6.13-1-g") and "dirty" not in committed.describe
    assert committed.digest not in (clean.digest, untracked.digest)


@needs_git
def test_tree_state_ignores_ignored_files(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    write(tree / ".gitignore", "*.o\n")
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "base")
    before = k.tree_state(tree)
    write(tree / "mm" / "hmm.o", "object")
    assert k.tree_state(tree) == before


@needs_git
def test_tree_state_does_not_write_the_index(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "base")
    index = tree / ".git" / "index"
    os.utime(tree / "mm" / "hmm.c")  # stat info differs: a refresh would rewrite the index
    before = (index.stat().st_mtime_ns, index.read_bytes())
    k.tree_state(tree)
    assert (index.stat().st_mtime_ns, index.read_bytes()) == before


def test_tree_state_without_git_uses_mtimes(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    first = k.tree_state(tree)
    assert first.describe.startswith("mtime:")
    assert k.tree_state(tree) == first
    st = (tree / "mm" / "hmm.c").stat()
    os.utime(tree / "mm" / "hmm.c", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert k.tree_state(tree).digest != first.digest


def test_tree_key_changes_with_the_tree_but_not_the_build_dir(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    cache = Cache(tmp_path / "cache")
    frags = k.fragments("6.13")
    s1 = k.tree_state(tree)
    write(tree / "mm" / "migrate_device.c", "x\n")
    s2 = k.tree_state(tree)
    assert k.tree_key(tree, "default", frags, s1) != k.tree_key(tree, "default", frags, s2)
    assert k.tree_key(tree, "default", frags, s1) != k.tree_key(tree, "debug", frags, s1)
    # one O= directory per tree and flavor: edits rebuild incrementally
    d = k.tree_build_dir(cache, tree, "default", frags)
    assert d == k.tree_build_dir(cache, tree, "default", frags)
    assert d != k.tree_build_dir(cache, tree, "debug", k.fragments("6.13", "debug"))
    assert d != k.tree_build_dir(cache, fake_tree(tmp_path / "other"), "default", frags)


def test_tree_series_from_makefile(tmp_path: Path) -> None:
    assert k.tree_series(fake_tree(tmp_path / "a", 1)) == "6.1"
    write(tmp_path / "b" / "Makefile", "all:\n")
    with pytest.raises(KernelError, match=r"b/Makefile: no VERSION/PATCHLEVEL"):
        k.tree_series(tmp_path / "b")


def test_check_tree_errors_name_the_tree_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=r"--kernel-tree .*/nope: no such directory"):
        k.check_tree(tmp_path / "nope")
    write(tmp_path / "notlinux" / "Makefile", "all:\n")
    with pytest.raises(KernelError, match=r"notlinux: not a Linux source tree \(missing "
                                          r"Kconfig, arch/x86/Kconfig"):
        k.check_tree(tmp_path / "notlinux")
    tree = fake_tree(tmp_path / "linux")
    k.check_tree(tree)
    write(tree / ".config", "CONFIG_A=y\n")
    (tree / "include" / "config").mkdir(parents=True)
    with pytest.raises(KernelError) as e:
        k.check_tree(tree)
    msg = str(e.value)
    assert str(tree) in msg and ".config, include/config exist" in msg
    assert f"`make -C {tree} mrproper`" in msg


def test_configured_tree_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    write(tree / ".config", "CONFIG_A=y\n")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(KernelError, match="mrproper"):
        k.get_kernel(cache, tmp_path / "logs", kernel_tree=tree)
    assert not cache.path("kernel").exists()

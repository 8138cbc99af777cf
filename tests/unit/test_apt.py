"""The private apt state: the host's hooks, preferences and caches never apply, its
Acquire options do. Real apt-get against a local file: repository (no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build.apt import PrivateApt, host_acquire

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="no apt-get here")


def fake_host(tmp: Path) -> Path:
    """A host apt configuration directory with an Acquire option, two hooks and a pin."""
    etc = tmp / "host-etc-apt"
    (etc / "apt.conf.d").mkdir(parents=True)
    (etc / "preferences.d").mkdir()
    (etc / "apt.conf.d" / "50host").write_text(
        'Acquire::http::Timeout "17";\n'
        'Acquire::Check-Valid-Until "false";\n'
        f'APT::Update::Post-Invoke-Success {{"touch {tmp}/update-hook-ran";}};\n'
        f'DPkg::Post-Invoke {{"touch {tmp}/dpkg-hook-ran";}};\n'
        'Acquire::IndexTargets::deb::DEP-11 { MetaKey "x"; };\n'
    )
    (etc / "preferences.d" / "pin").write_text(
        "Package: hello\nPin: origin \"\"\nPin-Priority: 1001\n")
    return etc


def local_repo(tmp: Path) -> Path:
    """A flat repository with one package stanza (apt-get update runs its hooks only
    when it has a source to fetch)."""
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "Packages").write_text(
        "Package: hmmlab-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@y>\n"
        "Filename: ./hmmlab-probe_1.0_all.deb\nSize: 1\nDescription: probe\n\n")
    return repo


def dump(apt: PrivateApt) -> str:
    env = {**os.environ, "APT_CONFIG": str(apt.config_file)}
    return subprocess.run(["apt-config", "dump"], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_host_hooks_and_preferences_do_not_apply_but_acquire_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = fake_host(tmp_path)
    # Any apt that reads "the host's configuration" reads the fake one: where
    # apt is told its configuration lives (APT_CONFIG naming Dir::Etc).
    host_conf = tmp_path / "host.conf"
    host_conf.write_text(f'Dir::Etc "{host}/";\n')
    monkeypatch.setenv("APT_CONFIG", str(host_conf))
    state = tmp_path / "state"
    apt = PrivateApt(state, host_config=host)
    (state / "sources").mkdir(parents=True)
    repo = local_repo(tmp_path)
    (state / "sources" / "test.sources").write_text(
        f"Types: deb\nURIs: file:{repo}\nSuites: ./\nTrusted: yes\n")
    log = tmp_path / "apt.log"

    apt.update(log)
    assert apt.versions("hmmlab-probe") == ["1.0"]  # the update did fetch the list

    assert not (tmp_path / "update-hook-ran").exists(), "the host's update hook ran"
    cfg = dump(apt)
    assert 'Acquire::http::Timeout "17";' in cfg
    assert 'Acquire::Check-Valid-Until "false";' in cfg
    assert "Post-Invoke" not in cfg and "touch" not in cfg
    assert "DEP-11" not in cfg  # what to fetch is ours to decide
    # preferences, apt.conf.d and the binary caches are the state's own
    assert f'Dir::Etc "{state}/etc/";' in cfg
    assert f'Dir::Cache "{state}/cache/";' in cfg
    assert (state / "cache" / "pkgcache.bin").exists()
    policy = subprocess.run(["apt-cache", "policy"], capture_output=True, text=True,
                            env={**os.environ, "APT_CONFIG": str(apt.config_file)},
                            check=True, timeout=60).stdout
    assert "1001" not in policy and "hello" not in policy


def test_host_acquire_keeps_only_what_the_host_adds(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    assert host_acquire(host) == ['Acquire::http "";', 'Acquire::http::Timeout "17";',
                                  'Acquire::Check-Valid-Until "false";']

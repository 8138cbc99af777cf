"""The build's result types stay backward compatible for their callers."""

from __future__ import annotations

import pickle
from pathlib import Path

from harness.build import Artifacts
from harness.build.kernel import KernelArtifact


def test_kernel_artifact_old_positional_form() -> None:
    k = KernelArtifact("6.12.107-1", Path("/t"), Path("/t/bzImage"))
    assert (k.version, k.tree, k.image) == ("6.12.107-1", Path("/t"), Path("/t/bzImage"))
    assert k.features == frozenset() and k.initrds == () and k.source is None


def test_artifacts_without_kernel_details() -> None:
    a = Artifacts(qemu=Path("q"), qemu_datadirs=(), kernel_image=Path("k"),
                  kernel_tree=Path("t"), kernel_version="6.12.107-1", initrds=(),
                  ssh_key=Path("key"), ssh_host_pubkey="ssh-ed25519 AAAA")
    assert a.kernel_features == frozenset() and a.kernel_label == "" and a.kernel is None


def test_artifacts_pickle_round_trip() -> None:
    # the matrix scheduler hands artifacts to each cell's process
    k = KernelArtifact("6.1.192-2", Path("/h"), Path("/v"), source=Path("/s"),
                       config=Path("/c"), features=frozenset({"hmm_mirror"}),
                       label="stock 6.1.0-56", release="6.1.0-56-amd64",
                       initrds=(Path("/m.cpio.gz"),), series="stock-6.1")
    a = Artifacts(qemu=Path("q"), qemu_datadirs=(), kernel_image=k.image, kernel_tree=k.tree,
                  kernel_version=k.version, initrds=(Path("r"), *k.initrds, Path("p")),
                  ssh_key=Path("key"), ssh_host_pubkey="x", kernel_features=k.features,
                  kernel_label=k.label, kernel=k)
    assert pickle.loads(pickle.dumps(a)) == a


def test_results_environment_records_what_exactly_was_built(tmp_path: Path) -> None:
    from harness.build import build_environment
    from harness.build.qemu import QemuArtifact
    from harness.core import config
    from harness.core.results import Results
    from harness.run.runner import Runner

    k = KernelArtifact("6.12.117-1", Path("/c/kernel/6.12-default-abc"), Path("/b"),
                       source=Path("/c/linux-src/6.12.117-1"), release="6.12.117",
                       series="6.12", source_package="linux-source-6.12", key="abc",
                       warnings=("linux-source-6.12/trixie: could not resolve ...",))
    q = QemuArtifact(Path("/c/qemu/f00/qemu-system-x86_64"), (), tree_key="7ee")
    info = build_environment(k, q, Path("/c/rootfs/r00/rootfs.cpio.gz"))
    assert info["kernel_source_package"] == "linux-source-6.12"
    assert info["kernel_source_version"] == "6.12.117-1"
    assert info["kernel_source"] == "/c/linux-src/6.12.117-1"
    assert (info["kernel_build_release"], info["kernel_key"]) == ("6.12.117", "abc")
    assert (info["qemu_tree_key"], info["qemu_key"], info["rootfs_key"]) == ("7ee", "f00", "r00")
    assert info["qemu_source_version"].startswith("10.0.13")
    assert info["gcc"].startswith("gcc ") and info["build_warnings"] == list(k.warnings)
    a = Artifacts(qemu=tmp_path / "no-qemu", qemu_datadirs=(), kernel_image=k.image,
                  kernel_tree=k.tree, kernel_version=k.version, initrds=(),
                  ssh_key=Path("key"), ssh_host_pubkey="x", kernel=k, build_info=info)
    cfg = config.load_text('kernel: "6.12"\n', "<test>")
    env = Runner(cfg, a, Results(tmp_path))._host_environment()
    assert {key: env[key] for key in info} == info

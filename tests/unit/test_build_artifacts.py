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

"""Debian's stock kernel: package choice, module load order, path fix-ups (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.build import stock
from harness.build.kernel import KernelError
from harness.build.stock import StockChoice


def archive(**extra: list[str]) -> dict[str, list[str]]:
    """What the private apt state offers, shaped like bookworm + bookworm-security."""
    v = {
        "linux-image-6.1.0-55-amd64-unsigned": ["6.1.192-1"],
        "linux-headers-6.1.0-55-amd64": ["6.1.192-1"],
        "linux-headers-6.1.0-55-common": ["6.1.192-1"],
        "linux-image-6.1.0-56-amd64-unsigned": ["6.1.192-2"],
        "linux-headers-6.1.0-56-amd64": ["6.1.192-2"],
        "linux-headers-6.1.0-56-common": ["6.1.192-2"],
        "linux-kbuild-6.1": ["6.1.176-1", "6.1.192-2"],
        "linux-source-6.1": ["6.1.176-1", "6.1.192-1", "6.1.192-2"],
        "linux-image-6.1.0-9-amd64-unsigned": ["6.1.27-1"],
    }
    v.update(extra)
    return v


def test_selects_the_newest_complete_set() -> None:
    c = stock.select_stock("6.1", archive())
    assert (c.abi, c.version, c.release) == ("56", "6.1.192-2", "6.1.0-56-amd64")
    assert c.packages() == {
        "image": "linux-image-6.1.0-56-amd64-unsigned",
        "headers": "linux-headers-6.1.0-56-amd64",
        "common": "linux-headers-6.1.0-56-common",
        "kbuild": "linux-kbuild-6.1",
    }
    assert c.deb_names()["common"] == "linux-headers-6.1.0-56-common_6.1.192-2_all.deb"
    assert c.source_package == "linux-source-6.1"


def test_abi_compares_as_a_number() -> None:
    # ABI 9 sorts after 56 as text; it must not win
    assert stock.select_stock("6.1", archive()).abi == "56"


def test_skips_an_image_without_its_kbuild() -> None:
    # the newest image is out, but its linux-kbuild is not yet: fall back to 55
    v = archive(**{"linux-kbuild-6.1": ["6.1.192-1"]})
    c = stock.select_stock("6.1", v)
    assert (c.abi, c.version) == ("55", "6.1.192-1")


def test_no_complete_set_names_what_is_missing() -> None:
    v = archive(**{"linux-kbuild-6.1": ["6.1.100-1"], "linux-source-6.1": []})
    with pytest.raises(KernelError) as e:
        stock.select_stock("6.1", v)
    msg = str(e.value)
    assert "6.1.0-56-amd64 6.1.192-2 (no linux-kbuild-6.1, linux-source-6.1)" in msg


def test_no_image_at_all_points_at_the_apt_sources() -> None:
    with pytest.raises(KernelError, match=r"no linux-image-6\.1\.0-\*-amd64-unsigned .*"
                                          r"bookworm-security"):
        stock.select_stock("6.1", {"linux-kbuild-6.1": ["6.1.192-2"]})


def test_downloaded_set_is_used_without_apt(tmp_path: Path) -> None:
    for c in (StockChoice("6.1", "55", "6.1.192-1"), StockChoice("6.1", "56", "6.1.192-2")):
        for name in c.deb_names().values():
            (tmp_path / name).write_text("")
    assert stock._downloaded_choice(tmp_path, "6.1") is None  # no source deb yet
    (tmp_path / "linux-source-6.1_6.1.192-1_all.deb").write_text("")
    assert stock._downloaded_choice(tmp_path, "6.1") == StockChoice("6.1", "55", "6.1.192-1")
    (tmp_path / "linux-source-6.1_6.1.192-2_all.deb").write_text("")
    assert stock._downloaded_choice(tmp_path, "6.1") == StockChoice("6.1", "56", "6.1.192-2")


def test_stock_key_follows_the_recipe_tools_not_a_number(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    c = StockChoice("6.1", "56", "6.1.192-2")
    base = stock.stock_key(c)
    assert not hasattr(stock, "RECIPE_VERSION")
    (tmp_path / "depmod").write_text("#!/bin/sh\necho 'kmod version 99'\n")
    (tmp_path / "depmod").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert stock.stock_key(c) != base


def test_stock_key_follows_the_packages() -> None:
    a = stock.stock_key(StockChoice("6.1", "56", "6.1.192-2"))
    assert a == stock.stock_key(StockChoice("6.1", "56", "6.1.192-2"))
    assert a != stock.stock_key(StockChoice("6.1", "57", "6.1.193-1"))


# --- modules --------------------------------------------------------------------------

DEP = """\
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/sound/snd.ko:
"""


def test_load_order_puts_dependencies_first() -> None:
    deps = stock.parse_modules_dep(DEP)
    order = stock.load_order(deps, ("virtio_pci", "virtio_net"), ("virtio_rng", "pvpanic_pci"))
    names = [Path(p).name for p in order]
    assert sorted(names) == sorted([
        "virtio_pci_legacy_dev.ko", "virtio_pci_modern_dev.ko", "virtio_ring.ko", "virtio.ko",
        "virtio_pci.ko", "failover.ko", "net_failover.ko", "virtio_net.ko", "virtio-rng.ko"])
    for mod, dep in (("virtio.ko", "virtio_ring.ko"), ("virtio_pci.ko", "virtio.ko"),
                     ("virtio_net.ko", "net_failover.ko"), ("net_failover.ko", "failover.ko"),
                     ("virtio-rng.ko", "virtio.ko")):
        assert names.index(dep) < names.index(mod), (dep, mod)
    assert "snd.ko" not in names


def test_builtin_modules_need_nothing() -> None:
    deps = stock.parse_modules_dep(DEP)
    order = stock.load_order(deps, ("virtio_pci", "virtio_net"),
                             builtin=("kernel/drivers/virtio/virtio_pci.ko",))
    assert all("virtio_pci.ko" not in p for p in order)
    assert order[-1] == "kernel/drivers/net/virtio_net.ko"


def test_missing_required_module_is_an_error() -> None:
    deps = stock.parse_modules_dep("kernel/net/core/failover.ko:\n")
    with pytest.raises(KernelError, match=r"module virtio_net is neither built in nor in "
                                          r"modules\.dep"):
        stock.load_order(deps, ("virtio_net",))


def test_dependency_cycle_is_reported() -> None:
    deps = stock.parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(KernelError, match="dependency cycle"):
        stock.load_order(deps, ("a",))


# --- paths ---------------------------------------------------------------------------


def test_fix_paths_points_debian_paths_at_the_unpack(tmp_path: Path) -> None:
    c = StockChoice("6.1", "56", "6.1.192-2")
    root = tmp_path / "root"
    headers = root / "usr/src/linux-headers-6.1.0-56-amd64"
    common = root / "usr/src/linux-headers-6.1.0-56-common"
    headers.mkdir(parents=True)
    common.mkdir(parents=True)
    (headers / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-56-common/Makefile\n")
    moddir = root / "lib/modules/6.1.0-56-amd64"
    moddir.mkdir(parents=True)
    (moddir / "build").symlink_to("/usr/src/linux-headers-6.1.0-56-amd64")
    (moddir / "source").symlink_to("/usr/src/linux-headers-6.1.0-56-common")
    stock._fix_paths(root, c)
    assert (headers / "Makefile").read_text() == f"include {common}/Makefile\n"
    assert (moddir / "build").resolve() == headers.resolve()
    assert (moddir / "source").resolve() == common.resolve()
    assert not Path(str((moddir / "build").readlink())).is_absolute()


def test_fix_paths_refuses_an_unknown_layout(tmp_path: Path) -> None:
    headers = tmp_path / "usr/src/linux-headers-6.1.0-56-amd64"
    headers.mkdir(parents=True)
    (headers / "Makefile").write_text("all:\n")
    with pytest.raises(KernelError, match="Debian changed the headers layout"):
        stock._fix_paths(tmp_path, StockChoice("6.1", "56", "6.1.192-2"))

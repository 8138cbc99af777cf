"""The payload builder's decisions: which hmm-tests sources, which tests need
device-private memory, what the guest's kernel.json says, which warnings count."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.build import payload
from harness.build.payload import (
    PayloadError,
    PayloadKernel,
    driver_warnings,
    harness_selects_tests,
    hmm_tests_files,
    hmm_tests_needs,
    selftest_optimization,
)
from harness.scenarios.kernel import GuestKernel

HMM_TESTS = r"""
#include "kselftest_harness.h"
#include <stdio.h>
#include <lib/test_hmm_uapi.h>
#include <mm/vm_util.h>

FIXTURE_VARIANT_ADD(hmm, hmm_device_private)
{
	.device_number = HMM_PRIVATE_DEVICE_ONE,
};

FIXTURE_VARIANT_ADD(hmm, hmm_device_coherent)
{
	.device_number = HMM_COHERENT_DEVICE_ONE,
};

static int hmm_dmirror_cmd(int fd, unsigned long request, struct hmm_buffer *buffer, long n)
{
	return ioctl(fd, request, buffer);
}

static int hmm_migrate_sys_to_dev(int fd, struct hmm_buffer *buffer, unsigned long npages)
{
	return hmm_dmirror_cmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, buffer, npages);
}

static int run_benchmark(int fd)
{
	return hmm_migrate_sys_to_dev(fd, NULL, 1);
}

TEST_F(hmm, anon_read)
{
	ret = hmm_dmirror_cmd(self->fd, HMM_DMIRROR_READ, buffer, npages);
}

TEST_F(hmm, migrate)
{
	ret = hmm_migrate_sys_to_dev(self->fd, buffer, npages);
}

TEST_F(hmm, exclusive)
{
	ret = hmm_dmirror_cmd(self->fd, HMM_DMIRROR_EXCLUSIVE, buffer, npages);
}

TEST_F_TIMEOUT(hmm, benchmark_thp_migration, 120)
{
	ASSERT_EQ(run_benchmark(self->fd), 0);
}

TEST_F(hmm2, snapshot)
{
	ret = hmm_dmirror_cmd(self->fd0, HMM_DMIRROR_SNAPSHOT, buffer, npages);
}
"""


def test_tests_needing_device_private_memory_follow_the_helpers() -> None:
    got = hmm_tests_needs(HMM_TESTS)
    assert got["tests"] == ["hmm.anon_read", "hmm.migrate", "hmm.exclusive",
                            "hmm.benchmark_thp_migration", "hmm2.snapshot"]
    # direct ioctl, through one helper, through two helpers
    assert got["device_private"] == ["hmm.migrate", "hmm.exclusive",
                                     "hmm.benchmark_thp_migration"]
    assert got["variants"] == {"hmm": ["hmm_device_private", "hmm_device_coherent"]}


def _source(root: Path, layout: str) -> Path:
    """A kernel source with hmm-tests the way 6.1 (vm/) or 6.12+ (mm/ + helpers) has it."""
    st = root / "tools" / "testing" / "selftests"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "test_hmm_uapi.h").write_text("/* uapi */\n")
    (root / "mm").mkdir()
    (root / "mm" / "gup_test.h").write_text("/* gup */\n")
    st.mkdir(parents=True)
    (st / "kselftest.h").write_text("/* ksft */\n")
    (st / "kselftest_harness.h").write_text('#include "kselftest.h"\n')
    d = st / layout
    d.mkdir()
    (d / "Makefile").write_text("CFLAGS = -Wall -O2 -I $(top_srcdir)\n")
    if layout == "vm":
        (d / "hmm-tests.c").write_text('#include "../kselftest_harness.h"\n'
                                       "#include <lib/test_hmm_uapi.h>\n#include <stdio.h>\n")
    else:
        (d / "hmm-tests.c").write_text('#include "kselftest_harness.h"\n'
                                       '#include "hugepage_settings.h"\n'
                                       "#include <mm/vm_util.h>\n#include <mm/gup_test.h>\n")
        (d / "vm_util.h").write_text('#include "kselftest.h"\n')
        (d / "vm_util.c").write_text('#include "vm_util.h"\n')
        (d / "hugepage_settings.h").write_text("#include <stdbool.h>\n")
        (d / "hugepage_settings.c").write_text('#include "hugepage_settings.h"\n'
                                               '#include "vm_util.h"\n')
        (d / "unrelated.c").write_text("int main(void) { return 0; }\n")
    return root


def test_hmm_tests_sources_6_1_layout(tmp_path: Path) -> None:
    src = _source(tmp_path, "vm")
    units, files = hmm_tests_files(src)
    assert [u.name for u in units] == ["hmm-tests.c"]
    rel = {f.relative_to(src).as_posix() for f in files}
    assert rel == {"tools/testing/selftests/vm/hmm-tests.c",
                   "tools/testing/selftests/kselftest_harness.h",
                   "tools/testing/selftests/kselftest.h", "lib/test_hmm_uapi.h"}


def test_hmm_tests_sources_follow_the_helper_headers(tmp_path: Path) -> None:
    src = _source(tmp_path, "mm")
    units, files = hmm_tests_files(src)
    assert sorted(u.name for u in units) == ["hmm-tests.c", "hugepage_settings.c", "vm_util.c"]
    assert "unrelated.c" not in {f.name for f in files}
    assert "gup_test.h" in {f.name for f in files}


def test_no_hmm_tests_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="hmm-tests"):
        hmm_tests_files(tmp_path)


def test_the_selftest_makefiles_optimisation_is_kept() -> None:
    assert selftest_optimization("CFLAGS = -Wall -O2 -I $(top_srcdir)\nCFLAGS += -O0\n") == ["-O2"]
    # 6.1: no -O at all (its harness loops in teardowns when built with -O2)
    assert selftest_optimization("CFLAGS = -Wall -I $(top_srcdir) $(EXTRA_CFLAGS)\n") == []
    assert selftest_optimization("no cflags here\n") == []


def test_which_harness_can_leave_tests_out() -> None:
    assert harness_selects_tests('while ((opt = getopt(argc, argv, "hlF:f:V:v:t:T:r:")) != -1)')
    assert not harness_selects_tests("static int test_harness_run(int argc, char **argv)\n{")


def test_only_warnings_about_our_files_and_module_count() -> None:
    log = (
        "/s/drv/hmm_gpu_svm.c:12:5: warning: unused variable 'x' [-Wunused-variable]\n"
        "/k/include/linux/mm.h:3:1: warning: not ours\n"
        "hmm_gpu_dmem.c:7:2: warning: relative path, ours\n"
        "/s/drv/hmm_gpu_svm.c:12:5: warning: unused variable 'x' [-Wunused-variable]\n"
        'WARNING: modpost: "foo" [/s/drv/hmm_gpu.ko] undefined!\n'
        "WARNING: modpost: vmlinux: section mismatch\n"
    )
    got = driver_warnings(log, ["hmm_gpu_svm.c", "hmm_gpu_dmem.c"], Path("/s/drv"))
    assert got == ["hmm_gpu_svm.c:12:5: warning: unused variable 'x' [-Wunused-variable]",
                   "hmm_gpu_dmem.c:7:2: warning: relative path, ours",
                   'WARNING: modpost: "foo" [hmm_gpu.ko] undefined!']


def _tree(root: Path, config: str, test_hmm: bool, src: Path) -> Path:
    root.mkdir()
    (root / ".config").write_text(config)
    (root / "include" / "config").mkdir(parents=True)
    (root / "include" / "config" / "kernel.release").write_text("6.12.107\n")
    (root / "source").symlink_to(src)
    if test_hmm:
        (root / "lib").mkdir()
        (root / "lib" / "test_hmm.ko").write_bytes(b"\x7fELF")
    return root


def test_a_built_tree_says_what_it_offers(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", "mm")
    tree = _tree(tmp_path / "obj", "CONFIG_DEVICE_PRIVATE=y\nCONFIG_HMM_MIRROR=y\n", True, src)
    k = PayloadKernel.of(tree)
    assert k.source == src.resolve() and k.test_hmm == tree.resolve() / "lib" / "test_hmm.ko"
    assert {"device_private", "hmm_mirror", "test_hmm"} <= k.features
    assert k.name == "6.12.107" and k.release == "6.12.107"


def test_stock_kernel_artifact_is_named_for_reasons(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", "vm")
    headers = _tree(tmp_path / "headers", "# CONFIG_DEVICE_PRIVATE is not set\n", False, src)
    art = SimpleNamespace(tree=headers, source=src, config=headers / ".config",
                          version="6.1.192-2", label="stock 6.1.0-56", series="stock-6.1",
                          release="6.1.0-56-amd64", features=frozenset({"hmm_mirror"}))
    k = PayloadKernel.of(art)
    assert k.name == "Debian stock 6.1" and k.test_hmm is None
    assert k.features == {"hmm_mirror"} and k.release == "6.1.0-56-amd64"
    # what the guest reads back
    (src / "tools/testing/selftests/vm/hmm-tests.c").write_text(HMM_TESTS)
    data = json.loads(json.dumps(payload.manifest(k, ["w1"])))
    g = GuestKernel.from_json(data)
    assert g.name == "Debian stock 6.1" and "device_private" not in g.features
    assert g.driver_warnings == ("w1",) and not g.hmm_tests_selectable
    assert g.hmm_tests_device_private == {"hmm.migrate", "hmm.exclusive",
                                          "hmm.benchmark_thp_migration"}
    assert g.hmm_test_names()[:2] == ["hmm.hmm_device_private.anon_read",
                                      "hmm.hmm_device_coherent.anon_read"]


def test_payload_key_follows_the_toolchain(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path / "src", "mm")
    tree = _tree(tmp_path / "obj", "CONFIG_DEVICE_PRIVATE=y\n", True, src)
    (tree / "Module.symvers").write_text("")
    (tree / "Makefile").write_text("")
    k = PayloadKernel.of(tree)
    base = payload.payload_key(k)
    assert base == payload.payload_key(k)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    seen = {base}
    for tool, line in (("gcc", "gcc (Debian 14.2.0-19) 14.2.0"), ("make", "GNU Make 4.4.1"),
                       ("ld", "GNU ld (GNU Binutils for Debian) 2.44")):
        (bindir / tool).write_text(f"#!/bin/sh\necho '{line}'\n")
        (bindir / tool).chmod(0o755)
        key = payload.payload_key(k)
        assert key not in seen, tool
        seen.add(key)


def test_a_tree_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match=r"\.config is missing"):
        PayloadKernel.of(tmp_path)


def test_hmm_nic_is_built_only_with_user_verbs_and_odp(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    for text, ok in (
        ("CONFIG_INFINIBAND_USER_ACCESS=y\nCONFIG_INFINIBAND_ON_DEMAND_PAGING=y\n", True),
        ("CONFIG_INFINIBAND_USER_ACCESS=m\nCONFIG_INFINIBAND_ON_DEMAND_PAGING=y\n", True),
        ("CONFIG_INFINIBAND_USER_ACCESS=y\n# CONFIG_INFINIBAND_ON_DEMAND_PAGING is not set\n",
         False),
        ("# CONFIG_INFINIBAND is not set\n", False),
    ):
        cfg.write_text(text)
        assert payload.nic_buildable(cfg) is ok, text


def test_manifest_lists_hmm_nic_only_when_built(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", "mm")
    tree = _tree(tmp_path / "obj", "CONFIG_HMM_MIRROR=y\n", False, src)
    k = PayloadKernel.of(tree)
    (src / "tools/testing/selftests/mm/hmm-tests.c").write_text(HMM_TESTS)
    assert "modules" not in payload.manifest(k, [])
    data = payload.manifest(k, [], ["hmm_nic_mr.c:1:1: warning: x"])
    assert data["modules"] == ["hmm_gpu.ko", "hmm_nic.ko"]
    assert data["nic_driver_warnings"] == ["hmm_nic_mr.c:1:1: warning: x"]


def test_python_workloads_are_installed_from_the_sources() -> None:
    # Each script the payload installs exists, is part of the payload's hash
    # (a change rebuilds it), and compiles; the executable ones start with a
    # shebang the guest's python3 answers.
    sources = {p.name for p in payload._sources(payload.WORKLOADS_DIR)}
    for name, mode in payload.SCRIPTS.items():
        path = payload.WORKLOADS_DIR / name
        assert name in sources, name
        compile(path.read_text(), str(path), "exec")
        if mode & 0o111:
            assert path.read_text().startswith("#!/usr/bin/python3\n"), name
    # the scripts import their shared module from their own directory
    assert "odp_common.py" in payload.SCRIPTS

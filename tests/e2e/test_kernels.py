"""End to end: the default scenarios on 6.1, 7.2 and Debian's stock 6.1.

hmm_gpu.ko builds warning-free against each (``driver.build``) and every
scenario that passes on 6.12 passes on 6.1 and 7.2. hmm-tests has as many
device-private tests as the booted kernel's hmm-tests.c says (29 on 6.1, 38
on 7.2 at the time of writing): hmm-gpu passes all of them on 7.2,
migrate_anon_huge_fault's PMD-mapped device-private THP included, in both
fault modes (columns hmm-gpu, hmm-gpu-devfault).
Stock 6.1 has no CONFIG_DEVICE_PRIVATE and no test_hmm.ko: what needs them
SKIPs with the reason, everything else passes.

A kernel that cannot be built makes its tests ERROR (the build's message),
never skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.build import build_all
from harness.build.cache import Cache
from harness.core import config
from harness.core.results import Results, Status
from harness.run import runner
from harness.scenarios.hmm_tests import expected_device_private

# the module fixture builds a kernel (if not cached) and runs the default scenarios:
# 7.2's took 472 s loaded
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

NO_DP = "kernel built without CONFIG_DEVICE_PRIVATE (Debian stock 6.1)"


@pytest.fixture(scope="module", params=["6.1", "7.2", "stock-6.1"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Results:
    kernel = request.param
    cache = Cache.default()
    arts = build_all(cache, cache.path("logs"), kernel=kernel)
    cfg = config.load_text(f'kernel: "{kernel}"\n', "<test>")
    d = tmp_path_factory.mktemp(f"kernel-{kernel}")
    res = runner.run(cfg, d, artifacts=arts)
    print(f"results: {d}")
    print(res.table())
    return res


def _table(res: Results) -> dict[str, Any]:
    return json.loads((res.dir / "results.json").read_text())["tables"]["hmm-tests"]


def _kernel(res: Results) -> str:
    return str(res.config.get("kernel"))


def _expected_private(res: Results) -> int:
    """The device-private tests of the booted kernel's own hmm-tests.c (results.json
    records the kernel source the artifact was built from)."""
    env = json.loads((res.dir / "results.json").read_text())["environment"]
    return expected_device_private(Path(env["kernel_source"]))


def test_everything_passes_or_skips_with_a_reason(run: Results) -> None:
    assert run.exit_code() == 0, run.failures()
    assert run.status_of("driver.build") == Status.PASS
    for t in run.tests:
        if t.status == Status.SKIP:
            assert t.log_excerpt.strip(), f"{t.path} skipped without a reason"


def test_hmm_tests_per_kernel(run: Results) -> None:
    table = _table(run)
    rows = {r["test"]: r for r in table["rows"]}
    kernel = _kernel(run)
    private = {n: r for n, r in rows.items() if "_device_private." in n}
    columns = table["columns"]
    assert columns == ["hmm-gpu", "hmm-gpu-devfault", "test_hmm"]
    want = _expected_private(run)
    if kernel == "stock-6.1":
        assert len(private) == want
        assert all(r[c] == "SKIP" for r in rows.values() for c in columns)
        return
    assert len(private) == want, sorted(private)
    assert all(r["test_hmm"] == "PASS" for r in private.values())
    for column in ("hmm-gpu", "hmm-gpu-devfault"):
        gpu = {n for n, r in private.items() if r[column] != "PASS"}
        assert gpu == set(), (column, gpu)
        assert run.status_of(f"hmm-tests.parity.{column}") == Status.PASS
    for n, r in rows.items():
        if "_device_coherent." in n:
            assert all(r[c] == "SKIP" for c in columns), n  # no devices 2/3


def test_what_needs_device_private_memory(run: Results) -> None:
    kernel = _kernel(run)
    for name in ("svm-migrate", "vram-pressure", "atomics"):
        if kernel == "stock-6.1":
            e = next(t for t in run.tests if t.path == name)
            assert e.status == Status.SKIP and e.log_excerpt == NO_DP
        else:
            assert run.status_of(f"{name}.bind") == Status.PASS
    for kind in ("malloc", "anon", "thp"):
        st = run.status_of(f"svm-mirror.{kind}.atomic_add")
        assert st == (Status.SKIP if kernel == "stock-6.1" else Status.PASS), kind
    # the file mapping never gets device atomics: refused on every kernel
    assert run.status_of("svm-mirror.file.atomic_refused") == Status.PASS
    if kernel == "stock-6.1":
        assert run.status_of("svm-mirror.anon.atomic_refused") == Status.PASS
        assert run.status_of("hmm-tests.parity.hmm-gpu") == Status.SKIP
        assert run.status_of("hmm-tests.parity.hmm-gpu-devfault") == Status.SKIP

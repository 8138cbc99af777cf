"""Run-file parsing: defaults, overrides, and errors that say where and how to fix."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from harness.core import config
from harness.core.config import ConfigError, DeviceConfig, Timeouts
from harness.scenarios import names as scenario_names

SCENARIOS = scenario_names()


def load(text: str, name: str = "run.yaml"):
    return config.load_text(textwrap.dedent(text), name, known_scenarios=SCENARIOS)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text)
    return str(exc.value)


def test_packaged_default() -> None:
    cfg = config.load(None)
    assert cfg.kernel == "6.12"
    assert cfg.machine == "q35"
    assert cfg.memory == 2048  # hmm-tests + svm scenarios
    assert cfg.cpus == 2
    assert cfg.accel == "auto"
    # hmm-tests' hmm2 fixtures need /dev/hmm_dmirror0 and 1; gpu2 (small VRAM) is
    # vram-pressure's; nic0 is odp-tests'
    assert cfg.devices == (DeviceConfig("hmm-gpu", {}), DeviceConfig("hmm-gpu", {}),
                           DeviceConfig("hmm-gpu", {"vram-size": "8M"}),
                           DeviceConfig("hmm-nic", {}, link="nic1"), DeviceConfig("hmm-nic", {}),
                           DeviceConfig("hmm-nic", {}, link="peer"))  # odp-cross-vm's
    assert cfg.scenarios == ("smoke", "hmm-tests", "svm-mirror", "svm-invalidate", "svm-race",
                             "svm-migrate", "vram-pressure", "atomics", "svm-reclaim",
                             "dmirror-edge", "odp-tests", "odp-rc", "odp-implicit",
                             "odp-gpu", "perftest", "odp-cross-vm")
    assert cfg.timeouts == Timeouts(boot=120, no_output=60, scenario=300)


def test_empty_file_is_the_default() -> None:
    assert load("").to_dict() | {"source": ""} == config.load(None).to_dict() | {"source": ""}


def test_overrides_and_partial_timeouts() -> None:
    cfg = load("""
        kernel: "7.2"
        machine: pc
        memory: 2G
        cpus: 1
        accel: tcg
        devices:
          - type: hmm-gpu
            props: {max-xfer: 4096, trace-data: true}
          - type: hmm-gpu
        timeouts:
          boot: 300
    """)
    assert (cfg.kernel, cfg.machine, cfg.memory, cfg.cpus, cfg.accel) == ("7.2", "pc", 2048, 1,
                                                                          "tcg")
    assert cfg.devices[0].props == {"max-xfer": "4096", "trace-data": "on"}
    assert len(cfg.devices) == 2
    assert cfg.timeouts == Timeouts(boot=300, no_output=60, scenario=300)


@pytest.mark.parametrize(("text", "mib"), [
    ("1024", 1024), ("512M", 512), ("1G", 1024), ("2GiB", 2048), ("768MiB", 768), ("4g", 4096),
])
def test_memory_forms(text: str, mib: int) -> None:
    assert load(f"memory: {text}\n").memory == mib


def test_unquoted_kernel_keeps_its_text() -> None:
    assert load("kernel: 6.1\n").kernel == "6.1"
    # an unquoted 6.10 is not read as the float 6.1
    assert 'got "6.10"' in error("kernel: 6.10\n")


def test_flavor_and_iommu() -> None:
    cfg = load("flavor: debug\niommu: intel-iommu\n")
    assert (cfg.flavor, cfg.iommu, cfg.machine) == ("debug", "intel-iommu", "q35")
    assert config.load(None).iommu == "off"  # YAML's bare off would be a boolean


def test_intel_iommu_needs_q35_and_names_the_line() -> None:
    msg = error("machine: pc\ncpus: 2\niommu: intel-iommu\n")
    assert msg == "run.yaml:3: iommu: intel-iommu needs machine q35, got machine pc"


def test_memory_error_names_file_line_key_and_fix() -> None:
    msg = error("""\
        kernel: "6.12"
        machine: q35
        cpus: 2
        memory: lots
    """)
    assert msg == 'run.yaml:4: memory: expected MiB as an integer or like "1G", got "lots"'


def test_unknown_key_suggests_close_match() -> None:
    msg = error("cpus: 2\nmemroy: 1G\n")
    assert msg.startswith('run.yaml:2: memroy: unknown key; did you mean "memory"?')


def test_unknown_nested_key() -> None:
    msg = error("timeouts:\n  boot: 10\n  no-output: 5\n")
    assert msg.startswith('run.yaml:3: timeouts.no-output: unknown key; did you mean "no_output"?')


def test_bad_choice_suggests() -> None:
    assert error("machine: q53\n") == (
        'run.yaml:1: machine: expected "q35" or "pc", got "q53"; did you mean "q35"?'
    )


def test_accel_choice() -> None:
    assert 'expected "auto" or "kvm" or "tcg"' in error("accel: hvf\n")


@pytest.mark.parametrize(("text", "needle"), [
    ("cpus: 0\n", "run.yaml:1: cpus: expected an integer from 1 to 64, got \"0\""),
    ("cmdline: [swiotlb=force]\n", "run.yaml:1: cmdline: expected"),
    ("cmdline: \"a  b\"\n", "cmdline: expected kernel arguments separated by single spaces"),
    ("cmdline: \"quiet console=tty0\"\n",
     "run.yaml:1: cmdline: console=tty0 is the harness's own (serial console, panic handling, "
     "interface names): remove it"),
    ("cpus: two\n", "cpus: expected an integer from 1 to 64"),
    ("cpus: true\n", "cpus: expected an integer"),
    ("memory: 64\n", "memory: expected 128 MiB to 64G, got 64 MiB"),
    ("memory:\n", "memory: expected MiB as an integer or like \"1G\", got nothing"),
    ("kernel: latest\n", 'run.yaml:1: kernel: expected one of 6.1, 6.12, 7.2, stock-6.1 (or run '
                          'with --kernel-tree PATH), got "latest"'),
    ("flavor: kasan\n", "run.yaml:1: flavor:"),
    ("iommu: on\n", "run.yaml:1: iommu:"),
    ("timeouts: {boot: -1}\n", "timeouts.boot: expected a positive number of seconds"),
    ("timeouts: 5\n", "timeouts: expected a mapping of keys"),
    ("scenarios: [smoke, smok]\n", 'scenarios[1]: expected "smoke" or "hmm-tests" or '
     '"svm-mirror" or "svm-invalidate" or "svm-race" or "svm-reclaim" or "dmirror-edge" or '
     '"svm-migrate" or "vram-pressure" or "atomics" or "dma-bounce" or "bench-svm" or '
     '"odp-tests" or "odp-rc" or "odp-implicit" or "odp-gpu" or "perftest" or "bench-odp" or '
     '"odp-cross-vm" or "bench-trace" or "bench-ftrace", got "smok"; did you mean "smoke"?'),
    ("scenarios: smoke\n", "scenarios: expected a list of scenario names"),
    ("devices: [{type: hmm-gpuu}]\n", 'devices[0].type: expected "hmm-gpu"'),
    ("devices: [{props: {a: 1}}]\n", "devices[0]: missing key type"),
    ("devices:\n  - type: hmm-gpu\n    props: {id: x}\n",
     "run.yaml:3: devices[0].props.id: set by the launcher itself"),
    ("devices:\n  - type: hmm-gpu\n    prop: {}\n",
     'run.yaml:3: devices[0].prop: unknown key; did you mean "props"?'),
    ("devices: [{type: hmm-gpu, props: {x: [1]}}]\n", "devices[0].props.x: expected a string"),
    ("- a\n- b\n", "expected a mapping of keys, got a list"),
    ("cpus: 2\ncpus: 3\n", "run.yaml:2: cpus: duplicate key (first given on line 1)"),
])
def test_errors(text: str, needle: str) -> None:
    assert needle in error(text)


def test_cmdline() -> None:
    assert config.load_text("").cmdline == ""
    assert config.load_text("cmdline: swiotlb=force\n").cmdline == "swiotlb=force"
    assert config.load_text("cmdline:\n").cmdline == ""


def test_yaml_syntax_error_has_a_line() -> None:
    msg = error("cpus: 2\nmemory: [1024\nmachine: q35\n")
    assert msg.startswith("run.yaml:") and "not valid YAML" in msg


def test_load_file_uses_its_path(tmp_path: Path) -> None:
    f = tmp_path / "my.yaml"
    f.write_text("accel: nope\n")
    with pytest.raises(ConfigError) as exc:
        config.load(f, known_scenarios=SCENARIOS)
    assert str(exc.value).startswith(f"{f}:1: accel:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml", known_scenarios=SCENARIOS)


def test_scenario_names_come_from_the_registry() -> None:
    assert config.load_text("scenarios: [smoke]\n").scenarios == ("smoke",)


def test_to_dict_is_json_ready() -> None:
    import json

    d = load("devices: [{type: hmm-gpu, props: {a: 1}}]\n").to_dict()
    assert json.loads(json.dumps(d))["devices"] == [{"type": "hmm-gpu", "props": {"a": "1"}}]


def test_every_registered_scenario_can_be_named_and_created() -> None:
    from harness import scenarios

    cfg = load("scenarios: [smoke, hmm-tests, svm-mirror, svm-invalidate, bench-svm]\n")
    for name in cfg.scenarios:
        assert scenarios.create(name).name == name


def test_unknown_scenario_lists_the_new_ones() -> None:
    msg = error("scenarios: [svm-mirorr]\n")
    assert "svm-mirorr" in msg and "svm-mirror" in msg and "hmm-tests" in msg


@pytest.mark.parametrize(("text", "error"), [
    ("devices: [{type: hmm-nic, link: nic0}]\n",
     "devices[0].link: nic0 cannot be linked to itself"),
    ("devices: [{type: hmm-nic, link: nic5}]\n",
     "devices[0].link: 'nic5' is not a hmm-nic of this guest (hmm-nics: nic0)"),
    ("devices: [{type: hmm-gpu, link: nic0}]\n", "only a hmm-nic has a link; remove it"),
    ("devices: [{type: hmm-nic, link: nic1}, {type: hmm-nic, link: nic2}, {type: hmm-nic}]\n",
     "devices[1].link: nic1 is already linked to nic0: a port has one cable"),
    ("devices: [{type: hmm-nic, props: {link: x}}]\n", "set by the launcher itself"),
])
def test_bad_nic_links(text: str, error: str) -> None:
    with pytest.raises(config.ConfigError, match=re.escape(error)):
        config.load_text(text, "t.yaml")


def test_nic_links_each_pair_once() -> None:
    cfg = config.load_text("devices: [{type: hmm-gpu}, {type: hmm-nic, link: nic1},"
                           " {type: hmm-nic, link: nic0}, {type: hmm-nic}]\n", "t.yaml")
    assert config.nic_ids(cfg.devices) == ["nic0", "nic1", "nic2"]
    assert config.nic_links(cfg.devices) == [("nic0", "nic1")]


def test_a_nic_cabled_to_a_peer_guest() -> None:
    """``link: peer``: cabled to a second guest (odp-cross-vm), not to a NIC of this one."""
    cfg = config.load_text("devices: [{type: hmm-nic, link: nic1}, {type: hmm-nic},"
                           " {type: hmm-nic, link: peer}]\n", "t.yaml")
    assert config.nic_links(cfg.devices) == [("nic0", "nic1")]
    assert config.peer_nics(cfg.devices) == ["nic2"]
    assert cfg.to_dict()["devices"][2] == {"type": "hmm-nic", "props": {}, "link": "peer"}
    with pytest.raises(config.ConfigError, match=re.escape("nor peer (a second guest)")):
        config.load_text("devices: [{type: hmm-nic, link: per}]\n", "t.yaml")


def test_device_trace_false() -> None:
    """``trace: false``: the device gets no DMA trace (bench trace's untraced GPU)."""
    cfg = config.load_text("devices: [{type: hmm-gpu}, {type: hmm-gpu, trace: false}]\n",
                           "t.yaml")
    assert [d.trace for d in cfg.devices] == [True, False]
    assert cfg.to_dict()["devices"] == [{"type": "hmm-gpu", "props": {}},
                                        {"type": "hmm-gpu", "props": {}, "trace": False}]
    with pytest.raises(ConfigError, match=r"t.yaml:1: devices\[0\].trace: expected true or "
                                          r"false, got \"sometimes\""):
        config.load_text("devices: [{type: hmm-gpu, trace: sometimes}]\n", "t.yaml")

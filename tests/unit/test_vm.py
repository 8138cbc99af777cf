"""The launcher's pure parts: command line, initrd, console reader, KVM probe."""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from pathlib import Path

import pytest

from harness.checks.splat import SplatScanner
from harness.core import config
from harness.guest.vm import (
    AccelChoice,
    AccelProbe,
    Console,
    Guest,
    GuestError,
    GuestImage,
    LaunchFiles,
    build_command_line,
    concat_initrds,
)
from harness.scenarios import names as scenario_names


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def cmdline(yaml: str = "", accel: str = "tcg", run: Path = Path("/r")) -> list[str]:
    cfg = config.load_text(yaml, "t.yaml", known_scenarios=scenario_names())
    files = LaunchFiles(run, run / "qmp.sock")
    return build_command_line(cfg, Path("/q/qemu-system-x86_64"), (Path("/fw1"), Path("/fw2")),
                              Path("/k/bzImage"), files, AccelChoice(accel, "test"), 2222)


def test_default_command_line() -> None:
    argv = cmdline()
    assert argv[0] == "/q/qemu-system-x86_64"
    assert opt(argv, "-L") == ["/fw1", "/fw2"]
    assert opt(argv, "-M") == ["q35"]
    assert opt(argv, "-accel") == ["tcg"]
    assert opt(argv, "-cpu") == ["max"]
    assert opt(argv, "-smp") == ["2"] and opt(argv, "-m") == ["2048"]
    for flag in ("-nodefaults", "-no-reboot", "-S"):
        assert flag in argv
    assert opt(argv, "-display") == ["none"]
    assert opt(argv, "-kernel") == ["/k/bzImage"]
    assert opt(argv, "-initrd") == ["/r/initrd.img"]
    append = opt(argv, "-append")[0]
    assert "console=ttyS0" in append and "panic=-1" in append
    assert "oops=panic" not in append and "panic_on_warn" not in append
    assert opt(argv, "-netdev") == ["user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22"]
    devices = opt(argv, "-device")
    assert devices[0] == "virtio-net-pci,netdev=n0,romfile="
    assert devices[1:4] == ["hmm-gpu,id=gpu0,dmatrace=dmatrace0",
                            "hmm-gpu,id=gpu1,dmatrace=dmatrace1",
                            "hmm-gpu,id=gpu2,dmatrace=dmatrace2,vram-size=8M"]
    assert devices[4:] == ["hmm-nic,id=nic0,dmatrace=nictrace0,lid=1,link=link-nic0",
                           "hmm-nic,id=nic1,dmatrace=nictrace1,lid=2,link=link-nic1",
                           "hmm-nic,id=nic2,dmatrace=nictrace2,lid=3,link=link-nic2",
                           "pvpanic-pci", "virtio-rng-pci"]  # last: the gpus keep slots 2-4
    assert opt(argv, "-action") == ["panic=none"]
    assert "file,id=dmatrace0,path=/r/dmatrace-0.bin" in opt(argv, "-chardev")
    assert opt(argv, "-qmp") == ["unix:/r/qmp.sock,server=on,wait=off"]
    assert opt(argv, "-D") == ["/r/qemu.log"]


def test_kvm_uses_host_cpu_and_machine_pc() -> None:
    argv = cmdline("machine: pc\ncpus: 1\nmemory: 2G\n", accel="kvm")
    assert opt(argv, "-M") == ["pc"] and opt(argv, "-accel") == ["kvm"]
    assert opt(argv, "-cpu") == ["host"]
    assert opt(argv, "-m") == ["2048"] and opt(argv, "-smp") == ["1"]


def test_two_gpus_with_props_each_get_a_trace() -> None:
    argv = cmdline("devices:\n  - type: hmm-gpu\n    props: {max-xfer: 4096}\n"
                   "  - type: hmm-gpu\n")
    devices = opt(argv, "-device")
    assert devices[1:3] == ["hmm-gpu,id=gpu0,dmatrace=dmatrace0,max-xfer=4096",
                            "hmm-gpu,id=gpu1,dmatrace=dmatrace1"]
    chardevs = opt(argv, "-chardev")
    assert "file,id=dmatrace1,path=/r/dmatrace-1.bin" in chardevs


def test_a_device_with_trace_false_has_no_trace_chardev() -> None:
    argv = cmdline("devices:\n  - type: hmm-gpu\n  - type: hmm-gpu\n    trace: false\n"
                   "  - type: hmm-nic\n    trace: false\n")
    devices = opt(argv, "-device")
    assert devices[1:4] == ["hmm-gpu,id=gpu0,dmatrace=dmatrace0", "hmm-gpu,id=gpu1",
                            "hmm-nic,id=nic0,lid=1"]
    chardevs = " ".join(opt(argv, "-chardev"))
    assert "dmatrace-0.bin" in chardevs
    assert "dmatrace-1.bin" not in chardevs and "nictrace0" not in chardevs


def test_intel_iommu_comes_before_the_pci_devices() -> None:
    argv = cmdline('iommu: intel-iommu\n')
    devices = opt(argv, "-device")
    assert devices[0] == "intel-iommu,intremap=on"
    assert devices[1].startswith("virtio-net-pci") and devices[2].startswith("hmm-gpu")
    # TCG's irqchip is in userspace: interrupt remapping needs nothing more
    assert opt(argv, "-accel") == ["tcg"] and opt(argv, "-M") == ["q35"]
    append = opt(argv, "-append")[0].split()
    assert append[-3:] == ["intel_iommu=on", "iommu.passthrough=0", "iommu.strict=1"]


def test_intel_iommu_under_kvm_splits_the_irqchip() -> None:
    argv = cmdline('iommu: intel-iommu\n', accel="kvm")
    assert opt(argv, "-accel") == ["kvm,kernel-irqchip=split"]
    assert opt(argv, "-device")[0] == "intel-iommu,intremap=on"


def test_run_file_cmdline_comes_last() -> None:
    append = opt(cmdline('iommu: intel-iommu\ncmdline: "swiotlb=force iommu.strict=0"\n'),
                 "-append")[0].split()
    assert append[0] == "console=ttyS0,115200"
    assert append[-5:] == ["intel_iommu=on", "iommu.passthrough=0", "iommu.strict=1",
                           "swiotlb=force", "iommu.strict=0"]  # the last word wins
    assert opt(cmdline(), "-append")[0].split()[-1] == "hung_task_timeout_secs=30"


@pytest.mark.parametrize(("flavor", "seconds"), [("default", 30), ("debug", 60)])
def test_hang_reports_fit_in_the_command_budgets(flavor: str, seconds: int) -> None:
    """The hung-task detector reports before a module load (60 s) times out, the slower
    debug flavor later; sysrq works whatever the rootfs sets (the timeout dump)."""
    append = opt(cmdline(f"flavor: {flavor}\n"), "-append")[0].split()
    assert f"hung_task_timeout_secs={seconds}" in append
    assert "sysrq_always_enabled" in append


def test_no_viommu_by_default() -> None:
    argv = cmdline()
    assert "intel_iommu" not in opt(argv, "-append")[0]
    assert not any(d.startswith("intel-iommu") for d in opt(argv, "-device"))


def test_commas_in_paths_are_escaped() -> None:
    argv = cmdline(run=Path("/a,b"))
    assert "file,id=dmatrace0,path=/a,,b/dmatrace-0.bin" in opt(argv, "-chardev")


def test_concat_initrds_aligns(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"12345")
    b.write_bytes(b"xyz")
    out = concat_initrds([a, b], tmp_path / "initrd.img")
    assert out.read_bytes() == b"12345\0\0\0xyz\0"


def test_console_reader(tmp_path: Path) -> None:
    r, w = os.pipe()
    scanner = SplatScanner()
    with os.fdopen(r, "rb", buffering=0) as stream:
        con = Console(stream, tmp_path / "console.log", scanner)
        chunks = [b"[    1.0] boot",
                  b"ing\r\n[    2.0] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n",
                  b"[    2.1] ---[ end trace 0000000000000000 ]---\nhmmlab: re", b"ady\n", b"tail"]
        for c in chunks:
            os.write(w, c)
            time.sleep(0.01)
        assert con.ready.wait(5)
        os.close(w)
        assert con.eof.wait(5)
    assert list(con.lines) == ["[    1.0] booting", "[    2.0] WARNING: CPU: 0 PID: 1 at a.c:1 "
                               "f+0x1/0x2", "[    2.1] ---[ end trace 0000000000000000 ]---",
                               "hmmlab: ready", "tail"]
    assert [s.title for s in con.splats()] == ["WARNING in f"]
    assert (tmp_path / "console.log").read_bytes() == b"".join(chunks)
    assert con.since(3) == ["hmmlab: ready", "tail"]
    assert con.tail(1) == "tail"


def fake_qemu(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "qemu-system-x86_64"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def openable_kvm(tmp_path: Path) -> Path:
    """A file that opens read-write where /dev/kvm would: the probe goes on to run QEMU
    (the stand-in below) whether or not this host has KVM."""
    dev = tmp_path / "kvm"
    dev.touch()
    return dev


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_kvm_probe_success_is_cached(tmp_path: Path) -> None:
    count = tmp_path / "count"
    qemu = fake_qemu(tmp_path, f'echo x >> {count}; echo "Linux version 6.12"; exec sleep 300')
    probe = AccelProbe(timeout=60, kvm_device=openable_kvm(tmp_path))
    k = tmp_path / "bzImage"
    assert probe.choose("auto", qemu, (), k) == AccelChoice("kvm",
                                                            "probe booted a kernel under KVM")
    assert probe.choose("kvm", qemu, (), k).name == "kvm"
    assert count.read_text().count("x") == 1


@pytest.mark.parametrize(("body", "why"), [
    ("exec sleep 300", "no console output"),  # nested KVM spinning before the kernel prints
    ("echo 'qemu: KVM starting'; exec sleep 300", "qemu: KVM starting"),
])
def test_kvm_probe_hang_falls_back_to_tcg(tmp_path: Path, body: str, why: str) -> None:
    """A QEMU that never prints the kernel banner and never exits: the probe gives
    up after its timeout, kills it and chooses TCG, saying why."""
    pidfile = tmp_path / "qemu.pid"
    qemu = fake_qemu(tmp_path, f"echo $$ > {pidfile}; {body}")
    probe = AccelProbe(timeout=2, kvm_device=openable_kvm(tmp_path))
    t0 = time.monotonic()
    choice = probe.choose("auto", qemu, (), tmp_path / "bzImage")
    assert time.monotonic() - t0 >= 2  # it waited its timeout, the stand-in really ran
    assert choice == AccelChoice(
        "tcg", f"KVM probe printed no kernel banner within 2s ({why})")
    assert not pid_alive(int(pidfile.read_text()))  # the hung QEMU did not outlive the probe
    with pytest.raises(GuestError, match=r"kvm was requested but KVM does not work: KVM probe"):
        probe.choose("kvm", qemu, (), tmp_path / "bzImage")


def test_kvm_probe_abort_falls_back_with_reason(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo 'kvm_buf_set_msrs: Assertion failed.' >&2; exit 134")
    choice = AccelProbe(timeout=60, kvm_device=openable_kvm(tmp_path)).choose(
        "auto", qemu, (), tmp_path / "bzImage")
    assert choice.name == "tcg" and "Assertion failed" in choice.reason


def test_no_kvm_device_means_tcg_without_running_qemu(tmp_path: Path) -> None:
    choice = AccelProbe(kvm_device=tmp_path / "no-kvm").choose(
        "auto", tmp_path / "missing-qemu", (), tmp_path / "bzImage")
    assert choice == AccelChoice("tcg", f"{tmp_path / 'no-kvm'}: No such file or directory")


def test_tcg_requested_needs_no_probe(tmp_path: Path) -> None:
    choice = AccelProbe().choose("tcg", tmp_path / "missing-qemu", (), tmp_path / "k")
    assert choice == AccelChoice("tcg", "requested in the config")


def test_two_hmm_nics_cabled_by_a_unix_socket() -> None:
    argv = cmdline("devices: [{type: hmm-nic, link: nic1}, {type: hmm-nic, props: {lid: 9}}]\n")
    chardevs = opt(argv, "-chardev")
    assert "socket,id=link-nic0,path=/r/l0-1.sock,server=on,wait=off" in chardevs
    assert "socket,id=link-nic1,path=/r/l0-1.sock" in chardevs
    # the listening end is created first: the other connects as QEMU starts
    assert chardevs.index("socket,id=link-nic1,path=/r/l0-1.sock") > chardevs.index(
        "socket,id=link-nic0,path=/r/l0-1.sock,server=on,wait=off")
    assert opt(argv, "-device")[1:3] == [
        "hmm-nic,id=nic0,dmatrace=nictrace0,lid=1,link=link-nic0",
        "hmm-nic,id=nic1,dmatrace=nictrace1,link=link-nic1,lid=9"]


def test_counter_ids_are_the_qemu_ids_whatever_the_device_order() -> None:
    """QMP qom-get reads /machine/peripheral/<id>: the ids the command line gives
    the hmm-gpus (counted among hmm-gpus only), also when hmm-nics come first."""
    yaml = "devices: [{type: hmm-nic, link: nic1}, {type: hmm-nic}, {type: hmm-gpu}]\n"
    cfg = config.load_text(yaml, "t.yaml", known_scenarios=scenario_names())
    guest = Guest(cfg, GuestImage(Path("/q"), (), Path("/k"), ()), Path("/r"),
                  AccelChoice("tcg", "test"))
    gpus = [d.split(",")[1].removeprefix("id=") for d in opt(cmdline(yaml), "-device")
            if d.startswith("hmm-gpu,")]
    assert gpus == ["gpu0"]
    assert guest.gpu_ids == gpus


def test_a_peer_cable_listens_here_and_connects_from_the_peer() -> None:
    """The cell's QEMU listens on peerN.sock beside qmp.sock; the peer guest's QEMU
    (DeviceConfig.peer_socket, set by odp-cross-vm) connects to that path."""
    argv = cmdline("devices: [{type: hmm-nic}, {type: hmm-nic, link: peer}]\n")
    assert "socket,id=link-nic1,path=/r/peer1.sock,server=on,wait=off" in opt(argv, "-chardev")
    assert "hmm-nic,id=nic1,dmatrace=nictrace1,lid=2,link=link-nic1" in opt(argv, "-device")
    cfg = config.load_text("", "t.yaml", known_scenarios=scenario_names())
    peer = dataclasses.replace(cfg, devices=(config.DeviceConfig(
        "hmm-nic", {"lid": "9"}, link="peer", peer_socket="/r/peer1.sock"),))
    argv = build_command_line(peer, Path("/q/qemu-system-x86_64"), (), Path("/k/bzImage"),
                              LaunchFiles(Path("/p"), Path("/p/qmp.sock")),
                              AccelChoice("tcg", "test"), 2222)
    assert "socket,id=link-nic0,path=/r/peer1.sock" in opt(argv, "-chardev")
    assert "hmm-nic,id=nic0,dmatrace=nictrace0,link=link-nic0,lid=9" in opt(argv, "-device")

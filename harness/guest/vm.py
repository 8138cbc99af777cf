"""The QEMU launcher: accelerator probe, command line, console, QMP, shutdown.

A :class:`Guest` is a context manager; leaving it always ends QEMU (poweroff,
then QMP ``quit``, then SIGTERM/SIGKILL) and keeps every log in the run
directory.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from qemu.qmp import QMPClient

from harness.checks.splat import Splat, SplatScanner
from harness.core.config import PEER, RunConfig, gpu_ids, nic_links
from harness.core.proc import pdeathsig_preexec
from harness.guest.watchdog import PANIC_GRACE, Watchdog, panic_not_ended, ssh_answers

if TYPE_CHECKING:
    from harness.guest.ssh import SSHClient

log = logging.getLogger(__name__)

READY_LINE = "hmmlab: ready"
HOSTFWD_ERROR = "Could not set up host forwarding rule"
DEVICE_COUNTERS = (
    "cmds-completed", "cmds-failed", "dma-read-bytes", "dma-write-bytes",
    "dma-errors", "irqs-raised", "guest-errors",
)
KERNEL_CMDLINE = (
    "console=ttyS0,115200 earlyprintk=serial panic=-1 loglevel=7 printk.time=1 "
    "net.ifnames=0 sysrq_always_enabled"
)
# A task blocked this long gets the hung-task detector's report (with its stack).
# The kernel's 120 s is longer than most command budgets (60 s for a module load),
# so a stuck command would time out first and leave no report; 30 s is far above
# any wait a healthy TCG guest has in D state. The debug flavor (KASAN, lockdep)
# runs several times slower: 60 s there, so slow is not taken for hung. The
# detector checks every timeout period, so a report comes after 1-2 periods.
HUNG_TASK_TIMEOUT = {"default": 30, "debug": 60}
# Magic SysRq keys typed over QMP when a guest command times out: w (the
# blocked tasks, with stacks). Not l (every CPU's stack): its NMI backtrace
# handler runs long under TCG and the kernel reports "INFO: NMI handler ...
# took too long", a splat the guest did not have.
SYSRQ_DUMP_KEYS = ("w",)
SYSRQ_DUMP_WAIT = 10.0  # for the reports to reach the console (they are slow on TCG)
SYSRQ_QUIET = 1.0  # the dump is over when the console has been quiet this long
# With intel-iommu: translate (never passthrough, whatever the kernel's
# default), and invalidate the IOTLB at every unmap (strict) rather than in
# batches (lazy): a device DMA after dma_unmap then faults at once instead of
# hitting a stale IOTLB entry for up to the flush-queue timeout.
IOMMU_CMDLINE = {
    "off": "",
    "intel-iommu": "intel_iommu=on iommu.passthrough=0 iommu.strict=1",
}
KVM_PROBE_TIMEOUT = 8.0
MAX_CONSOLE_LINES = 200_000


class GuestError(RuntimeError):
    """An infrastructure problem: QEMU would not start, the guest hung or died."""

    def __init__(self, message: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(message)


class GuestDied(GuestError):
    pass


class GuestHung(GuestError):
    pass


class BootTimeout(GuestError):
    pass


# ---- accelerator -------------------------------------------------------------------

@dataclass(frozen=True)
class AccelChoice:
    name: str  # "kvm" | "tcg"
    reason: str

    @property
    def cpu(self) -> str:
        return "host" if self.name == "kvm" else "max"


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> tuple[bool, bytes]:
    """Read proc's stdout until ``needle`` appears, it exits, or ``timeout`` passes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if needle in buf:
                return True, buf
    return False, buf


def _stop(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class AccelProbe:
    """Chooses KVM or TCG; the KVM probe runs once per (qemu, kernel) per instance.

    ``kvm_device`` is the node that must open before QEMU is tried; tests name
    another file so the probe's QEMU path runs on hosts without KVM.
    """

    def __init__(self, timeout: float = KVM_PROBE_TIMEOUT,
                 kvm_device: Path = Path("/dev/kvm")) -> None:
        self.timeout = timeout
        self.kvm_device = kvm_device
        self._cache: dict[tuple[str, str], AccelChoice] = {}

    def choose(
        self, requested: str, qemu: Path, datadirs: Sequence[Path], kernel: Path
    ) -> AccelChoice:
        if requested == "tcg":
            return AccelChoice("tcg", "requested in the config")
        key = (str(qemu), str(kernel))
        if key not in self._cache:
            self._cache[key] = self._probe(qemu, datadirs, kernel)
        choice = self._cache[key]
        if requested == "kvm" and choice.name != "kvm":
            raise GuestError(f"accel: kvm was requested but KVM does not work: {choice.reason}")
        return choice

    def _probe(self, qemu: Path, datadirs: Sequence[Path], kernel: Path) -> AccelChoice:
        try:
            fd = os.open(self.kvm_device, os.O_RDWR | os.O_CLOEXEC)
            os.close(fd)
        except OSError as e:
            choice = AccelChoice("tcg", f"{self.kvm_device}: {e.strerror}")
            log.info("accelerator: TCG (%s)", choice.reason)
            return choice
        # /dev/kvm opens, but nested KVM may still abort or spin: boot the
        # kernel far enough to print its banner, within a few seconds.
        argv = [
            str(qemu), *[a for d in datadirs for a in ("-L", str(d))],
            "-accel", "kvm", "-M", "q35", "-cpu", "host", "-smp", "1", "-m", "256",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=serial panic=-1",
        ]
        log.debug("kvm probe: %s", shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, preexec_fn=pdeathsig_preexec(signal.SIGKILL),
            )
        except OSError as e:
            return AccelChoice("tcg", f"KVM probe could not start QEMU: {e}")
        try:
            ok, out = _read_until(proc, b"Linux version", self.timeout)
        finally:
            _stop(proc)
        if ok:
            choice = AccelChoice("kvm", "probe booted a kernel under KVM")
        else:
            text = out.decode(errors="replace").strip().splitlines()
            why = text[-1] if text else "no console output"
            choice = AccelChoice(
                "tcg", f"KVM probe printed no kernel banner within {self.timeout:.0f}s ({why})"
            )
        log.info("accelerator: %s (%s)", choice.name.upper(), choice.reason)
        return choice


# ---- QMP -----------------------------------------------------------------------------

EventCallback = Callable[[dict[str, Any]], None]


class QMP:
    """A synchronous face on qemu.qmp's QMPClient, with a timeout on every call.

    The client's event loop runs on its own thread, so QMP events (e.g.
    GUEST_PANICKED) reach ``on_event`` as QEMU sends them, while the caller
    is busy elsewhere; calls may come from any thread.
    """

    def __init__(self, name: str = "hmmlab", on_event: EventCallback | None = None) -> None:
        self._on_event = on_event
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._thread.start()
        self._pump: asyncio.Task[None] | None = None
        self._client: QMPClient = self._sync(self._make(name), 10.0)

    @staticmethod
    async def _make(name: str) -> QMPClient:
        return QMPClient(name)

    def _sync(self, coro: Any, timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self._loop)
        try:
            return fut.result(timeout + 5.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"QMP call did not return within {timeout:.0f}s") from None

    def connect(self, path: str, timeout: float) -> None:
        self._sync(self._client.connect(path), timeout)
        if self._on_event is not None:
            self._sync(self._start_pump(), 5.0)

    async def _start_pump(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._events())

    async def _events(self) -> None:
        assert self._on_event is not None
        async for msg in self._client.events:
            try:
                self._on_event(dict(msg))
            except Exception:  # a bad callback must not stop event delivery
                log.exception("QMP event callback")

    def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        return self._sync(self._client.execute(cmd, args), timeout)

    def close(self) -> None:
        try:
            if self._pump is not None:
                self._loop.call_soon_threadsafe(self._pump.cancel)
            self._sync(self._client.disconnect(), 5.0)
        except Exception as e:  # already gone with QEMU
            log.debug("qmp disconnect: %s", e)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()


# ---- console ---------------------------------------------------------------------------

class Console:
    """Drains QEMU's serial console (its stdout) on a thread.

    Everything goes to ``console.log`` as it arrives; complete lines go
    through the splat scanner. QEMU never blocks on a full pipe because this
    thread always reads.
    """

    def __init__(self, stream: IO[bytes], logfile: Path, scanner: SplatScanner,
                 ready_line: str = READY_LINE) -> None:
        self._stream = stream
        self._log = open(logfile, "wb")  # noqa: SIM115 - closed by the thread
        self._scanner = scanner
        self._ready_line = ready_line
        self._lock = threading.Lock()
        self._partial = b""
        self.lines: collections.deque[str] = collections.deque(maxlen=MAX_CONSOLE_LINES)
        self.line_count = 0
        self.ready = threading.Event()
        self.eof = threading.Event()
        self.last_output = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._stream.fileno()
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.last_output = time.monotonic()
                self._log.write(chunk)
                self._log.flush()
                self._feed(chunk)
        finally:
            with self._lock:
                if self._partial:
                    self._line(self._partial)
                    self._partial = b""
                self._scanner.flush()
            self._log.close()
            self.eof.set()

    def _feed(self, chunk: bytes) -> None:
        with self._lock:
            data = self._partial + chunk
            *whole, self._partial = data.split(b"\n")
            for raw in whole:
                self._line(raw)

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        self.lines.append(line)
        self.line_count += 1
        splat = self._scanner.feed(line)
        if splat is not None:
            log.warning("console: kernel splat: %s", splat.title)
        if self._ready_line in line:
            self.ready.set()

    def mark(self) -> int:
        """A position to pass to :meth:`since` later."""
        with self._lock:
            return self.line_count

    def since(self, mark: int) -> list[str]:
        with self._lock:
            n = self.line_count - mark
            return list(self.lines)[-n:] if n > 0 else []

    def tail(self, n: int = 40) -> str:
        with self._lock:
            return "\n".join(list(self.lines)[-n:])

    def splats(self) -> list[Splat]:
        """The kernel reports so far (one whose trace just ended included)."""
        with self._lock:
            return self._scanner.current()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# ---- the guest -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _qemu_opt(value: str) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return value.replace(",", ",,")


def concat_initrds(parts: Sequence[Path], dest: Path) -> Path:
    """Concatenate cpio archives (compressed or not), each 4-byte aligned."""
    with open(dest, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            pad = -out.tell() % 4
            out.write(b"\0" * pad)
    return dest


@dataclass(frozen=True)
class LaunchFiles:
    run_dir: Path
    qmp_sock: Path

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def qemu_stderr(self) -> Path:
        return self.run_dir / "qemu.stderr"

    @property
    def initrd(self) -> Path:
        return self.run_dir / "initrd.img"

    @property
    def qmp_events(self) -> Path:
        return self.run_dir / "qmp-events.jsonl"

    @property
    def hang_registers(self) -> Path:
        return self.run_dir / "hang-registers.txt"

    @property
    def blocked_tasks(self) -> Path:
        return self.run_dir / "blocked-tasks.txt"

    def dmatrace(self, index: int) -> Path:
        return self.run_dir / f"dmatrace-{index}.bin"

    def nic_dmatrace(self, index: int) -> Path:
        return self.run_dir / f"dmatrace-nic{index}.bin"

    def peer_sock(self, index: int) -> Path:
        """hmm-nic ``index``'s cable to a peer guest (``link: peer``), beside qmp.sock."""
        return self.qmp_sock.parent / f"peer{index}.sock"


def iommu_options(iommu: str, accel: AccelChoice) -> tuple[list[str], list[str]]:
    """(extra ``-accel`` options, the vIOMMU's ``-device`` argument(s)).

    intel-iommu with interrupt remapping (the guest's MSI-X goes through the
    IOMMU too, as on hardware); KVM needs a split irqchip for that, TCG's
    irqchip is in userspace anyway. No caching-mode (only VFIO needs it; it
    makes every map an exit), no device-iotlb (hmm-gpu has no ATS
    capability), the default 48-bit address width.
    """
    if iommu == "off":
        return [], []
    if iommu != "intel-iommu":  # config validation keeps this unreachable
        raise GuestError(f"unknown iommu {iommu}")
    accel_opts = ["kernel-irqchip=split"] if accel.name == "kvm" else []
    return accel_opts, ["-device", "intel-iommu,intremap=on"]


def kernel_cmdline(cfg: RunConfig) -> str:
    """Ours, the vIOMMU's, then the run file's ``cmdline`` (the last word wins)."""
    hung = f"hung_task_timeout_secs={HUNG_TASK_TIMEOUT.get(cfg.flavor, 60)}"
    return " ".join(a for a in (KERNEL_CMDLINE, hung, IOMMU_CMDLINE[cfg.iommu], cfg.cmdline)
                    if a)


def build_command_line(
    cfg: RunConfig,
    qemu: Path,
    datadirs: Sequence[Path],
    kernel_image: Path,
    files: LaunchFiles,
    accel: AccelChoice,
    ssh_port: int,
) -> list[str]:
    """QEMU's argv for a run (docs/architecture.md), paused at start (-S)."""
    argv = [str(qemu)]
    for d in datadirs:
        argv += ["-L", str(d)]
    accel_opts, viommu = iommu_options(cfg.iommu, accel)
    argv += [
        "-M", cfg.machine, "-accel", ",".join([accel.name, *accel_opts]), "-cpu", accel.cpu,
        "-smp", str(cfg.cpus), "-m", str(cfg.memory),
        "-nodefaults", "-display", "none", "-no-reboot", "-S",
        "-kernel", str(kernel_image), "-initrd", str(files.initrd),
        "-append", kernel_cmdline(cfg),
        # the vIOMMU must exist before the PCI devices it translates for
        *viommu,
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]
    # a cable between two hmm-nics: a unix socket, the lower id listening
    cables = {}
    for a, b in nic_links(cfg.devices):
        # beside qmp.sock, whose directory keeps sun_path short enough
        sock = files.qmp_sock.parent / f"l{a[3:]}-{b[3:]}.sock"
        cables[a] = f"socket,id=link-{a},path={_qemu_opt(str(sock))},server=on,wait=off"
        cables[b] = f"socket,id=link-{b},path={_qemu_opt(str(sock))}"
    gpu = nic = 0
    for dev in cfg.devices:
        if dev.type == "hmm-gpu":
            opts = [f"hmm-gpu,id=gpu{gpu}"]
            if dev.trace:  # without the chardev the device records nothing
                chardev = f"dmatrace{gpu}"
                argv += ["-chardev",
                         f"file,id={chardev},path={_qemu_opt(str(files.dmatrace(gpu)))}"]
                opts.append(f"dmatrace={chardev}")
            gpu += 1
        elif dev.type == "hmm-nic":
            opts = [f"hmm-nic,id=nic{nic}"]
            if dev.trace:
                chardev = f"nictrace{nic}"
                argv += ["-chardev",
                         f"file,id={chardev},path={_qemu_opt(str(files.nic_dmatrace(nic)))}"]
                opts.append(f"dmatrace={chardev}")
            # each port its own LID, so two NICs in one guest can be linked
            if "lid" not in dev.props:
                opts.append(f"lid={nic + 1}")
            if f"nic{nic}" in cables:
                argv += ["-chardev", cables[f"nic{nic}"]]
                opts.append(f"link=link-nic{nic}")
            elif dev.link == PEER:
                # to a second QEMU: this one listens, the peer guest's connects
                # (dev.peer_socket) when a scenario boots it
                peer = dev.peer_socket or str(files.peer_sock(nic))
                server = "" if dev.peer_socket else ",server=on,wait=off"
                argv += ["-chardev", f"socket,id=link-nic{nic},path={_qemu_opt(peer)}{server}"]
                opts.append(f"link=link-nic{nic}")
            nic += 1
        else:  # config validation keeps this unreachable
            raise GuestError(f"unknown device type {dev.type}")
        opts += [f"{k}={_qemu_opt(v)}" for k, v in dev.props.items()]
        argv += ["-device", ",".join(opts)]
    argv += [
        # a guest panic becomes a QMP GUEST_PANICKED event; QEMU itself does
        # nothing more, so the kernel finishes printing and ends the run
        # through panic=-1 and -no-reboot (the harness kills it if not)
        "-device", "pvpanic-pci", "-action", "panic=none",
        # entropy from the host: without it a guest kernel may wait long for
        # its CRNG under TCG (6.1: sshd blocked in getrandom() past the
        # harness's 60 s hang limit on a loaded machine)
        "-device", "virtio-rng-pci",
        "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
        "-qmp", f"unix:{_qemu_opt(str(files.qmp_sock))},server=on,wait=off",
        "-D", str(files.qemu_log), "-d", "guest_errors,unimp",
    ]
    return argv


@dataclass(frozen=True)
class GuestImage:
    """What the launcher needs from the build (a subset of build.Artifacts)."""

    qemu: Path
    qemu_datadirs: tuple[Path, ...]
    kernel_image: Path
    initrds: tuple[Path, ...]

    @classmethod
    def from_artifacts(cls, a: Any) -> GuestImage:
        return cls(Path(a.qemu), tuple(Path(d) for d in a.qemu_datadirs),
                   Path(a.kernel_image), tuple(Path(p) for p in a.initrds))


class Guest:
    """One QEMU process with its console, QMP and host-forwarded SSH port."""

    def __init__(self, cfg: RunConfig, image: GuestImage, run_dir: Path,
                 accel: AccelChoice) -> None:
        self.cfg = cfg
        self.image = image
        self.run_dir = Path(run_dir)
        self.accel = accel
        self.scanner = SplatScanner()
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: Console | None = None
        self.qmp: QMP | None = None
        self.ssh_port = 0
        self.argv: list[str] = []
        self._tmpdir: Path | None = None
        self._stderr: BinaryIO | None = None
        self.files = LaunchFiles(self.run_dir, self._qmp_path())
        self.gpu_ids = gpu_ids(cfg.devices)
        self.started_at = 0.0
        # QMP events as they come (also appended to qmp-events.jsonl)
        self.events: list[dict[str, Any]] = []
        self._events_lock = threading.Lock()
        self.panic_event: dict[str, Any] | None = None
        self.panicked_at: float | None = None  # time.monotonic() of GUEST_PANICKED
        # why the watchdog ended QEMU (a hang, or a panic QEMU did not end)
        self.killed_because: str | None = None
        self.watchdog: Watchdog | None = None

    def _qmp_path(self) -> Path:
        path = self.run_dir.resolve() / "qmp.sock"
        if len(str(path)) < 100:
            return path
        # sun_path holds 108 bytes: use a short private directory instead
        self._tmpdir = Path(tempfile.mkdtemp(prefix="hmmlab-"))
        return self._tmpdir / "qmp.sock"

    # -- lifecycle --

    def __enter__(self) -> Guest:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, attempts: int = 5) -> None:
        """Launch QEMU paused, connect QMP, then let the guest run."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for p in (self.image.qemu, self.image.kernel_image, *self.image.initrds):
            if not Path(p).exists():
                raise GuestError(f"missing build artifact {p}")
        concat_initrds(self.image.initrds, self.files.initrd)
        for attempt in range(1, attempts + 1):
            self.ssh_port = _free_port()
            if self._launch():
                break
            if attempt == attempts:
                raise GuestError(f"QEMU could not forward a host port after {attempts} tries")
            log.info("host port %d was taken; retrying with another", self.ssh_port)
        assert self.qmp is not None
        self.qmp.execute("cont")
        self.started_at = time.monotonic()
        log.info("guest started (%s, %s, %d MiB, %d CPUs), ssh on 127.0.0.1:%d",
                 self.accel.name.upper(), self.cfg.machine, self.cfg.memory, self.cfg.cpus,
                 self.ssh_port)

    def _launch(self) -> bool:
        """One QEMU start; False if only the host port forward failed."""
        self.argv = build_command_line(
            self.cfg, self.image.qemu, self.image.qemu_datadirs, self.image.kernel_image,
            self.files, self.accel, self.ssh_port,
        )
        (self.run_dir / "qemu.cmdline").write_text(shlex.join(self.argv) + "\n")
        log.debug("qemu: %s", shlex.join(self.argv))
        self.files.qmp_sock.unlink(missing_ok=True)
        self._stderr = open(self.files.qemu_stderr, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            cwd=self.run_dir,
            # QEMU dies with the harness, even a SIGKILLed one (nothing else would end it;
            # guests are started on the main thread, which lives as long as the run)
            preexec_fn=pdeathsig_preexec(signal.SIGKILL),
        )
        assert self.proc.stdout is not None
        self.console = Console(self.proc.stdout, self.files.console, self.scanner)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.console.join(5)
                err = self.stderr_tail()
                self._reap()
                if HOSTFWD_ERROR in err:
                    return False
                raise GuestDied(f"QEMU exited at start with status {self.proc.returncode}: "
                                f"{err.strip()[-2000:]}")
            if self.files.qmp_sock.exists():
                qmp = QMP(on_event=self._on_event)
                try:
                    qmp.connect(str(self.files.qmp_sock), timeout=5.0)
                except Exception as e:  # not listening yet, or QEMU went away
                    log.debug("qmp connect: %s", e)
                    qmp.close()
                else:
                    self.qmp = qmp
                    return True
            time.sleep(0.1)
        raise GuestError("QEMU did not open its QMP socket within 30s",
                         self.stderr_tail())

    def _on_event(self, msg: dict[str, Any]) -> None:
        """A QMP event (on the QMP thread): keep it, log it, note a panic."""
        with self._events_lock:
            self.events.append(msg)
            try:
                with open(self.files.qmp_events, "a") as f:
                    f.write(json.dumps(msg, sort_keys=True, default=str) + "\n")
            except OSError as e:
                log.debug("cannot write %s: %s", self.files.qmp_events, e)
        name = msg.get("event")
        log.debug("qmp event %s", name)
        if name == "GUEST_PANICKED" and self.panicked_at is None:
            self.panic_event = msg
            self.panicked_at = time.monotonic()
            log.warning("the guest kernel panicked (QMP GUEST_PANICKED: %s)",
                        json.dumps(msg.get("data", {}), default=str))

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            return self.files.qemu_stderr.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def exit_reason(self) -> str | None:
        """Why the guest is gone (or None while it runs and works).

        A guest that panicked is gone even while QEMU still runs; it gets a
        moment to end itself, so the reason usually says how QEMU exited.
        """
        if self.proc is None:
            return "QEMU is not running"
        if self.killed_because:
            return f"QEMU was killed: {self.killed_because}"
        rc = self.proc.poll()
        if rc is None and self.panicked_at is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2.0)
            rc = self.proc.poll()
        splats = self.console.splats() if self.console else []
        title = f": {splats[-1].title}" if splats else ""
        if self.panicked_at is not None:
            if rc is None:
                return f"the guest kernel panicked (pvpanic GUEST_PANICKED){title}"
            return f"QEMU exited (status {rc}) after a kernel panic (pvpanic GUEST_PANICKED){title}"
        if rc is None:
            return None
        if splats:
            return f"QEMU exited (status {rc}) after a kernel splat{title}"
        return f"QEMU exited with status {rc}"

    def wait_ready(self) -> float:
        """Wait for the console's ready line; returns seconds since start.

        Raises GuestDied, GuestHung (no console output for
        timeouts.no_output) or BootTimeout (no ready line within timeouts.boot).
        Once the guest is ready, the watchdog (:meth:`watch`) looks after it.
        """
        assert self.console is not None and self.proc is not None
        t = self.cfg.timeouts
        deadline = self.started_at + t.boot
        while not self.console.ready.is_set():
            now = time.monotonic()
            if self.panicked_at is not None and now - self.panicked_at > PANIC_GRACE:
                self.kill()  # panicked but did not end itself
            if self.proc.poll() is not None:
                self.console.join(5)
                raise GuestDied(
                    f"{self.exit_reason()} before the guest was ready",
                    self.console.tail() + "\n" + self.stderr_tail(),
                )
            if now - self.console.last_output > t.no_output:
                self.dump_hang_state()
                self.kill()
                raise GuestHung(
                    f"no console output for {t.no_output:.0f}s while booting (guest hung)",
                    self.console.tail(),
                )
            if now > deadline:
                self.dump_hang_state()
                self.kill()
                raise BootTimeout(
                    f'no "{READY_LINE}" on the console within {t.boot:.0f}s',
                    self.console.tail(),
                )
            self.console.ready.wait(0.2)
        took = time.monotonic() - self.started_at
        log.info("guest ready in %.1fs", took)
        self.watch()
        return took

    def watch(self) -> None:
        """Start the watchdog of a booted guest (idempotent; see harness.guest.watchdog)."""
        if self.watchdog is not None or self.console is None:
            return
        console = self.console
        self.watchdog = Watchdog(
            self.cfg.timeouts.no_output,
            last_output=lambda: console.last_output,
            probe=lambda timeout: ssh_answers(self.ssh_port, timeout),
            alive=lambda: self.proc is not None and self.proc.poll() is None,
            panicked_at=lambda: self.panicked_at,
            on_hang=self._end_hung,
            on_panic_timeout=self._end_hung,
        )
        self.watchdog.start()

    def _end_hung(self, reason: str) -> None:
        """The watchdog's verdict: save the vCPU state (and the kernel's, if it still
        answers sysrq), then end QEMU."""
        log.warning("watchdog: %s; dumping vCPU registers and killing QEMU", reason)
        if self.panicked_at is None:
            self.dump_blocked_tasks(f"watchdog: {reason}")
        saved = self.dump_hang_state()
        self.killed_because = reason + (
            f" (vCPU registers in {self.files.hang_registers.name})" if saved else "")
        self.kill()

    def dump_hang_state(self) -> bool:
        """Save every vCPU's registers (syzkaller does the same) before a kill."""
        if self.qmp is None or self.proc is None or self.proc.poll() is not None:
            return False
        try:
            regs = self.qmp.execute(
                "human-monitor-command", {"command-line": "info registers -a"}, timeout=10
            )
            self.files.hang_registers.write_text(str(regs))
            return True
        except Exception as e:
            log.warning("could not dump the vCPU registers: %s", e)
            return False

    def dump_blocked_tasks(self, why: str, wait: float = SYSRQ_DUMP_WAIT) -> str:
        """Have the kernel print its blocked tasks with their stacks (SysRq w, typed on
        the guest's keyboard over QMP ``send-key``: that works with user space stuck)
        and return those console lines; they are also appended to blocked-tasks.txt.
        "" when QEMU is gone or the kernel printed nothing within ``wait``."""
        if self.qmp is None or self.console is None or self.proc is None or (
                self.proc.poll() is not None):
            return ""
        log.info("sysrq-%s: %s", "".join(SYSRQ_DUMP_KEYS), why)
        mark = self.console.mark()
        for key in SYSRQ_DUMP_KEYS:
            try:
                self.qmp.execute("send-key", {"keys": [
                    {"type": "qcode", "data": k} for k in ("alt", "sysrq", key)]}, timeout=5)
            except Exception as e:
                log.warning("could not type sysrq-%s over QMP: %s", key, e)
                return ""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            started = sum("sysrq: " in line for line in self.console.since(mark))
            quiet = time.monotonic() - self.console.last_output >= SYSRQ_QUIET
            if started >= len(SYSRQ_DUMP_KEYS) and quiet:
                break
            time.sleep(0.2)
        lines = self.console.since(mark)
        if not any("sysrq: " in line for line in lines):
            log.warning("sysrq: the guest kernel printed nothing within %.0fs", wait)
            return ""
        text = "\n".join(lines)
        with contextlib.suppress(OSError), open(self.files.blocked_tasks, "a") as f:
            f.write(f"=== {why}\n{text}\n")
        return text

    # -- SSH, QMP --

    def ssh(self, key_file: Path, host_pubkey: str, timeout: float = 60.0) -> SSHClient:
        from harness.guest.ssh import SSHClient

        client = SSHClient("127.0.0.1", self.ssh_port, key_file, host_pubkey)
        # a command that times out leaves the kernel's view of it (see harness.ssh)
        client.on_timeout = lambda cmd: self.dump_blocked_tasks(f"`{cmd}` timed out")
        client.connect(time.monotonic() + timeout, abort=self.exit_reason)
        return client

    def qom_get(self, dev_id: str, prop: str, timeout: float = 10.0) -> Any:
        """One property of device ``dev_id`` (``gpu0``, ``nic1``) over QMP ``qom-get``."""
        if self.qmp is None:
            raise GuestError("QMP is not connected")
        return self.qmp.execute("qom-get", {"path": f"/machine/peripheral/{dev_id}",
                                            "property": prop}, timeout=timeout)

    def counters(self) -> dict[str, dict[str, int | str]]:
        """Each hmm-gpu's counters over QMP ``qom-get`` ({"gpu0": {...}})."""
        out: dict[str, dict[str, int | str]] = {}
        if self.qmp is None:
            return out
        failed: str | None = None  # after one failure, QMP is not asked again
        for dev_id in self.gpu_ids:
            path = f"/machine/peripheral/{dev_id}"
            vals: dict[str, int | str] = {}
            for prop in DEVICE_COUNTERS:
                if failed is not None:
                    vals[prop] = f"error: not read after an earlier failure ({failed})"
                    continue
                try:
                    vals[prop] = self.qmp.execute(
                        "qom-get", {"path": path, "property": prop}, timeout=10
                    )
                except Exception as e:
                    failed = f"{type(e).__name__}: {e}"
                    vals[prop] = f"error: {failed}"
            out[dev_id] = vals
        return out

    # -- shutdown --

    def shutdown(self, ssh: SSHClient | None = None, timeout: float = 30.0) -> None:
        """Power the guest off; escalate to QMP quit, SIGTERM, SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if ssh is not None:
            try:
                ssh.run("poweroff >/dev/null 2>&1 &", timeout=10)
            except Exception as e:
                log.debug("poweroff over ssh: %s", e)
            if self._wait_exit(timeout):
                log.info("guest powered off")
                return
            log.info("guest did not power off within %.0fs", timeout)
        if self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=5)
            except Exception as e:
                log.debug("qmp quit: %s", e)
            if self._wait_exit(10):
                return
        self.kill()

    def _wait_exit(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        log.info("killing QEMU (pid %d)", proc.pid)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
            if self._wait_exit(wait):
                return

    def _reap(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.console is not None:
            self.console.join(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def close(self) -> None:
        """End QEMU whatever state it is in; idempotent."""
        try:
            if self.watchdog is not None:
                self.watchdog.stop()
            if self.panicked_at is not None and self.proc is not None:
                # let the kernel finish its report and end itself first
                left = PANIC_GRACE - (time.monotonic() - self.panicked_at)
                if left > 0 and self.proc.poll() is None:
                    self._wait_exit(left)
                if self.proc.poll() is None:  # what the watchdog would have done
                    self._end_hung(panic_not_ended(PANIC_GRACE))
            self.kill()
        finally:
            self._reap()
            self.files.qmp_sock.unlink(missing_ok=True)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None


def qemu_version(qemu: Path, timeout: float = 10.0) -> str:
    try:
        cp = subprocess.run([str(qemu), "-version"], capture_output=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    first = cp.stdout.decode(errors="replace").splitlines()
    m = re.search(r"version (\S+)", first[0]) if first else None
    return m.group(1) if m else (first[0] if first else "unknown")


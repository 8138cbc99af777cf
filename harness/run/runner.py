"""Runs one configuration: boot a guest, run its scenarios, collect results.

Entries it adds itself: ``boot``, ``ssh.connect`` (only when it fails),
``console.splat`` (FAIL with the first report's title when the kernel
printed a BUG/WARNING/Oops/panic at any point, else PASS), ``guest.panic``
(FAIL, when pvpanic reported a kernel panic), ``guest.hang`` (the watchdog
found the guest hung and killed it: FAIL) and, with a vIOMMU, ``iommu.enabled`` and
``iommu.dmar-faults`` (see harness.checks.iommu).

The decisions (which status an entry gets, which scenarios do not run) are
pure functions of what was observed: :func:`boot_failure`,
:func:`splat_result`, :func:`panic_result`, :func:`hang_result`,
:func:`needs_probe` and :func:`not_run_reason`.

Every scenario runs, whatever the ones before it found, as long as the guest
is usable: QEMU still runs and, after a scenario that FAILed or ERRORed, the
guest still answers a trivial command over SSH within
:data:`PROBE_TIMEOUT`. Once it is not, the scenarios left are MISS "not run:
guest unusable: <why>": they should have run and could not, and a run that
lost them did not give its full coverage (exit status 2), which a SKIP
(this configuration cannot run it) would hide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import harness
from harness import scenarios as scenario_registry
from harness.checks import iommu
from harness.checks.splat import Splat
from harness.core.config import RunConfig
from harness.core.files import disk_bytes
from harness.core.results import Event, Results, Status, TestResult, excerpt, status_for
from harness.guest import ftrace as guest_ftrace
from harness.guest.ssh import SSHClient, SSHError, SSHTimeout
from harness.guest.vm import AccelProbe, Guest, GuestDied, GuestError, GuestImage, qemu_version
from harness.report import timeline
from harness.scenarios import Scenario, Session
from harness.scenarios.common import cut_off_status

if TYPE_CHECKING:
    from harness.build import Artifacts

log = logging.getLogger(__name__)

SSH_CONNECT_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0
QMP_EXIT_GRACE = 5.0
# A trivial command a usable guest answers well within this, even under TCG on a
# loaded host (it takes well under a second there).
PROBE_TIMEOUT = 20.0
PROBE_CMD = "true"


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """During the block, hmmlab's DEBUG messages (and others' INFO) also go to ``path``."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    # paramiko and qemu.qmp log every packet at DEBUG: keep their INFO and up.
    handler.addFilter(lambda r: r.levelno >= logging.INFO or r.name.startswith("harness"))
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
        handler.close()


# ---- decisions (pure) ----------------------------------------------------------------

# QEMU ending on one of these crashed (an abort or a bad access in a device model,
# hmm-gpu's or hmm-nic's included): the product failed. The harness itself only
# ever sends SIGTERM and SIGKILL.
CRASH_SIGNALS = frozenset({signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL,
                           signal.SIGFPE, signal.SIGTRAP})


def qemu_crashed(returncode: int | None) -> bool:
    """Whether QEMU's exit status says it crashed (killed by a crash signal)."""
    return returncode is not None and returncode < 0 and -returncode in CRASH_SIGNALS


def boot_failure(error: GuestError, splats: Sequence[Splat], duration: float,
                 qemu_status: int | None = None) -> TestResult:
    """The ``boot`` entry when the guest did not come up.

    A guest that never came up with a splat on its console (a panic, an
    oops, a lockup while booting), or whose QEMU crashed (``qemu_status`` a
    crash signal: an abort inside a device model), is a test failure;
    otherwise (QEMU would not start or exited with an error, a silent hang, a
    boot timeout: a host too slow or the harness) an infrastructure error.
    """
    if isinstance(error, GuestDied) and qemu_crashed(qemu_status):
        status = status_for(Event.GUEST_DIED)
    else:
        status = status_for(Event.SPLAT if splats else Event.NEVER_CAME_UP)
    if isinstance(error, GuestDied):
        files = ["console.log", "qemu.stderr"]
    else:
        files = ["console.log", "qemu.stderr", "qemu.log"]
    return TestResult("boot", status, duration, f"{error}\n{error.detail}", files)


def splat_result(splats: Sequence[Splat]) -> TestResult:
    """The ``console.splat`` entry: FAIL titled after the first report, else PASS."""
    if not splats:
        return TestResult("console.splat", Status.PASS, None, "no kernel splat on the console",
                          ["console.log"])
    first = splats[0]
    text = "\n\n".join(f"{s.title}\n{s.report}" for s in splats)
    return TestResult(
        "console.splat", status_for(Event.SPLAT), None, excerpt(text), ["console.log"],
        {"title": first.title, "splats": [s.to_dict() for s in splats]},
    )


def panic_result(event: Mapping[str, Any], splats: Sequence[Splat]) -> TestResult:
    """``guest.panic``: FAIL, from pvpanic's GUEST_PANICKED event and the
    console's panic report (when it got that far)."""
    panics = [s for s in splats if s.title.startswith("Kernel panic")]
    title = panics[-1] if panics else (splats[-1] if splats else None)
    text = f"QMP GUEST_PANICKED {json.dumps(dict(event.get('data') or {}), sort_keys=True)}"
    if title is not None:
        text += f"\n{title.title}\n{title.report}"
    return TestResult("guest.panic", status_for(Event.GUEST_DIED), None, text,
                      ["console.log", "qmp-events.jsonl"],
                      {"title": title.title if title is not None else "kernel panic"})


def hang_result(reason: str, splats: Sequence[Splat], console_tail: str,
                files: Sequence[str]) -> TestResult:
    """``guest.hang``: the watchdog killed a guest that stopped answering: FAIL,
    like the command it cut off (README "Statuses"), with the kernel's own
    diagnosis (a soft lockup, hung task, RCU stall...) when it gave one.
    """
    status = status_for(Event.GUEST_HUNG)
    text = reason
    if splats:
        text += f"\nthe kernel reported first: {splats[0].title}"
    text += f"\nconsole before the kill:\n{console_tail}"
    return TestResult("guest.hang", status, None, text, list(files))


def needs_probe(entries: Sequence[TestResult]) -> bool:
    """Whether to check the guest still answers after a scenario that added ``entries``:
    one of them FAILed or ERRORed (it may have left the guest broken)."""
    return any(t.status in (Status.FAIL, Status.ERROR) for t in entries)


def not_run_reason(name: str, guest_gone: str | None, unanswered: str | None) -> str | None:
    """Why the scenarios after ``name`` cannot run (they are MISS), or None to go on.

    ``guest_gone``: why QEMU is gone (:meth:`harness.guest.vm.Guest.exit_reason`).
    ``unanswered``: why the guest did not answer the probe after ``name``
    failed (None: it answered, or was not probed). Anything else, a failure
    included, lets the next scenario run.
    """
    if guest_gone:
        return f"not run: guest unusable: {guest_gone}"
    if unanswered:
        return f"not run: guest unusable after {name}: {unanswered}"
    return None


def counters_unread(counters: Mapping[str, Mapping[str, int | str]]) -> bool:
    """Whether any device counter could not be read (qom-get gave an error text)."""
    return any(isinstance(v, str) for dev in counters.values() for v in dev.values())


# ---- the run ---------------------------------------------------------------------------

@dataclass
class Runner:
    cfg: RunConfig
    artifacts: Artifacts
    results: Results
    probe: AccelProbe | None = None
    # Scenario objects to run instead of creating cfg.scenarios by name (for
    # programmatic use, e.g. a Smoke with another workload command).
    scenarios: Sequence[Scenario] | None = None
    # what an interrupt cuts short (see _interrupted)
    _running: str | None = field(default=None, init=False)
    _finished: set[str] = field(default_factory=set, init=False)
    # for the timeline: what the harness did (host monotonic ns), and a (wall,
    # monotonic) pair from just after QEMU started, to place QMP's event stamps
    _spans: list[timeline.Span] = field(default_factory=list, init=False)
    _clock_pair: tuple[int, int] | None = field(default=None, init=False)
    _ftrace: guest_ftrace.Collector | None = field(default=None, init=False)

    def execute(self) -> Results:
        """Run everything and write results.json; never raises for guest problems."""
        r = self.results
        wall = time.monotonic()
        r.config = self.cfg.to_dict()
        if self.scenarios is not None:
            r.config["scenarios"] = [sc.name for sc in self.scenarios]
        r.environment.update(self._host_environment())
        try:
            self._boot_and_run()
        except Exception as e:  # a harness bug: report it as an infrastructure error
            log.exception("internal error")
            r.add_status("harness", status_for(Event.HARNESS_ERROR),
                         f"internal error: {e}\n{traceback.format_exc()}")
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the guest has ended by now
            self._interrupted(str(e) or "Ctrl-C")
            raise
        finally:
            # traces, logs: what the run leaves (a passed run's initrd is removed below)
            r.environment["disk_bytes"] = disk_bytes(
                r.dir, skip=("initrd.img",) if r.exit_code() == 0 else ())
            self._time_cell(time.monotonic() - wall)
            r.write()
        if r.exit_code() == 0:
            (r.dir / "initrd.img").unlink(missing_ok=True)  # rebuilt from the cache at will
        return r

    def _interrupted(self, why: str) -> None:
        """MISS for what the interrupt cut short: the scenario running, the ones after."""
        r = self.results
        log.warning("interrupted (%s): the scenarios not finished are MISS", why)
        r.environment["interrupted"] = why
        if not r.has("boot"):
            r.add_status("boot", Status.MISS, f"interrupted ({why}) before the guest was up")
        plan = (list(self.scenarios) if self.scenarios is not None else list(self.cfg.scenarios))
        for item in plan:
            name = item if isinstance(item, str) else item.name
            if name in self._finished:
                continue
            if name == self._running:
                r.add_status(name, Status.MISS, f"interrupted ({why}) while it ran")
            else:
                r.add_status(name, Status.MISS, f"not run: interrupted ({why})")

    def _host_environment(self) -> dict[str, Any]:
        a = self.artifacts
        return {
            "hmmlab": harness.__version__,
            "host": platform.node(),
            "python": sys.version.split()[0],
            "qemu": qemu_version(a.qemu),
            "qemu_binary": str(a.qemu),
            "kernel": self.cfg.kernel,
            "kernel_version": getattr(a, "kernel_version", ""),
            "kernel_image": str(a.kernel_image),
            "initrds": [str(p) for p in a.initrds],
            **getattr(a, "build_info", {}),  # exact versions and keys of what was built
        }

    def _boot_and_run(self) -> None:
        r, cfg = self.results, self.cfg
        probe = self.probe or AccelProbe()
        image = GuestImage.from_artifacts(self.artifacts)
        t0 = time.monotonic()
        try:
            accel = probe.choose(cfg.accel, image.qemu, image.qemu_datadirs, image.kernel_image)
        except GuestError as e:
            r.add_status("boot", status_for(Event.QEMU_START_FAILED), str(e))
            return
        r.environment["accel"] = accel.name
        r.environment["accel_reason"] = accel.reason

        ran: list[Scenario] = []
        guest = Guest(cfg, image, r.dir, accel)
        session: Session | None = None
        ssh: SSHClient | None = None
        try:
            try:
                if not self._boot(guest, t0):
                    return
                try:
                    ssh = guest.ssh(self.artifacts.ssh_key, self.artifacts.ssh_host_pubkey,
                                    SSH_CONNECT_TIMEOUT)
                except SSHError as e:
                    # SSH's failure, unless the guest died (or splatted) meanwhile
                    splat = bool(guest.console and guest.console.splats())
                    r.add_status("ssh.connect", cut_off_status(e, guest.exit_reason(), splat),
                                 str(e))
                    return
                r.environment["kernel_release"] = self._uname(ssh, guest)
                if cfg.iommu != "off":
                    self._iommu_enabled(ssh, guest)
                session = Session(cfg, r.dir, guest, ssh, r, artifacts=self.artifacts)
                if cfg.ftrace.enabled:
                    self._ftrace_setup(session)
                ran = self._scenarios(session)
                ssh = session.ssh  # the probe may have reconnected
                gone = guest.exit_reason()
                counters = {} if gone else guest.counters()
                if not gone and counters_unread(counters):
                    # QMP broke off: QEMU may be on its way out after a panic.
                    gone = self._exited(guest, QMP_EXIT_GRACE)
                if gone:  # a panic ended QEMU: nothing left to read or shut down
                    session.state["guest_gone"] = gone
                else:
                    r.devices.update(counters)
                    # a guest that stopped answering would not power off either
                    usable = not session.state.get("guest_unanswered")
                    guest.shutdown(ssh if usable else None, SHUTDOWN_TIMEOUT)
            finally:
                if ssh is not None:
                    ssh.close()
                guest.close()  # whatever happened, no QEMU outlives the run
        except GuestError as e:
            r.add_status("vm", status_for(Event.QEMU_START_FAILED), f"{e}\n{e.detail}".strip())
        finally:
            r.environment["qemu_exit_status"] = guest.returncode
            self._splats(guest)
            self._guest_end(guest)
            if cfg.iommu != "off":
                self._dmar_faults(guest)
            r.timings["guest_s"] = round(time.monotonic() - t0, 3)
        if self._ftrace is not None:
            r.environment["ftrace"] = self._ftrace.summary()
        checks: dict[str, float] = {}
        if session is not None:
            for sc in ran:
                t1 = time.monotonic()
                self._guarded(f"{sc.name}.finish", lambda sc=sc: sc.finish(session))
                checks[sc.name] = round(time.monotonic() - t1, 3)
        r.timings["checks_s"] = round(sum(checks.values()), 3)
        r.timings["checks_by"] = checks
        if cfg.timeline.enabled and self._clock_pair is not None:  # QEMU ran: traces are whole
            t1 = time.monotonic()
            self._guarded("timeline", self._timeline)
            r.timings["timeline_s"] = round(time.monotonic() - t1, 3)

    def _time_cell(self, wall: float) -> None:
        """The cell's wall time next to what its parts took, logged and in results.json."""
        t = self.results.timings
        t["wall_s"] = round(wall, 3)
        log.info("cell %.1fs: guest %.1fs, post-run checks %.1fs (%.0f%%), timeline %.1fs "
                 "(%.0f%%)", wall, t.get("guest_s", 0.0), t.get("checks_s", 0.0),
                 100 * t.get("checks_s", 0.0) / wall if wall else 0,
                 t.get("timeline_s", 0.0), 100 * t.get("timeline_s", 0.0) / wall if wall else 0)

    def _timeline(self) -> None:
        r = self.results
        assert self._clock_pair is not None
        clock = timeline.VirtualClock.from_qmp_events(r.dir / "qmp-events.jsonl",
                                                      *self._clock_pair)
        guest = None
        if self._ftrace is not None and self._ftrace.path.exists():
            guest = timeline.GuestTrace(self._ftrace.path, tuple(self._ftrace.enabled))
        stats = timeline.write(r.dir, self._spans, clock, dmas=self.cfg.timeline.dmas,
                               guest=guest)
        r.environment["timeline"] = stats.to_dict()
        log.info("timeline: %s, %.1f MB in %.1fs", stats.path, stats.bytes / 1e6, stats.seconds)

    def _ftrace_setup(self, session: Session) -> None:
        """The guest's ftrace (run file ``ftrace:``); a failure is the harness's ERROR
        ``ftrace.setup`` and the scenarios run untraced."""
        def run(cmd: str, timeout: float) -> tuple[int, str, str]:
            rc, out, err = session.ssh.run(cmd, timeout, abort=session.guest.exit_reason)
            return rc, out, err

        collector = guest_ftrace.Collector(self.cfg.ftrace, self.results.dir, run)
        t0 = time.monotonic()
        try:
            collector.setup()
        except (guest_ftrace.FtraceError, SSHError) as e:
            self.results.add(TestResult("ftrace.setup", status_for(Event.HARNESS_ERROR),
                                        time.monotonic() - t0, f"guest ftrace: {e}"))
            self.results.environment["ftrace"] = {"error": str(e)}
            return
        self._ftrace = collector
        session.ftrace = collector

    def _boot(self, guest: Guest, t0: float) -> bool:
        r = self.results
        start = time.monotonic_ns()
        try:
            guest.start()
            self._clock_pair = (time.time_ns(), time.monotonic_ns())
            took = guest.wait_ready()
        except GuestError as e:
            splats = guest.console.splats() if guest.console else []
            r.add(boot_failure(e, splats, time.monotonic() - t0, guest.returncode))
            return False
        r.environment["boot_seconds"] = round(took, 2)
        self._spans.append(timeline.Span("boot", start, time.monotonic_ns(), "run"))
        r.add(TestResult("boot", Status.PASS, time.monotonic() - t0,
                         guest.console.tail(5) if guest.console else "", ["console.log"]))
        return True

    @staticmethod
    def _exited(guest: Guest, timeout: float) -> str | None:
        """Wait up to ``timeout`` for QEMU to exit; why it is gone, or None."""
        if guest.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                guest.proc.wait(timeout)
        return guest.exit_reason()

    def _uname(self, ssh: SSHClient, guest: Guest) -> str:
        try:
            rc, out, _ = ssh.run("uname -r", 30, abort=guest.exit_reason)
            return out.strip() if rc == 0 else ""
        except SSHError:
            return ""

    def _iommu_enabled(self, ssh: SSHClient, guest: Guest) -> None:
        t0 = time.monotonic()
        try:
            _rc, out, err = ssh.run(iommu.GUEST_LISTING_CMD, 60, abort=guest.exit_reason)
        except SSHError as e:
            self.results.add(TestResult("iommu.enabled", cut_off_status(e, guest.exit_reason(),
                                                                        False),
                                        time.monotonic() - t0,
                                        f"could not list the guest's IOMMU groups: {e}"))
            return
        (self.results.dir / "iommu-groups.txt").write_text(out + err)
        entry = iommu.enabled_result(out, time.monotonic() - t0)
        entry.output_files.append("iommu-groups.txt")
        self.results.add(entry)

    def _dmar_faults(self, guest: Guest) -> None:
        files = guest.files
        try:
            console = files.console.read_text(errors="replace").splitlines()
        except OSError:
            console = []
        try:
            stderr = files.qemu_stderr.read_text(errors="replace").splitlines()
        except OSError:
            stderr = []
        self.results.add(iommu.faults_result(iommu.dmar_fault_lines(console),
                                             iommu.vtd_error_lines(stderr)))

    def _guest_end(self, guest: Guest) -> None:
        """``guest.panic`` and ``guest.hang`` from what the guest object saw."""
        splats = guest.console.splats() if guest.console else []
        if guest.panic_event is not None:
            entry = panic_result(guest.panic_event, splats)
            if guest.killed_because is not None:  # it panicked, then would not end
                entry.log_excerpt = f"{entry.log_excerpt}\nQEMU was killed: {guest.killed_because}"
            self.results.add(entry)
        elif guest.killed_because is not None:
            files = ["console.log", "qemu.log", "qmp-events.jsonl"]
            if guest.files.hang_registers.exists():
                files.insert(1, guest.files.hang_registers.name)
            tail = guest.console.tail(20) if guest.console else ""
            self.results.add(hang_result(guest.killed_because, splats, tail, files))

    def _scenarios(self, session: Session) -> list[Scenario]:
        r = self.results
        ran: list[Scenario] = []
        plan: list[str | Scenario] = (
            list(self.scenarios) if self.scenarios is not None else list(self.cfg.scenarios))
        for i, item in enumerate(plan):
            sc = scenario_registry.create(item) if isinstance(item, str) else item
            name = sc.name
            before = len(r.tests)
            ran.append(sc)
            log.info("scenario %s", name)
            self._running = name
            if self._ftrace is not None:
                self._ftrace.begin(name)
            start = time.monotonic_ns()
            self._guarded(name, lambda sc=sc: sc.run(session), session.guest)
            self._spans.append(timeline.Span(name, start, time.monotonic_ns(), args={
                t.path: str(t.status) for t in r.tests[before:]}))
            if self._ftrace is not None:
                if gone_now := session.guest.exit_reason():
                    self._ftrace.unread(name, gone_now)
                else:
                    self._ftrace.end(name)
            self._running = None
            self._finished.add(name)
            if i + 1 == len(plan):
                break
            gone = session.guest.exit_reason()
            unanswered = None
            if not gone and needs_probe(r.tests[before:]):
                unanswered = self._probe(session)
                gone = session.guest.exit_reason()  # it may have died meanwhile
            why = not_run_reason(name, gone, unanswered)
            if why:
                session.state["guest_unanswered"] = unanswered
                for rest in plan[i + 1:]:
                    r.add_status(rest if isinstance(rest, str) else rest.name,
                                 status_for(Event.GUEST_UNUSABLE), why)
                break
        return ran

    def _probe(self, session: Session) -> str | None:
        """Does the guest still answer? None if it does, else why not.

        ``PROBE_CMD`` over the session's connection, within PROBE_TIMEOUT
        (opening the channel included). A connection that is gone (sshd
        killed under a test) is not yet a dead guest: reconnect once and ask
        again, and carry on with the new connection.
        """
        guest = session.guest
        t0 = time.monotonic()
        try:
            rc, _out, err = session.ssh.run(PROBE_CMD, PROBE_TIMEOUT, abort=guest.exit_reason)
            if rc == 0:
                return None
            return f"`{PROBE_CMD}` exited with status {rc} over SSH: {err.strip()[:200]}"
        except SSHError as e:
            if isinstance(e, SSHTimeout) or session.ssh.connected:
                # the connection is up: the guest did not answer over it
                return f"no answer over SSH: {e}"
            first = str(e)
        left = max(5.0, PROBE_TIMEOUT - (time.monotonic() - t0))
        log.info("guest probe: %s; connecting again", first)
        try:
            ssh = guest.ssh(self.artifacts.ssh_key, self.artifacts.ssh_host_pubkey, left)
        except SSHError as e:
            return f"{first}; connecting again: {e}"
        session.ssh.close()
        session.ssh = ssh
        try:
            rc, _out, err = ssh.run(PROBE_CMD, PROBE_TIMEOUT, abort=guest.exit_reason)
        except SSHError as e:
            return f"{first}; after connecting again: {e}"
        return None if rc == 0 else f"`{PROBE_CMD}` exited with status {rc}: {err.strip()[:200]}"

    def _guarded(self, path: str, fn: Any, guest: Guest | None = None) -> None:
        """Run a scenario step; an exception becomes an entry: a guest command cut
        off while ``guest`` ran (a scenario's run) as in ``cut_off_status``, else
        ERROR."""
        t0 = time.monotonic()
        try:
            fn()
        except (GuestError, SSHError) as e:
            if guest is not None:
                splat = bool(guest.console and guest.console.splats())
                status = cut_off_status(e, guest.exit_reason(), splat)
            else:  # after the guest: nothing in it was cut off
                status = status_for(Event.HARNESS_ERROR)
            self.results.add(TestResult(path, status, time.monotonic() - t0, str(e)))
        except Exception as e:
            log.exception("%s raised", path)
            self.results.add(TestResult(path, status_for(Event.HARNESS_ERROR),
                                        time.monotonic() - t0,
                                        f"internal error: {e}\n{traceback.format_exc()}"))

    def _splats(self, guest: Guest) -> None:
        if guest.console is not None:
            self.results.add(splat_result(guest.console.splats()))


def run(
    cfg: RunConfig,
    results_dir: Path,
    *,
    artifacts: Artifacts | None = None,
    build: Callable[[Path], Artifacts] | None = None,
    probe: AccelProbe | None = None,
    scenarios: Sequence[Scenario] | None = None,
) -> Results:
    """Boot ``cfg`` and run its scenarios; writes ``results_dir/results.json``.

    Give the build ``artifacts``, or ``build(logdir)`` to make them first (a
    build failure becomes a ``build`` ERROR entry). ``scenarios`` runs these
    scenario objects instead of the ones ``cfg`` names.
    """
    results = Results(results_dir)
    with run_log(results_dir / "run.log"):
        log.info("results: %s", results_dir)
        if artifacts is None:
            if build is None:
                raise ValueError("runner.run needs artifacts or a build function")
            t0 = time.monotonic()
            try:
                artifacts = build(results_dir / "build-logs")
            except KeyboardInterrupt as e:  # the build step's processes are gone already
                results.config = cfg.to_dict()
                results.environment["interrupted"] = str(e) or "Ctrl-C"
                results.add(TestResult("build", Status.MISS, time.monotonic() - t0,
                                       f"interrupted ({e or 'Ctrl-C'}) while it ran",
                                       ["run.log"]))
                results.write()
                raise
            except Exception as e:
                log.error("build failed: %s", e)
                log.debug("build failure", exc_info=True)
                results.config = cfg.to_dict()
                results.add(TestResult("build", status_for(Event.BUILD_FAILED),
                                       time.monotonic() - t0, str(e),
                                       ["run.log"]))
                results.write()
                return results
        return Runner(cfg, artifacts, results, probe, scenarios).execute()

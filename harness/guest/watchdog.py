"""Is a running guest hung? The no-output watchdog of a booted guest.

A guest under test is often silent on its console for minutes (workloads
report over SSH), so silence alone proves nothing. It is hung when its
console has been silent **and** its SSH server has not answered (no banner
on a fresh TCP connection through the host forward) for ``no_output``
seconds. Then the guest's vCPU registers are dumped over QMP and QEMU is
killed, so a scenario blocked on the guest ends at once instead of at its
own timeout.

A guest that panicked (pvpanic's GUEST_PANICKED event) is given
``panic_grace`` seconds to finish printing and end itself (``panic=-1`` with
``-no-reboot``); one that does not is killed too.

:func:`hung` is the decision; :class:`Watchdog` the thread that applies it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

PANIC_GRACE = 10.0
SSH_BANNER = b"SSH-"


def ssh_answers(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Whether an SSH server sends its banner on a new connection within ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            buf = b""
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                chunk = s.recv(256)
                if not chunk:
                    return False
                buf += chunk
                if SSH_BANNER in buf:
                    return True
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class Probe:
    """How often to ask SSH while the console is silent, and how long to wait."""

    every: float
    timeout: float

    @classmethod
    def for_timeout(cls, no_output: float) -> Probe:
        # several probes fit in the window, none longer than 10 s
        step = max(0.5, min(10.0, no_output / 4))
        return cls(step, step)


def panic_not_ended(grace: float) -> str:
    return f"the guest panicked and QEMU had not ended {grace:.0f}s later"


def hung(now: float, last_console: float, last_answer: float, failed_probes: int,
         no_output: float) -> bool:
    """The guest is hung: nothing on the console and no SSH answer for
    ``no_output`` seconds, and at least two probes in a row failed (so a
    single slow answer under load does not count)."""
    return now - max(last_console, last_answer) >= no_output and failed_probes >= 2


class Watchdog:
    """Watches a booted guest on a thread until :meth:`stop`.

    ``last_output()`` gives the monotonic time of the last console output,
    ``probe(timeout)`` asks the guest's SSH server, ``alive()`` says whether
    QEMU still runs, ``panicked_at()`` the time of a GUEST_PANICKED event (or
    None). ``on_hang(reason)`` and ``on_panic_timeout(reason)`` are called at
    most once, on the watchdog thread; they dump state and kill QEMU.
    """

    def __init__(
        self,
        no_output: float,
        last_output: Callable[[], float],
        probe: Callable[[float], bool],
        alive: Callable[[], bool],
        panicked_at: Callable[[], float | None],
        on_hang: Callable[[str], None],
        on_panic_timeout: Callable[[str], None],
        panic_grace: float = PANIC_GRACE,
    ) -> None:
        self.no_output = no_output
        self.probe_cfg = Probe.for_timeout(no_output)
        self._last_output = last_output
        self._probe = probe
        self._alive = alive
        self._panicked_at = panicked_at
        self._on_hang = on_hang
        self._on_panic_timeout = on_panic_timeout
        self.panic_grace = panic_grace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self.fired: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        last_answer = time.monotonic()
        failed = 0
        next_probe = 0.0
        while not self._stop.wait(0.2):
            if not self._alive():
                return
            now = time.monotonic()
            panicked = self._panicked_at()
            if panicked is not None:
                if now - panicked >= self.panic_grace:
                    self.fired = panic_not_ended(self.panic_grace)
                    self._on_panic_timeout(self.fired)
                    return
                continue
            last_console = self._last_output()
            if now - last_console < self.probe_cfg.every:
                failed = 0  # it talks: nothing to ask
                continue
            if now >= next_probe:
                ok = self._probe(self.probe_cfg.timeout)
                now = time.monotonic()
                next_probe = now + self.probe_cfg.every
                if ok:
                    last_answer, failed = now, 0
                else:
                    failed += 1
                    log.debug("watchdog: no SSH answer (%d in a row), console silent for %.0fs",
                              failed, now - last_console)
            if hung(now, self._last_output(), last_answer, failed, self.no_output):
                self.fired = (f"no console output and no SSH answer for "
                              f"{self.no_output:.0f}s (guest hung)")
                self._on_hang(self.fired)
                return

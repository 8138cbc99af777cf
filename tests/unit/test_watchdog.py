"""The no-output watchdog's decision, its SSH probe and its thread."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from harness.guest.watchdog import Watchdog, hung, ssh_answers


@pytest.mark.parametrize(("now", "console", "answer", "failed", "verdict"), [
    (100.0, 30.0, 30.0, 5, True),     # silent and unanswered for 70 s
    (100.0, 30.0, 30.0, 1, False),    # one failed probe is not enough
    (100.0, 50.0, 30.0, 5, False),    # the console spoke 50 s ago
    (100.0, 30.0, 45.0, 2, False),    # SSH answered 55 s ago
    (100.0, 40.0, 40.0, 2, True),     # exactly 60 s
])
def test_hung(now: float, console: float, answer: float, failed: int, verdict: bool) -> None:
    assert hung(now, console, answer, failed, 60.0) is verdict


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that answers each connection with the next
    of ``greetings`` (b"" = accept and say nothing, like slirp in front of a
    hung guest)."""
    greetings: list[bytes] = []
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            greeting = greetings.pop(0) if greetings else b""
            if greeting:
                conn.sendall(greeting)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], greetings
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


def test_ssh_answers(server: tuple[int, list[bytes]]) -> None:
    port, greetings = server
    greetings += [b"SSH-2.0-dropbear_2022.83\r\n", b""]
    assert ssh_answers(port, 30.0)
    t0 = time.monotonic()
    assert not ssh_answers(port, 0.5)  # connected, but no banner: gives up at its timeout
    assert 0.5 <= time.monotonic() - t0 < 30


def test_nothing_listening_is_no_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert not ssh_answers(port, 1.0)


# An SSH server in its own process: the banner on every connection, like dropbear.
BANNER_SERVER = """
import socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    conn.sendall(b"SSH-2.0-dropbear_2022.83\\r\\n")
    conn.close()
"""


@pytest.fixture
def sshd() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", BANNER_SERVER], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_short_cadence_fires_on_a_hung_server_not_on_a_live_one(
        sshd: tuple[subprocess.Popen[str], int]) -> None:
    """A silent console, a real server process behind the probe: while it answers the
    watchdog probes again and again and never fires; once the process is stopped
    (SIGSTOP: the kernel still accepts connections, nothing answers, as with a hung
    guest behind slirp) it fires, after at least two failed probes and no sooner
    than no_output after the last answer."""
    proc, port = sshd
    probes: list[tuple[float, bool]] = []
    enough = threading.Event()

    def probe(timeout: float) -> bool:
        ok = ssh_answers(port, timeout)
        probes.append((time.monotonic(), ok))
        if len(probes) >= 6:
            enough.set()
        return ok

    fired: list[tuple[float, str]] = []
    done = threading.Event()

    def on_hang(reason: str) -> None:
        fired.append((time.monotonic(), reason))
        done.set()

    w = Watchdog(2.0, lambda: 0.0, probe, lambda: True, lambda: None, on_hang,
                 lambda reason: None)
    w.start()
    try:
        assert enough.wait(120)  # six probes of a live server, each answered
        assert fired == [] and all(ok for _, ok in probes)
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert done.wait(120)
    finally:
        w.stop()
        proc.send_signal(signal.SIGCONT)
    when, reason = fired[0]
    # found within a generous multiple of no_output (a cadence too slow for the window
    # would need two of its probes to fail first)
    assert when - stopped < 30
    assert reason == "no console output and no SSH answer for 2s (guest hung)"
    failed = [t for t, ok in probes if t > stopped]
    assert len(failed) >= 2 and not any(ok for t, ok in probes if t > stopped)
    last_answer = max(t for t, ok in probes if ok)
    assert when - last_answer >= 2.0
    assert w.fired == reason


class Fake:
    """What the watchdog watches: a console clock, an SSH answer, a panic time.
    Every call the watchdog makes is counted, so tests wait for calls, not time."""

    def __init__(self) -> None:
        self.last_output = time.monotonic()
        self.chatty = False  # the console printed just now, whenever asked
        self.answers = True
        self.alive = True
        self.panicked: float | None = None
        self.verdicts: list[str] = []
        self.fired = threading.Event()
        self.probes = 0
        self.probed = threading.Event()  # five probes made
        self.looks = 0  # how often the watchdog read the console clock
        self.looked = threading.Event()  # twenty looks
        self.asked_alive = threading.Event()

    def on(self, kind: str) -> Callable[[str], None]:
        def fire(reason: str) -> None:
            self.verdicts.append(f"{kind}: {reason}")
            self.alive = False
            self.fired.set()
        return fire

    def console(self) -> float:
        self.looks += 1
        if self.looks >= 20:
            self.looked.set()
        return time.monotonic() if self.chatty else self.last_output

    def probe(self, timeout: float) -> bool:
        self.probes += 1
        if self.probes >= 5:
            self.probed.set()
        return self.answers

    def is_alive(self) -> bool:
        self.asked_alive.set()
        return self.alive

    def watchdog(self, no_output: float, grace: float = 10.0) -> Watchdog:
        return Watchdog(no_output, self.console, self.probe, self.is_alive,
                        lambda: self.panicked, self.on("hang"), self.on("panic"),
                        panic_grace=grace)


def test_silent_but_answering_guest_is_left_alone() -> None:
    f = Fake()
    w = f.watchdog(0.5)
    w.start()
    assert f.probed.wait(120)  # it asked SSH five times, each answered
    w.stop()
    assert f.probes >= 5 and f.verdicts == [] and w.fired is None


def test_silent_unanswering_guest_is_declared_hung() -> None:
    f = Fake()
    f.answers = False
    w = f.watchdog(1.0)
    t0 = time.monotonic()
    w.start()
    assert f.fired.wait(120)
    assert time.monotonic() - t0 >= 1.0  # never before no_output
    assert f.probes >= 2  # and only after two failed probes
    assert f.verdicts == ["hang: no console output and no SSH answer for 1s (guest hung)"]
    w.stop()


def test_console_output_keeps_it_alive() -> None:
    f = Fake()
    f.answers = False
    f.chatty = True  # a chatty guest, e.g. a printing loop
    w = f.watchdog(0.5)
    w.start()
    assert f.looked.wait(120)  # it looked at the console 20 times
    w.stop()
    assert f.verdicts == [] and f.probes == 0  # talking: nothing to ask


def test_panicked_guest_that_does_not_end_is_killed_after_the_grace() -> None:
    f = Fake()
    f.chatty = True  # the panic message is still printing: the grace counts, not silence
    f.panicked = time.monotonic()
    w = f.watchdog(60.0, grace=1.0)
    w.start()
    assert f.fired.wait(120)
    assert time.monotonic() - f.panicked >= 1.0
    assert f.verdicts == ["panic: the guest panicked and QEMU had not ended 1s later"]
    w.stop()


def test_stops_when_qemu_is_gone() -> None:
    f = Fake()
    f.alive = False
    f.answers = False
    w = f.watchdog(0.5)
    w.start()
    assert f.asked_alive.wait(120)
    w._thread.join(120)  # it returns by itself, without stop()
    assert not w._thread.is_alive()
    assert f.probes == 0 and f.looks == 0 and f.verdicts == []
    w.stop()

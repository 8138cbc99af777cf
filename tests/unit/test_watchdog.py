"""The no-output watchdog's decision, its SSH probe and its thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.guest.watchdog import Probe, Watchdog, hung, ssh_answers


@pytest.mark.parametrize(("now", "console", "answer", "failed", "verdict"), [
    (100.0, 30.0, 30.0, 5, True),     # silent and unanswered for 70 s
    (100.0, 30.0, 30.0, 1, False),    # one failed probe is not enough
    (100.0, 50.0, 30.0, 5, False),    # the console spoke 50 s ago
    (100.0, 30.0, 45.0, 2, False),    # SSH answered 55 s ago
    (100.0, 40.0, 40.0, 2, True),     # exactly 60 s
])
def test_hung(now: float, console: float, answer: float, failed: int, verdict: bool) -> None:
    assert hung(now, console, answer, failed, 60.0) is verdict


def test_probe_cadence() -> None:
    assert Probe.for_timeout(60) == Probe(10.0, 10.0)
    assert Probe.for_timeout(8) == Probe(2.0, 2.0)
    assert Probe.for_timeout(1) == Probe(0.5, 0.5)


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
    assert ssh_answers(port, 2.0)
    t0 = time.monotonic()
    assert not ssh_answers(port, 0.5)  # connected, but no banner
    assert time.monotonic() - t0 < 2


def test_nothing_listening_is_no_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert not ssh_answers(port, 1.0)


class Fake:
    """What the watchdog watches: a console clock, an SSH answer, a panic time."""

    def __init__(self) -> None:
        self.last_output = time.monotonic()
        self.answers = True
        self.alive = True
        self.panicked: float | None = None
        self.verdicts: list[str] = []
        self.fired = threading.Event()

    def on(self, kind: str) -> object:
        def fire(reason: str) -> None:
            self.verdicts.append(f"{kind}: {reason}")
            self.alive = False
            self.fired.set()
        return fire

    def watchdog(self, no_output: float, grace: float = 10.0) -> Watchdog:
        return Watchdog(no_output, lambda: self.last_output,
                        lambda timeout: self.answers, lambda: self.alive,
                        lambda: self.panicked, self.on("hang"), self.on("panic"),  # type: ignore[arg-type]
                        panic_grace=grace)


def test_silent_but_answering_guest_is_left_alone() -> None:
    f = Fake()
    w = f.watchdog(0.5)
    w.start()
    assert not f.fired.wait(2.0)
    w.stop()
    assert f.verdicts == [] and w.fired is None


def test_silent_unanswering_guest_is_declared_hung() -> None:
    f = Fake()
    f.answers = False
    w = f.watchdog(1.0)
    t0 = time.monotonic()
    w.start()
    assert f.fired.wait(5.0)
    assert 1.0 <= time.monotonic() - t0 < 4.0
    assert f.verdicts == ["hang: no console output and no SSH answer for 1s (guest hung)"]
    w.stop()


def test_console_output_keeps_it_alive() -> None:
    f = Fake()
    f.answers = False
    w = f.watchdog(0.5)
    w.start()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        f.last_output = time.monotonic()  # a chatty guest, e.g. a printing loop
        time.sleep(0.1)
    assert f.verdicts == []
    w.stop()


def test_panicked_guest_that_does_not_end_is_killed_after_the_grace() -> None:
    f = Fake()
    f.panicked = time.monotonic()
    w = f.watchdog(60.0, grace=1.0)
    w.start()
    assert f.fired.wait(4.0)
    assert f.verdicts == ["panic: the guest panicked and QEMU had not ended 1s later"]
    w.stop()


def test_stops_when_qemu_is_gone() -> None:
    f = Fake()
    f.alive = False
    f.answers = False
    w = f.watchdog(0.5)
    w.start()
    time.sleep(1.0)
    assert f.verdicts == []
    w.stop()

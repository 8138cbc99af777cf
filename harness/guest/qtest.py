"""A small client for QEMU's qtest protocol (``-accel qtest -qtest unix:PATH``).

QEMU is started with its stderr in a log file; every socket operation has a
timeout, and every error carries the tail of that log so a crash in the
device model shows up in the test failure, not just "connection closed".
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


class QTestError(RuntimeError):
    """QEMU refused a command, died, or did not answer in time."""


class QTest:
    """One QEMU process driven over qtest.

    ``extra_args`` is the machine/device part of the command line; the qtest
    plumbing (``-qtest``, ``-accel qtest``, ``-display none``) is added here.
    QEMU's stdout/stderr go to ``logfile``. The protocol transcript is off
    unless ``qtest_log`` names a file for it (by default QEMU would mix it
    into stderr and bury the device's own messages).
    """

    def __init__(
        self,
        binary: Path,
        extra_args: Sequence[str],
        *,
        datadirs: Sequence[Path] = (),
        logfile: Path | None = None,
        timeout: float = 30.0,
        start_timeout: float = 60.0,
        qmp: bool = False,
        qtest_log: Path | None = None,
    ) -> None:
        self.binary = Path(binary)
        self.timeout = timeout
        self._tmpdir = Path(tempfile.mkdtemp(prefix="hmmlab-qtest-"))
        self.sock_path = self._tmpdir / "qtest.sock"
        self.qmp_path: Path | None = self._tmpdir / "qmp.sock" if qmp else None
        self.logfile = logfile or (self._tmpdir / "qemu-stderr.log")
        self._buf = b""
        self.closed = False  # close() was called: QEMU was stopped on purpose
        self._sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

        argv: list[str] = [str(self.binary)]
        for d in datadirs:
            argv += ["-L", str(d)]
        argv += ["-accel", "qtest", "-qtest", f"unix:{self.sock_path}", "-display", "none"]
        argv += ["-qtest-log", str(qtest_log) if qtest_log is not None else "none"]
        if self.qmp_path is not None:
            argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        argv += list(extra_args)
        self.argv = argv

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # We listen and QEMU connects: no race on the socket appearing.
            listener.bind(str(self.sock_path))
            listener.listen(1)
            listener.settimeout(start_timeout)
            self.logfile.parent.mkdir(parents=True, exist_ok=True)
            with open(self.logfile, "ab") as log:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                conn, _ = listener.accept()
            except TimeoutError as e:
                self._kill()
                raise QTestError(f"QEMU did not connect to qtest socket{self._log_tail()}") from e
            except OSError as e:
                self._kill()
                raise QTestError(f"qtest accept failed: {e}{self._log_tail()}") from e
        finally:
            listener.close()
        conn.settimeout(timeout)
        self._sock = conn
        self._wait_qmp_socket(start_timeout)

    # -- lifecycle -------------------------------------------------------

    def _wait_qmp_socket(self, timeout: float) -> None:
        if self.qmp_path is None:
            return
        deadline = time.monotonic() + timeout
        while not self.qmp_path.exists():
            if time.monotonic() > deadline or not self.alive():
                raise QTestError(f"QMP socket never appeared{self._log_tail()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 30) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        status = ""
        if self.proc is not None and self.proc.poll() is not None:
            status = f" (QEMU exited with status {self.proc.returncode})"
        return f"{status}\n--- QEMU log {self.logfile} ---\n{tail}"

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def close(self, timeout: float = 10.0) -> int | None:
        """Stop QEMU (SIGTERM, then SIGKILL if it lingers); returns its exit status."""
        self.closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                rc = self.proc.returncode
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        return rc

    def __enter__(self) -> QTest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- protocol --------------------------------------------------------

    def _readline(self) -> str:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QTestError(f"qtest: no answer within {self.timeout}s{self._log_tail()}")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as e:
                raise QTestError(
                    f"qtest: no answer within {self.timeout}s{self._log_tail()}"
                ) from e
            except OSError as e:
                raise QTestError(f"qtest: socket error {e}{self._log_tail()}") from e
            if not chunk:
                # give QEMU a moment to finish writing its last words
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self.proc is not None:
                        self.proc.wait(timeout=2)
                raise QTestError(f"qtest: QEMU closed the connection{self._log_tail()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def cmd(self, line: str) -> list[str]:
        """Send one command; return the words after ``OK`` (IRQ events are skipped)."""
        if self._sock is None:
            raise QTestError("qtest: connection is closed")
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as e:
            raise QTestError(f"qtest: send failed: {e}{self._log_tail()}") from e
        while True:
            reply = self._readline()
            words = reply.split()
            if words[:1] == ["IRQ"]:
                continue  # asynchronous, only with irq_intercept_*
            if words[:1] == ["OK"]:
                return words[1:]
            raise QTestError(f"qtest: {line!r} -> {reply!r}{self._log_tail()}")

    # -- memory and I/O --------------------------------------------------

    def _read(self, op: str, addr: int) -> int:
        return int(self.cmd(f"{op} {addr:#x}")[0], 16)

    def readb(self, addr: int) -> int:
        return self._read("readb", addr)

    def readw(self, addr: int) -> int:
        return self._read("readw", addr)

    def readl(self, addr: int) -> int:
        return self._read("readl", addr)

    def readq(self, addr: int) -> int:
        return self._read("readq", addr)

    def writeb(self, addr: int, val: int) -> None:
        self.cmd(f"writeb {addr:#x} {val & 0xFF:#x}")

    def writew(self, addr: int, val: int) -> None:
        self.cmd(f"writew {addr:#x} {val & 0xFFFF:#x}")

    def writel(self, addr: int, val: int) -> None:
        self.cmd(f"writel {addr:#x} {val & 0xFFFFFFFF:#x}")

    def writeq(self, addr: int, val: int) -> None:
        self.cmd(f"writeq {addr:#x} {val & 0xFFFFFFFFFFFFFFFF:#x}")

    def read(self, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        data = self.cmd(f"read {addr:#x} {size:#x}")[0]
        return bytes.fromhex(data[2:] if data.startswith("0x") else data)

    def write(self, addr: int, data: bytes) -> None:
        if not data:
            return
        self.cmd(f"write {addr:#x} {len(data):#x} 0x{data.hex()}")

    def memset(self, addr: int, size: int, val: int) -> None:
        if size:
            self.cmd(f"memset {addr:#x} {size:#x} {val & 0xFF:#x}")

    def clock_step(self, ns: int | None = None) -> int:
        """Advance the virtual clock (to the next timer without ``ns``); returns now."""
        words = self.cmd("clock_step" if ns is None else f"clock_step {ns}")
        return int(words[0]) if words else 0

    def outb(self, port: int, val: int) -> None:
        self.cmd(f"outb {port:#x} {val & 0xFF:#x}")

    def outw(self, port: int, val: int) -> None:
        self.cmd(f"outw {port:#x} {val & 0xFFFF:#x}")

    def outl(self, port: int, val: int) -> None:
        self.cmd(f"outl {port:#x} {val & 0xFFFFFFFF:#x}")

    def inb(self, port: int) -> int:
        return self._read("inb", port)

    def inw(self, port: int) -> int:
        return self._read("inw", port)

    def inl(self, port: int) -> int:
        return self._read("inl", port)

    # -- PCI config space (legacy 0xCF8/0xCFC mechanism) -----------------

    @staticmethod
    def _cf8(bus: int, devfn: int, reg: int) -> int:
        return 0x80000000 | (bus << 16) | (devfn << 8) | (reg & 0xFC)

    def pci_cfg_read(self, bus: int, devfn: int, reg: int, size: int = 4) -> int:
        self.outl(0xCF8, self._cf8(bus, devfn, reg))
        port = 0xCFC + (reg & 3)
        return {1: self.inb, 2: self.inw, 4: self.inl}[size](port)

    def pci_cfg_write(self, bus: int, devfn: int, reg: int, val: int, size: int = 4) -> None:
        self.outl(0xCF8, self._cf8(bus, devfn, reg))
        port = 0xCFC + (reg & 3)
        {1: self.outb, 2: self.outw, 4: self.outl}[size](port, val)

"""The terminal's log: every command (and each matrix cell's process) sets it up alike."""

from __future__ import annotations

import logging
import sys
import time


class ElapsedFormatter(logging.Formatter):
    """``[mm:ss.s] message``, time counted from the start of the command."""

    def __init__(self, start: float, tracebacks: bool) -> None:
        super().__init__()
        self.start = start
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        t = max(0.0, record.created - self.start)
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = f"[{int(t // 60):02d}:{t % 60:04.1f}] {level}{record.getMessage()}"
        if record.exc_info and self.tracebacks:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbose: bool) -> logging.Handler:
    """INFO (DEBUG with -v) to stderr; run.log handlers are added per run."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(ElapsedFormatter(time.time(), tracebacks=verbose))
    root.addHandler(handler)
    # Libraries that log every packet at DEBUG.
    for name, level in (("paramiko", logging.WARNING), ("qemu.qmp", logging.WARNING),
                        ("asyncio", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    return handler

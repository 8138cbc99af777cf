"""The host toolchain a build compiles with, as part of its cache key.

A kernel, a module or a static binary built by another gcc (or linked by
another binutils, driven by another make) is another artifact: the first
line of each tool's ``--version`` goes into the key, so a host upgrade
rebuilds instead of serving bits made by the old compiler.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from harness.build.cache import InputHash
from harness.core.proc import run

# tool -> the argv that prints its version on the first line
TOOLS: dict[str, tuple[str, ...]] = {
    "gcc": ("gcc", "--version"),
    "make": ("make", "--version"),
    "binutils": ("ld", "--version"),
}
VERSION_TIMEOUT = 60


def tool_version(argv: Sequence[str]) -> str:
    """The first line of ``argv``'s output, or "absent" when the tool is not installed."""
    if shutil.which(argv[0]) is None:
        return "absent"
    out = run(list(argv), timeout=VERSION_TIMEOUT, check=False).stdout
    lines = out.decode(errors="replace").splitlines()
    return lines[0].strip() if lines else ""


def versions(tools: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """tool -> its version line (``gcc (Debian 12.2.0-14+deb12u1) 12.2.0``, ...)."""
    return {name: tool_version(argv) for name, argv in (tools or TOOLS).items()}


def add_to(h: InputHash, tools: dict[str, str] | None = None) -> InputHash:
    """Put the toolchain (``tools``, or the host's now) into the key ``h``."""
    for name, line in sorted((tools if tools is not None else versions()).items()):
        h.text(f"toolchain/{name}", line)
    return h

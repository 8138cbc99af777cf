"""A private apt state for trixie/sid sources and packages.

The host's own apt configuration is never touched: every call points apt at
lists, archives and a sources file of our own under the cache directory.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.proc import run

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LISTS_MAX_AGE = 24 * 3600


def host_mirror() -> str:
    """The Debian mirror the host already uses (we reach only that kind of host)."""
    listed = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for f in [*listed, Path("/etc/apt/sources.list")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if "security" not in m.group(1) and "/debian" in m.group(1):
                return m.group(1).rstrip("/")
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            if "security" not in m.group(1) and "/debian" in m.group(1):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


@dataclass(frozen=True)
class PrivateApt:
    state: Path  # e.g. ~/.cache/hmmlab/apt
    suites: tuple[str, ...] = ("trixie", "sid")

    def _opts(self) -> list[str]:
        return [
            "-o", "Dir::Etc::sourcelist=/dev/null",
            "-o", f"Dir::Etc::sourceparts={self.state / 'sources'}",
            "-o", f"Dir::State::Lists={self.state / 'lists'}",
            "-o", f"Dir::Cache::archives={self.state / 'archives'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Retries=3",
            "-q",
        ]

    def ensure_lists(self, logfile: Path) -> None:
        """Write our sources file and refresh the lists if older than a day."""
        if not KEYRING.exists():
            raise RuntimeError(
                f"{KEYRING} is missing: install the debian-archive-keyring package"
            )
        for sub in ("sources", "lists/partial", "archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        src = self.state / "sources" / "hmmlab.sources"
        want = (
            "Types: deb deb-src\n"
            f"URIs: {host_mirror()}\n"
            f"Suites: {' '.join(self.suites)}\n"
            "Components: main\n"
            f"Signed-By: {KEYRING}\n"
        )
        stamp = self.state / "lists" / ".hmmlab-updated"
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
        if src.exists() and src.read_text() == want and fresh:
            return
        src.write_text(want)
        log.info("apt: updating private package lists (%s)", ", ".join(self.suites))
        run(["apt-get", *self._opts(), "update"], timeout=600, logfile=logfile)
        stamp.touch()

    def source(self, spec: str, dest: Path, logfile: Path) -> None:
        """``apt-get source --download-only SPEC`` into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        run(["apt-get", *self._opts(), "source", "--download-only", spec],
            cwd=dest, timeout=1800, logfile=logfile)

    def download(self, package: str, dest: Path, logfile: Path) -> Path:
        """``apt-get download PACKAGE`` into ``dest``; returns the .deb path."""
        dest.mkdir(parents=True, exist_ok=True)
        name = package.split("=")[0]
        before = set(dest.glob(f"{name}_*.deb"))
        run(["apt-get", *self._opts(), "download", package], cwd=dest, timeout=1800,
            logfile=logfile)
        debs = sorted(set(dest.glob(f"{name}_*.deb")) - before)
        debs = debs or sorted(dest.glob(f"{name}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no {name}_*.deb in {dest}")
        return debs[-1]

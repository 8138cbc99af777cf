"""A private apt state for bookworm/trixie/sid sources and packages.

The host's own apt configuration is never touched: every call points apt at
lists, archives and a sources file of our own under the cache directory.
bookworm-security is listed too: Debian's 6.1 kernel updates (linux-source-6.1,
the stock images and headers) land there first.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.core.files import flock
from harness.core.proc import run

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


def security_mirror(mirror: str) -> str:
    """The security archive next to ``mirror`` (deb.debian.org serves both)."""
    return re.sub(r"/debian$", "/debian-security", mirror)


@dataclass(frozen=True)
class PrivateApt:
    state: Path  # e.g. ~/.cache/hmmlab/apt
    suites: tuple[str, ...] = ("bookworm", "trixie", "sid")
    security_suites: tuple[str, ...] = ("bookworm-security",)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One apt invocation at a time on this state (several builders share it)."""
        with flock(self.state / ".hmmlab.lock"):
            yield

    def sources_text(self) -> str:
        mirror = host_mirror()
        text = (
            "Types: deb deb-src\n"
            f"URIs: {mirror}\n"
            f"Suites: {' '.join(self.suites)}\n"
            "Components: main\n"
            f"Signed-By: {KEYRING}\n"
        )
        if self.security_suites:
            text += (
                "\nTypes: deb deb-src\n"
                f"URIs: {security_mirror(mirror)}\n"
                f"Suites: {' '.join(self.security_suites)}\n"
                "Components: main\n"
                f"Signed-By: {KEYRING}\n"
            )
        return text

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
        want = self.sources_text()
        stamp = self.state / "lists" / ".hmmlab-updated"
        with self.locked():
            fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
            if src.exists() and src.read_text() == want and fresh:
                return
            src.write_text(want)
            log.info("apt: updating private package lists (%s)",
                     ", ".join((*self.suites, *self.security_suites)))
            run(["apt-get", *self._opts(), "update"], timeout=600, logfile=logfile)
            stamp.touch()

    def versions(self, package: str) -> list[str]:
        """Every version of ``package`` the lists offer (binary packages), unsorted."""
        return self.versions_of([package])[package]

    def versions_of(self, packages: list[str]) -> dict[str, list[str]]:
        """Every version of each package the lists offer, in one apt-cache call."""
        found: dict[str, set[str]] = {p: set() for p in packages}
        if not packages:
            return {}
        with self.locked():
            # exit status 100 when one of them is unknown; the others still print
            out = run(["apt-cache", *self._opts(), "show", *packages], timeout=300,
                      check=False).stdout.decode(errors="replace")
        for stanza in out.split("\n\n"):
            name = re.search(r"^Package:\s*(\S+)", stanza, re.M)
            version = re.search(r"^Version:\s*(\S+)", stanza, re.M)
            if name and version and name.group(1) in found:
                found[name.group(1)].add(version.group(1))
        return {p: sorted(v) for p, v in found.items()}

    def search_names(self, regex: str) -> list[str]:
        """Binary package names matching ``regex`` (``apt-cache search --names-only``)."""
        with self.locked():
            out = run(["apt-cache", *self._opts(), "search", "--names-only", regex],
                      timeout=120).stdout.decode(errors="replace")
        return sorted({line.split(" - ")[0].strip() for line in out.splitlines() if line.strip()})

    def source(self, spec: str, dest: Path, logfile: Path) -> None:
        """``apt-get source --download-only SPEC`` into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        with self.locked():
            run(["apt-get", *self._opts(), "source", "--download-only", spec],
                cwd=dest, timeout=1800, logfile=logfile)

    def download(self, package: str, dest: Path, logfile: Path) -> Path:
        """``apt-get download PACKAGE[=VERSION|/SUITE]`` into ``dest``; returns the .deb path."""
        dest.mkdir(parents=True, exist_ok=True)
        name = re.split(r"[=/]", package, maxsplit=1)[0]
        with self.locked():
            before = set(dest.glob(f"{name}_*.deb"))
            run(["apt-get", *self._opts(), "download", package], cwd=dest, timeout=1800,
                logfile=logfile)
            debs = sorted(set(dest.glob(f"{name}_*.deb")) - before)
        if "=" in package:
            # apt names the file with the version, the epoch's colon escaped
            version = package.split("=", 1)[1].replace(":", "%3a")
            exact = dest / f"{name}_{version}_{_deb_arch(dest, name, version)}.deb"
            if exact.exists():
                return exact
        debs = debs or sorted(dest.glob(f"{name}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no {name}_*.deb in {dest}")
        return debs[-1]


    def simulate_install(self, packages: list[str], suite: str, status: Path,
                         logfile: Path) -> str:
        """``apt-get -s install`` of ``packages`` from ``suite`` (no Recommends) against the
        dpkg status file ``status``: apt's "Inst name (version ...)" lines, the closure
        of what ``status`` does not already provide."""
        opts = [o if not o.startswith("Dir::State::status=") else f"Dir::State::status={status}"
                for o in self._opts()]
        with self.locked():
            out = run(["apt-get", *opts, "-o", "Debug::NoLocking=1", "-s",
                       "--no-install-recommends", "-t", suite, "install", *packages],
                      timeout=300, check=False)
        text = (out.stdout + out.stderr).decode(errors="replace")
        with open(logfile, "a") as fh:
            fh.write(f"\n$ apt-get -s install -t {suite} {' '.join(packages)}\n{text}")
        if out.returncode != 0:
            raise RuntimeError(f"apt-get -s install -t {suite} {' '.join(packages)} failed "
                               f"(exit status {out.returncode}); see {logfile}:\n{text[-2000:]}")
        return text

    def download_many(self, specs: list[str], dest: Path, logfile: Path) -> None:
        """``apt-get download`` several ``name=version`` specs in one call (one list load)."""
        dest.mkdir(parents=True, exist_ok=True)
        with self.locked():
            run(["apt-get", *self._opts(), "download", *specs], cwd=dest, timeout=1800,
                logfile=logfile)


def _deb_arch(dest: Path, name: str, version: str) -> str:
    for arch in ("amd64", "all"):
        if (dest / f"{name}_{version}_{arch}.deb").exists():
            return arch
    return "amd64"

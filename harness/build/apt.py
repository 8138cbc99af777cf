"""A private apt state for bookworm/trixie/sid sources and packages.

The host's own apt configuration is never touched, and never applies: every
call runs apt with ``APT_CONFIG`` naming a configuration of our own
(``<state>/apt.conf``), written before each call. Its ``Dir::Etc`` is an
empty directory under the state, so the host's apt.conf.d (hooks such as
``APT::Update::Post-Invoke-Success`` or ``DPkg::Post-Invoke``, which would run
as root on every private update), preferences and trusted keys are not read;
lists, archives and apt's binary caches (pkgcache.bin, srcpkgcache.bin) live
under the state too. Of the host's configuration only ``Acquire::*`` is kept
(proxies, timeouts, Check-Valid-Until: what reaching the archive from this
host needs), taken from ``apt-config dump`` rather than parsed by hand, and
the host's auth.conf (read by apt, never by us) for an authenticated mirror.
bookworm-security is listed too: Debian's 6.1 kernel updates (linux-source-6.1,
the stock images and headers) land there first.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
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
HOST_CONFIG = Path("/etc/apt")
CONFIG_TIMEOUT = 60
# Host settings under Acquire:: that are not about reaching the archive: which
# index files to fetch is ours to decide (Packages and Sources, apt's default).
_ACQUIRE_DROPPED = ("Acquire::IndexTargets",)


def host_mirror(host_config: Path = HOST_CONFIG) -> str:
    """The Debian mirror the host already uses (we reach only that kind of host)."""
    listed = sorted((host_config / "sources.list.d").glob("*.sources"))
    for f in [*listed, host_config / "sources.list"]:
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


def _dump(etc: Path) -> list[str]:
    """``apt-config dump`` of the configuration in directory ``etc`` (as /etc/apt)."""
    # APT_CONFIG is read before Dir::Etc's files, so its Dir::Etc decides which
    # apt.conf.d is read (a -o on the command line would come too late).
    with tempfile.NamedTemporaryFile("w", prefix="hmmlab-apt-", suffix=".conf") as fh:
        fh.write(f'Dir::Etc "{etc}/";\n')
        fh.flush()
        out = run(["apt-config", "dump"], timeout=CONFIG_TIMEOUT,
                  env={"APT_CONFIG": fh.name}).stdout.decode(errors="replace")
    return out.splitlines()


def host_acquire(host_config: Path = HOST_CONFIG) -> list[str]:
    """The ``Acquire::*`` lines the host's configuration adds to apt's defaults.

    The dump of an empty configuration directory gives apt's built-in
    defaults; what the host's dump has beyond them is the host's own setting,
    as apt itself parsed it (includes, #clear, comments all handled by apt).
    """
    with tempfile.TemporaryDirectory(prefix="hmmlab-apt-empty-") as empty:
        defaults = set(_dump(Path(empty)))
    keep: list[str] = []
    for line in _dump(host_config):
        if not line.startswith("Acquire::") or line in defaults:
            continue
        if line.startswith(_ACQUIRE_DROPPED):
            continue
        keep.append(line)
    return keep


def security_mirror(mirror: str) -> str:
    """The security archive next to ``mirror`` (deb.debian.org serves both)."""
    return re.sub(r"/debian$", "/debian-security", mirror)


@dataclass(frozen=True)
class PrivateApt:
    state: Path  # e.g. ~/.cache/hmmlab/apt
    suites: tuple[str, ...] = ("bookworm", "trixie", "sid")
    security_suites: tuple[str, ...] = ("bookworm-security",)
    host_config: Path = HOST_CONFIG  # the host's apt configuration directory (read only)
    sources: str | None = None  # a deb822 sources text instead of the Debian suites above

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One apt invocation at a time on this state (several builders share it)."""
        with flock(self.state / ".hmmlab.lock"):
            yield

    @property
    def config_file(self) -> Path:
        return self.state / "apt.conf"

    def config_text(self) -> str:
        """Our apt configuration: private directories, and the host's Acquire options."""
        st = self.state
        etc = st / "etc"
        lines = [
            f"// written by hmmlab before each apt call; Acquire:: from {self.host_config}",
            *host_acquire(self.host_config),
            f'Dir::Etc "{etc}/";',
            'Dir::Etc::main "apt.conf";',
            'Dir::Etc::parts "apt.conf.d";',
            'Dir::Etc::preferences "preferences";',
            'Dir::Etc::preferencesparts "preferences.d";',
            'Dir::Etc::trusted "trusted.gpg";',
            'Dir::Etc::trustedparts "trusted.gpg.d";',
            # credentials for an authenticated mirror: apt reads them, we do not
            f'Dir::Etc::netrc "{self.host_config / "auth.conf"}";',
            f'Dir::Etc::netrcparts "{self.host_config / "auth.conf.d"}";',
            'Dir::Etc::sourcelist "/dev/null";',
            f'Dir::Etc::sourceparts "{st / "sources"}/";',
            f'Dir::State::Lists "{st / "lists"}/";',
            'Dir::State::status "/dev/null";',
            f'Dir::Cache "{st / "cache"}/";',
            f'Dir::Cache::archives "{st / "archives"}/";',
            'APT::Sandbox::User "root";',
            'Acquire::Retries "3";',
        ]
        return "\n".join(lines) + "\n"

    def _prepare(self) -> dict[str, str]:
        """Write our configuration (if it changed) and its directories; apt's environment."""
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/trusted.gpg.d", "sources",
                    "lists/partial", "archives/partial", "cache"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        text = self.config_text()
        f = self.config_file
        if not f.exists() or f.read_text() != text:
            tmp = f.with_name(f"{f.name}.tmp-{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, f)
        return {"APT_CONFIG": str(f)}

    def sources_text(self) -> str:
        if self.sources is not None:
            return self.sources
        mirror = host_mirror(self.host_config)
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
        return ["-q"]

    def ensure_lists(self, logfile: Path) -> None:
        """Write our sources file and refresh the lists if older than a day."""
        if not KEYRING.exists():
            raise RuntimeError(
                f"{KEYRING} is missing: install the debian-archive-keyring package"
            )
        (self.state / "sources").mkdir(parents=True, exist_ok=True)
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
            self._update(logfile)
            stamp.touch()

    def _update(self, logfile: Path) -> None:
        run(["apt-get", *self._opts(), "update"], timeout=600, logfile=logfile,
            env=self._prepare())

    def update(self, logfile: Path) -> None:
        """``apt-get update`` of whatever ``<state>/sources`` lists, now."""
        with self.locked():
            self._update(logfile)

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
                      check=False, env=self._prepare()).stdout.decode(errors="replace")
        for stanza in out.split("\n\n"):
            name = re.search(r"^Package:\s*(\S+)", stanza, re.M)
            version = re.search(r"^Version:\s*(\S+)", stanza, re.M)
            if name and version and name.group(1) in found:
                found[name.group(1)].add(version.group(1))
        return {p: sorted(v) for p, v in found.items()}

    def candidate(self, spec: str) -> str:
        """The version ``apt-get download SPEC`` (``name`` or ``name/suite``) would fetch
        now, from the lists (no download)."""
        with self.locked():
            cp = run(["apt-get", *self._opts(), "download", "--print-uris", spec],
                     timeout=300, check=False, env=self._prepare())
        out = cp.stdout.decode(errors="replace")
        name = re.split(r"[=/]", spec, maxsplit=1)[0]
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1].startswith(f"{name}_"):
                return fields[1].split("_")[1].replace("%3a", ":")
        raise RuntimeError(f"apt has no candidate for {spec} (exit status {cp.returncode}): "
                           f"{(out + cp.stderr.decode(errors='replace')).strip()[-500:]}")

    def search_names(self, regex: str) -> list[str]:
        """Binary package names matching ``regex`` (``apt-cache search --names-only``)."""
        with self.locked():
            out = run(["apt-cache", *self._opts(), "search", "--names-only", regex],
                      timeout=120, env=self._prepare()).stdout.decode(errors="replace")
        return sorted({line.split(" - ")[0].strip() for line in out.splitlines() if line.strip()})

    def source(self, spec: str, dest: Path, logfile: Path) -> None:
        """``apt-get source --download-only SPEC`` into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        with self.locked():
            run(["apt-get", *self._opts(), "source", "--download-only", spec],
                cwd=dest, timeout=1800, logfile=logfile, env=self._prepare())

    def download(self, package: str, dest: Path, logfile: Path) -> Path:
        """``apt-get download PACKAGE[=VERSION|/SUITE]`` into ``dest``; returns the .deb path."""
        dest.mkdir(parents=True, exist_ok=True)
        name = re.split(r"[=/]", package, maxsplit=1)[0]
        with self.locked():
            before = set(dest.glob(f"{name}_*.deb"))
            run(["apt-get", *self._opts(), "download", package], cwd=dest, timeout=1800,
                logfile=logfile, env=self._prepare())
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
        opts = [*self._opts(), "-o", f"Dir::State::status={status}"]
        with self.locked():
            out = run(["apt-get", *opts, "-o", "Debug::NoLocking=1", "-s",
                       "--no-install-recommends", "-t", suite, "install", *packages],
                      timeout=300, check=False, env=self._prepare())
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
                logfile=logfile, env=self._prepare())


def _deb_arch(dest: Path, name: str, version: str) -> str:
    for arch in ("amd64", "all"):
        if (dest / f"{name}_{version}_{arch}.deb").exists():
            return arch
    return "amd64"

"""Collecting the guest kernel's ftrace during a run (run file ``ftrace:``).

Before the first scenario (:meth:`Collector.setup`): ``trace_clock`` mono
(the clock hmm_gpu.ko sends the device, see harness.checks.clocksync), the
ring buffer's size, the events asked for that this kernel offers (the
others are recorded as missing), ``tracing_on``. Around each scenario
(:meth:`Collector.begin`, :meth:`Collector.end`): a ``trace_marker`` line
``hmmlab: <scenario> begin|end`` and :data:`SYNC_WRITES` writes to every
hmm-gpu's sysfs ``clock_sync`` (clock-sync pairs at each edge; a driver
without the attribute is recorded, and the run goes on); after it, the per-CPU buffer
statistics and the ``trace`` text, appended to ``ftrace.txt`` under a
``# hmmlab: scenario <name>`` line, and the buffer emptied. (While the text
is read the kernel pauses recording: the harness's own commands then are
not in it.)

A module's trace events exist only while it is loaded, and a kernel before
6.14 cannot enable them ahead of the load (``set_event``'s ``:mod:``). So
a system asked for that is not there yet (hmm_gpu before insmod) stays
pending: enabled at the next scenario edge or :meth:`Collector.module_loaded`
(the scenarios call it after an insmod), ahead of time where ``:mod:``
exists; one still absent at the end is missing.

Everything it saw goes to :meth:`Collector.summary` (results.json
``environment.ftrace``): what was enabled and missing, per scenario the
events each CPU's buffer lost (overrun, commit overrun, dropped: never
silent), the text's size, the clock syncs, the time the collection took.
"""

from __future__ import annotations

import fnmatch
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import ftrace
from harness.core.config import FtraceConfig

log = logging.getLogger(__name__)

FILE_NAME = "ftrace.txt"
TRACING = "/sys/kernel/tracing"
# hmm_gpu_regs.h's HMM_GPU_PCI_VENDOR_ID / DEVICE_ID, as sysfs prints them
GPU_PCI_ID = "0x1234 0x4d47"
COMMAND_TIMEOUT = 60.0
DUMP_TIMEOUT = 300.0  # a full buffer's text over SSH under TCG
MOD_README = "Can enable module events via: :mod:"
# clock_sync writes per hmm-gpu at each scenario edge: the quick ones (an MMIO
# write that did not wait for QEMU's lock) make the clock fit (checks.clocksync)
SYNC_WRITES = 16

# run(cmd, timeout) -> (exit status, stdout, stderr); raises on SSH trouble
Run = Callable[[str, float], tuple[int, str, str]]


class FtraceError(RuntimeError):
    """The guest's tracing could not be set up."""


def _sections(out: str) -> dict[str, str]:
    """Output split at ``## <name>`` lines (the scripts below print them)."""
    parts: dict[str, list[str]] = {"": []}
    cur = ""
    for line in out.splitlines(keepends=True):
        if line.startswith("## "):
            cur = line[3:].strip()
            parts.setdefault(cur, [])
        else:
            parts[cur].append(line)
    return {k: "".join(v) for k, v in parts.items()}


def select_events(wanted: Sequence[str], available: Sequence[str]
                  ) -> tuple[list[str], list[str]]:
    """(what to write to set_event, what is not there) for the events asked for.

    ``available``: available_events' lines (``system:event``). A system
    (``migrate``) is there if any of its events is; ``system:event`` may be a
    glob (``exceptions:page_fault_*``)."""
    systems = {a.split(":", 1)[0] for a in available}
    on: list[str] = []
    missing: list[str] = []
    for w in wanted:
        if ":" not in w:
            (on if w in systems else missing).append(f"{w}:*" if w in systems else w)
        elif any(fnmatch.fnmatchcase(a, w) for a in available):
            on.append(w)
        else:
            missing.append(w)
    return on, missing


def sync_script(writes: int = SYNC_WRITES) -> str:
    """Write every hmm-gpu's clock_sync ``writes`` times; one line each: ``sync BDF
    <writes that succeeded>`` or ``nosync BDF <its driver, or none>``."""
    return (f"for d in /sys/bus/pci/devices/*; do "
            f"[ \"$(cat $d/vendor) $(cat $d/device)\" = {shlex.quote(GPU_PCI_ID)} ] || continue; "
            "b=${d##*/}; "
            "if [ -e $d/clock_sync ]; then i=0; n=0; "
            f"while [ $i -lt {int(writes)} ]; do i=$((i+1)); "
            "echo 1 2>/dev/null > $d/clock_sync && n=$((n+1)); done; echo \"sync $b $n\"; "
            "elif [ -e $d/driver ]; then echo \"nosync $b $(basename $(readlink $d/driver))\"; "
            "else echo \"nosync $b none\"; fi; done")


@dataclass
class ScenarioTrace:
    """What one scenario's collection saw."""

    name: str
    bytes: int = 0
    events: int = 0
    lost: dict[str, int] = field(default_factory=dict)  # cpu -> events lost
    syncs: list[str] = field(default_factory=list)  # "sync BDF" / "nosync BDF why"
    seconds: float = 0.0  # the collection's own time (both edges)
    error: str = ""
    parts: int = 0  # texts saved: one at the end, one before each rmmod of a traced module

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "events": self.events, "parts": self.parts,
                "lost": self.lost,
                "lost_total": sum(self.lost.values()), "syncs": self.syncs,
                "seconds": round(self.seconds, 3), **({"error": self.error} if self.error else {})}


@dataclass
class Collector:
    cfg: FtraceConfig
    out_dir: Path
    run: Run
    enabled: list[str] = field(default_factory=list)  # set_event's lines at the end
    missing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # systems not there yet (modules)
    mod_cache: bool = False  # the kernel's set_event takes :mod:
    scenarios: dict[str, ScenarioTrace] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    ready: bool = False
    current: str = ""  # the scenario running (between begin and end)

    @property
    def path(self) -> Path:
        return self.out_dir / FILE_NAME

    def _sh(self, script: str, timeout: float = COMMAND_TIMEOUT) -> str:
        rc, out, err = self.run(f"cd {TRACING} && {{ {script}; }}", timeout)
        if rc != 0:
            raise FtraceError(f"exit status {rc}: {(err or out).strip()[-300:]}")
        return out

    def setup(self) -> None:
        """Clock, buffer, events, tracing_on; raises FtraceError when it cannot."""
        t0 = time.monotonic()
        # tracefs is mounted by the kernel under /sys/kernel/tracing once sysfs is
        # up; an init that never mounted it gets it here
        mount = (f"[ -e {TRACING}/trace ] || mount -t tracefs nodev {TRACING}; "
                 f"[ -e {TRACING}/trace ] || {{ echo no tracefs >&2; exit 10; }}")
        rc, out, err = self.run(mount, COMMAND_TIMEOUT)
        if rc != 0:
            raise FtraceError(f"tracefs: {(err or out).strip()}")
        out = self._sh(
            "echo 0 > tracing_on && echo mono > trace_clock && "
            f"echo {int(self.cfg.buffer_kb)} > buffer_size_kb && : > set_event && : > trace "
            "|| exit 12; "
            f"echo '## clock'; cat trace_clock; echo '## readme'; grep -F {shlex.quote(MOD_README)}"
            " README; echo '## available'; cat available_events")
        parts = _sections(out)
        if "[mono]" not in parts.get("clock", ""):
            raise FtraceError(f"trace_clock is not mono: {parts.get('clock', '').strip()}")
        self.mod_cache = MOD_README in parts.get("readme", "")
        on, absent = select_events(self.cfg.events, parts.get("available", "").split())
        # an absent system may be a module's (hmm_gpu before insmod): retried later
        self.pending = [w for w in absent if ":" not in w]
        self.missing = [w for w in absent if ":" in w]
        script = "".join(f"echo {shlex.quote(e)} >> set_event || exit 11; " for e in on)
        if self.mod_cache:  # enabled as the module loads, probe included
            script += "".join(f"echo {shlex.quote(':mod:' + s)} >> set_event; "
                              for s in self.pending)
        self._sh(script + "echo 1 > tracing_on")
        self.ready = True
        self.setup_seconds = time.monotonic() - t0
        log.info("ftrace: %d events on, pending %s, missing %s", len(on), self.pending,
                 self.missing)

    def _pending_script(self) -> str:
        """Enable the pending systems that exist now (a module loaded meanwhile)."""
        return "".join(f"[ -d events/{s} ] && echo {shlex.quote(s + ':*')} >> set_event; "
                       for s in self.pending)

    def module_loaded(self) -> None:
        """A scenario loaded a module: enable the pending systems it brought."""
        if not self.ready or not self.pending:
            return
        try:
            self._sh(self._pending_script() + "true")
        except Exception as e:  # SSH trouble: the next edge tries again
            self.errors.append(f"after a module load: {e}")

    def _edge(self, name: str, edge: str) -> str:
        marker = shlex.quote(f"hmmlab: {name} {edge}")
        script = self._pending_script()
        if edge == "begin":
            script += f"echo {marker} > trace_marker; echo '## syncs'; {sync_script()}; "
        else:
            script += f"echo '## syncs'; {sync_script()}; echo {marker} > trace_marker; "
        return script

    def begin(self, name: str) -> None:
        if not self.ready:
            return
        self.current = name
        st = self.scenarios.setdefault(name, ScenarioTrace(name))
        t0 = time.monotonic()
        try:
            out = self._sh(self._edge(name, "begin") + "true")
            st.syncs += _sections(out).get("syncs", "").split("\n")
        except Exception as e:
            st.error = f"begin: {e}"
        st.syncs = [s for s in st.syncs if s]
        st.seconds += time.monotonic() - t0

    _DUMP = ("echo '## set_event'; cat set_event; "
             "for c in per_cpu/cpu*; do echo \"## stats ${c##*/cpu}\"; cat $c/stats; done; "
             "echo '## trace'; cat trace && : > trace")

    def end(self, name: str) -> None:
        """Sync, mark, and save the scenario's trace text; never raises."""
        if not self.ready:
            return
        self._collect(name, self._edge(name, "end"), "end")
        self.current = ""

    def before_unload(self, module: str) -> None:
        """A scenario is about to rmmod ``module``: save the trace so far, as the kernel
        empties the whole ring buffer when a module whose events recorded anything
        goes (trace_module_remove_events); never raises."""
        if not self.ready or not self.current:
            return
        loaded = f"grep -q {shlex.quote('^' + module + ' ')} /proc/modules || exit 0; "
        self._collect(self.current, loaded, f"before rmmod {module}")

    def _collect(self, name: str, script: str, what: str) -> None:
        """Run ``script`` then save the trace text (and its statistics) under ``name``."""
        st = self.scenarios.setdefault(name, ScenarioTrace(name))
        t0 = time.monotonic()
        try:
            out = self._sh(script + self._DUMP, DUMP_TIMEOUT)
        except Exception as e:
            st.error = (st.error + "; " if st.error else "") + f"{what}: {e}"
            st.seconds += time.monotonic() - t0
            return
        parts = _sections(out)
        if "trace" not in parts:  # nothing to save (the module was not loaded)
            st.seconds += time.monotonic() - t0
            return
        st.syncs += [s for s in parts.get("syncs", "").split("\n") if s]
        # a union: a module unloaded by now had its events on while it was there
        self.enabled = list(dict.fromkeys(self.enabled + parts.get("set_event", "").split()))
        for key, text in parts.items():
            if key.startswith("stats "):
                lost = ftrace.lost_of(ftrace.parse_stats(text))
                if lost:
                    st.lost[key[6:]] = st.lost.get(key[6:], 0) + lost
        text = parts.get("trace", "")
        parsed = ftrace.parse(text.splitlines())
        for cpu, n in parsed.lost.items():  # the text's own "[LOST N EVENTS]"
            st.lost[str(cpu)] = max(st.lost.get(str(cpu), 0), n)
        st.events += len(parsed.events)
        body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
        st.bytes += len(body)
        st.parts += 1
        with self.path.open("a") as f:
            f.write(f"# hmmlab: scenario {name}\n{body}")
        st.seconds += time.monotonic() - t0
        if st.lost:
            log.warning("ftrace: %s: events lost per CPU %s (buffer_kb %d)", name, st.lost,
                        self.cfg.buffer_kb)

    def unread(self, name: str, why: str) -> None:
        """The scenario's trace could not be read (the guest is gone): say so."""
        st = self.scenarios.setdefault(name, ScenarioTrace(name))
        st.error = (st.error + "; " if st.error else "") + f"trace not read: {why}"

    def summary(self) -> dict[str, Any]:
        """results.json's ``environment.ftrace``."""
        still = [s for s in self.pending if not any(e.startswith(s + ":") for e in self.enabled)]
        lost = sum(sum(s.lost.values()) for s in self.scenarios.values())
        return {
            "file": FILE_NAME if self.path.exists() else None,
            "buffer_kb": self.cfg.buffer_kb,
            "asked": list(self.cfg.events),
            "enabled": self.enabled,
            "missing": self.missing + still,
            "module_events_ahead_of_load": self.mod_cache,
            "lost_total": lost,
            "setup_seconds": round(self.setup_seconds, 3),
            "collection_seconds": round(self.setup_seconds + sum(
                s.seconds for s in self.scenarios.values()), 3),
            "scenarios": {k: v.to_dict() for k, v in self.scenarios.items()},
            "errors": self.errors,
        }

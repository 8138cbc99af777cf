"""Run configuration: a YAML file over the packaged defaults (``default.yaml``).

Every error names the file, the line, the key and what would be accepted, e.g.
``run.yaml:4: memory: expected MiB as an integer or like "1G", got "lots"``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

DEFAULT_NAME = "default.yaml"

MACHINES = ("q35", "pc")
# Kernels hmmlab builds (Debian's linux-source-X.Y with our fragment), and
# Debian's own 6.1 image with linux-headers-6.1 (no DEVICE_PRIVATE there).
# A user's tree comes from --kernel-tree (kernel_tree), not from this list.
KERNELS = ("6.1", "6.12", "7.2", "stock-6.1")
FLAVORS = ("default", "debug")
IOMMUS = ("off", "intel-iommu")
ACCELS = ("auto", "kvm", "tcg")
DEVICE_TYPES = ("hmm-gpu", "hmm-nic")
# Properties the launcher sets itself for each device.
RESERVED_PROPS = ("id", "dmatrace", "bus", "addr", "link")
TIMEOUT_KEYS = ("boot", "no_output", "scenario")
# Rounds of a bench scenario (hmmlab bench --rounds). Here, in core, because both
# the bench scenarios and the CLI need it: not in a scenario (`hmmlab --help`
# would import paramiko), not in harness/run (scenarios are below run).
DEFAULT_ROUNDS = 5


class ConfigError(ValueError):
    """A configuration problem, located in its file."""

    def __init__(self, source: str, line: int | None, key: str, message: str) -> None:
        self.source = source
        self.line = line
        self.key = key
        self.message = message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class DeviceConfig:
    type: str
    props: dict[str, str] = field(default_factory=dict)
    # hmm-nic: the id of the other hmm-nic in this guest its port is cabled to
    # ("nic1"); the launcher joins the two by a unix socket. PEER: cabled to a
    # second guest that a scenario boots (odp-cross-vm); this guest's QEMU
    # listens on the socket, the peer's connects to it.
    link: str = ""
    # the peer guest's own side of a PEER cable: the socket to connect to (set by
    # the scenario that boots it, never by a configuration file)
    peer_socket: str = ""
    # False: no dmatrace chardev, so the device records nothing (the writer never
    # starts): `hmmlab bench trace` measures tracing on against off this way
    trace: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The keys a configuration file has (link and trace only if not the default;
        never peer_socket)."""
        d: dict[str, Any] = {"type": self.type, "props": dict(self.props)}
        if self.link:
            d["link"] = self.link
        if not self.trace:
            d["trace"] = False
        return d


@dataclass(frozen=True)
class Timeouts:
    boot: float = 120.0
    no_output: float = 60.0
    scenario: float = 300.0


@dataclass(frozen=True)
class TimelineConfig:
    """timeline.pftrace after the run (harness.report.timeline)."""

    enabled: bool = True
    dmas: bool = False  # every DMA as an event too: millions on a big run


# What `ftrace:` enables unless it lists its own events: hmm_gpu.ko's tracepoints
# and the kernel's page-migration, page-fault, TLB-flush and THP/reclaim events.
# Each is "system" (all of its events) or "system:event"; only those the guest's
# kernel offers are enabled, the others are recorded as missing.
FTRACE_EVENTS = (
    "hmm_gpu", "migrate", "exceptions:page_fault_user", "exceptions:page_fault_kernel",
    "tlb:tlb_flush", "huge_memory", "vmscan:mm_vmscan_direct_reclaim_begin",
    "vmscan:mm_vmscan_direct_reclaim_end", "mmap:exit_mmap",
)
FTRACE_BUFFER_KB = (64, 1 << 20)  # per CPU: the range accepted
_FTRACE_EVENT_RE = re.compile(r"^[A-Za-z0-9_]+(?::[A-Za-z0-9_*]+)?$")


@dataclass(frozen=True)
class FtraceConfig:
    """The guest kernel's ftrace, collected in the run (harness.guest.ftrace)."""

    enabled: bool = False
    events: tuple[str, ...] = FTRACE_EVENTS
    buffer_kb: int = 8192  # ring buffer per CPU; emptied after every scenario


@dataclass(frozen=True)
class RunConfig:
    kernel: str
    flavor: str
    machine: str
    iommu: str
    cmdline: str  # kernel arguments added to ours ("" for none)
    memory: int  # MiB
    cpus: int
    accel: str
    devices: tuple[DeviceConfig, ...]
    scenarios: tuple[str, ...]
    timeouts: Timeouts
    timeline: TimelineConfig = TimelineConfig()
    ftrace: FtraceConfig = FtraceConfig()
    source: str = "<default>"
    # A developer's own kernel source tree (--kernel-tree); overrides kernel.
    kernel_tree: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = [dev.to_dict() for dev in self.devices]
        d["scenarios"] = list(self.scenarios)
        d["ftrace"]["events"] = list(self.ftrace.events)
        return d


# ---- YAML nodes ---------------------------------------------------------------

def line_of(node: Node) -> int:
    """The 1-based line ``node`` starts on, for error messages."""
    return node.start_mark.line + 1


def _scalar_value(node: ScalarNode) -> Any:
    return SafeConstructor().construct_object(node, deep=True)


def show(node: Node) -> str:
    """``node`` as an error message quotes what it got: a scalar, "a list", "a mapping"."""
    if isinstance(node, ScalarNode):
        return f'"{node.value}"' if node.value != "" else "nothing"
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


class Reader:
    """Turns composed YAML nodes into checked values, raising located errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, node: Node | None, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, line_of(node) if node is not None else None, key, message)

    def mapping(self, node: Node, key: str, allowed: Iterable[str]) -> dict[str, tuple[Node, Node]]:
        """Mapping entries by key name: {name: (key_node, value_node)}; unknown keys fail."""
        if not isinstance(node, MappingNode):
            raise self.error(node, key, f"expected a mapping of keys, got {show(node)}")
        allowed = list(allowed)
        out: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, ScalarNode) else None
            full = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str):
                raise self.error(knode, key or "(top level)", "keys must be plain names")
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                raise self.error(
                    knode, full, f"unknown key{hint} (known: {', '.join(allowed)})"
                )
            if name in out:
                raise self.error(
                    knode, full, f"duplicate key (first given on line {line_of(out[name][0])})"
                )
            out[name] = (knode, vnode)
        return out

    def scalar(self, node: Node, key: str, what: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.error(node, key, f"expected {what}, got {show(node)}")
        try:
            return _scalar_value(node)
        except yaml.YAMLError as e:
            raise self.error(node, key, f"expected {what}, got {show(node)} ({e})") from e

    def choice(self, node: Node, key: str, choices: Iterable[str]) -> str:
        choices = list(choices)
        what = " or ".join(f'"{c}"' for c in choices)
        value = self.scalar(node, key, what)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise self.error(node, key, f"expected {what}, got {show(node)}{hint}")
        return value

    def integer(self, node: Node, key: str, lo: int, hi: int) -> int:
        value = self.scalar(node, key, f"an integer from {lo} to {hi}")
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(node, key, f"expected an integer from {lo} to {hi}, got {show(node)}")
        return value

    def seconds(self, node: Node, key: str) -> float:
        value = self.scalar(node, key, "a number of seconds")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(node, key, f"expected a positive number of seconds, got {show(node)}")
        return float(value)

    def sequence(self, node: Node, key: str, what: str) -> list[Node]:
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, SequenceNode):
            raise self.error(node, key, f"expected a list of {what}, got {show(node)}")
        return list(node.value)


# ---- field parsers ----------------------------------------------------------------

_MEM_RE = re.compile(r"^\s*(\d+)\s*([MG])(?:i?B)?\s*$", re.IGNORECASE)
_PROP_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def parse_memory(value: Any) -> int | None:
    """MiB from 1024, "1024", "1024M", "1G", "1GiB"; None if not understood."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        s = value.strip()
        if s.isdigit():
            return int(s)
        m = _MEM_RE.match(s)
        if m:
            n = int(m.group(1))
            return n * 1024 if m.group(2).upper() == "G" else n
    return None


def _kernel(r: Reader, node: Node) -> str:
    # Take the text as written: an unquoted 6.10 must not become the float 6.1.
    if not isinstance(node, ScalarNode) or str(node.value) not in KERNELS:
        raise r.error(node, "kernel",
                      f"expected one of {', '.join(KERNELS)} (or run with --kernel-tree PATH), "
                      f"got {show(node)}")
    return str(node.value)


# Arguments the harness sets itself: a run file changing them would break the run.
OWN_CMDLINE = ("console=", "earlyprintk=", "panic=", "net.ifnames=")
_CMDLINE_RE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


def _cmdline(r: Reader, node: Node) -> str:
    value = r.scalar(node, "cmdline", 'kernel arguments, like "swiotlb=force"')
    text = "" if value is None else str(value).strip()
    if text and (not isinstance(value, str) or not _CMDLINE_RE.fullmatch(text)):
        raise r.error(node, "cmdline", "expected kernel arguments separated by single spaces "
                                       f"(printable ASCII, no quotes needed), got {show(node)}")
    own = next((a for a in text.split() for o in OWN_CMDLINE if a.startswith(o)), None)
    if own:
        raise r.error(node, "cmdline", f"{own} is the harness's own (serial console, panic "
                                       "handling, interface names): remove it")
    return text


def _memory(r: Reader, node: Node) -> int:
    value = r.scalar(node, "memory", 'MiB as an integer or like "1G"')
    mib = parse_memory(value)
    if mib is None:
        raise r.error(node, "memory", f'expected MiB as an integer or like "1G", got {show(node)}')
    if not 128 <= mib <= 64 * 1024:
        raise r.error(node, "memory", f"expected 128 MiB to 64G, got {mib} MiB")
    return mib


def _prop_value(r: Reader, node: Node, key: str) -> str:
    value = r.scalar(node, key, "a string, number or boolean")
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or not isinstance(value, str | int | float):
        raise r.error(node, key, f"expected a string, number or boolean, got {show(node)}")
    return str(value)


def _devices(r: Reader, node: Node) -> tuple[DeviceConfig, ...]:
    out: list[DeviceConfig] = []
    links: dict[int, tuple[Node, str]] = {}
    for i, dnode in enumerate(r.sequence(node, "devices", "devices like {type: hmm-gpu}")):
        key = f"devices[{i}]"
        entries = r.mapping(dnode, key, ("type", "props", "link", "trace"))
        if "type" not in entries:
            raise r.error(dnode, key, "missing key type (e.g. type: hmm-gpu)")
        dtype = r.choice(entries["type"][1], f"{key}.type", DEVICE_TYPES)
        props: dict[str, str] = {}
        if "props" in entries:
            pnode = entries["props"][1]
            if not isinstance(pnode, MappingNode):
                raise r.error(pnode, f"{key}.props", f"expected a mapping, got {show(pnode)}")
            for knode, vnode in pnode.value:
                pname = str(knode.value)
                pkey = f"{key}.props.{pname}"
                if not _PROP_RE.match(pname):
                    raise r.error(knode, pkey, "not a valid QEMU property name")
                if pname in RESERVED_PROPS:
                    raise r.error(knode, pkey, "set by the launcher itself; remove it")
                props[pname] = _prop_value(r, vnode, pkey)
        link = ""
        if "link" in entries:
            lnode = entries["link"][1]
            link = str(r.scalar(lnode, f"{key}.link",
                                "another hmm-nic's id (nic0, nic1, ...) or peer"))
            if link and dtype != "hmm-nic":
                raise r.error(lnode, f"{key}.link", "only a hmm-nic has a link; remove it")
        trace = True
        if "trace" in entries:
            tnode = entries["trace"][1]
            trace = r.scalar(tnode, f"{key}.trace", "true or false")
            if not isinstance(trace, bool):
                raise r.error(tnode, f"{key}.trace", f"expected true or false, got {show(tnode)}")
        out.append(DeviceConfig(type=dtype, props=props, link=link, trace=trace))
        if link:
            links[i] = (entries["link"][1], link)
    _check_links(r, out, links)
    return tuple(out)


def gpu_ids(devices: Iterable[DeviceConfig]) -> list[str]:
    """The launcher's id of each hmm-gpu, in order ("gpu0", "gpu1", ...): counted
    among the hmm-gpus only, as their QEMU ``id=`` and trace files are."""
    return [f"gpu{i}" for i, _ in enumerate(d for d in devices if d.type == "hmm-gpu")]


def nic_ids(devices: Iterable[DeviceConfig]) -> list[str]:
    """The launcher's id of each hmm-nic, in order ("nic0", "nic1", ...)."""
    return [f"nic{i}" for i, _ in enumerate(d for d in devices if d.type == "hmm-nic")]


PEER = "peer"  # a hmm-nic's link to a second guest (see DeviceConfig.link)


def peer_nics(devices: Iterable[DeviceConfig]) -> list[str]:
    """The ids of the hmm-nics cabled to a peer guest (``link: peer``)."""
    devices = list(devices)
    return [me for me, d in zip(nic_ids(devices), (d for d in devices if d.type == "hmm-nic"),
                                strict=True) if d.link == PEER]


def nic_links(devices: Iterable[DeviceConfig]) -> list[tuple[str, str]]:
    """The cabled pairs of hmm-nic ids, each once, lower id first."""
    devices = list(devices)
    nics = [d for d in devices if d.type == "hmm-nic"]
    pairs = set()
    for me, d in zip(nic_ids(devices), nics, strict=True):
        if d.link and d.link != PEER:
            pairs.add(tuple(sorted((me, d.link), key=lambda x: int(x[3:]))))
    return sorted(pairs, key=lambda p: int(p[0][3:]))  # type: ignore[arg-type]


def _check_links(r: Reader, devices: list[DeviceConfig],
                 nodes: dict[int, tuple[Node, str]]) -> None:
    ids = {}
    n = 0
    for i, d in enumerate(devices):
        if d.type == "hmm-nic":
            ids[f"nic{n}"] = i
            n += 1
    peer_of: dict[str, str] = {}
    for i, d in enumerate(devices):
        if not d.link:
            continue
        node, _ = nodes[i]
        me = next(k for k, v in ids.items() if v == i)
        key = f"devices[{i}].link"
        if d.link == PEER:
            continue
        if d.link not in ids:
            known = ", ".join(ids) or "none"
            raise r.error(node, key,
                          f"{d.link!r} is not a hmm-nic of this guest (hmm-nics: {known}) "
                          f"nor {PEER} (a second guest)")
        if d.link == me:
            raise r.error(node, key, f"{me} cannot be linked to itself")
        for end, other in ((me, d.link), (d.link, me)):
            if peer_of.setdefault(end, other) != other:
                raise r.error(node, key, f"{end} is already linked to {peer_of[end]}: "
                                         "a port has one cable")


def _scenarios(r: Reader, node: Node, known: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for i, snode in enumerate(r.sequence(node, "scenarios", "scenario names")):
        out.append(r.choice(snode, f"scenarios[{i}]", known))
    return tuple(out)


def _timeouts(r: Reader, node: Node, base: Timeouts) -> Timeouts:
    entries = r.mapping(node, "timeouts", TIMEOUT_KEYS)
    values = asdict(base)
    for name, (_k, vnode) in entries.items():
        values[name] = r.seconds(vnode, f"timeouts.{name}")
    return Timeouts(**values)


def _timeline(r: Reader, node: Node, base: TimelineConfig) -> TimelineConfig:
    """``timeline: false`` (none), or a mapping of TimelineConfig's keys."""
    if isinstance(node, ScalarNode):
        value = r.scalar(node, "timeline", "true, false or a mapping")
        if not isinstance(value, bool):
            raise r.error(node, "timeline", f"expected true, false or a mapping, got {show(node)}")
        return replace(base, enabled=value)
    values = asdict(base)
    for name, (_k, vnode) in r.mapping(node, "timeline", values).items():
        value = r.scalar(vnode, f"timeline.{name}", "true or false")
        if not isinstance(value, bool):
            raise r.error(vnode, f"timeline.{name}", f"expected true or false, got {show(vnode)}")
        values[name] = value
    return TimelineConfig(**values)


def _ftrace(r: Reader, node: Node, base: FtraceConfig) -> FtraceConfig:
    """``ftrace: true|false``, or a mapping of FtraceConfig's keys."""
    if isinstance(node, ScalarNode):
        value = r.scalar(node, "ftrace", "true, false or a mapping")
        if not isinstance(value, bool):
            raise r.error(node, "ftrace", f"expected true, false or a mapping, got {show(node)}")
        return replace(base, enabled=value)
    values = asdict(base)
    for name, (_k, vnode) in r.mapping(node, "ftrace", values).items():
        key = f"ftrace.{name}"
        if name == "enabled":
            value = r.scalar(vnode, key, "true or false")
            if not isinstance(value, bool):
                raise r.error(vnode, key, f"expected true or false, got {show(vnode)}")
            values[name] = value
        elif name == "buffer_kb":
            values[name] = r.integer(vnode, key, *FTRACE_BUFFER_KB)
        else:
            events = []
            for i, enode in enumerate(r.sequence(vnode, key, 'events like "hmm_gpu" or '
                                                             '"tlb:tlb_flush"')):
                ev = r.scalar(enode, f"{key}[{i}]", 'an event like "hmm_gpu" or "tlb:tlb_flush"')
                if not isinstance(ev, str) or not _FTRACE_EVENT_RE.match(ev):
                    raise r.error(enode, f"{key}[{i}]", "expected a trace system (\"migrate\") "
                                  f"or system:event (\"tlb:tlb_flush\"), got {show(enode)}")
                events.append(ev)
            if not events:
                raise r.error(vnode, key, "needs at least one event (or ftrace: false)")
            values[name] = tuple(events)
    return FtraceConfig(**values)


# ---- loading ---------------------------------------------------------------------

def compose(text: str, source: str) -> Node | None:
    """YAML text as nodes (with their lines), None if empty; bad YAML is a ConfigError."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, line, "", f"not valid YAML: {e.problem or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(source, None, "", f"not valid YAML: {e}") from e


def _known_scenarios() -> tuple[str, ...]:
    from harness.core.catalog import SCENARIOS

    return tuple(SCENARIOS)


def _apply(
    cfg: dict[str, Any], text: str, source: str, known_scenarios: tuple[str, ...]
) -> dict[str, Any]:
    """Overlay the keys of one YAML document onto ``cfg`` (a dict of parsed fields)."""
    root = compose(text, source)
    if root is None:  # empty file: all defaults
        return cfg
    r = Reader(source)
    parsers: dict[str, Callable[[Node], Any]] = {
        "kernel": lambda n: _kernel(r, n),
        "flavor": lambda n: r.choice(n, "flavor", FLAVORS),
        "machine": lambda n: r.choice(n, "machine", MACHINES),
        "iommu": lambda n: r.choice(n, "iommu", IOMMUS),
        "cmdline": lambda n: _cmdline(r, n),
        "memory": lambda n: _memory(r, n),
        "cpus": lambda n: r.integer(n, "cpus", 1, 64),
        "accel": lambda n: r.choice(n, "accel", ACCELS),
        "devices": lambda n: _devices(r, n),
        "scenarios": lambda n: _scenarios(r, n, known_scenarios),
        "timeouts": lambda n: _timeouts(r, n, cfg.get("timeouts", Timeouts())),
        "timeline": lambda n: _timeline(r, n, cfg.get("timeline", TimelineConfig())),
        "ftrace": lambda n: _ftrace(r, n, cfg.get("ftrace", FtraceConfig())),
    }
    out = dict(cfg)
    for name, (_k, vnode) in r.mapping(root, "", parsers).items():
        out[name] = parsers[name](vnode)
    return out


def parse_keys(
    text: str, source: str, known_scenarios: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The keys one YAML text sets, each checked as in a run file (no defaults,
    no rules across keys): a matrix checks its axis values with it."""
    known = known_scenarios if known_scenarios is not None else _known_scenarios()
    return _apply({}, text, source, known)


def default_text() -> str:
    return resources.files("harness.core").joinpath(DEFAULT_NAME).read_text()


def load_text(
    text: str, source: str = "<string>", known_scenarios: tuple[str, ...] | None = None
) -> RunConfig:
    """Parse a run file's text over the packaged defaults."""
    known = known_scenarios if known_scenarios is not None else _known_scenarios()
    fields = _apply({}, default_text(), DEFAULT_NAME, known)
    missing = ({f for f in RunConfig.__dataclass_fields__ if f not in ("source", "kernel_tree")}
               - fields.keys())
    if missing:  # a broken package, not a user error
        raise ConfigError(DEFAULT_NAME, None, "", f"missing keys {sorted(missing)}")
    if source != DEFAULT_NAME:
        fields = _apply(fields, text, source, known)
    check(fields, text, source)
    return RunConfig(source=source, **fields)


def check(fields: dict[str, Any], text: str, source: str) -> None:
    """Rules across keys, reported at the line of the key that breaks them."""
    if fields["iommu"] == "intel-iommu" and fields["machine"] != "q35":
        raise ConfigError(source, _key_line(text, "iommu"), "iommu",
                          f"intel-iommu needs machine q35, got machine {fields['machine']}")


def _key_line(text: str, key: str) -> int | None:
    """The line of top-level ``key`` in ``text`` (None when it is not there)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
    if isinstance(root, MappingNode):
        for knode, _v in root.value:
            if knode.value == key:
                return line_of(knode)
    return None


def load(path: Path | None, known_scenarios: tuple[str, ...] | None = None) -> RunConfig:
    """Load ``path`` over the defaults; ``None`` gives the defaults alone."""
    if path is None:
        return load_text(default_text(), DEFAULT_NAME, known_scenarios)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(str(path), None, "", f"cannot read: {e.strerror}") from e
    return load_text(text, str(path), known_scenarios)

"""Matrix files: axes of run-file values expanded into cells, one guest each.

A matrix file is YAML with a top-level ``axes:`` (that is how ``hmmlab run``
tells it from a run file)::

    axes:
      kernel: ["6.1", "6.12", "7.2"]
      iommu: ["off", intel-iommu]
    base: {cpus: 2, timeouts: {scenario: 600}}    # run-file keys every cell shares
    include: [{kernel: "6.12", flavor: debug}]    # extra cells (one each)
    exclude: [{kernel: "7.2", iommu: intel-iommu}] # drop the product's cells matching
    pairwise: false                                 # all-pairs instead of all combinations
    cell_keys:                                      # run-file keys that are no axis, for
      - where: {kernel: "6.12", iommu: "off"}       #   the cells with these axis values
        set: {ftrace: true}

Each cell is ``base`` (over ``default.yaml``) with one value of every axis,
checked as a run file (:func:`harness.core.config.load_text`). Every error names
the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.core import config
from harness.core.config import (
    ConfigError,
    DeviceConfig,
    Reader,
    RunConfig,
    compose,
    line_of,
    show,
)
from harness.core.progress import count

DEFAULT_NAME = "matrix-default.yaml"
DEFAULT_SOURCE = "<default matrix>"

# In the order cell names and tables show them.
AXES = ("kernel", "flavor", "machine", "iommu", "cmdline", "cpus", "memory", "devices",
        "scenarios")
SCALAR_AXES = AXES[:7]
TOP_KEYS = ("axes", "base", "include", "exclude", "pairwise", "cell_keys")
_SET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._+-]+")
DROPPED_SHOWN = 8  # per rule, in `matrix list`


@dataclass(frozen=True)
class AxisValue:
    """One value of an axis."""

    axis: str
    name: str  # as tables show it: "6.12", "intel-iommu", "2", "2048M", a set's name
    value: Any  # the RunConfig field: str, int, tuple[DeviceConfig, ...], tuple[str, ...]
    token: str  # its part of a cell name


@dataclass(frozen=True)
class Cell:
    name: str
    axes: dict[str, str]  # axis -> AxisValue.name
    config: RunConfig
    text: str  # the cell as a run file (cell.yaml); config is this text, loaded
    origin: str  # "axes" or "include[N]"
    keys: tuple[str, ...] = ()  # run-file keys cell_keys set for it


    @property
    def kernel_label(self) -> str:
        return kernel_label(self.config)


@dataclass(frozen=True)
class Dropped:
    axes: dict[str, str]
    rule: str


@dataclass(frozen=True)
class Matrix:
    source: str
    text: str
    cells: tuple[Cell, ...]
    dropped: tuple[Dropped, ...]
    combinations: int  # of the axes' product
    pairwise: bool
    pairwise_dropped: int  # combinations all-pairs did not need
    kernel_tree: str | None

    def axes(self) -> dict[str, list[str]]:
        """Every axis with the values its cells take, in order of appearance."""
        out: dict[str, list[str]] = {a: [] for a in AXES}
        for c in self.cells:
            for a in AXES:
                if c.axes[a] not in out[a]:
                    out[a].append(c.axes[a])
        return out

    def varying(self) -> list[str]:
        return [a for a, vals in self.axes().items() if len(vals) > 1]

    def empty_reason(self) -> str:
        """Why a run of this matrix tested nothing when it has no cells."""
        if not self.dropped:
            return "the matrix has no cells"
        return (f"the matrix has no cells after exclude (all {self.combinations} "
                f"combinations of its axes dropped)")

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(name)


def kernel_label(cfg: RunConfig) -> str:
    """What kernel a cell boots: "6.12", "6.12-debug", "tree:/src/linux"."""
    base = f"tree:{cfg.kernel_tree}" if cfg.kernel_tree else cfg.kernel
    return base if cfg.flavor == "default" else f"{base}-{cfg.flavor}"


def safe(text: str) -> str:
    """``text`` with anything but letters, digits and ``._+-`` made ``_``."""
    return _UNSAFE_RE.sub("_", text).strip("_") or "_"


# ---- values ------------------------------------------------------------------------------

def _memory_name(mib: int) -> str:
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _scalar_value(axis: str, value: Any) -> AxisValue:
    if axis == "iommu":
        return AxisValue(axis, value, value, "iommu" if value == "intel-iommu" else "noiommu")
    if axis == "cpus":
        return AxisValue(axis, str(value), value, f"{value}cpu")
    if axis == "memory":
        return AxisValue(axis, _memory_name(value), value, _memory_name(value))
    if axis == "cmdline":  # named by its parameters: "swiotlb=force" -> swiotlb
        token = "+".join(a.split("=", 1)[0] for a in value.split())
        return AxisValue(axis, value or "none", value, safe(token) if value else "nocmdline")
    return AxisValue(axis, str(value), value, safe(str(value)))


def _set_value(axis: str, name: str, value: tuple[Any, ...]) -> AxisValue:
    return AxisValue(axis, name, value, safe(name))


def _base_value(axis: str, cfg: RunConfig) -> AxisValue:
    """The value of an axis the matrix does not list: the base's."""
    value = getattr(cfg, axis)
    if axis == "devices":
        return _set_value(axis, "base", value)
    if axis == "scenarios":
        return _set_value(axis, "+".join(value) if len(value) <= 2 else "base", value)
    return _scalar_value(axis, value)


def _devices_name(devices: tuple[DeviceConfig, ...]) -> str:
    """A name for an unnamed device list: its size and a short hash of it."""
    digest = hashlib.sha256(repr(devices).encode()).hexdigest()[:6]
    return f"{len(devices)}dev-{digest}"


# ---- reading --------------------------------------------------------------------------------

class _MatrixReader(Reader):
    def __init__(self, source: str, text: str, known: tuple[str, ...]) -> None:
        super().__init__(source)
        self.text = text
        self.known = known

    def _snippet(self, node: Node) -> tuple[str, int]:
        """The node's text and its column, with as many lines before it as in the file."""
        start, end = node.start_mark, node.end_mark
        return self.text[start.index:end.index], start.column

    def field(self, name: str, node: Node, key: str) -> Any:
        """Parse ``node`` as the run-file key ``name``, with the run file's checks.

        The node's text is re-read as ``name: <text>`` at the same line, so
        the run file's own parser reports errors at the right line; ``key``
        (e.g. ``axes.devices.big``) replaces ``name`` in what it says.
        """
        body, column = self._snippet(node)
        if column == 0 and not isinstance(node, SequenceNode):
            column = 1
        line0 = node.start_mark.line
        snippet = "\n" * max(line0 - 1, 0) + f"{name}:\n" + " " * column + body
        try:
            return config.parse_keys(snippet, self.source, self.known)[name]
        except ConfigError as e:
            raise self._rekey(e, name, key) from None

    def base(self, node: Node) -> RunConfig:
        """The ``base:`` block: a run file over the defaults, read where it stands."""
        body, column = self._snippet(node)
        snippet = "\n" * node.start_mark.line + " " * column + body
        try:
            return config.load_text(snippet, self.source, self.known)
        except ConfigError as e:
            raise ConfigError(e.source, e.line, f"base.{e.key}" if e.key else "base",
                              e.message) from None

    def _rekey(self, e: ConfigError, name: str, key: str) -> ConfigError:
        rest = e.key[len(name):] if e.key.startswith(name) else ""
        return ConfigError(e.source, e.line, key + rest if e.key else key, e.message)

    def boolean(self, node: Node, key: str) -> bool:
        value = self.scalar(node, key, "true or false")
        if not isinstance(value, bool):
            raise self.error(node, key, f"expected true or false, got {show(node)}")
        return value

    def set_name(self, node: Node, key: str) -> str:
        name = self.scalar(node, key, "a set name")
        if not isinstance(name, str) or not _SET_NAME_RE.match(name):
            raise self.error(node, key, "a set name is letters, digits and ._+- "
                                        f"(it becomes part of cell names), got {show(node)}")
        return name


@dataclass
class _Spec:
    """A matrix file, read and checked, before expansion."""

    base: RunConfig
    axes: dict[str, list[AxisValue]]  # listed axes only
    sets: dict[str, dict[str, AxisValue]]  # devices/scenarios sets by name
    include: list[tuple[dict[str, AxisValue], int]]  # (assignment, line)
    exclude: list[tuple[dict[str, AxisValue], int]]
    pairwise: bool
    axes_line: int
    # (axis values a cell must have, run-file keys to set, line)
    cell_keys: list[tuple[dict[str, AxisValue], dict[str, Any], int]] = dataclasses.field(
        default_factory=list)


def _read_axis(r: _MatrixReader, axis: str, node: Node) -> list[AxisValue]:
    key = f"axes.{axis}"
    if axis == "devices":
        return _read_named_sets(r, axis, node, key)
    if axis == "scenarios" and isinstance(node, MappingNode):
        return _read_named_sets(r, axis, node, key)
    items = [node] if isinstance(node, ScalarNode) and node.value != "" else r.sequence(
        node, key, f"{axis} values")
    if not items:
        raise r.error(node, key, f"needs at least one value (or remove {axis} from axes)")
    out: list[AxisValue] = []
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]"
        if axis == "scenarios":
            value = _scenario_set(r, item, ikey, {})
        else:
            value = _scalar_value(axis, r.field(axis, item, ikey))
        if any(v.value == value.value for v in out):
            raise r.error(item, ikey, f"{value.name} is listed twice")
        out.append(value)
    return out


def _read_named_sets(r: _MatrixReader, axis: str, node: Node, key: str) -> list[AxisValue]:
    if not isinstance(node, MappingNode):
        what = "device lists" if axis == "devices" else "scenario lists"
        raise r.error(node, key, f"expected named sets, like {{name: [...]}}, of {what}, "
                                 f"got {show(node)}")
    out: list[AxisValue] = []
    for knode, vnode in node.value:
        name = r.set_name(knode, key)
        skey = f"{key}.{name}"
        if any(v.name == name for v in out):
            raise r.error(knode, skey, "duplicate set name")
        value = tuple(r.field(axis, vnode, skey))
        if axis == "scenarios" and not value:
            raise r.error(vnode, skey, "a scenario set needs at least one scenario")
        out.append(_set_value(axis, name, value))
    if not out:
        raise r.error(node, key, f"needs at least one set (or remove {axis} from axes)")
    return out


def _scenario_set(r: _MatrixReader, node: Node, key: str,
                  sets: dict[str, AxisValue]) -> AxisValue:
    """A scenario set: a set's name, one scenario's name, or a list of scenarios."""
    if isinstance(node, ScalarNode):
        name = str(node.value)
        if name in sets:
            return sets[name]
        if name in r.known:
            return _set_value("scenarios", name, (name,))
        choices = [*sets, *r.known]
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise r.error(node, key, f"not a scenario set or scenario: {show(node)}{hint} "
                                 f"(known: {', '.join(choices)})")
    value = tuple(r.field("scenarios", node, key))
    if not value:
        raise r.error(node, key, "a scenario set needs at least one scenario")
    return _set_value("scenarios", "+".join(value), value)


def _assignment(r: _MatrixReader, node: Node, key: str, spec_sets: dict[str, dict[str, AxisValue]]
                ) -> dict[str, AxisValue]:
    """An include/exclude entry: some axes, one value each."""
    entries = r.mapping(node, key, AXES)
    if not entries:
        raise r.error(node, key, f"give at least one axis ({', '.join(AXES)})")
    out: dict[str, AxisValue] = {}
    for axis, (_k, vnode) in entries.items():
        akey = f"{key}.{axis}"
        if axis == "scenarios":
            out[axis] = _scenario_set(r, vnode, akey, spec_sets["scenarios"])
        elif axis == "devices":
            sets = spec_sets["devices"]
            if isinstance(vnode, ScalarNode):
                name = str(vnode.value)
                if name not in sets:
                    known = ", ".join(sets) or "none: name sets under axes.devices"
                    raise r.error(vnode, akey, f"no device set named {show(vnode)} "
                                               f"(known: {known}), or give a list of devices")
                out[axis] = sets[name]
            else:
                devs = tuple(r.field(axis, vnode, akey))
                named = next((v for v in sets.values() if v.value == devs), None)
                out[axis] = named or _set_value(axis, _devices_name(devs), devs)
        else:
            if isinstance(vnode, SequenceNode):
                raise r.error(vnode, akey, "one value here, not a list (add one entry "
                                           "per value)")
            out[axis] = _scalar_value(axis, r.field(axis, vnode, akey))
    return out


def _read(text: str, source: str, known: tuple[str, ...]) -> _Spec:
    root = compose(text, source)
    r = _MatrixReader(source, text, known)
    if root is None:
        raise ConfigError(source, None, "axes", "empty file: a matrix needs axes:")
    entries = r.mapping(root, "", TOP_KEYS)
    if "axes" not in entries:
        raise r.error(root, "axes", "missing: a matrix needs axes: (a file without it is a "
                                    "run file)")
    axes_knode, axes_node = entries["axes"]
    axes_entries = r.mapping(axes_node, "axes", AXES) if not (
        isinstance(axes_node, ScalarNode) and axes_node.value == "") else {}
    axes = {a: _read_axis(r, a, vnode) for a, (_k, vnode) in axes_entries.items()}
    # Keep AXES order whatever the file's.
    axes = {a: axes[a] for a in AXES if a in axes}

    base = config.load(None, known)
    if "base" in entries:
        bnode = entries["base"][1]
        if isinstance(bnode, MappingNode):
            for knode, _v in bnode.value:
                if isinstance(knode, ScalarNode) and knode.value in axes:
                    raise r.error(knode, f"base.{knode.value}",
                                  f"{knode.value} is an axis here (line "
                                  f"{line_of(axes_entries[knode.value][0])}): set it in one place")
            base = r.base(bnode)
        elif not (isinstance(bnode, ScalarNode) and bnode.value == ""):
            raise r.error(bnode, "base", f"expected run-file keys, got {show(bnode)}")

    sets = {a: {v.name: v for v in axes.get(a, [])} for a in ("devices", "scenarios")}
    include = [(_assignment(r, n, f"include[{i}]", sets), line_of(n))
               for i, n in enumerate(r.sequence(entries["include"][1], "include", "cells"))
               ] if "include" in entries else []
    exclude = [(_assignment(r, n, f"exclude[{i}]", sets), line_of(n))
               for i, n in enumerate(r.sequence(entries["exclude"][1], "exclude", "cells"))
               ] if "exclude" in entries else []
    pairwise = r.boolean(entries["pairwise"][1], "pairwise") if "pairwise" in entries else False
    cell_keys = [_cell_keys(r, n, f"cell_keys[{i}]", sets) for i, n in enumerate(
        r.sequence(entries["cell_keys"][1], "cell_keys", "{where: ..., set: ...}"))
                 ] if "cell_keys" in entries else []
    return _Spec(base, axes, sets, include, exclude, pairwise, line_of(axes_knode), cell_keys)


def _plain(value: Any) -> Any:
    """A parsed run-file value as YAML writes it back (dataclasses and tuples undone)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _cell_keys(r: _MatrixReader, node: Node, key: str, sets: dict[str, dict[str, AxisValue]]
               ) -> tuple[dict[str, AxisValue], dict[str, Any], int]:
    """A cell_keys entry: ``where`` (axis values, as an include's) and ``set`` (run-file
    keys that are not axes, each checked as in a run file)."""
    entries = r.mapping(node, key, ("where", "set"))
    for need in ("where", "set"):
        if need not in entries:
            raise r.error(node, key, f"missing key {need} (where: {{axis: value}}, "
                                     "set: {run-file key: value})")
    where = _assignment(r, entries["where"][1], f"{key}.where", sets)
    snode = entries["set"][1]
    if not isinstance(snode, MappingNode) or not snode.value:
        raise r.error(snode, f"{key}.set", f"expected run-file keys, got {show(snode)}")
    values: dict[str, Any] = {}
    for knode, vnode in snode.value:
        name = str(knode.value)
        if name in AXES:
            raise r.error(knode, f"{key}.set.{name}", f"{name} is an axis: give the cell "
                                                     "that value with include instead")
        known = [f for f in config.RunConfig.__dataclass_fields__
                 if f not in AXES and f not in ("source", "kernel_tree")]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise r.error(knode, f"{key}.set.{name}", f"not a run-file key{hint} "
                                                     f"(known: {', '.join(known)})")
        values[name] = _plain(r.field(name, vnode, f"{key}.set.{name}"))
    return where, values, line_of(node)


# ---- expansion ------------------------------------------------------------------------------

Assignment = dict[str, AxisValue]


def _matches(asg: Assignment, partial: Assignment) -> bool:
    """Whether ``asg`` has every value ``partial`` gives (False if ``asg`` lacks an axis)."""
    return all(a in asg and asg[a].value == v.value for a, v in partial.items())


def _auto_rule(asg: Assignment) -> str | None:
    """Why a combination of the axes (or part of one) cannot run, or None."""
    if "iommu" in asg and "machine" in asg and (
            asg["iommu"].value == "intel-iommu" and asg["machine"].value != "q35"):
        return "intel-iommu needs machine q35 (automatic rule)"
    return None


def _show_axes(asg: Assignment, axes: Sequence[str]) -> dict[str, str]:
    return {a: asg[a].name for a in axes}


def _pairwise(values: dict[str, list[AxisValue]], why_not: Callable[[Assignment], str | None]
              ) -> list[Assignment]:
    """Combinations covering every pair of values (of two axes) that some allowed
    combination has; ``why_not`` judges full and partial assignments.

    allpairspy generates them; with a filter it can leave such a pair
    uncovered, so each pair still missing gets an allowed combination with it.
    """
    from allpairspy import AllPairs

    multi = [a for a in AXES if len(values[a]) > 1]
    if len(multi) < 2:
        return [a for a in _product(values) if why_not(a) is None]
    fixed = {a: values[a][0] for a in AXES if a not in multi}

    def assign(idx: Sequence[int]) -> Assignment:
        return {**fixed, **{a: values[a][i] for a, i in zip(multi, idx, strict=False)}}

    def pairs(row: Sequence[int]) -> set[tuple[int, int, int, int]]:
        return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}

    rows = [list(r) for r in AllPairs([list(range(len(values[a]))) for a in multi],
                                      filter_func=lambda r: why_not(assign(r)) is None)]
    rows = [r for r in rows if len(r) == len(multi) and why_not(assign(r)) is None]
    allowed = [r for r in itertools.product(*[range(len(values[a])) for a in multi])
               if why_not(assign(r)) is None]
    missing: set[tuple[int, int, int, int]] = set()
    for combo in allowed:
        missing |= pairs(combo)
    for row in rows:
        missing -= pairs(row)
    while missing:
        best = max(allowed, key=lambda r: len(pairs(r) & missing))
        rows.append(list(best))
        missing -= pairs(best)
    return [{a: assign(r)[a] for a in AXES} for r in rows]


def _product(values: dict[str, list[AxisValue]]) -> list[Assignment]:
    return [dict(zip(AXES, combo, strict=True))
            for combo in itertools.product(*(values[a] for a in AXES))]


def _names(assignments: list[Assignment], first: Assignment) -> list[str]:
    """Short, unique, filesystem-safe names: the kernel, then each varying axis's
    value unless it is that axis's first (listed) one."""
    varying = [a for a in AXES if a != "kernel" and
               len({repr(x[a].value) for x in assignments}) > 1]

    def name(asg: Assignment, every: bool) -> str:
        parts = [asg["kernel"].token]
        parts += [asg[a].token for a in varying
                  if every or asg[a].value != first[a].value]
        return "-".join(parts)

    names = [name(a, False) for a in assignments]
    if len(set(names)) < len(names):
        names = [name(a, True) for a in assignments]
    seen: dict[str, int] = {}
    out = []
    for n in names:  # still the same (set names that look alike): number them
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _cell_text(base: RunConfig, asg: Assignment, keys: dict[str, Any] | None = None) -> str:
    d = base.to_dict()
    d.pop("source")
    d.pop("kernel_tree")
    d.update(keys or {})
    for a in AXES:
        v = asg[a].value
        if a == "devices":
            v = [dev.to_dict() for dev in v]
        elif a == "scenarios":
            v = list(v)
        d[a] = v
    return yaml.safe_dump(d, sort_keys=False)


def expand(spec: _Spec, source: str, text: str, known: tuple[str, ...],
           kernel_tree: str | None = None) -> Matrix:
    values = {a: list(spec.axes.get(a) or [_base_value(a, spec.base)]) for a in AXES}
    first = {a: vals[0] for a, vals in values.items()}
    listed = [a for a in AXES if len(values[a]) > 1]

    dropped: list[Dropped] = []
    combinations = _product(values)

    def why_not(asg: Assignment) -> str | None:
        for i, (partial, line) in enumerate(spec.exclude):
            if _matches(asg, partial):
                return f"exclude[{i}] ({source}:{line})"
        return _auto_rule(asg)

    for asg in combinations:
        why = why_not(asg)
        if why:
            dropped.append(Dropped(_show_axes(asg, listed), why))
    allowed = [a for a in combinations if why_not(a) is None]
    pairwise_dropped = 0
    if spec.pairwise:
        chosen = _pairwise(values, why_not)
        pairwise_dropped = len(allowed) - len(chosen)
        allowed = chosen
    cells: list[tuple[Assignment, str]] = [(a, "axes") for a in allowed]

    for i, (partial, line) in enumerate(spec.include):
        asg = {**first, **partial}
        why = _auto_rule(asg)
        if why:
            raise ConfigError(source, line, f"include[{i}]",
                              f"{why.removesuffix(' (automatic rule)')}: set machine: q35 "
                              "or iommu: \"off\"")
        cells.append((asg, f"include[{i}]"))

    shown = [a for a in AXES if len({repr(x[a].value) for x, _o in cells}) > 1] or ["kernel"]
    if kernel_tree:
        tree = AxisValue("kernel", f"tree:{kernel_tree}", spec.base.kernel,
                         safe(Path(kernel_tree).name) or "tree")
        first = {**first, "kernel": tree}

    # The same cell twice (an include of a combination already there, or
    # kernels that --kernel-tree made one): keep the first.
    unique: list[tuple[Assignment, str]] = []
    twins: list[tuple[Assignment, str, int]] = []  # (as written, origin, index in unique)
    for asg, origin in cells:
        final = {**asg, "kernel": tree} if kernel_tree else asg
        same = next((i for i, u in enumerate(unique) if _matches(u[0], final)), None)
        if same is None:
            unique.append((final, origin))
        else:
            twins.append((asg, origin, same))

    names = _names([a for a, _ in unique], first)
    for asg, origin, same in twins:
        how = " once --kernel-tree replaces the kernel" if kernel_tree else ""
        where = f" ({origin})" if origin != "axes" else ""
        dropped.append(Dropped(_show_axes(asg, shown),
                               f"same as cell {names[same]}{how}{where}"))
    out = []
    for (asg, origin), name in zip(unique, names, strict=True):
        keys: dict[str, Any] = {}
        for match, values, _line in spec.cell_keys:
            if _matches(asg, match):
                keys.update(values)
        text_ = _cell_text(spec.base, asg, keys)
        cfg = config.load_text(text_, f"{source}[{name}]", known)
        if kernel_tree:
            cfg = dataclasses.replace(cfg, kernel_tree=kernel_tree)
        out.append(Cell(name, {a: asg[a].name for a in AXES}, cfg, text_, origin,
                        tuple(keys)))
    return Matrix(source, text, tuple(out), tuple(dropped), len(combinations), spec.pairwise,
                  pairwise_dropped, kernel_tree)


# ---- loading ------------------------------------------------------------------------------------

def _known_scenarios() -> tuple[str, ...]:
    from harness.scenarios import names

    return names()


def default_text() -> str:
    return resources.files("harness.matrix").joinpath(DEFAULT_NAME).read_text()


def is_matrix_text(text: str) -> bool:
    """Whether a YAML text is a matrix (a top-level ``axes:``), not a run file."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return False  # the run-file reader will say what is wrong with it
    return isinstance(root, MappingNode) and any(
        isinstance(k, ScalarNode) and k.value == "axes" for k, _v in root.value)


def load_text(text: str, source: str = "<string>", kernel_tree: str | None = None,
              known_scenarios: tuple[str, ...] | None = None) -> Matrix:
    known = known_scenarios if known_scenarios is not None else _known_scenarios()
    spec = _read(text, source, known)
    return expand(spec, source, text, known, kernel_tree)


def load(path: Path | None, kernel_tree: str | None = None,
         known_scenarios: tuple[str, ...] | None = None) -> Matrix:
    """The matrix in ``path``; ``None`` gives the embedded default."""
    if path is None:
        return load_text(default_text(), DEFAULT_SOURCE, kernel_tree, known_scenarios)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(str(path), None, "", f"cannot read: {e.strerror}") from e
    return load_text(text, str(path), kernel_tree, known_scenarios)


# ---- showing ----------------------------------------------------------------------------------

def describe(m: Matrix) -> str:
    """``hmmlab matrix list``: the cells as a table, what was dropped and why, totals."""
    cols = ["cell", *AXES]
    rows = [[c.name, *(c.axes[a] for a in AXES)] for c in m.cells]
    widths = [max(len(x) for x in col) for col in zip(cols, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"matrix: {m.source}" + (f" (kernel: --kernel-tree {m.kernel_tree})"
                                      if m.kernel_tree else ""),
             fmt.format(*cols).rstrip()]
    lines += [fmt.format(*r).rstrip() for r in rows]
    if m.dropped:
        lines.append("dropped:")
        by_rule: dict[str, list[Dropped]] = {}
        for d in m.dropped:
            by_rule.setdefault(d.rule, []).append(d)
        for rule, drops in by_rule.items():
            for d in drops[:DROPPED_SHOWN]:
                what = " ".join(f"{a}={v}" for a, v in d.axes.items())
                lines.append(f"  {what}: {rule}")
            if len(drops) > DROPPED_SHOWN:
                lines.append(f"  ... and {len(drops) - DROPPED_SHOWN} more: {rule}")
    for c in m.cells:
        if c.keys:
            lines.append(f"{c.name}: also {', '.join(c.keys)} (cell_keys)")
    if m.pairwise_dropped:
        lines.append(f"pairwise: {m.pairwise_dropped} combinations not needed to cover "
                     "every pair of values")
    included = sum(1 for c in m.cells if c.origin != "axes")
    lines.append(f"{count(len(m.cells), 'cell')} ({len(m.cells) - included} of {m.combinations} "
                 f"combinations of the axes, {included} included), {len(m.dropped)} dropped")
    if not m.cells:
        lines.append(f"nothing to run: {m.empty_reason()}")
    return "\n".join(lines)

"""The ``hmmlab`` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.build.cache import SourceNotFound
from harness.core.config import DEFAULT_ROUNDS, ConfigError, RunConfig
from harness.core.logs import setup_logging
from harness.core.proc import sigterm_interrupts
from harness.core.results import EXIT_FAIL, EXIT_INFRA

if TYPE_CHECKING:
    from harness.build import Artifacts
    from harness.matrix.expand import Matrix

log = logging.getLogger(__name__)

DESCRIPTION = """\
hmmlab boots Linux guests in QEMU with an emulated PCI device (hmm-gpu)
whose every DMA the host can see, runs HMM driver scenarios in them and
reports the results.

Everything heavy (QEMU, the kernel, the initramfs, the driver) is built
once into a cache ($HMMLAB_CACHE, default ~/.cache/hmmlab) and reused
while its inputs do not change.
"""

EPILOG = """\
examples:
  hmmlab build                  build (or find in the cache) everything a run needs
  hmmlab run                    the default matrix (3 kernels x vIOMMU, 6.12 debug, 6.12 swiotlb)
  hmmlab run --kernel-tree ~/src/linux    the default matrix on your own kernel tree
  hmmlab run my.yaml --results out/       a run file (one guest) or a matrix file
  hmmlab matrix list            the default matrix's cells
  hmmlab run --rerun-failed results/<time>   only the cells that did not pass there
  hmmlab trace results/<time>/dmatrace-0.bin --records
  hmmlab bench svm              fault rate, bandwidth, fault latency: hmm_gpu.ko vs test_hmm.ko
  hmmlab bench odp              perftest bandwidth (ODP, pinned), ODP fault and invalidation
                                cost: hmm-nic vs rxe; fault round trip: hmm-nic vs hmm-gpu
  hmmlab bench trace            the DMA trace's targets before and after: decode+check rate,
                                memory, bytes on disk, checks' share of a 7.2 run, tracing on/off
  hmmlab bench ftrace           what the guest's ftrace costs: hmm-bench, tracing on vs off

exit status of `run`: 0 every test passed, 1 a test failed (a hang, a guest that
died under a test included), 2 an infrastructure problem (build failed, QEMU would
not start) got in the way or nothing was tested (no test ran, all were skipped).
"""

RUN_HELP = """\
Run a matrix of guests, or one guest: build what is missing, boot, run the
scenarios and write results.json (and logs, traces) to the results directory.

FILE is a run file (one guest) whose keys override the defaults:

  kernel: "6.12"      6.1 | 6.12 | 7.2 | stock-6.1      flavor: default | debug
  machine: q35 | pc   iommu: "off" | intel-iommu (q35 only)
  cmdline: "swiotlb=force"   (kernel arguments added to the harness's)
  memory: 2048 (MiB) or "2G"   cpus: 2   accel: auto | kvm | tcg
  devices: [{type: hmm-gpu, props: {name: value}}]
  scenarios: [smoke, hmm-tests, ...]
  timeouts: {boot: 120, no_output: 60, scenario: 300}   (seconds)

or a matrix file (it has axes:): axes over kernel, flavor, machine, iommu,
cmdline, cpus, memory, devices, scenarios; base: run-file keys every cell shares;
include:/exclude: cells; pairwise: true. `hmmlab matrix list FILE` shows the
cells. Without FILE the embedded default matrix runs. A matrix runs each cell
in its own process, in parallel (-j), into cells/<cell>/ of the results
directory, with a merged results.json at its top.
"""


BENCH_HELP = """\
Measure (not a test) and print a table of figures, each median (min-max)
over rounds or runs, next to its baseline and the project's target; bench.json
in the results directory has every round's raw data.

svm    hmm_gpu.ko next to test_hmm.ko in the same guest, taking turns: pages
       faulted+mapped per second, READ/WRITE bandwidth on mirrored memory (4 KiB
       pages and THP), one fault's round trip, migration bandwidth both ways,
       the CPU fault-back of a migrated page (--rounds).
odp    ib_write_bw/ib_read_bw with --odp and pinned between two cabled hmm-nics
       next to rxe in the same guest (7.2 unless CONFIG.yaml says otherwise),
       ODP/pinned ratios, the cost of one ODP page fault and one ODP
       invalidation, the fault round trip (record to replay, from the DMA
       traces) of hmm-nic next to hmm-gpu's (--rounds).
trace  the DMA trace's targets (issue 12), each before and after:
       decode+check records/s and the checks' peak memory against the trace's
       size (the old decoder next to the new, on the run's biggest hmm-gpu
       trace, --runs fresh processes each); the traces' bytes on disk against
       their raw stream; a 7.2 cell's post-run checks against its wall time;
       a workload's wall time with tracing on against off (two hmm-gpus in one
       guest, one with trace: false; the DMA-heaviest of hmm-bench,
       svm-migrate and vram-pressure, --runs rounds). Runs a 7.2 guest with
       the GPU scenarios (CONFIG.yaml's kernel if given) into DIR/cell, or
       takes the 7.2 cell of --from-run, and the on/off guest into DIR/onoff.
ftrace hmm-bench's figures with the guest's ftrace on (the run file's ftrace
       events) next to off, in the same guest (--rounds).

examples:
  hmmlab bench svm --rounds 5
  hmmlab bench trace --runs 3                    everything, into results/<time>
  hmmlab bench trace --from-run results/<time>   the trace figures of that run
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hmmlab", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show debug messages on the terminal (run.log always has them)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser("build", help="build QEMU, the kernel, the rootfs and the driver",
                       description="Build (or find in the cache) every artifact a run needs "
                                   "and print where they are.")
    b.add_argument("--kernel", metavar="VERSION",
                   help="kernel to build: 6.1, 6.12, 7.2 or stock-6.1 (default: every kernel "
                        "and flavor of the default matrix)")
    b.add_argument("--flavor", choices=["default", "debug"],
                   help="debug: KASAN, lockdep, DEBUG_VM, hang detectors (default: default)")
    b.add_argument("--kernel-tree", type=Path, metavar="PATH",
                   help="build your own kernel source tree instead")
    b.add_argument("--logs", type=Path, metavar="DIR",
                   help="where build logs go (default: the cache's logs/ directory)")

    r = sub.add_parser("run", help="run a matrix (default) or one configuration",
                       description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", nargs="?", type=Path, metavar="FILE.yaml",
                   help="a matrix or a run file (default: the embedded default matrix)")
    r.add_argument("--results", type=Path, metavar="DIR",
                   help="results directory (default: ./results/<UTC time>/)")
    r.add_argument("--kernel-tree", type=Path, metavar="PATH",
                   help="boot your own kernel source tree instead of the kernel(s) named")
    r.add_argument("-j", "--jobs", type=_positive_int("a number of cells"), metavar="N",
                   help="matrix: cells at once (default: from the cores and free memory)")
    r.add_argument("--rerun-failed", type=Path, metavar="RESULTS_DIR",
                   help="matrix: run only the cells that FAILed, ERRORed or were MISSing in "
                        "that earlier matrix run (its matrix, unless FILE is given)")
    r.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                   help="matrix: kill a cell after this long (default: from its timeouts)")

    mx = sub.add_parser("matrix", help="show a matrix's cells",
                        description="Matrix files: `hmmlab matrix list [FILE]` prints the "
                                    "cells a matrix expands to (name and axis values), the "
                                    "combinations dropped and the rule that dropped each.")
    mxs = mx.add_subparsers(dest="matrix_command", metavar="ACTION", required=True)
    ml = mxs.add_parser("list", help="print the expanded cells")
    ml.add_argument("config", nargs="?", type=Path, metavar="MATRIX.yaml",
                    help="matrix file (default: the embedded default matrix)")
    ml.add_argument("--kernel-tree", type=Path, metavar="PATH",
                    help="replace the kernel axis with your own kernel source tree")

    bn = sub.add_parser(
        "bench", help="measure (not a test): hmm_gpu.ko next to test_hmm.ko, hmm-nic next "
                      "to rxe",
        description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    bn.add_argument("which", choices=["svm", "odp", "trace", "ftrace"], help="the benchmark")
    bn.add_argument("config", nargs="?", type=Path, metavar="CONFIG.yaml",
                    help="run file for the guest (default: the packaged default; its "
                         "scenarios are replaced by the benchmark)")
    bn.add_argument("--results", type=Path, metavar="DIR",
                    help="results directory (default: ./results/<UTC time>/)")
    bn.add_argument("--rounds", type=_positive_int("a number of rounds"), metavar="N",
                    default=DEFAULT_ROUNDS,
                    help=f"rounds, each measuring the device then its baseline (default: "
                         f"{DEFAULT_ROUNDS})")
    bn.add_argument("--runs", type=_positive_int("a number of runs"), metavar="N", default=3,
                    help="trace: fresh processes per decode+check figure, and rounds of "
                         "tracing on/off (default: 3)")
    bn.add_argument("--from-run", type=Path, metavar="DIR",
                    help="trace: take the trace figures from this run's results (a run, a "
                         "matrix: its 7.2 cell, or an earlier bench trace) instead of "
                         "running the 7.2 guest")

    t = sub.add_parser(
        "trace", help="decode and query a DMA trace file (dmatrace-N.bin, dmatrace-nicN.bin)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print a summary of a hmm-gpu or hmm-nic DMA trace (records, bytes and "
                    "errors by kind and direction, by engine), or the records a query picks. "
                    "The device's engines are named after the file's name "
                    "(dmatrace-nicN.bin: hmm-nic) unless --device says otherwise.",
        epilog="queries (combine them; numbers in decimal or 0x hex):\n"
               "  hmmlab trace F --records --limit 20      the first 20 records (decodes only"
               " them)\n"
               "  hmmlab trace F --kind PTW --kind EV_TLB_INV   walks and invalidations\n"
               "  hmmlab trace F --addr 0x1000000-0x1200000 DMA overlapping that bus/guest-"
               "physical range\n"
               "  hmmlab trace F --from 2e9 --to 2.5e9     records with 2 s <= timestamp < 2.5 s\n"
               "  hmmlab trace F --fault 0x7f12345000      a fault's life: fault record, walks,\n"
               "                                           invalidations, replay/cancel, rewalk,"
               " access\n"
               "                                           (by faulting VA page or token)\n"
               "  hmmlab trace F --json ...                one JSON object for scripts")
    t.add_argument("file", type=Path, metavar="FILE")
    t.add_argument("--device", choices=("hmm-gpu", "hmm-nic"), default=None,
                   help="the device that wrote FILE (default: from the file name)")
    t.add_argument("--records", action="store_true", help="print every record too")
    t.add_argument("--limit", type=int, default=0, metavar="N",
                   help="print at most N records (without a query, only those are decoded)")
    t.add_argument("--kind", action="append", default=[], metavar="KIND",
                   help="only records of this kind (DATA, PTW, EV_TLB_INV, ...; repeatable)")
    t.add_argument("--addr", metavar="LO-HI",
                   help="only DMA overlapping the address range [LO, HI)")
    t.add_argument("--from", dest="t_from", metavar="NS", help="only records at or after NS")
    t.add_argument("--to", dest="t_to", metavar="NS", help="only records before NS")
    t.add_argument("--ctx", metavar="N", help="only records of device context N")
    t.add_argument("--fault", metavar="VA|TOKEN",
                   help="the life of the faults on this VA's page, or with this token")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _build_targets(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(kernel, flavor) pairs to build: the ones asked for, else the default matrix's."""
    if args.kernel or args.flavor or _kernel_tree(args):
        return [(args.kernel or "6.12", args.flavor or "default")]
    from harness.matrix import expand as matrix

    m = matrix.load(None)
    return list(dict.fromkeys((c.config.kernel, c.config.flavor) for c in m.cells))


def cmd_build(args: argparse.Namespace) -> int:
    from harness.build import build_all
    from harness.build.cache import Cache

    cache = Cache.default()
    logdir = args.logs or cache.path("logs")
    tree = _kernel_tree(args)
    targets = _build_targets(args)
    for kernel, flavor in targets:
        if len(targets) > 1:
            log.info("build: kernel %s, flavor %s", kernel, flavor)
        try:
            a = build_all(cache, logdir, kernel=kernel, flavor=flavor,
                          kernel_tree=Path(tree) if tree else None)
        except Exception as e:
            log.error("build of kernel %s (%s) failed: %s", kernel, flavor, e)
            log.debug("build failure", exc_info=True)
            return EXIT_INFRA
        print(f"qemu:    {a.qemu}")
        print(f"kernel:  {a.kernel_image}")
        for p in a.initrds:
            print(f"initrd:  {p}")
        print(f"ssh key: {a.ssh_key}")
    return 0


def _positive_int(what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from 1; the error says what it counts."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"expected {what} from 1, got {text!r}")
        return n

    return parse


def _kernel_tree(args: argparse.Namespace) -> str | None:
    tree = getattr(args, "kernel_tree", None)
    return str(tree.expanduser().resolve()) if tree is not None else None


def _load_config(args: argparse.Namespace) -> RunConfig | None:
    """The run configuration, or None after printing what is wrong with it."""
    from harness.core import config

    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"hmmlab: {e}", file=sys.stderr)
        return None
    tree = _kernel_tree(args)
    return dataclasses.replace(cfg, kernel_tree=tree) if tree else cfg


def _builder(cfg: RunConfig) -> Callable[[Path], Artifacts]:
    """Builds (or finds cached) everything a run of ``cfg`` needs."""

    def build(logdir: Path) -> Artifacts:
        from harness.matrix.scheduler import BuildKey, build_with_harness

        return build_with_harness(BuildKey(cfg.kernel, cfg.flavor, cfg.kernel_tree), logdir)

    return build


def _is_matrix(path: Path | None) -> bool:
    """Whether FILE is a matrix (no FILE: the default matrix)."""
    from harness.matrix import expand as matrix

    if path is None:
        return True
    try:
        return matrix.is_matrix_text(path.read_text())
    except OSError:
        return False  # the run-file loader says what is wrong


def cmd_run(args: argparse.Namespace) -> int:
    if _is_matrix(args.config) or args.rerun_failed is not None:
        return cmd_run_matrix(args)
    from harness.core.results import default_results_dir
    from harness.report import publish
    from harness.run import runner

    for flag, value in (("-j", args.jobs), ("--cell-timeout", args.cell_timeout)):
        if value is not None:
            print(f"hmmlab: {flag} is for matrix files; {args.config} is a run file (one "
                  "guest, no axes:)", file=sys.stderr)
            return EXIT_INFRA
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_INFRA
    results_dir = (args.results or default_results_dir()).resolve()
    # A SIGTERM (a CI job's timeout) ends the guest and writes results.json like Ctrl-C:
    # the scenario that ran and those after it are MISS.
    try:
        with sigterm_interrupts():
            res = runner.run(cfg, results_dir, build=_builder(cfg))
    except KeyboardInterrupt as e:
        print(f"hmmlab: interrupted ({e or 'Ctrl-C'}); results so far: {results_dir}",
              file=sys.stderr)
        if (results_dir / "results.json").exists():
            publish.write_reports(results_dir)  # what ran, in the same report as ever
        return EXIT_INFRA
    publish.write_reports(results_dir)
    print(res.table())
    print(f"results: {results_dir}")
    return res.exit_code()


def _load_matrix(path: Path | None, tree: str | None) -> Matrix | None:
    from harness.matrix import expand as matrix

    try:
        return matrix.load(path, kernel_tree=tree)
    except ConfigError as e:
        print(f"hmmlab: {e}", file=sys.stderr)
        return None


def cmd_run_matrix(args: argparse.Namespace) -> int:
    from harness.core.results import default_results_dir
    from harness.matrix import scheduler
    from harness.report import publish

    tree = _kernel_tree(args)
    path = args.config
    rerun_of = None
    names: list[str] | None = None
    if args.rerun_failed is not None:
        rerun_of = str(args.rerun_failed.resolve())
        try:
            previous = scheduler.load_previous(args.rerun_failed)
            names = scheduler.rerun_selection(previous)
        except ValueError as e:
            print(f"hmmlab: --rerun-failed {args.rerun_failed}: {e}", file=sys.stderr)
            return EXIT_INFRA
        if path is None:  # the matrix that ran there, as it was
            path = args.rerun_failed / "matrix.yaml"
            tree = tree or previous["matrix"].get("kernel_tree")
        if path is not None and not _is_matrix(path):
            print(f"hmmlab: --rerun-failed needs a matrix; {path} is a run file",
                  file=sys.stderr)
            return EXIT_INFRA
    m = _load_matrix(path, tree)
    if m is None:
        return EXIT_INFRA
    cells = list(m.cells)
    if names is not None:
        unknown = [n for n in names if n not in {c.name for c in m.cells}]
        if unknown:
            print(f"hmmlab: not in {m.source}, not rerun: {', '.join(unknown)}",
                  file=sys.stderr)
        cells = [c for c in m.cells if c.name in names]
        if not cells:
            print(f"hmmlab: nothing to rerun: every cell of {rerun_of} passed"
                  + (" or is unknown here" if unknown else ""))
            return 0
    results_dir = (args.results or default_results_dir()).resolve()
    timeout = (lambda _c: args.cell_timeout) if args.cell_timeout else None
    # A SIGTERM (a CI job's timeout) stops the cells and writes results.json like Ctrl-C.
    with sigterm_interrupts():
        doc = scheduler.run_matrix(m, results_dir, cells=cells, jobs=args.jobs,
                                   timeout=timeout, rerun_of=rerun_of)
    print(publish.table(doc))
    print(f"results: {results_dir}")
    return int(doc["summary"]["exit_status"])


def cmd_matrix(args: argparse.Namespace) -> int:
    from harness.matrix import expand as matrix

    m = _load_matrix(args.config, _kernel_tree(args))
    if m is None:
        return EXIT_INFRA
    print(matrix.describe(m))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.core.results import default_results_dir
    from harness.run import bench

    cfg = _load_config(args)
    if cfg is None:
        return EXIT_INFRA
    if args.which != "trace" and args.from_run is not None:
        print("hmmlab: --from-run is for bench trace", file=sys.stderr)
        return EXIT_INFRA
    if args.which == "trace":
        return cmd_bench_trace(args, cfg)
    if args.which == "odp" and args.config is None and not cfg.kernel_tree:
        cfg = dataclasses.replace(cfg, kernel=bench.ODP_KERNEL)
    results_dir = (args.results or default_results_dir()).resolve()
    res, fig = bench.run_bench(cfg, args.which, results_dir, rounds=args.rounds,
                               build=_builder(cfg))
    text, code = bench.report(res, fig)
    print(text)
    print(f"results: {results_dir}" + (" (bench.json)" if fig else ""))
    return code


def cmd_bench_trace(args: argparse.Namespace, cfg: RunConfig) -> int:
    from harness.core.results import default_results_dir
    from harness.run import trace_targets

    if args.config is None and not cfg.kernel_tree:
        cfg = dataclasses.replace(cfg, kernel=trace_targets.CELL_KERNEL)
    results_dir = (args.results or default_results_dir()).resolve()
    from_run = args.from_run.resolve() if args.from_run is not None else None
    with sigterm_interrupts():
        fig, text, code = trace_targets.run_targets(cfg, results_dir, _builder(cfg),
                                                    runs=args.runs, from_run=from_run)
    print(text)
    print(f"results: {results_dir}" + (" (bench.json)" if fig else ""))
    return code


def _number(text: str) -> int:
    """An address or time: decimal, 0x hex, or 2.5e9 (a float written for nanoseconds)."""
    try:
        return int(text, 0)
    except ValueError:
        return int(float(text))


def _trace_query(args: argparse.Namespace) -> object:
    from harness.checks import dmatrace

    addr = None
    if args.addr:
        lo, sep, hi = args.addr.partition("-")
        if not sep:
            raise ValueError(f"--addr {args.addr}: want LO-HI")
        addr = (_number(lo), _number(hi))
    known = {k.name: int(k) for k in dmatrace.Kind}
    unknown = [k for k in args.kind if k.upper() not in known]
    if unknown:
        raise ValueError(f"--kind {unknown[0]}: not a record kind; one of {', '.join(known)}")
    kinds = tuple(known[k.upper()] for k in args.kind)
    return dmatrace.Query(kinds=kinds, addr=addr,
                          t_from=_number(args.t_from) if args.t_from else None,
                          t_to=_number(args.t_to) if args.t_to else None,
                          ctx=_number(args.ctx) if args.ctx else None)


def cmd_trace(args: argparse.Namespace) -> int:
    import json

    from harness.checks import dmatrace, tracefile

    try:
        query = _trace_query(args)
        fault = _number(args.fault) if args.fault else None
    except (ValueError, KeyError) as e:
        print(f"hmmlab: trace: bad query: {e}", file=sys.stderr)
        return EXIT_INFRA
    assert isinstance(query, dmatrace.Query)
    filtered = query != dmatrace.Query()
    # Printing the first records only decodes those; anything else reads it all.
    head_only = args.limit > 0 and args.records and not filtered and fault is None
    try:
        trace = dmatrace.read_trace(args.file, args.device,
                                    limit=args.limit if head_only else None)
    except OSError as e:
        print(f"hmmlab: {args.file}: {e.strerror}", file=sys.stderr)
        return EXIT_INFRA
    except dmatrace.TraceError as e:
        print(f"hmmlab: {args.file}: {e}", file=sys.stderr)
        return EXIT_FAIL
    h = trace.header
    out: dict[str, object] = {"file": str(args.file), "device": trace.device,
                              "version": h.version, "devfn": h.devfn}
    lines = [f"{args.file}: {trace.device} DMA trace v{h.version}, "
             f"device {h.slot:02x}.{h.function}"]
    recs = trace.records
    if head_only:
        total = max(0, tracefile.stream_size(args.file) - dmatrace.HDR_SIZE) // h.rec_size
        out["records"] = [r.to_dict() for r in recs]
        lines += [r.describe() for r in recs]
        if total > len(recs):
            lines.append(f"... {total - len(recs)} more")
    elif fault is not None:
        lives = dmatrace.fault_lives(trace, fault, limit=args.limit or 10)
        out["faults"] = [[{"index": i, **recs[i].to_dict()} for i in life.tolist()]
                         for life in lives]
        lines.append(f"{len(lives)} faults on the page of 0x{fault:x} or with token {fault}")
        for n, life in enumerate(lives):
            lines.append(f"fault {n + 1}:")
            lines += [f"  #{i:<9} {recs[i].describe()}" for i in life.tolist()]
    elif filtered or args.records:
        idx = dmatrace.select(trace, query, limit=args.limit or None)
        out["records"] = [{"index": i, **recs[i].to_dict()} for i in idx.tolist()]
        lines += [f"#{i:<9} {recs[i].describe()}" for i in idx.tolist()]
        if args.limit and len(idx) == args.limit:
            lines.append(f"(stopped at --limit {args.limit})")
    if not head_only:
        summary = dmatrace.summarize(trace)
        out["summary"] = summary.to_dict()
        lines.append(summary.format())
    print(json.dumps(out, indent=1) if args.json else "\n".join(lines))
    return EXIT_FAIL if trace.problems else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = setup_logging(args.verbose)
    try:
        return {"build": cmd_build, "run": cmd_run, "trace": cmd_trace,
                "bench": cmd_bench, "matrix": cmd_matrix}[args.command](args)
    except KeyboardInterrupt:
        print("hmmlab: interrupted", file=sys.stderr)
        return 130
    except SourceNotFound as e:
        print(f"hmmlab: {e}", file=sys.stderr)
        return EXIT_INFRA
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())

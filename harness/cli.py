"""The ``hmmlab`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import ConfigError, RunConfig
from harness.results import EXIT_FAIL, EXIT_INFRA

if TYPE_CHECKING:
    from harness.build import Artifacts

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
  hmmlab run                    boot the default configuration and run the smoke scenario
  hmmlab run my.yaml --results out/
  hmmlab trace results/<time>/dmatrace-0.bin --records
  hmmlab bench svm              fault rate, bandwidth, fault latency: hmm_gpu.ko vs test_hmm.ko

exit status of `run`: 0 every test passed, 1 a test failed,
2 an infrastructure problem (build failed, guest hung, QEMU died) got in the way.
"""

RUN_HELP = """\
Run a configuration: build what is missing, boot the guest, run the scenarios
and write results.json, console.log, qemu.log, dmatrace-N.bin and run.log to
the results directory. CONFIG is a YAML file whose keys override the defaults:

  kernel: "6.12"      machine: q35 | pc       memory: 1024 (MiB) or "1G"
  cpus: 2             accel: auto | kvm | tcg
  devices: [{type: hmm-gpu, props: {name: value}}]
  scenarios: [smoke]
  timeouts: {boot: 120, no_output: 60, scenario: 300}   (seconds)

Without CONFIG the packaged default runs: one q35 guest with one hmm-gpu.
"""


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
    b.add_argument("--kernel", default="6.12", metavar="VERSION",
                   help="kernel series to build (default: %(default)s)")
    b.add_argument("--logs", type=Path, metavar="DIR",
                   help="where build logs go (default: the cache's logs/ directory)")

    r = sub.add_parser("run", help="boot a configuration and run its scenarios",
                       description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", nargs="?", type=Path, metavar="CONFIG.yaml",
                   help="run file (default: the packaged default configuration)")
    r.add_argument("--results", type=Path, metavar="DIR",
                   help="results directory (default: ./results/<UTC time>/)")
    r.add_argument("--keep-going", action="store_true",
                   help="run every scenario even after one fails")

    bn = sub.add_parser(
        "bench", help="measure (not a test): hmm_gpu.ko next to the kernel's test_hmm.ko",
        description="Boot a guest and run a benchmark against hmm_gpu.ko and test_hmm.ko in "
                    "the same guest; print the figures side by side and write bench.json to "
                    "the results directory. `svm`: pages faulted+mapped per second, READ/WRITE "
                    "bandwidth on mirrored memory, one fault's round trip (median).")
    bn.add_argument("which", choices=["svm"], help="the benchmark")
    bn.add_argument("config", nargs="?", type=Path, metavar="CONFIG.yaml",
                    help="run file for the guest (default: the packaged default; its "
                         "scenarios are replaced by the benchmark)")
    bn.add_argument("--results", type=Path, metavar="DIR",
                    help="results directory (default: ./results/<UTC time>/)")

    t = sub.add_parser("trace", help="decode a DMA trace file (dmatrace-N.bin)",
                       description="Print a summary of a hmm-gpu DMA trace, or every record.")
    t.add_argument("file", type=Path, metavar="FILE")
    t.add_argument("--records", action="store_true", help="print every record too")
    t.add_argument("--limit", type=int, default=0, metavar="N",
                   help="with --records, print at most N records")
    return p


def cmd_build(args: argparse.Namespace) -> int:
    from harness.build import build_all
    from harness.cache import Cache

    cache = Cache.default()
    logdir = args.logs or cache.path("logs")
    try:
        a = build_all(cache, logdir, kernel=args.kernel)
    except Exception as e:
        log.error("build failed: %s", e)
        log.debug("build failure", exc_info=True)
        return EXIT_INFRA
    print(f"qemu:    {a.qemu}")
    print(f"kernel:  {a.kernel_image}")
    for p in a.initrds:
        print(f"initrd:  {p}")
    print(f"ssh key: {a.ssh_key}")
    return 0


def _load_config(args: argparse.Namespace) -> RunConfig | None:
    """The run configuration, or None after printing what is wrong with it."""
    from harness import config

    try:
        return config.load(args.config)
    except ConfigError as e:
        print(f"hmmlab: {e}", file=sys.stderr)
        return None


def _builder(kernel: str) -> Callable[[Path], Artifacts]:
    """Builds (or finds cached) everything a run of ``kernel`` needs."""

    def build(logdir: Path) -> Artifacts:
        from harness.build import build_all
        from harness.cache import Cache

        return build_all(Cache.default(), logdir, kernel=kernel)

    return build


def cmd_run(args: argparse.Namespace) -> int:
    from harness import runner
    from harness.results import default_results_dir

    cfg = _load_config(args)
    if cfg is None:
        return EXIT_INFRA
    results_dir = (args.results or default_results_dir()).resolve()
    res = runner.run(cfg, results_dir, build=_builder(cfg.kernel), keep_going=args.keep_going)
    print(res.table())
    print(f"results: {results_dir}")
    return res.exit_code()


def cmd_bench(args: argparse.Namespace) -> int:
    from harness import bench
    from harness.results import default_results_dir

    cfg = _load_config(args)
    if cfg is None:
        return EXIT_INFRA
    results_dir = (args.results or default_results_dir()).resolve()
    res, fig = bench.run_bench(cfg, args.which, results_dir, build=_builder(cfg.kernel))
    text, code = bench.report(res, fig)
    print(text)
    print(f"results: {results_dir}" + (" (bench.json)" if fig else ""))
    return code


def cmd_trace(args: argparse.Namespace) -> int:
    from harness import dmatrace

    try:
        trace = dmatrace.read_trace(args.file)
    except OSError as e:
        print(f"hmmlab: {args.file}: {e.strerror}", file=sys.stderr)
        return EXIT_INFRA
    except dmatrace.TraceError as e:
        print(f"hmmlab: {args.file}: {e}", file=sys.stderr)
        return EXIT_FAIL
    h = trace.header
    print(f"{args.file}: hmm-gpu DMA trace v{h.version}, device {h.slot:02x}.{h.function}")
    if args.records:
        recs = trace.records[: args.limit] if args.limit > 0 else trace.records
        for r in recs:
            print(r.describe())
        if len(recs) < len(trace.records):
            print(f"... {len(trace.records) - len(recs)} more")
    print(dmatrace.summarize(trace).format())
    return EXIT_FAIL if trace.problems else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = setup_logging(args.verbose)
    try:
        return {"build": cmd_build, "run": cmd_run, "trace": cmd_trace,
                "bench": cmd_bench}[args.command](args)
    except KeyboardInterrupt:
        print("hmmlab: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())

"""Every scenario's name, and the module whose make() returns it.

Core vocabulary: the run-file reader checks ``scenarios:`` against these names
without importing the scenarios (a layer above it);
harness.scenarios.create imports the module when a run uses it.
"""

SCENARIOS: dict[str, str] = {
    "smoke": "harness.scenarios.smoke",
    "hmm-tests": "harness.scenarios.hmm_tests",
    "svm-mirror": "harness.scenarios.svm",
    "svm-invalidate": "harness.scenarios.svm",
    "svm-race": "harness.scenarios.svm",
    "svm-reclaim": "harness.scenarios.svm",
    "dmirror-edge": "harness.scenarios.svm",
    "svm-migrate": "harness.scenarios.dmem",
    "vram-pressure": "harness.scenarios.dmem",
    "atomics": "harness.scenarios.dmem",
    "dma-bounce": "harness.scenarios.bounce",
    "bench-svm": "harness.scenarios.bench",
    "odp-tests": "harness.scenarios.rdma_tests",
    "odp-rc": "harness.scenarios.odp",
    "odp-implicit": "harness.scenarios.odp",
    "odp-gpu": "harness.scenarios.odp_gpu",
    "perftest": "harness.scenarios.perftest",
    "bench-odp": "harness.scenarios.bench_odp",
    "odp-cross-vm": "harness.scenarios.odp_xvm",
    "bench-trace": "harness.scenarios.bench_trace",
    "bench-ftrace": "harness.scenarios.bench_ftrace",
}

"""Device-private memory scenarios on the native uAPI (SVM_MIGRATE, VRAM_STATS).

``svm-migrate``: ``/opt/hmmlab/bin/svm-migrate`` migrates an 8 MiB buffer
into gpu0's VRAM, runs device jobs on it (no device fault allowed), lets
the CPU touch every other page (each migrates back: VRAM_STATS cpu_faults
grows), has the device read it all, migrates it again and back to system
memory, verifying the data at every step. Entries ``svm-migrate.<step>``;
``svm-migrate.vram_stats`` carries the VRAM_STATS figures.

``vram-pressure``: ``/opt/hmmlab/bin/vram-pressure`` picks the hmm-gpu
device with the smallest VRAM (the default configuration gives gpu2
``vram-size: 8M``) and migrates a working set twice its VRAM in 1 MiB
pieces, twice (the second time the device overwrites each piece in VRAM):
the driver must evict (VRAM_STATS evictions and pages_evicted > 0) and all
data must survive. ``vram-pressure.summary`` reports chunks evicted and
bytes moved (also under ``tables["vram-pressure"]`` in results.json).

``atomics``: ``/opt/hmmlab/bin/atomics -t 2``: device ATOMIC_ADD jobs
(each takes the page device-exclusive) race CPU threads doing their own
atomics on counters in the same page, and a CPU reader; the final counts
are exact and every old value was returned once (no lost update).

All load hmm_gpu.ko if it is not loaded yet.
"""

from __future__ import annotations

from harness.scenarios import Session
from harness.scenarios.svm import SvmWorkload

ATOMICS_SECONDS = 2
ARGS = {
    "svm-migrate": "-d /dev/hmm_gpu0 -s 8",
    "vram-pressure": "-p 1024 -x 2",  # no -d: the device with the smallest VRAM
    "atomics": f"-d /dev/hmm_gpu0 -t {ATOMICS_SECONDS} -n 2 -m 2",
}
# The figures of the vram-pressure summary that go to results.json's tables.
PRESSURE_KEYS = ("device", "vram_size", "working_set", "chunks_evicted", "pages_evicted",
                 "bytes_evicted", "bytes_to_dev", "bytes_to_sys", "bytes_moved", "cpu_faults",
                 "max_vram_used")


class DmemWorkload(SvmWorkload):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.args = ARGS[name]

    def run(self, s: Session) -> None:
        super().run(s)
        if self.name != "vram-pressure":
            return
        summary = next((o for o in s.state.get(f"{self.name}.objs") or []
                        if o.get("test") == "summary"), None)
        if summary is not None:
            s.results.tables["vram-pressure"] = {k: summary.get(k) for k in PRESSURE_KEYS}

    def finish(self, s: Session) -> None:
        return None


def make(name: str) -> DmemWorkload:
    return DmemWorkload(name)

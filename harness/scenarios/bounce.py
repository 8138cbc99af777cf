"""``dma-bounce``: shared virtual memory is refused where DMA is bounced.

hmm_gpu.ko keeps a streaming DMA mapping for as long as the device
translates a page, without dma_sync_*() in between. Where the DMA layer
bounces through swiotlb (``cmdline: swiotlb=force``, or a DMA mask below the
memory) the device would read and write a bounce copy the CPU never sees,
so the driver refuses SVM and says why. Entries:

- ``dma-bounce.detected``: the driver's probe found the bounce
  ("streaming DMA is bounced (swiotlb)" in dmesg);
- ``dma-bounce.svm_bind_refused``: SVM_BIND fails with EOPNOTSUPP
  (``svm-migrate``'s first step, ``bind``, reports the errno);
- ``dma-bounce.dmirror_refused``: opening /dev/hmm_dmirror0 (hmm-tests'
  first step) fails the same way.

Jobs on DMA buffers still work there (they map, run, unmap): ``smoke`` in
the same cell shows it. Without swiotlb=force on the kernel command line the
scenario is a SKIP, saying so.
"""

from __future__ import annotations

import errno
import json

from harness.core.results import Status
from harness.scenarios import Session
from harness.scenarios.common import (
    BIN,
    HMM_GPU_KO,
    add_cmd_result,
    guest_run,
    load_module,
)

NAME = "dma-bounce"
NEEDS = "swiotlb=force"
PROBE_LINE = "streaming DMA is bounced (swiotlb)"
TIMEOUT = 60.0


def bind_errno(stdout: str) -> int | None:
    """The errno svm-migrate's ``bind`` line reports (0: the bind worked), or None."""
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("test") == "bind":
            return 0 if obj.get("ok") else int(obj.get("errno", -1))
    return None


class DmaBounce:
    name = NAME

    def run(self, s: Session) -> None:
        c = guest_run(s, "cat /proc/cmdline", TIMEOUT)
        if c.ok and NEEDS not in c.out.split():
            s.results.add_status(NAME, Status.SKIP,
                                 f"the kernel does not bounce DMA: run it with cmdline: {NEEDS}")
            return
        load = load_module(s, HMM_GPU_KO, "hmm_gpu", ("/dev/hmm_gpu0",))
        if not add_cmd_result(s, f"{NAME}.load", load):
            return
        c = guest_run(s, f"dmesg | grep -F '{PROBE_LINE}'", TIMEOUT)
        add_cmd_result(s, f"{NAME}.detected", c, extra_problem="" if c.ok else
                       f"no \"{PROBE_LINE}\" from hmm_gpu.ko: it did not see the bounce")

        c = guest_run(s, f"{BIN}/svm-migrate -d /dev/hmm_gpu0 -s 1", TIMEOUT)
        got = bind_errno(c.out)
        problem = "" if got == errno.EOPNOTSUPP else (
            f"SVM_BIND: expected EOPNOTSUPP ({errno.EOPNOTSUPP}), got "
            + ("no bind line" if got is None else "success" if got == 0 else f"errno {got}"))
        # svm-migrate exits 1 when its bind fails: that is the expected outcome here
        c.rc = 0 if not problem else c.rc or 1
        add_cmd_result(s, f"{NAME}.svm_bind_refused", c, extra_problem=problem)

        # in a subshell: a failed exec redirection ends the shell it runs in
        c = guest_run(s, "( exec 3<>/dev/hmm_dmirror0 ) 2>&1 && echo opened; true", TIMEOUT)
        refused = c.ok and "opened" not in c.out and "not supported" in (c.out + c.err).lower()
        add_cmd_result(s, f"{NAME}.dmirror_refused", c, extra_problem="" if refused else
                       "opening /dev/hmm_dmirror0 was not refused with EOPNOTSUPP")

    def finish(self, s: Session) -> None:
        return None


def make() -> DmaBounce:
    return DmaBounce()

"""perftest: ib_write_bw, ib_read_bw and ib_send_bw with ``--odp`` between two
cabled hmm-nics, unmodified, as Debian's perftest ships them.

The server runs on hmmnic0 and the client on hmmnic1 (``devices: [..., {type:
hmm-nic, link: nic1}, {type: hmm-nic}]``), so every message crosses the link
between the two devices and both ends' ODP memory faults in on first touch.
One entry per program, ``perftest.ib_<op>_bw``: PASS when client and server
both exit 0 and the client printed its bandwidth (in the entry's data, MiB/s);
the figures are not judged here (``hmmlab bench odp`` measures).

SKIP without two cabled hmm-nics in the run, or on a kernel without RDMA
user verbs and ODP.
"""

from __future__ import annotations

from harness.core.config import nic_links
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.bench_odp import PAIRS, parse_bw, perftest
from harness.scenarios.common import guest_run
from harness.scenarios.kernel import guest_kernel
from harness.scenarios.rdma_tests import HMM_NIC, column_unmet

NAME = "perftest"
OPS = ("write", "read", "send")
PORT = 18600


class Perftest:
    name = NAME

    def run(self, s: Session) -> None:
        if ("nic0", "nic1") not in nic_links(s.cfg.devices):
            s.results.add_status(NAME, Status.SKIP, "needs two cabled hmm-nics: devices: "
                                 "[{type: hmm-nic, link: nic1}, {type: hmm-nic}]")
            return
        why = column_unmet(HMM_NIC, guest_kernel(s), s.cfg)
        if why:
            s.results.add_status(NAME, Status.SKIP, why)
            return
        pair = PAIRS[0]
        setup = guest_run(s, f"set -e; {pair.setup}; ibv_devinfo -d {pair.client} | head -3", 60)
        if not setup.ok:
            s.results.add(TestResult(f"{NAME}.setup", Status.FAIL, setup.seconds, setup.text()))
            return
        for i, op in enumerate(OPS):
            c = guest_run(s, perftest(pair, op, "odp", PORT + i), s.cfg.timeouts.scenario)
            bw = parse_bw(c.out) if c.ok else None
            if c.error:
                status = c.status_if_error
            else:
                status = Status.PASS if bw is not None else Status.FAIL
            log_name = f"{NAME}-ib_{op}_bw.log"
            (s.run_dir / log_name).write_text(c.text(limit=1_000_000) + "\n")
            s.results.add(TestResult(f"{NAME}.ib_{op}_bw", status, c.seconds, c.text(),
                                     [log_name], {"MiBps": bw} if bw is not None else {}))
        guest_run(s, HMM_NIC.teardown, 60)

    def finish(self, s: Session) -> None:
        return None


def make() -> Perftest:
    return Perftest()

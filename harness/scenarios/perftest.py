"""perftest: ib_write_bw, ib_read_bw and ib_send_bw with ``--odp`` between two
cabled hmm-nics, unmodified, as Debian's perftest ships them.

The server runs on hmmnic0 and the client on hmmnic1 (``devices: [..., {type:
hmm-nic, link: nic1}, {type: hmm-nic}]``), so every message crosses the link
between the two devices and both ends' ODP memory faults in on first touch.
One entry per program, ``perftest.ib_<op>_bw``: PASS when client and server
both exit 0 and the client printed its bandwidth (in the entry's data, MiB/s);
the figures are not judged here (``hmmlab bench odp`` measures).

The client starts once the server listens on its port (not after a fixed
sleep). A run that failed in perftest's own machinery rather than in the
devices (:func:`retry_reason` decides, on its output) runs once more on
another port: its exchange of QP numbers and keys over TCP before the traffic,
or its clock calibration after it (a poor fit on a loaded TCG guest: "Can't
produce a report", the traffic done). The entry's log has both attempts and
its data ``retried`` says why; a second failure FAILs. A failure of the
traffic (a completion error, a QP that would not connect) is never retried.

SKIP without two cabled hmm-nics in the run, or on a kernel without RDMA
user verbs and ODP.
"""

from __future__ import annotations

import logging

from harness.core.config import nic_links
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.bench_odp import PAIRS, parse_bw, perftest
from harness.scenarios.common import Cmd, guest_run
from harness.scenarios.kernel import guest_kernel
from harness.scenarios.rdma_tests import HMM_NIC, column_unmet

log = logging.getLogger(__name__)

NAME = "perftest"
OPS = ("write", "read", "send")
PORT = 18600
RETRY_PORT = PORT + len(OPS)  # + the op's index: a fresh port for the one retry

# perftest's messages when the exchange over its TCP socket fails
# (perftest_communication.c): the client could not connect, or one side read or
# wrote less than a whole message because the other had gone
HANDSHAKE_MARKS = (
    "Couldn't connect to ", "Couldn't read remote address", "Couldn't send local address",
    "Unable to read to socket/rdma_cm", "Unable to read from socket/rdma_cm",
    "Unable to write to socket/rdma_cm", "Unable to write from socket/rdma_cm",
    "Failed to exchange data between server and clients",
)
# the result header: printed once the pre-test exchange is done, before the traffic
TRAFFIC_MARK = "#bytes"
# perftest computes bandwidth from CPU cycles; after the traffic it calibrates
# cycles per microsecond against gettimeofday() (get_clock.c, a linear fit of 200
# samples) and gives up when the fit is poor, as it is on a loaded TCG guest
# ("Correlation coefficient r^2: 0.88 < 0.9"): the client exits 1 with no
# figure, and the server, waiting in its closing exchange, reports "Couldn't
# read remote address". The traffic itself completed.
CALIBRATION_MARK = "Can't produce a report"
# the device or the verbs failed: never retried
DEVICE_MARKS = ("Completion with error", "Failed status", "Failed to complete run",
                "Couldn't post", "Failed to modify QP", "Problems with warm up",
                "Couldn't create", "Couldn't allocate", "Couldn't register", "error when polling")


def retry_reason(c: Cmd) -> str | None:
    """Why a failed perftest run may run once more, or None (it passed, the device or
    the verbs failed, or the command did not finish: timeout, guest gone).

    Two failures are perftest's own, not the devices': its exchange of QP numbers
    and keys over TCP before the traffic, and its clock calibration after it (see
    CALIBRATION_MARK)."""
    if c.error or c.ok:
        return None
    text = c.out + c.err
    if any(m in text for m in DEVICE_MARKS):
        return None
    lines = [line.strip() for line in text.splitlines()]
    if CALIBRATION_MARK in text:
        why = next((x for x in lines if x.startswith("Correlation coefficient")), "")
        return f"perftest could not calibrate its clock ({why or CALIBRATION_MARK})"
    if TRAFFIC_MARK in text:  # failed once the traffic had begun: not the handshake
        return None
    line = next((x for x in lines if any(m in x for m in HANDSHAKE_MARKS)), None)
    return None if line is None else f"perftest's handshake failed ({line})"


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
            log_text, seconds = "", c.seconds
            extra: dict[str, str | float] = {}
            why = retry_reason(c)
            if why is not None:
                log.warning("%s.ib_%s_bw: %s: once more", NAME, op, why)
                log_text = (f"attempt 1: {why}; retried once on another port\n"
                            f"{c.text(limit=1_000_000)}\n\nattempt 2:\n")
                extra["retried"] = why
                c = guest_run(s, perftest(pair, op, "odp", RETRY_PORT + i),
                              s.cfg.timeouts.scenario)
                seconds += c.seconds
            bw = parse_bw(c.out) if c.ok else None
            if c.error:
                status = c.status_if_error
            else:
                status = Status.PASS if bw is not None else Status.FAIL
            if bw is not None:
                extra["MiBps"] = bw
            log_name = f"{NAME}-ib_{op}_bw.log"
            log_text += c.text(limit=1_000_000)
            (s.run_dir / log_name).write_text(log_text + "\n")
            excerpt = c.text()
            if why is not None:
                excerpt = f"retried once, the first attempt failed: {why}\n{excerpt}"
            s.results.add(TestResult(f"{NAME}.ib_{op}_bw", status, seconds, excerpt,
                                     [log_name], extra))
        guest_run(s, HMM_NIC.teardown, 60)

    def finish(self, s: Session) -> None:
        return None


def make() -> Perftest:
    return Perftest()

"""odp-cross-vm: RDMA WRITE and READ into another guest's ODP memory.

The cell's guest has a hmm-nic cabled to a peer (``devices: [..., {type:
hmm-nic, link: peer}]``): its QEMU listens on a unix socket beside qmp.sock.
This scenario boots the peer, a second guest of the same kernel with one
hmm-nic whose cable connects to that socket, so the two devices are linked
between two QEMU processes. Both load hmm_nic.ko and run
``/opt/hmmlab/bin/odp-xvm.py`` (guest-images/workloads), which the harness
drives step by step through files, copying each side's QP and region to
the other (no network between the guests):

  write         this guest RDMA WRITEs a pattern into the peer's ODP region,
                untouched until then: the peer's device faults as responder
  peer.check    the peer's CPU reads that pattern in its own memory
  read          this guest RDMA READs the region back and compares
  peer.change   the peer drops the even pages (madvise DONTNEED: ODP
                invalidations on the peer's device) and writes new bytes
                into the pages 1 mod 4 from its CPU
  read-changed  this guest READs again: zeros, the new bytes and the old
                ones exactly where they must be; a device translation that
                outlived the peer's invalidation shows up here
  write-again, peer.check-again   a second WRITE after the invalidations

After the peer is shut down: ``odp-cross-vm.peer.console`` (no oops or
lockdep report in the peer), and for each side's trace the records written
while the workload ran must show ODP at work (faults, replays; on the peer
the invalidations) and no payload DMA through a translation older than the
invalidation covering it (:func:`harness.checks.dmatrace.check_invalidations`):
``odp-cross-vm.dmatrace`` and ``odp-cross-vm.peer.dmatrace``. The peer's
files are under ``peer/`` in the results directory.

SKIP without a hmm-nic cabled to a peer, or on a kernel without RDMA user
verbs and ODP.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from pathlib import Path

from harness.checks import dmatrace
from harness.checks.tracefile import stream_size
from harness.core.config import PEER, DeviceConfig, RunConfig, nic_ids, peer_nics
from harness.core.results import Status, TestResult
from harness.scenarios import Session
from harness.scenarios.common import BIN, add_cmd_result, guest_run
from harness.scenarios.kernel import guest_kernel
from harness.scenarios.odp import NicActivity, window_of
from harness.scenarios.rdma_tests import HMM_NIC, SETUP_TIMEOUT, column_unmet

log = logging.getLogger(__name__)

NAME = "odp-cross-vm"
SCRIPT = f"{BIN}/odp-xvm.py"
DIR = "/tmp/xvm"
PAGES = 64
PEER_MEMORY = 1024  # MiB: the peer runs the workload only
PEER_LID = 9  # its port's LID: any other than the cell's own NICs'
STEP_TIMEOUT = 120.0  # seconds for one step's result (a WRITE of faulting pages both sides)
POLL = 0.2
SETTLE = 0.5  # the traces are flushed every 10 ms
# this guest's steps, then the peer's: (entry, side, command)
STEPS: tuple[tuple[str, str, str], ...] = (
    ("write", "here", "write 1"),
    ("peer.check", "peer", "check all:1"),
    ("read", "here", "read all:1"),
    ("peer.change", "peer", "change 2"),
    ("read-changed", "here", "read changed:1:2"),
    ("write-again", "here", "write 3"),
    ("peer.check-again", "peer", "check all:3"),
)


def peer_config(s: Session, socket: Path) -> RunConfig:
    """The peer guest's configuration: the cell's kernel and machine, one hmm-nic whose
    cable connects to ``socket``, nothing to run of its own."""
    nic = DeviceConfig("hmm-nic", {"lid": str(PEER_LID)}, link=PEER, peer_socket=str(socket))
    return dataclasses.replace(s.cfg, devices=(nic,), memory=PEER_MEMORY, scenarios=())


def sub_status(obj: dict[str, object] | None) -> Status:
    return Status.PASS if obj and obj.get("ok") is True else Status.FAIL


class OdpCrossVm:
    name = NAME

    def run(self, s: Session) -> None:
        peers = peer_nics(s.cfg.devices)
        if not peers:
            s.results.add_status(NAME, Status.SKIP,
                                 "needs a hmm-nic cabled to a peer guest: devices: "
                                 "[{type: hmm-nic, link: peer}]")
            return
        why = column_unmet(HMM_NIC, guest_kernel(s), s.cfg)
        if why:
            s.results.add_status(NAME, Status.SKIP, why)
            return
        if s.artifacts is None:
            s.results.add_status(NAME, Status.ERROR, "no build artifacts to boot the peer with")
            return
        index = nic_ids(s.cfg.devices).index(peers[0])
        here_dev = f"hmmnic{index}"
        socket = s.guest.files.peer_sock(index)
        from harness.guest.vm import Guest, GuestError  # the launcher, for the second guest

        peer_dir = s.run_dir / "peer"
        peer_dir.mkdir(exist_ok=True)
        peer = Guest(peer_config(s, socket), s.guest.image, peer_dir, s.guest.accel)
        t0 = time.monotonic()
        ps: Session | None = None
        try:
            peer.start()
            took = peer.wait_ready()
            pssh = peer.ssh(s.artifacts.ssh_key, s.artifacts.ssh_host_pubkey, 60)
            ps = Session(peer.cfg, peer_dir, peer, pssh, s.results, artifacts=s.artifacts)
            s.results.add(TestResult(f"{NAME}.peer.boot", Status.PASS, time.monotonic() - t0,
                                     f"peer guest ready in {took:.1f} s, cabled to nic{index} "
                                     f"through {socket.name}", ["peer/console.log"]))
            self._traffic(s, ps, here_dev)
        except GuestError as e:
            s.results.add(TestResult(f"{NAME}.peer.boot", Status.ERROR, time.monotonic() - t0,
                                     f"{e}\n{e.detail}".strip(), ["peer/console.log"]))
        finally:
            try:
                peer.shutdown(ps.ssh if ps else None, 30)
            finally:
                if ps is not None:
                    ps.ssh.close()
                peer.close()
            splats = peer.console.splats() if peer.console else []
            s.results.add(TestResult(f"{NAME}.peer.console",
                                     Status.FAIL if splats else Status.PASS, None,
                                     "\n\n".join(f"{x.title}\n{x.report}" for x in splats)[-3000:]
                                     or "no kernel splat on the peer's console",
                                     ["peer/console.log"]))

    def _traffic(self, s: Session, ps: Session, here_dev: str) -> None:
        sides = {"here": s, "peer": ps}
        for name, side in sides.items():
            load = guest_run(side, f"set -e; {HMM_NIC.setup}; ls /sys/class/infiniband",
                             SETUP_TIMEOUT)
            if not load.ok:
                add_cmd_result(s, f"{NAME}.{name}.driver", load)
                return
        here_trace = s.run_dir / f"dmatrace-nic{int(here_dev[6:])}.bin"
        peer_trace = ps.run_dir / "dmatrace-nic0.bin"
        sizes = {"here": stream_size(here_trace), "peer": stream_size(peer_trace)}
        devs = {"here": here_dev, "peer": "hmmnic0"}
        for name, side in sides.items():
            start = guest_run(side, f"rm -rf {DIR}; mkdir -p {DIR}; "
                              # its own session: it outlives the SSH command
                              f"setsid python3 {SCRIPT} -d {devs[name]} -n {PAGES} --dir {DIR} "
                              f"> {DIR}/log 2>&1 < /dev/null &", SETUP_TIMEOUT)
            if not start.ok:
                add_cmd_result(s, f"{NAME}.{name}.start", start)
                return
        try:
            infos = {n: self._wait_file(side, f"{DIR}/self.json") for n, side in sides.items()}
            for name, other in (("here", "peer"), ("peer", "here")):
                self._put(sides[name], f"{DIR}/peer.json", infos[other])
            for side in sides.values():
                self._wait_file(side, f"{DIR}/ready")
        except TimeoutError as e:
            logs = {n: guest_run(side, f"cat {DIR}/log", 30).out for n, side in sides.items()}
            s.results.add(TestResult(f"{NAME}.connect", Status.FAIL, None,
                                     f"{e}\nhere:\n{logs['here']}\npeer:\n{logs['peer']}"))
            return
        s.results.add(TestResult(f"{NAME}.connect", Status.PASS, None,
                                 f"here {infos['here'].strip()}\npeer {infos['peer'].strip()}"))
        count = {"here": 0, "peer": 0}
        failed = False
        for entry, side_name, command in STEPS:
            side = sides[side_name]
            count[side_name] += 1
            n = count[side_name]
            if failed:
                s.results.add_status(f"{NAME}.{entry}", Status.SKIP,
                                     "not run: an earlier step failed")
                continue
            t0 = time.monotonic()
            obj: dict[str, object] | None = None
            try:
                self._put(side, f"{DIR}/cmd-{n}", command)
                obj = json.loads(self._wait_file(side, f"{DIR}/result-{n}.json"))
                text = json.dumps(obj)
            except (TimeoutError, ValueError) as e:
                text = f"{command}: {e}\n" + guest_run(side, f"cat {DIR}/log", 30).out
            status = sub_status(obj)
            failed |= status != Status.PASS
            s.results.add(TestResult(f"{NAME}.{entry}", status, time.monotonic() - t0,
                                     f"{side_name}$ {command}\n{text}"))
        for name, side in sides.items():
            count[name] += 1
            try:
                self._put(side, f"{DIR}/cmd-{count[name]}", "exit")
            except TimeoutError as e:  # it goes with its guest anyway
                log.warning("%s: %s", name, e)
        time.sleep(SETTLE)
        s.state[f"{NAME}.windows"] = {
            "here": (here_trace, sizes["here"], stream_size(here_trace)),
            "peer": (peer_trace, sizes["peer"], stream_size(peer_trace)),
        }
        for side in sides.values():
            guest_run(side, f"sleep 1; {HMM_NIC.teardown}", SETUP_TIMEOUT)

    @staticmethod
    def _put(side: Session, path: str, text: str) -> None:
        """Write ``text`` to ``path`` in ``side``'s guest, whole (rename into place)."""
        c = guest_run(side, f"printf '%s' {shlex.quote(text)} > {path}.tmp && "
                      f"mv {path}.tmp {path}", 30)
        if not c.ok:
            raise TimeoutError(f"writing {path}: {c.text()}")

    @staticmethod
    def _wait_file(side: Session, path: str, timeout: float = STEP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            c = guest_run(side, f"cat {path} 2>/dev/null", 30)
            if c.ok:
                return c.out
            if time.monotonic() > deadline or c.error:
                raise TimeoutError(f"{path} did not appear within {timeout:.0f} s"
                                   + (f" ({c.error})" if c.error else ""))
            time.sleep(POLL)

    def finish(self, s: Session) -> None:
        windows = s.state.get(f"{NAME}.windows")
        if not windows:
            return
        for name, (path, before, after) in windows.items():
            entry = f"{NAME}.dmatrace" if name == "here" else f"{NAME}.peer.dmatrace"
            files = [path.name if name == "here" else f"peer/{path.name}"]
            try:
                trace = dmatrace.read_trace(path, dmatrace.NIC)
            except (OSError, dmatrace.TraceError) as e:
                s.results.add_status(entry, Status.ERROR, f"{path}: {e}")
                continue
            w = window_of(before, after, rec_size=trace.header.rec_size)
            records = trace.records[w.first:w.end]
            act = NicActivity.of(records, [])
            audit = dmatrace.check_invalidations(records)
            problems = [f"stale translation: {p}" for p in audit.problems]
            if not act.faults or not act.replays:
                problems.append(f"{act.faults} faults, {act.replays} replays: the region "
                                "was never faulted in on this side")
            # this guest only requests; the peer only responds
            if name == "here" and not act.req_data:
                problems.append("no requester payload DMA: the WRITEs and READs never left")
            if name == "peer" and not (act.resp_data and act.responder_faults):
                problems.append(f"{act.resp_data} responder payload DMAs, "
                                f"{act.responder_faults} responder faults: the peer's device "
                                "never served the remote accesses from its ODP region")
            if name == "peer" and not act.invalidations:
                problems.append("no EV_TLB_INV: the peer's madvise(DONTNEED) never reached "
                                "its device")
            if act.cancels:
                problems.append(f"{act.cancels} faults cancelled: every access here is valid")
            text = "\n".join([*problems[:50], act.format(),
                              f"records {w.first}..{w.end} of {files[0]}", audit.format()])
            s.results.add(TestResult(entry, Status.FAIL if problems else Status.PASS, None,
                                     text, files, {"activity": act.to_dict(),
                                                   "invalidate_check": audit.to_dict()}))




def make() -> OdpCrossVm:
    return OdpCrossVm()

"""The perftest scenario: which failed runs are perftest's own (retried once) and which
are not (never retried), on perftest's outputs; the guest command waits for the
server's listening socket, not a fixed time.

``data/perftest-clock-calibration-6.1.log`` is a real run (6.1 guest on this
2-core machine under load, ib_read_bw between two cabled hmm-nics) that failed
as CI's ``test_kernels[6.1]`` did: the client's clock calibration gave up
("Correlation coefficient r^2: 0.883467 < 0.9", "Can't produce a report") after
the traffic, and the server, in its closing exchange, printed "ethernet_read_keys:
Couldn't read remote address". ``data/perftest-pass-6.1.log``: ib_write_bw passing
in the same guest. The other outputs are perftest's messages for the pre-test
exchange failing (perftest_communication.c).
"""

from __future__ import annotations

from pathlib import Path

from harness.scenarios import bench_odp
from harness.scenarios.common import Cmd
from harness.scenarios.perftest import retry_reason

DATA = Path(__file__).parent / "data"


def captured(name: str) -> Cmd:
    """A run's entry log (Cmd.text(): "$ command", its output, "(exit status N)")
    back into the command's outcome."""
    lines = (DATA / name).read_text().splitlines()
    rc = 0
    if lines[-1].startswith("(exit status "):
        rc = int(lines.pop()[len("(exit status "):-1])
    return Cmd(lines[0][2:], rc=rc, out="\n".join(lines[1:]) + "\n")


SERVER_BOX = """\

************************************
* Waiting for client to connect... *
************************************
---------------------------------------------------------------------------------------
                    Send BW Test
 Dual-port       : OFF\t\tDevice         : hmmnic0
 Data ex. method : Ethernet
---------------------------------------------------------------------------------------
"""
CLIENT_REFUSED = ("Couldn't connect to 127.0.0.1:18602\nUnable to open file descriptor for "
                  "socket connection Unable to init the socket connection\n")
SERVER_PEER_GONE = ("ethernet_read_keys: Couldn't read remote address\n Unable to read to "
                    "socket/rdma_cm\n Failed to exchange data between server and clients\n")
RESULT = " #bytes     #iterations    BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]\n"


def cmd(client: str, server: str, rc: int = 1, error: str = "") -> Cmd:
    return Cmd("perftest", rc=rc, out=f"{client}--- server\n{server}", error=error)


def test_the_ci_failure_is_the_clock_calibration_and_is_retried() -> None:
    c = captured("perftest-clock-calibration-6.1.log")
    assert c.rc == 1 and "ethernet_read_keys: Couldn't read remote address" in c.out
    assert retry_reason(c) == ("perftest could not calibrate its clock (Correlation "
                               "coefficient r^2: 0.883467 < 0.9)")


def test_a_pass_is_not_retried() -> None:
    c = captured("perftest-pass-6.1.log")
    assert c.ok and bench_odp.parse_bw(c.out) == 62.87
    assert retry_reason(c) is None


def test_the_pre_test_exchange_failing_is_retried() -> None:
    assert retry_reason(cmd(CLIENT_REFUSED, SERVER_BOX)) == \
        "perftest's handshake failed (Couldn't connect to 127.0.0.1:18602)"
    assert retry_reason(cmd("", SERVER_BOX + SERVER_PEER_GONE)) == \
        "perftest's handshake failed (ethernet_read_keys: Couldn't read remote address)"


def test_a_failure_of_the_traffic_is_not_retried() -> None:
    failed = RESULT + "Completion with error at client\n Failed status 12: wr_id 0\n"
    assert retry_reason(cmd(failed, SERVER_BOX + RESULT + SERVER_PEER_GONE)) is None
    # the server gave up in the closing exchange, the client said nothing: not retried
    assert retry_reason(cmd(RESULT, SERVER_BOX + RESULT + SERVER_PEER_GONE)) is None
    assert retry_reason(cmd("Failed to modify QP 2 to RTR\n", SERVER_BOX)) is None
    # a completion error and a calibration failure together: the device's failure
    both = failed + "Correlation coefficient r^2: 0.5 < 0.9\nCan't produce a report\n"
    assert retry_reason(cmd(both, SERVER_BOX)) is None


def test_timeouts_and_other_failures_are_not_retried() -> None:
    # the command timed out or the guest died: not perftest's doing
    assert retry_reason(cmd(CLIENT_REFUSED, "", rc=-1, error="timed out after 300s")) is None
    assert retry_reason(cmd("Couldn't create CQ\n", SERVER_BOX)) is None
    assert retry_reason(cmd("", "server gone before listening\n")) is None


def test_the_client_waits_for_the_server_to_listen() -> None:
    c = bench_odp.perftest(bench_odp.PAIRS[0], "send", "odp", 18602)
    assert "sleep 1;" not in c
    # 18602 = 0x48AA, listening (0A), IPv4 or IPv6, before the client starts
    wait = c.index("$2 ~ /:48AA$/")
    assert '$4 == "0A"' in c and "/proc/net/tcp /proc/net/tcp6" in c
    assert wait < c.index("-d hmmnic1 127.0.0.1")
    # a client that failed does not leave the server waiting out its timeout
    assert "[ $rc -ne 0 ] && { sleep 5; kill $srv" in c

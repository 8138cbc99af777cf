"""The perftest scenario: when a failed run is perftest's pre-test handshake (retried
once) and when it is not (never retried), on perftest's outputs; the guest command
waits for the server's listening socket, not a fixed time."""

from __future__ import annotations

from harness.scenarios import bench_odp
from harness.scenarios.common import Cmd
from harness.scenarios.perftest import handshake_failure

SERVER_BOX = """\

************************************
* Waiting for client to connect... *
************************************
---------------------------------------------------------------------------------------
                    Send BW Test
 Dual-port       : OFF\t\tDevice         : hmmnic0
 Number of qps   : 1\t\tTransport type : IB
 Connection type : RC\t\tUsing SRQ      : OFF
 Data ex. method : Ethernet
---------------------------------------------------------------------------------------
"""
CPU_WARNING = ("Conflicting CPU frequency values detected: 2495.312000 != 2893.204000. "
               "CPU Frequency is not max.\n")
# The CI failure (test_kernels[6.1]): the server under load, its client gone before it
# sent its keys
SERVER_READ_KEYS = (CPU_WARNING + SERVER_BOX + "ethernet_read_keys: Couldn't read remote "
                    "address\n Unable to read to socket/rdma_cm\n Failed to exchange data "
                    "between server and clients\n")
CLIENT_REFUSED = ("Couldn't connect to 127.0.0.1:18602\nUnable to open file descriptor for "
                  "socket connection Unable to init the socket connection\n")
RESULT = """\
---------------------------------------------------------------------------------------
 local address: LID 0x02 QPN 0x0002 PSN 0x63d5b6
 remote address: LID 0x01 QPN 0x0002 PSN 0xbef88e
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]
"""


def cmd(client: str, server: str, rc: int = 1, error: str = "") -> Cmd:
    return Cmd("perftest", rc=rc, out=f"{client}--- server\n{server}", error=error)


def test_the_ci_failure_is_the_handshake() -> None:
    c = cmd(CPU_WARNING, SERVER_READ_KEYS)
    assert handshake_failure(c) == "ethernet_read_keys: Couldn't read remote address"


def test_a_refused_connect_is_the_handshake() -> None:
    assert handshake_failure(cmd(CLIENT_REFUSED, SERVER_BOX)) == \
        "Couldn't connect to 127.0.0.1:18602"


def test_a_failure_after_the_traffic_began_is_not_retried() -> None:
    failed = RESULT + "Completion with error at client\n Failed status 12: wr_id 0\n"
    assert handshake_failure(cmd(failed, SERVER_BOX + RESULT)) is None
    # a side that gave up reading after the test ran: the device's failure, not TCP's
    assert handshake_failure(cmd(RESULT, SERVER_BOX + RESULT + "ethernet_read_keys: "
                                 "Couldn't read remote address\n")) is None
    assert handshake_failure(cmd("Failed to modify QP 2 to RTR\n", SERVER_BOX)) is None


def test_passes_timeouts_and_other_failures_are_not_retried() -> None:
    ok = RESULT + " 65536      400              257.77             249.88 \t\t     0.003998\n"
    assert handshake_failure(cmd(ok, SERVER_BOX + ok, rc=0)) is None
    # the command timed out or the guest died: not perftest's handshake
    assert handshake_failure(cmd(CLIENT_REFUSED, "", rc=-1, error="timed out after 300s")) \
        is None
    assert handshake_failure(cmd("Couldn't create CQ\n", SERVER_BOX)) is None
    assert handshake_failure(cmd("", "server gone before listening\n")) is None


def test_the_client_waits_for_the_server_to_listen() -> None:
    c = bench_odp.perftest(bench_odp.PAIRS[0], "send", "odp", 18602)
    assert "sleep 1;" not in c
    # 18602 = 0x48AA, listening (0A), IPv4 or IPv6, before the client starts
    wait = c.index("$2 ~ /:48AA$/")
    assert '$4 == "0A"' in c
    assert "/proc/net/tcp /proc/net/tcp6" in c
    assert wait < c.index("-d hmmnic1 127.0.0.1")
    # a client that failed does not leave the server waiting out its timeout
    assert "[ $rc -ne 0 ] && { sleep 5; kill $srv" in c

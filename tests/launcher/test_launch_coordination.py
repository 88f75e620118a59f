"""The agents' coordination channel, in process: joining, failures, lost agents, bad requests.

A coordination port already in use is tested with the other faults in tests/faults/test_port_in_use.py."""
import time

import pytest

from launch_helpers import free_port
from zerolib.launcher import LaunchError
from zerolib.launcher.coordination import CoordinationClient, CoordinationServer, format_failure


@pytest.fixture
def channel():
    """A server for a 2-node job and a factory of clients, all closed afterwards."""
    port = free_port()
    server = CoordinationServer("127.0.0.1", port, num_nodes=2, heartbeat_timeout=1.0)
    clients = []

    def connect(node: int) -> CoordinationClient:
        client = CoordinationClient.connect("127.0.0.1", port, node, timeout=5.0, io_timeout=5.0)
        clients.append(client)
        return client

    yield server, connect, port
    for client in clients:
        client.close()
    server.close()


def _wait_for_failure(client: CoordinationClient, bound: float = 10.0) -> dict:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        failure = client.poll_failure()
        if failure is not None:
            return failure
        time.sleep(0.05)
    raise AssertionError(f"no failure reported within {bound} s")


def test_a_reported_rank_failure_reaches_the_other_node(channel):
    server, connect, _ = channel
    node0, node1 = connect(0), connect(1)
    node1._request("join")
    node0.join(num_nodes=2, timeout=5.0)
    node1.report_failure(3, "exit code 1: ValueError: boom")
    failure = _wait_for_failure(node0)
    assert failure == {"node": 1, "rank": 3, "reason": "exit code 1: ValueError: boom"}
    assert format_failure(failure) == "rank 3 on node 1 failed: exit code 1: ValueError: boom"
    node0.report_finished("stopped")
    assert server.job.all_finished()


def test_a_dropped_connection_marks_the_node_lost(channel):
    _, connect, _ = channel
    node0, node1 = connect(0), connect(1)
    node1._request("join")
    node0.join(num_nodes=2, timeout=5.0)
    node1.close()
    failure = _wait_for_failure(node0)
    assert failure["node"] == 1 and failure["rank"] is None and "disconnected" in failure["reason"]


def test_a_silent_agent_is_lost_after_the_heartbeat_timeout(channel):
    _, connect, _ = channel
    node0, node1 = connect(0), connect(1)
    node1._request("join")  # and then never polls again, but keeps the connection open
    node0.join(num_nodes=2, timeout=5.0)
    failure = _wait_for_failure(node0)
    assert failure["node"] == 1 and "sent no heartbeat for 1 s" in failure["reason"]


def test_two_agents_claiming_one_node_rank_are_refused(channel):
    _, connect, _ = channel
    connect(1)._request("join")
    with pytest.raises(LaunchError, match="node rank 1 joined twice"):
        connect(1).join(num_nodes=2, timeout=5.0)


def test_join_times_out_naming_the_missing_agents(channel):
    _, connect, _ = channel
    with pytest.raises(LaunchError, match="only 1 of 2 agents joined .* within 0.5 s"):
        connect(0).join(num_nodes=2, timeout=0.5)


"""Two agents on this machine acting as two nodes: a real gloo job, and failures crossing nodes."""
import os
import re
import signal

from launch_helpers import HANG_GUARD_SECONDS, SCRIPTS, free_port, is_running, rank_lines, ready_pids, start_launcher


def _start_agents(port: int, script: str, *extra: str, **env: str):
    return [start_launcher("--num_nodes", "2", "--num_procs", "2", "--node_rank", str(node), "--master_port",
                           str(port), *extra, str(SCRIPTS / script), **env) for node in range(2)]


def _finish(agents):
    """Wait for every agent; return (returncode, stdout, stderr) of each."""
    results = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=HANG_GUARD_SECONDS)
            results.append((agent.returncode, out, err))
    finally:
        for agent in agents:
            agent.kill()
    return results


def test_two_agents_run_one_gloo_world_of_four():
    results = _finish(_start_agents(free_port(), "all_reduce.py"))
    for node, (status, out, err) in enumerate(results):
        assert status == 0, err
        for rank in (2 * node, 2 * node + 1):  # global rank = node_rank * nproc + local rank
            assert rank_lines(out, rank) == [f"all_reduce rank={rank} world=4 sum=10"]


def test_a_rank_failing_on_node_1_stops_both_agents(tmp_path):
    results = _finish(_start_agents(free_port(), "fail_or_sleep.py", READY_DIR=str(tmp_path), FAIL_RANK="3"))
    (status0, _, err0), (status1, _, err1) = results
    assert status1 == 1 and "rank 3 (pid" in err1 and "ValueError: deliberate failure of rank 3" in err1
    assert status0 == 1
    assert re.search(r"node 0\): stopping all ranks because rank 3 on node 1 failed: exit code 1: "
                     r"ValueError: deliberate failure of rank 3", err0), err0
    pids = ready_pids(tmp_path)
    assert len(pids) == 6  # ranks 0, 1, 2 and a grandchild each
    assert [pid for pid in pids if is_running(pid)] == []


def test_a_killed_agent_is_noticed_and_its_ranks_die_with_it(tmp_path):
    agents = _start_agents(free_port(), "fail_or_sleep.py", READY_DIR=str(tmp_path))
    for agent in agents:
        ready = [agent.stdout.readline() for _ in range(2)]
        assert all("ready rank" in line for line in ready), ready
    agents[1].send_signal(signal.SIGKILL)
    (status0, _, err0), (status1, _, _) = _finish(agents)
    assert status1 == -signal.SIGKILL
    assert status0 == 1 and "the agent of node 1 disconnected" in err0, err0
    ranks_and_grandchildren = {int(path.name[4:]): [int(pid) for pid in path.read_text().split()]
                               for path in tmp_path.glob("rank[0-9]")}
    try:
        assert sorted(ranks_and_grandchildren) == [0, 1, 2, 3]
        # Node 0's agent ended its ranks' whole groups; node 1's ranks died of the parent-death
        # signal. Node 1's grandchildren are out of any live agent's reach (a documented limit).
        must_be_gone = ranks_and_grandchildren[0] + ranks_and_grandchildren[1] + \
            [ranks_and_grandchildren[rank][0] for rank in (2, 3)]
        assert [pid for pid in must_be_gone if is_running(pid)] == []
    finally:
        for rank in (2, 3):
            _kill_if_running(ranks_and_grandchildren.get(rank, [None, None])[1])


def _kill_if_running(pid: int | None) -> None:
    if pid is not None and is_running(pid):
        os.kill(pid, signal.SIGKILL)


def test_node_0_keeps_the_channel_up_while_slower_nodes_finish():
    # Node 1's ranks outlive node 0's by more than the heartbeat timeout: node 0 must wait for
    # them rather than close the channel, which node 1 would take for node 0's death.
    slow_on_node_1 = 'if [ "$NODE_RANK" = 1 ]; then sleep 2.5; fi; echo "done $RANK"'
    agents = [start_launcher("--num_nodes", "2", "--num_procs", "2", "--node_rank", str(node), "--master_port",
                             str(port), "--heartbeat_timeout", "1", "--no_python", "sh", "-c", slow_on_node_1)
              for port in [free_port()] for node in range(2)]
    (status0, out0, err0), (status1, out1, err1) = _finish(agents)
    assert (status0, status1) == (0, 0), err0 + err1
    assert "waiting for the other nodes" in err0
    assert [rank_lines(out1, rank) for rank in (2, 3)] == [["done 2"], ["done 3"]]


def test_ctrl_c_while_waiting_for_the_other_agents():
    agent = start_launcher("--num_nodes", "2", "--node_rank", "1", "--master_port", str(free_port()),
                           str(SCRIPTS / "report_env.py"))
    try:
        assert "waiting for all 2 agents" in agent.stderr.readline()
        agent.send_signal(signal.SIGINT)  # node 0 never starts: the agent is still connecting
        _, err = agent.communicate(timeout=HANG_GUARD_SECONDS)
    finally:
        agent.kill()
    assert agent.returncode == 130, err

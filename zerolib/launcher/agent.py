"""The agent of one node: spawn its ranks, watch them, and end them all when anything fails.

With several nodes, each node runs one agent (``--node_rank R``), as torchrun does; the agents
share failures through the channel in coordination.py, hosted by the node-0 agent.
"""
import dataclasses
import errno
import os
import re
import shlex
import signal
import socket
import sys
import threading

from zerolib.launcher.coordination import CoordinationClient, CoordinationServer, format_failure
from zerolib.launcher.errors import LaunchError
from zerolib.launcher.procs import ChildProcess, describe_exit, end_children, exit_status
from zerolib.launcher.supervise import OutcomeKind, SignalLatch, supervise


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """Everything one agent needs; built from the options by launch.py."""

    node_rank: int
    node_sizes: tuple[int, ...]  # ranks on each node, in node order
    command: tuple[str, ...]  # what every rank runs
    master_addr: str
    master_port: int
    coord_port: int  # the agents' coordination channel, hosted by node 0
    devices: tuple[int, ...] | None = None  # this node's device slots, exported as CUDA_VISIBLE_DEVICES
    term_grace: float = 5.0
    heartbeat_timeout: float = 15.0
    join_timeout: float = 300.0
    exit_on_stdin_eof: bool = False  # set for agents started over ssh: see SignalLatch.trip_on_stdin_eof

    @property
    def num_nodes(self) -> int:
        return len(self.node_sizes)

    @property
    def world_size(self) -> int:
        return sum(self.node_sizes)

    @property
    def local_size(self) -> int:
        return self.node_sizes[self.node_rank]

    @property
    def first_rank(self) -> int:
        """Global rank of this node's local rank 0: node_rank * nproc when the nodes are alike."""
        return sum(self.node_sizes[: self.node_rank])


def rank_env(plan: NodePlan, local_rank: int) -> dict[str, str]:
    """The variables torch.distributed's env:// init and DeepSpeed/torchrun scripts read."""
    env = {
        "RANK": plan.first_rank + local_rank,
        "LOCAL_RANK": local_rank,
        "WORLD_SIZE": plan.world_size,
        "LOCAL_WORLD_SIZE": plan.local_size,
        "NODE_RANK": plan.node_rank,
        "GROUP_RANK": plan.node_rank,
        "CROSS_RANK": plan.node_rank,
        "CROSS_SIZE": plan.num_nodes,
        "MASTER_ADDR": plan.master_addr,
        "MASTER_PORT": plan.master_port,
        "PYTHONUNBUFFERED": 1,
    }
    if plan.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot) for slot in plan.devices)
    return {key: str(value) for key, value in env.items()}


def dry_run_lines(plan: NodePlan) -> list[str]:
    """One shell line per rank of this node, with the variables the rank gets."""
    lines = []
    for local_rank in range(plan.local_size):
        assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in rank_env(plan, local_rank).items())
        lines.append(f"rank {plan.first_rank + local_rank}: {assignments} {shlex.join(plan.command)}")
    return lines


def check_port_free(host: str, port: int, option: str) -> None:
    """Bind ``host:port`` once to prove rank 0 will be able to; a busy port is a LaunchError.

    An address this machine does not own cannot be checked here and is left to the rank.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as err:
            raise LaunchError(f"--master_addr {host!r} does not resolve: {err.strerror}") from err
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise LaunchError(f"port {port} on {host} is already in use; choose a free one with {option}") from err
            if err.errno != errno.EADDRNOTAVAIL:
                raise LaunchError(f"cannot bind {host}:{port} ({option}): {err.strerror}") from err


_TORCH_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")


def _say(plan: NodePlan, message: str) -> None:
    where = f" (node {plan.node_rank})" if plan.num_nodes > 1 else ""
    print(f"zerolib launcher{where}: {message}", file=sys.stderr, flush=True)


def _spawn_ranks(plan: NodePlan) -> list[ChildProcess]:
    output_lock = threading.Lock()
    ranks: list[ChildProcess] = []
    try:
        for local_rank in range(plan.local_size):
            rank = plan.first_rank + local_rank
            env = {**os.environ, **rank_env(plan, local_rank)}
            ranks.append(ChildProcess(f"rank {rank}", f"[rank{rank}] ", list(plan.command), env, output_lock))
    except OSError as err:
        end_children(ranks, signal.SIGTERM, plan.term_grace)
        raise LaunchError(str(err.strerror)) from err
    return ranks


def last_error_line(stderr_lines) -> str | None:
    """The line that ends the last Python traceback (``ValueError: ...``), else the last line.

    The exception line is the first unindented line after a traceback's indented frames; a
    native message printed later while the process shuts down (``terminate called ...``) does
    not hide it.
    """
    # torch starts each line of an uncaught exception in a distributed rank with "[rankN]:".
    lines = [_TORCH_RANK_PREFIX.sub("", line).rstrip() for line in stderr_lines]
    lines = [line for line in lines if line.strip()]
    ends = [line for before, line in zip(lines, lines[1:]) if before.startswith(" ") and not line.startswith(" ")]
    found = ends[-1] if ends else (lines[-1] if lines else None)
    return found.strip() if found else None


def _rank_failure_reason(child: ChildProcess) -> str:
    """``exit code 1: ValueError: ...``: how the rank ended and its last error line."""
    last = last_error_line(child.stderr_tail)
    exit_text = describe_exit(child.popen.returncode)
    return f"{exit_text}: {last}" if last else exit_text


def _report_rank_failure(plan: NodePlan, child: ChildProcess) -> None:
    _say(plan, f"{child.label} (pid {child.pid}) failed with {_rank_failure_reason(child)}; stopping the other ranks")
    if child.stderr_tail:
        _say(plan, f"last stderr lines of {child.label}:\n" + "\n".join(f"  {line}" for line in child.stderr_tail))


def _start_channel(plan: NodePlan, latch: SignalLatch) -> tuple[CoordinationServer | None, CoordinationClient | None]:
    """Host (on node 0) and join the coordination channel; the client is None if interrupted."""
    if plan.num_nodes == 1:
        return None, None
    server = None
    if plan.node_rank == 0:
        server = CoordinationServer(plan.master_addr, plan.coord_port, plan.num_nodes, plan.heartbeat_timeout)

    def interrupted() -> bool:  # a Ctrl-C must not have to wait for the other agents to join
        return latch.received is not None

    _say(plan, f"waiting for all {plan.num_nodes} agents at {plan.master_addr}:{plan.coord_port}")
    try:
        client = CoordinationClient.connect(plan.master_addr, plan.coord_port, plan.node_rank,
                                            plan.join_timeout, plan.heartbeat_timeout, interrupted)
        if client is not None:
            client.join(plan.num_nodes, plan.join_timeout, interrupted)
    except BaseException:
        if server is not None:
            server.close()
        raise
    return server, client


def run_node(plan: NodePlan) -> int:
    """Run this node's ranks to the end; return the launcher's exit status (0 when all succeeded)."""
    if plan.node_rank == 0:
        check_port_free(plan.master_addr, plan.master_port, "--master_port")
    with SignalLatch() as latch:
        if plan.exit_on_stdin_eof:
            latch.trip_on_stdin_eof()
        server, client = _start_channel(plan, latch)
        status = None
        try:
            status = _run_ranks(plan, latch, client)
            return status
        finally:
            if client is not None:
                client.close()
            if server is not None:
                _serve_until_others_finish(plan, server, succeeded=status == 0)


def _serve_until_others_finish(plan: NodePlan, server: CoordinationServer, succeeded: bool) -> None:
    """Keep node 0's channel up until every agent finished, so none mistakes its end for a failure.

    After a success this waits as long as the others run (a dead agent is still noticed by the
    heartbeat watchdog); after a failure or signal only long enough for them to stop.
    """
    if succeeded and not server.job.all_finished():
        _say(plan, "this node's ranks finished; waiting for the other nodes")
    server.wait_until_finished(None if succeeded else plan.heartbeat_timeout + plan.term_grace)
    server.close()


def _run_ranks(plan: NodePlan, latch: SignalLatch, client: CoordinationClient | None) -> int:
    if latch.received is not None:  # interrupted while waiting for the other agents
        return _stop_on_signal(plan, [], latch.received, client)
    ranks = _spawn_ranks(plan)
    outcome = supervise(ranks, latch, client.poll_failure if client else None)
    if outcome.kind is OutcomeKind.SUCCEEDED:
        for child in ranks:
            child.join_output(timeout=2.0)
        if client:
            client.report_finished("done")
        return 0
    if outcome.kind is OutcomeKind.CHILD_FAILED:
        failed = outcome.child
        failed.join_output(timeout=1.0)  # its last lines may still be in the pipe
        _report_rank_failure(plan, failed)
        if client:
            client.report_failure(plan.first_rank + ranks.index(failed), _rank_failure_reason(failed))
        end_children(ranks, signal.SIGTERM, plan.term_grace)
        return exit_status(failed.popen.returncode)
    if outcome.kind is OutcomeKind.SIGNALLED:
        return _stop_on_signal(plan, ranks, outcome.signum, client)
    _say(plan, f"stopping all ranks because {format_failure(outcome.peer_failure)}")
    end_children(ranks, signal.SIGTERM, plan.term_grace)
    if client:
        client.report_finished("stopped")
    return 1


def _stop_on_signal(plan: NodePlan, ranks: list[ChildProcess], signum: int,
                    client: CoordinationClient | None) -> int:
    """Pass SIGINT/SIGTERM on to the ranks (Python ranks see SIGINT as KeyboardInterrupt), end them
    with SIGTERM on a hang-up, and exit 128+signum.

    The other agents are told, as for a failure, so that one Ctrl-C stops the whole job.
    """
    name = signal.Signals(signum).name
    _say(plan, f"received {name}; ending all ranks")
    end_children(ranks, signum if signum in (signal.SIGINT, signal.SIGTERM) else signal.SIGTERM, plan.term_grace)
    if client:
        client.report_failure(None, f"its agent received {name}")
    return 128 + signum

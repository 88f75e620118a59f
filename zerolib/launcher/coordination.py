"""The channel through which the agents of a multi-node job learn of each other's failures.

The node-0 agent hosts a small TCP server (stdlib only, so launching never imports torch) on
the coordination port, master_port + 1 unless ``--coord_port`` says otherwise. Every agent,
node 0's included, keeps one connection open and exchanges newline-delimited JSON requests:

- ``join``: announce the node; agents wait until all nodes joined before spawning ranks, so no
  rank starts in a job whose failure could go unnoticed.
- ``poll``: the heartbeat, answered with the first failure recorded, if any.
- ``fail``: a rank of this node failed (its global rank and the reason).
- ``finish``: this node's ranks all succeeded (``done``) or were stopped (``stopped``).

An agent whose connection drops before it finished, or that sends no heartbeat for
``heartbeat_timeout`` seconds, is recorded as a failure of its node, so the others stop too.
"""
import errno
import json
import socket
import socketserver
import threading
import time
from typing import Callable

from zerolib.launcher.errors import LaunchError

# How often an agent sends its heartbeat; the server tolerates heartbeat_timeout of silence.
HEARTBEAT_SECONDS = 0.25
_FINISHED_STATES = ("done", "stopped", "lost")


class _JobState:
    """What the server knows: each node's state and the first failure of the job."""

    def __init__(self, num_nodes: int, heartbeat_timeout: float):
        self.num_nodes = num_nodes
        self.heartbeat_timeout = heartbeat_timeout
        self.lock = threading.Lock()
        self.states: dict[int, str] = {}  # node rank -> running | done | stopped | lost
        self.last_seen: dict[int, float] = {}
        self.failure: dict | None = None  # {"node", "rank", "reason"} of the first failure

    def _record_failure(self, node: int, rank: int | None, reason: str) -> None:
        if self.failure is None:
            self.failure = {"node": node, "rank": rank, "reason": reason}

    def handle(self, request: dict) -> dict:
        op, node = request.get("op"), request.get("node")
        if not isinstance(node, int) or not 0 <= node < self.num_nodes:
            return {"error": f"node rank {node!r} is outside 0..{self.num_nodes - 1}"}
        with self.lock:
            if op == "join":
                if node in self.states:
                    return {"error": f"node rank {node} joined twice: two agents were started with --node_rank {node}"}
                self.states[node] = "running"
            elif op == "fail":
                self._record_failure(node, request.get("rank"), str(request.get("reason")))
                self.states[node] = "stopped"
            elif op == "finish":
                self.states[node] = request.get("state", "done")
            elif op != "poll":
                return {"error": f"unknown request {op!r}"}
            self.last_seen[node] = time.monotonic()
            return {"joined": len(self.states), "failure": self.failure}

    def connection_lost(self, node: int) -> None:
        with self.lock:
            if self.states.get(node) == "running":
                self.states[node] = "lost"
                self._record_failure(node, None, f"the agent of node {node} disconnected (it died or was killed)")

    def check_heartbeats(self) -> None:
        now = time.monotonic()
        with self.lock:
            for node, state in self.states.items():
                if state == "running" and now - self.last_seen[node] > self.heartbeat_timeout:
                    self.states[node] = "lost"
                    self._record_failure(node, None, f"the agent of node {node} sent no heartbeat for "
                                                     f"{self.heartbeat_timeout:g} s")

    def all_finished(self) -> bool:
        with self.lock:
            everyone_joined = len(self.states) == self.num_nodes
            if self.failure is None and not everyone_joined:
                return False
            return all(state in _FINISHED_STATES for state in self.states.values())


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        node = None
        for raw in self.rfile:
            try:
                request = json.loads(raw)
            except ValueError:
                self.wfile.write(b'{"error": "request is not JSON"}\n')
                continue
            reply = self.server.job.handle(request)
            if "error" not in reply:
                node = request["node"]
            self.wfile.write(json.dumps(reply).encode() + b"\n")
        if node is not None:
            self.server.job.connection_lost(node)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address, job: _JobState):
        self.job = job  # shared by the handler threads of all connections
        super().__init__(address, _Handler, bind_and_activate=False)


class CoordinationServer:
    """The node-0 agent's server; ``close`` after ``wait_until_finished``."""

    def __init__(self, host: str, port: int, num_nodes: int, heartbeat_timeout: float):
        self.job = _JobState(num_nodes, heartbeat_timeout)
        self._server = _bind_server(host, port, self.job)
        self._stopped = threading.Event()
        threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True, name="coordination").start()
        threading.Thread(target=self._watch_heartbeats, daemon=True, name="heartbeat watchdog").start()

    def _watch_heartbeats(self):
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            self.job.check_heartbeats()

    def wait_until_finished(self, timeout: float | None) -> None:
        """Keep serving until every agent finished or was lost, or for at most ``timeout`` s."""
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        while not self.job.all_finished() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()


def _bind_server(host: str, port: int, job: _JobState) -> _Server:
    server = _Server((host, port), job)
    try:
        try:
            server.server_bind()
        except OSError as err:
            if err.errno != errno.EADDRNOTAVAIL:
                raise
            # master_addr names this node by an address it does not own (NAT, alias): listen on all.
            server.server_address = ("", port)
            server.server_bind()
        server.server_activate()
    except OSError as err:
        server.server_close()
        raise LaunchError(f"cannot host the agents' coordination channel on port {port} of {host!r} "
                          f"({err.strerror}); pick another with --coord_port or --master_port") from err
    return server


def _never() -> bool:
    return False


class CoordinationClient:
    """One agent's connection to the node-0 agent's server; make it with ``connect``."""

    def __init__(self, sock: socket.socket, address: str, node_rank: int):
        self.node_rank = node_rank
        self.address = address
        self._last_poll = 0.0
        self._sock = sock
        self._stream = sock.makefile("rwb")

    @classmethod
    def connect(cls, host: str, port: int, node_rank: int, timeout: float, io_timeout: float,
                interrupted: Callable[[], bool] = _never) -> "CoordinationClient | None":
        """Connect, retrying for ``timeout`` s while the node-0 agent is not listening yet.

        Returns None as soon as ``interrupted()`` is true (a Ctrl-C while waiting).
        """
        deadline = time.monotonic() + timeout
        while not interrupted():
            try:
                return cls(socket.create_connection((host, port), timeout=io_timeout), f"{host}:{port}", node_rank)
            except OSError as err:
                if time.monotonic() > deadline:
                    raise LaunchError(f"cannot reach the node-0 agent's coordination channel at {host}:{port} "
                                      f"within {timeout:g} s ({err.strerror or err}); is the node-0 agent "
                                      f"running?") from err
                time.sleep(0.2)
        return None

    def _request(self, op: str, **fields) -> dict:
        self._stream.write(json.dumps({"op": op, "node": self.node_rank, **fields}).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise ConnectionError(f"the coordination server at {self.address} closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            raise LaunchError(f"coordination server at {self.address}: {reply['error']}")
        return reply

    def join(self, num_nodes: int, timeout: float, interrupted: Callable[[], bool] = _never) -> bool:
        """Announce this node and wait until all ``num_nodes`` agents have joined.

        Returns False, without waiting further, as soon as ``interrupted()`` is true.
        """
        deadline = time.monotonic() + timeout
        reply = self._request("join")
        while reply["joined"] < num_nodes and reply["failure"] is None:
            if interrupted():
                return False
            if time.monotonic() > deadline:
                raise LaunchError(f"only {reply['joined']} of {num_nodes} agents joined at {self.address} "
                                  f"within {timeout:g} s; start one agent per node with --node_rank 0..{num_nodes - 1}")
            time.sleep(HEARTBEAT_SECONDS)
            reply = self._request("poll")
        if reply["failure"] is not None:
            raise LaunchError(f"the job failed before it started: {format_failure(reply['failure'])}")
        return True

    def poll_failure(self) -> dict | None:
        """The job's first failure, or None; sends a heartbeat at most every HEARTBEAT_SECONDS.

        Losing the server counts as a failure of node 0: its agent died, so its ranks are gone.
        """
        now = time.monotonic()
        if now - self._last_poll < HEARTBEAT_SECONDS:
            return None
        self._last_poll = now
        try:
            return self._request("poll")["failure"]
        except (OSError, ValueError) as err:
            return {"node": 0, "rank": None, "reason": f"lost contact with the node-0 agent at {self.address} ({err})"}

    def report_failure(self, rank: int | None, reason: str) -> None:
        """Record a failure of global ``rank`` (None: of this whole node) for all agents to see."""
        self._send_final("fail", rank=rank, reason=reason)

    def report_finished(self, state: str) -> None:
        """``done`` when this node's ranks all succeeded, ``stopped`` when they were ended."""
        self._send_final("finish", state=state)

    def _send_final(self, op: str, **fields) -> None:
        try:
            self._request(op, **fields)
        except (OSError, ValueError):
            pass  # the server is gone; the other agents notice that by themselves

    def close(self) -> None:
        self._stream.close()
        self._sock.close()


def format_failure(failure: dict) -> str:
    """``rank 3 on node 1 failed: exit code 1: ValueError: boom`` or a node-level reason."""
    if failure.get("rank") is None:
        return f"node {failure['node']}: {failure['reason']}"
    return f"rank {failure['rank']} on node {failure['node']} failed: {failure['reason']}"

"""``serve(engine, settings, ...)``: run the scoring server on every rank of a job.

Rank 0 runs uvicorn in a thread (the HTTP side only queues and awaits) and the round loop in
the main thread (routing, broadcasting and ``engine.score``); every other rank follows the
rounds rank 0 sends. SIGINT/SIGTERM on rank 0 finish the round in flight, answer the queued
calls with 503 and stop every rank; other ranks ignore them and wait for rank 0's stop (the
launcher SIGKILLs them after its grace period if rank 0 never sends it).
"""
from __future__ import annotations

import signal
import socket
import threading
import time

from zerolib.comm import CommContext
from zerolib.inference.router import router_for_engine
from zerolib.inference.serve.app import create_app
from zerolib.inference.serve.jobs import RequestQueue, ServerMetrics
from zerolib.inference.serve.rounds import RoundChannel, RoundLoop, follow_rounds
from zerolib.inference.serve.schema import Limits
from zerolib.inference.serve.settings import ServeSettings

STARTUP_TIMEOUT_SECONDS = 30.0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a busy port is an error naming it (port 0: any free)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port") from None
    sock.listen(256)
    return sock


class HttpThread:
    """uvicorn serving ``app`` on an already bound socket, in a background thread."""

    def __init__(self, app, sock: socket.socket):
        import uvicorn  # the serve extra; imported here so that the router works without it

        self.sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="zerolib-http", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (see its log above)")
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def limits_for(engine, settings: ServeSettings, max_positions: int | None) -> Limits:
    """What a call may ask. The longest input is the smallest of serve.max_input_tokens, the
    model's positions and the engine's own limit when it exposes one (``max_input_tokens``, not
    in the contract): a request the engine would refuse inside ``score`` would end the job."""
    bounds = [settings.max_input_tokens, max_positions, getattr(engine, "max_input_tokens", None)]
    longest = min(bound for bound in bounds if bound is not None)
    return Limits(max_requests=settings.max_requests_per_call, max_input_tokens=longest,
                  max_candidates=settings.max_candidates, vocab_size=engine.cost.vocab_size)


def _on_signals(handler) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)


def serve(engine, settings: ServeSettings, *, comm: CommContext, host: str = "127.0.0.1", port: int = 0,
          tokenizer=None, max_positions: int | None = None, stop: threading.Event | None = None,
          announce=print) -> int:
    """Serve until stopped (a signal on rank 0, or ``stop`` set); returns the exit status.

    Call on every rank, after the engine is built. ``announce`` gets the line naming the
    address (``serving on http://127.0.0.1:PORT``) once the server accepts connections.
    """
    channel = RoundChannel(comm)
    if comm.rank != 0:
        _on_signals(lambda *_: None)  # rank 0 decides when the job stops
        return follow_rounds(engine, channel)
    stop = stop or threading.Event()
    router = router_for_engine(settings.router, engine)
    queue = RequestQueue(settings.max_queue_requests)
    metrics = ServerMetrics(comm.world_size, engine.threshold, engine.t_ep, engine.flops_rate, router.name)
    app = create_app(queue, metrics, limits_for(engine, settings, max_positions), settings, tokenizer)
    http = HttpThread(app, bind(host, port))
    http.start()
    _on_signals(lambda *_: stop.set())
    announce(f"serving on http://{host}:{http.port} ({comm.world_size} ranks, router {router.name}, "
             f"T = {engine.threshold:.3e} FLOPs per layer)")
    try:
        RoundLoop(engine, router, queue, metrics, channel, settings).run(stop, keep_going=http.alive)
    finally:
        http.stop()
    if not stop.is_set():
        announce("the HTTP server stopped unexpectedly; stopping")
        return 1
    announce("stopped cleanly")
    return 0

"""What the HTTP side and the round loop share: jobs, the FIFO request queue, the metrics.

A *job* is one POST: its requests enter the FIFO queue one by one, may be scored across several
rounds, and the job resolves when its last result arrives. The HTTP handler awaits the job on
its event loop; the round loop (another thread) fills it in. Each job owns its own result
slots, so a client that goes away (its job is cancelled and its queued requests dropped) can
never take or lose another client's results.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass


class Job:
    """The requests of one call and, as rounds finish, their results."""

    def __init__(self, requests: list[dict], return_logits: bool, loop: asyncio.AbstractEventLoop):
        self.requests = requests
        self.return_logits = return_logits
        self.results: list[dict | None] = [None] * len(requests)
        self.remaining = len(requests)
        self.cancelled = False
        self._loop = loop
        self.future: asyncio.Future = loop.create_future()

    def deliver(self, index: int, result: dict) -> None:
        """Called from the round loop; resolves the future with the last result."""
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self._resolve(self.results, None)

    def fail(self, error: Exception) -> None:
        self._resolve(None, error)

    def _resolve(self, value, error) -> None:
        def settle():
            if self.future.done():  # the client already went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


@dataclass
class QueuedRequest:
    job: Job
    index: int

    @property
    def tokens(self) -> list[int]:
        return self.job.requests[self.index]["input_ids"]


class QueueFull(Exception):
    pass


class RequestQueue:
    """Thread-safe FIFO of requests; only the round loop takes from its head."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: deque[QueuedRequest] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.closed:
                raise QueueFull("the server is shutting down")
            if len(self._items) + len(job.requests) > self.capacity:
                raise QueueFull(f"{len(self._items)} requests are queued; {len(job.requests)} more would pass the "
                                f"limit of {self.capacity} (serve.max_queue_requests); retry later")
            self._items.extend(QueuedRequest(job, i) for i in range(len(job.requests)))
            self._arrived.notify_all()

    def wait(self, timeout: float, at_least: int = 1) -> None:
        """Block until ``at_least`` live requests are queued, the queue closes, or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._items) < at_least and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._arrived.wait(left)

    def head(self, count: int) -> list[QueuedRequest]:
        """Up to ``count`` requests from the front, after dropping those of cancelled jobs."""
        with self._lock:
            while self._items and self._items[0].job.cancelled:
                self._items.popleft()
            live = []
            for item in self._items:
                if len(live) == count:
                    break
                if not item.job.cancelled:
                    live.append(item)
            return live

    def drop(self, job: Job) -> None:
        """Forget the still-queued requests of a cancelled ``job``."""
        with self._lock:
            self._items = deque(item for item in self._items if item.job is not job)

    def take(self, items: list[QueuedRequest]) -> None:
        """Remove ``items`` (a head snapshot's admitted part) from the queue."""
        chosen = {id(item) for item in items}
        with self._lock:
            self._items = deque(item for item in self._items if id(item) not in chosen)

    def close(self) -> list[QueuedRequest]:
        """Refuse new work and hand back what was still queued."""
        with self._lock:
            self.closed = True
            left, self._items = list(self._items), deque()
            self._arrived.notify_all()
            return left


class ServerMetrics:
    """Counters for /health and /metrics, updated by the round loop, read by the HTTP side."""

    def __init__(self, world_size: int, threshold: float, t_ep: float, flops_rate: float, router: str):
        self.started = time.monotonic()
        self.world_size, self.threshold, self.t_ep, self.flops_rate, self.router = (
            world_size, threshold, t_ep, flops_rate, router)
        self.rounds = 0
        self.requests_scored = 0
        self.tokens_scored = 0
        self.tokens_from_cache = 0
        self.busy_seconds = 0.0
        self.last_round_loads = [0.0] * world_size
        self.routed_flops = [0.0] * world_size
        self.rejected = 0
        self.cancelled = 0
        self.alive = True
        self.error: str | None = None

    def record_round(self, plan, tokens: int, seconds: float) -> None:
        self.rounds += 1
        self.requests_scored += plan.taken
        self.tokens_scored += tokens
        self.tokens_from_cache += sum(plan.cached_tokens)
        self.busy_seconds += seconds
        self.last_round_loads = list(plan.loads)
        for rank, cost in zip(plan.assignment, plan.costs):
            self.routed_flops[rank] += cost

    def snapshot(self, queue_depth: int) -> dict:
        uptime = time.monotonic() - self.started
        return {
            "status": "ok" if self.alive else "failed", "error": self.error,
            "queue_depth": queue_depth, "ranks": self.world_size, "router": self.router,
            "threshold_flops": self.threshold, "t_ep_seconds": self.t_ep, "flops_rate": self.flops_rate,
            "rounds": self.rounds, "requests_scored": self.requests_scored,
            "tokens_scored": self.tokens_scored, "tokens_from_cache": self.tokens_from_cache,
            "throughput_tokens_per_s": self.tokens_scored / uptime if uptime > 0 else 0.0,
            "busy_tokens_per_s": self.tokens_scored / self.busy_seconds if self.busy_seconds else 0.0,
            "engine_load_last_round_flops": self.last_round_loads,
            "engine_load_total_flops": self.routed_flops,
            "rejected_calls": self.rejected, "cancelled_calls": self.cancelled, "uptime_seconds": uptime,
        }

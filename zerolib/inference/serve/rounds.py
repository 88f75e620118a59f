"""The multi-rank round loop: rank 0 routes and broadcasts each round, every rank scores it.

Every rank calls ``engine.score(requests, assignment)`` with the same arguments in the same
order (the engine's layers run in lockstep across ranks), so rank 0 sends each round to the
others before scoring it itself. While idle, rank 0 sends a tick every ``idle_tick_seconds`` so
that no rank waits in a collective longer than that plus one round: a rank that dies shows up
as a failed or timed-out collective on the others, never as a silent hang. ``stop`` ends
every rank's loop.
"""
from __future__ import annotations

import pickle
import threading
import time
from dataclasses import dataclass, field

import torch

from zerolib.comm import CommContext
from zerolib.inference.router import Router
from zerolib.inference.serve.jobs import RequestQueue, ServerMetrics
from zerolib.inference.serve.settings import ServeSettings


@dataclass
class RoundMessage:
    """What rank 0 tells the others: ``round`` (score these), ``idle`` or ``stop``."""

    kind: str
    requests: list[dict] = field(default_factory=list)
    assignment: list[int] = field(default_factory=list)
    return_logits: bool = False


class RoundChannel:
    """Rank 0 -> all ranks, one pickled message per round, through the CommContext (so its
    bytes are counted like every other collective zerolib issues)."""

    def __init__(self, comm: CommContext):
        self.comm = comm

    def send(self, message: RoundMessage) -> None:
        if not self.comm.distributed:
            return
        payload = pickle.dumps(message)
        self.comm.broadcast(torch.tensor([len(payload)], dtype=torch.int64), src=0)
        self.comm.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8), src=0)

    def receive(self) -> RoundMessage:
        size = torch.zeros(1, dtype=torch.int64)
        self.comm.broadcast(size, src=0)
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self.comm.broadcast(payload, src=0)
        return pickle.loads(payload.numpy().tobytes())


def follow_rounds(engine, channel: RoundChannel) -> int:
    """Loop of ranks other than 0: score every round rank 0 sends until it says stop."""
    while True:
        message = channel.receive()
        if message.kind == "stop":
            return 0
        if message.kind == "round":
            engine.score(message.requests, message.assignment, return_logits=message.return_logits)


class RoundLoop:
    """Rank 0: take a round from the queue, route it, send it, score it, hand out the results."""

    def __init__(self, engine, router: Router, queue: RequestQueue, metrics: ServerMetrics,
                 channel: RoundChannel, settings: ServeSettings):
        self.engine, self.router, self.queue, self.metrics = engine, router, queue, metrics
        self.channel, self.settings = channel, settings

    def run(self, stop: threading.Event, keep_going=lambda: True) -> None:
        """Until ``stop`` is set (or ``keep_going()`` turns false), then tell the other ranks to
        stop. On an error the other ranks are not told: the collectives may be out of step, so
        this rank just ends, and the others fail on their next collective (or the launcher
        ends them first)."""
        try:
            while not stop.is_set() and keep_going():
                self.queue.wait(self.settings.idle_tick_seconds)
                if not self.queue.head(1):
                    self.channel.send(RoundMessage("idle"))
                    continue
                # a short window for more arrivals, so a burst becomes one round, not many
                self.queue.wait(self.settings.batch_wait_seconds, at_least=self.settings.max_round_requests)
                self.run_round()
        except BaseException as err:
            self.metrics.alive, self.metrics.error = False, f"{type(err).__name__}: {err}"
            self._refuse_the_rest()
            raise
        self._refuse_the_rest()
        self.channel.send(RoundMessage("stop"))

    def _refuse_the_rest(self) -> None:
        for item in self.queue.close():
            item.job.fail(RuntimeError("the server is shutting down"))

    def run_round(self) -> None:
        items = self.queue.head(self.settings.max_round_requests)
        if not items:
            return
        plan = self.router.plan_round([item.tokens for item in items])
        admitted = items[:plan.taken]
        self.queue.take(admitted)
        requests = [item.job.requests[item.index] for item in admitted]
        return_logits = any(item.job.return_logits for item in admitted)
        start = time.perf_counter()
        try:
            self.channel.send(RoundMessage("round", requests, plan.assignment, return_logits))
            results = self.engine.score(requests, plan.assignment, return_logits=return_logits)
            if results is None or len(results) != len(requests):
                raise RuntimeError(f"engine.score on rank 0 returned {None if results is None else len(results)} "
                                   f"results for {len(requests)} requests")
        except BaseException as err:
            for item in admitted:
                item.job.fail(RuntimeError(f"scoring failed: {type(err).__name__}: {err}"))
            raise
        self.router.finish_round(plan)
        self.metrics.record_round(plan, sum(len(r["input_ids"]) for r in requests), time.perf_counter() - start)
        for item, result, rank in zip(admitted, results, plan.assignment):
            answer = {key: value for key, value in result.items() if key != "logits" or item.job.return_logits}
            answer["rank"] = rank
            item.job.deliver(item.index, answer)

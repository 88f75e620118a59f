"""Helpers for the scoring-server tests: a tiny seeded MoE GPT and an engine over it, a workload
with shared prefixes, and a real uvicorn server on a free port in a background thread of the test
process."""
from __future__ import annotations

import queue
import random
import threading

import torch

from zerolib.comm import CommContext
from zerolib.inference import MoEPrefillEngine
from zerolib.inference.serve.server import serve
from zerolib.inference.serve.settings import ServeSettings
from zerolib.models import MoEGPT, MoEGPTConfig

VOCAB = 64


def tiny_moe(seed: int = 0) -> MoEGPT:
    torch.manual_seed(seed)
    return MoEGPT(MoEGPTConfig(vocab_size=VOCAB, block_size=128, n_layer=2, n_head=2, n_embd=32, n_experts=4,
                               expert_hidden=32))


def prefix_workload(count: int, seed: int, num_prefixes: int = 3) -> list[dict]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(VOCAB) for _ in range(rng.choice([32, 48]))] for _ in range(num_prefixes)]
    return [{"input_ids": rng.choice(prefixes) + [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 20))],
             "candidates": rng.sample(range(VOCAB), 3)} for _ in range(count)]


class ServerThread:
    """``serve`` on one rank in a thread; ``url`` once it listens; ``close()`` stops it."""

    def __init__(self, engine, settings: ServeSettings | None = None, tokenizer=None, max_positions=128):
        self.stop = threading.Event()
        lines: queue.Queue = queue.Queue()
        self.status = None

        self.error = None

        def run():
            try:
                self.status = serve(engine, settings or ServeSettings(), comm=CommContext(), port=0,
                                    tokenizer=tokenizer, max_positions=max_positions, stop=self.stop,
                                    announce=lines.put)
            except BaseException as err:  # kept for the test to check (and to surface start-up failures)
                self.error = err
                lines.put(f"failed: {err!r}")

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        first = lines.get(timeout=60)
        assert first.startswith("serving on "), first
        self.url = first.split()[2]
        self.lines = lines

    def close(self) -> int:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"
        if self.error is not None:
            raise AssertionError(f"the server failed: {self.error!r}")
        return self.status


class FailingScorer:
    """A real scorer that raises from ``score`` once ``broken`` is set (a backend bug or a lost
    device), to check what the server does then."""

    def __init__(self, scorer):
        self.scorer, self.broken = scorer, False
        for name in ("rank", "world_size", "cost", "t_ep", "flops_rate", "threshold", "cache_blocks"):
            setattr(self, name, getattr(scorer, name))

    def score(self, requests, assignment=None, return_logits=False):
        if self.broken:
            raise RuntimeError("expert shard lost")
        return self.scorer.score(requests, assignment, return_logits=return_logits)


class GatedScorer:
    """A real scorer whose ``score`` waits until the test opens the gate: lets a test hold a round
    in flight (to disconnect a client or fill the queue meanwhile). Results are the scorer's own."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.gate = threading.Event()
        self.entered = threading.Event()
        for name in ("rank", "world_size", "cost", "t_ep", "flops_rate", "threshold", "cache_blocks"):
            setattr(self, name, getattr(scorer, name))

    def score(self, requests, assignment=None, return_logits=False):
        self.entered.set()
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return self.scorer.score(requests, assignment, return_logits=return_logits)


def one_rank_engine(model: MoEGPT, threshold: float = 1e9) -> MoEPrefillEngine:
    """The engine on this process alone (the server thread's rank 0), with a fixed T."""
    config = {"moe_prefill": {"mode": "reference", "cache_blocks": 64, "threshold_flops": threshold}}
    return MoEPrefillEngine(model, config, comm=CommContext())

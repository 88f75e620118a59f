"""The router's committed tables mirror the engines' prefix caches, checked against a real scorer.

The scorer is tests/support/prefill_standin.py (zerolib's GPT with a per-rank prefix KV cache);
SWITCH TO THE REAL ENGINE: once zerolib.inference.MoEPrefillEngine is merged, the same checks
should run against it (its cache is not inspectable through the contract, so the check there is
the engine's own cached-token count, when it exposes one).
"""
import random

import pytest
import torch

from support.prefill_standin import StandInScorer, reference_scores
from zerolib.comm import CommContext
from zerolib.inference.blocks import BLOCK_TOKENS
from zerolib.inference.router import PrefixRouter, RoundRobinRouter
from zerolib.models import GPT, GPTConfig


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=128, n_layer=2, n_head=2, n_embd=32))


def workload(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(64) for _ in range(rng.choice([32, 48, 64]))] for _ in range(4)]
    return [{"input_ids": rng.choice(prefixes) + [rng.randrange(64) for _ in range(rng.randrange(1, 30))],
             "candidates": rng.sample(range(64), 3)} for _ in range(count)]


def test_standin_with_its_prefix_cache_matches_a_full_forward():
    model = tiny_gpt()
    scorer = StandInScorer(model, cache_blocks=16, comm=CommContext(), threshold=1.0)
    requests = workload(12, seed=1)
    got = scorer.score(requests)
    assert scorer.stats["cached_tokens"] > 0, "the workload shares prefixes: the cache must be used"
    for mine, ref in zip(got, reference_scores(model, requests)):
        assert mine["best"] == ref["best"]
        assert mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5)


@pytest.mark.parametrize("router_cls", [PrefixRouter, RoundRobinRouter])
def test_committed_tables_equal_each_rank_cache_after_every_round(router_cls):
    model, world, capacity = tiny_gpt(), 3, 6  # a small cache, so that LRU eviction happens
    ranks = [StandInScorer(model, cache_blocks=capacity, comm=CommContext(), threshold=1.0) for _ in range(world)]
    router = router_cls(ranks[0].cost, threshold=6 * ranks[0].cost.prefill(40), world_size=world,
                        cache_blocks=capacity)
    queue = workload(60, seed=2)
    evicted = False
    while queue:
        plan = router.plan_round([r["input_ids"] for r in queue])
        for rank, scorer in enumerate(ranks):  # each rank computes its own requests, in request order
            own = [queue[i] for i in range(plan.taken) if plan.assignment[i] == rank]
            before = scorer.stats["cached_tokens"]
            scorer.score(own)
            expected = sum(plan.cached_tokens[i] for i in range(plan.taken) if plan.assignment[i] == rank)
            assert scorer.stats["cached_tokens"] - before == expected, "router and cache disagree on hits"
        router.finish_round(plan)
        for rank, scorer in enumerate(ranks):
            assert router.committed[rank].hashes() == scorer.cache.order.hashes()
            evicted |= len(scorer.cache.order) == capacity
        queue = queue[plan.taken:]
    assert evicted, "the test should exercise eviction"
    assert sum(s.stats["cached_tokens"] for s in ranks) >= BLOCK_TOKENS

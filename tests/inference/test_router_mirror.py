"""The router's committed tables mirror the engines' prefix caches, checked against real engines.

Each "rank" is a one-process MoEPrefillEngine over the same tiny MoE GPT (its prefix KV cache is
the real one); the router's tables must equal each engine's cache after every round, and the
cache hits the router expects must be the tokens each engine really read from its cache.
"""
import random

import pytest
import torch

from support.moe_models import reference_answers
from support.serving import tiny_moe
from zerolib.comm import CommContext
from zerolib.inference import MoEPrefillEngine
from zerolib.inference.blocks import BLOCK_TOKENS
from zerolib.inference.router import PrefixRouter, RoundRobinRouter


def engine(cache_blocks: int) -> MoEPrefillEngine:
    config = {"moe_prefill": {"mode": "reference", "cache_blocks": cache_blocks, "threshold_flops": 1.0}}
    return MoEPrefillEngine(tiny_moe(), config, comm=CommContext())


def workload(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(64) for _ in range(rng.choice([32, 48, 64]))] for _ in range(4)]
    return [{"input_ids": rng.choice(prefixes) + [rng.randrange(64) for _ in range(rng.randrange(1, 30))],
             "candidates": rng.sample(range(64), 3)} for _ in range(count)]


def test_the_engine_with_its_prefix_cache_matches_a_full_forward():
    scorer = engine(cache_blocks=16)
    requests = workload(12, seed=1)
    got = scorer.score(requests)
    assert scorer.stats["cached_tokens"] > 0, "the workload shares prefixes: the cache must be used"
    for mine, ref in zip(got, reference_answers(tiny_moe(), requests)):
        assert mine["best"] == ref["best"]
        assert mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5)


@pytest.mark.parametrize("router_cls", [PrefixRouter, RoundRobinRouter])
def test_committed_tables_equal_each_rank_cache_after_every_round(router_cls):
    world, capacity = 3, 6  # a small cache, so that LRU eviction happens
    ranks = [engine(cache_blocks=capacity) for _ in range(world)]
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

"""The prefix- and FLOPs-aware router and its baselines, on their own (no engine)."""
import random

import pytest

from zerolib.inference.blocks import BLOCK_TOKENS, block_hashes
from zerolib.inference.cost import ModelCost
from zerolib.inference.router import (LeastLoadedRouter, PrefixLRU, PrefixRouter, RoundRobinRouter,
                                      make_router)

COST = ModelCost(num_layers=4, hidden=64, q_width=64, kv_width=32, num_moe_layers=3, num_experts=8, top_k=2,
                 expert_intermediate=32, dense_intermediate=128)


def prefixed(prefix_id: int, prefix_blocks: int, suffix: int, salt: int) -> list[int]:
    """A request: ``prefix_blocks`` full blocks shared by every request of ``prefix_id``, then a
    ``suffix``-token tail of its own."""
    prefix = [1000 + prefix_id] * (prefix_blocks * BLOCK_TOKENS)
    return prefix + [(salt * 7919 + i) % 50000 for i in range(suffix)]


def test_requests_sharing_a_prefix_stick_to_one_rank_within_and_across_rounds():
    router = PrefixRouter(COST, threshold=1e12, world_size=4, cache_blocks=64)
    first = router.plan_round([prefixed(0, 4, 10, s) for s in range(3)] + [prefixed(1, 4, 10, 9)])
    a, b = first.assignment[0], first.assignment[3]
    assert first.assignment[:3] == [a, a, a], "pending blocks must pull the same prefix to one rank"
    assert b != a, "an unmatched request goes to the least loaded rank"
    assert first.cached_tokens == [0, 64, 64, 0]
    router.finish_round(first)
    second = router.plan_round([prefixed(1, 4, 5, 20), prefixed(0, 4, 5, 21)])
    assert second.assignment == [b, a], "committed blocks keep the prefix on its rank next round"
    assert second.cached_tokens == [64, 64]


def test_load_is_the_true_flops_of_what_the_rank_must_compute():
    router = PrefixRouter(COST, threshold=1e12, world_size=2, cache_blocks=64)
    tokens = [prefixed(0, 3, 20, s) for s in range(2)]
    plan = router.plan_round(tokens)
    prefix = 3 * BLOCK_TOKENS
    assert plan.costs[0] == COST.prefill(len(tokens[0]))
    # the second one pays C_pfx(P - M) + C_sfx(S, P) with M = P: its suffix only
    assert plan.costs[1] == pytest.approx(COST.c_pfx(prefix, prefix) + COST.c_sfx(20, prefix))
    assert plan.loads == [sum(plan.costs), 0.0]


def test_saturated_rank_spills_its_prefix_to_the_least_loaded_rank():
    one = COST.prefill(len(prefixed(0, 4, 10, 0)))
    # rank 0 takes the prefix, is saturated after its third request, then the spill begins
    router = PrefixRouter(COST, threshold=one * 1.5, world_size=3, cache_blocks=64)
    plan = router.plan_round([prefixed(0, 4, 10, s) for s in range(10)])
    assert plan.assignment[0] == 0
    owner_requests = [i for i, r in enumerate(plan.assignment) if r == 0]
    assert plan.loads[0] >= router.threshold
    spilled = plan.assignment[len(owner_requests)]
    assert spilled != 0 and plan.cached_tokens[len(owner_requests)] == 0
    # once spilled, the prefix is pending on the new rank too and later requests share it there
    later = [i for i, r in enumerate(plan.assignment) if r == spilled and i > len(owner_requests)]
    assert later and all(plan.cached_tokens[i] > 0 for i in later)


def test_no_match_falls_back_to_least_loaded_and_ties_go_to_least_loaded():
    router = PrefixRouter(COST, threshold=1e12, world_size=3, cache_blocks=64)
    big, small = prefixed(5, 6, 3, 0), prefixed(6, 1, 3, 0)
    plan = router.plan_round([big, small, prefixed(7, 2, 3, 0)])
    assert plan.assignment == [0, 1, 2]
    router.finish_round(plan)
    # a prefix cached on ranks 0 and 1 alike (a spill put it on both): the match ties, the
    # lighter of the two wins
    shared = [prefixed(8, 2, 3, s) for s in range(3)]
    tie = PrefixRouter(COST, threshold=0.5 * COST.prefill(len(shared[0])), world_size=3, cache_blocks=64)
    first = tie.plan_round([shared[0], shared[1], prefixed(9, 2, 3, 0)])
    assert first.assignment == [0, 1, 2]
    tie.finish_round(first)
    tiny = [7, 7, 7]
    assert tie.plan_round([tiny, shared[2]]).assignment == [0, 1]


@pytest.mark.parametrize("router_cls", [PrefixRouter, LeastLoadedRouter, RoundRobinRouter])
def test_a_full_round_leaves_every_rank_within_t_and_t_plus_delta(router_cls):
    rng = random.Random(3)
    queue = [prefixed(rng.randrange(5), rng.randrange(1, 6), rng.randrange(1, 40), s) for s in range(400)]
    threshold = 8 * COST.prefill(64)
    router = router_cls(COST, threshold, world_size=4, cache_blocks=32)
    full_rounds = 0
    while True:
        plan = router.plan_round(queue)
        if plan.taken == len(queue):
            break
        full_rounds += 1
        delta = max(plan.costs)
        for load in plan.loads:
            assert threshold <= load < threshold + delta, (plan.loads, threshold, delta)
        # the round ended only because every rank was saturated: one rank less full and it takes more
        assert min(plan.loads) >= threshold
        router.finish_round(plan)
        queue = queue[plan.taken:]
    assert full_rounds >= 3


def test_a_short_queue_ends_the_round_with_ranks_unsaturated():
    router = PrefixRouter(COST, threshold=1e12, world_size=2, cache_blocks=8)
    plan = router.plan_round([prefixed(0, 1, 3, 0)])
    assert plan.taken == 1 and plan.loads[1] == 0.0


def test_baselines_place_blind_to_prefixes():
    shared = [prefixed(0, 4, 8, s) for s in range(6)]
    rr = RoundRobinRouter(COST, threshold=1e12, world_size=3, cache_blocks=64)
    assert rr.plan_round(shared).assignment == [0, 1, 2, 0, 1, 2]
    assert rr.plan_round(shared[:2]).assignment == [0, 1], "the turn carries over"
    ll = LeastLoadedRouter(COST, threshold=1e12, world_size=3, cache_blocks=64)
    plan = ll.plan_round(shared)
    assert len(set(plan.assignment)) == 3
    # it still accounts true FLOPs: a request landing next to its prefix costs its suffix only
    assert any(c > 0 for c in plan.cached_tokens)


def test_round_robin_skips_saturated_ranks():
    one = COST.prefill(40)
    rr = RoundRobinRouter(COST, threshold=one * 2.5, world_size=2, cache_blocks=0)
    plan = rr.plan_round([[i] * 40 for i in range(1, 4)] + [[9] * 400] + [[i] * 40 for i in range(10, 20)])
    assert plan.assignment[:4] == [0, 1, 0, 1]  # rank 1 saturated by the long one
    assert plan.assignment[4:] == [0] and plan.taken == 5


def test_lru_evicts_least_recent_and_keeps_each_request_head_block():
    lru = PrefixLRU(capacity=3)
    lru.record([1, 2])
    lru.record([3])
    lru.record([1])
    lru.record([4])  # evicts 2, the least recently used
    assert lru.hashes() == [3, 1, 4]
    long = PrefixLRU(capacity=2)
    long.record([10, 11, 12, 13])  # more blocks than capacity: the head (10, 11) stays
    assert 10 in long and 11 in long and 13 not in long


def test_pending_blocks_clear_when_the_round_finishes():
    router = PrefixRouter(COST, threshold=1e12, world_size=2, cache_blocks=2)
    plan = router.plan_round([prefixed(0, 4, 3, 0)])
    assert len(router.pending(0)) == 2 and len(router.committed[0]) == 0  # capacity 2 of 4 blocks
    router.finish_round(plan)
    assert not router.pending(0) and len(router.committed[0]) == 2
    with pytest.raises(ValueError, match="twice"):
        router.finish_round(plan)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="threshold"):
        PrefixRouter(COST, threshold=0, world_size=2, cache_blocks=4)
    with pytest.raises(ValueError, match="world_size"):
        PrefixRouter(COST, threshold=1.0, world_size=0, cache_blocks=4)
    with pytest.raises(ValueError, match="capacity"):
        PrefixRouter(COST, threshold=1.0, world_size=1, cache_blocks=-1)
    with pytest.raises(ValueError, match="least_loaded"):
        make_router("fastest", COST, 1.0, 1, 4)

"""The shared prefix-block and FLOPs contracts that the router and the engines both use."""
import pytest
import torch

from zerolib.inference.blocks import BLOCK_TOKENS, block_hashes, matched_blocks, reusable_blocks
from zerolib.inference.cost import ModelCost


def test_hashes_chain_so_equal_blocks_after_different_prefixes_differ():
    a = list(range(48))
    b = [7] * 16 + list(range(16, 48))
    assert len(block_hashes(a)) == 3 and len(block_hashes(a + [1, 2])) == 3
    assert block_hashes(a)[0] != block_hashes(b)[0]
    assert block_hashes(a)[2] != block_hashes(b)[2]  # same tokens 32..47, different history
    assert block_hashes(a[:32] + [9] * 16)[:2] == block_hashes(a)[:2]


def test_matched_blocks_never_covers_the_last_token():
    tokens = list(range(2 * BLOCK_TOKENS))
    hashes = block_hashes(tokens)
    assert reusable_blocks(len(tokens)) == 1
    assert matched_blocks(hashes, set(hashes), len(tokens)) == 1
    assert matched_blocks(hashes, set(hashes[1:]), len(tokens)) == 0
    assert matched_blocks(hashes, set(hashes), len(tokens) + 1) == 2


def _count_flops_by_running(cost: ModelCost, num_tokens: int, cached: int) -> float:
    """Counts matmul FLOPs of attention exactly as a causal layer computes them."""
    total = 0.0
    for p in range(cached, num_tokens):
        total += 4 * cost.q_width * (p + 1)
    return total + cost.linear_per_token() * (num_tokens - cached)


@pytest.mark.parametrize("num_tokens,cached", [(1, 0), (17, 16), (100, 0), (100, 64)])
def test_prefill_equals_pfx_plus_sfx_and_a_direct_count(num_tokens, cached):
    cost = ModelCost(num_layers=4, hidden=64, q_width=64, kv_width=32, num_moe_layers=3, num_experts=8,
                     top_k=2, expert_intermediate=32, dense_intermediate=128)
    prefix = max(cached, num_tokens // 2)
    split = cost.c_pfx(prefix, cached) + cost.c_sfx(num_tokens - prefix, prefix)
    assert cost.prefill(num_tokens, cached) == pytest.approx(split)
    assert cost.prefill(num_tokens, cached) == pytest.approx(_count_flops_by_running(cost, num_tokens, cached))


def test_linear_flops_match_a_counted_swiglu_moe_layer():
    hidden, inter, experts, top_k = 16, 8, 4, 2
    cost = ModelCost(num_layers=1, hidden=hidden, q_width=16, kv_width=8, num_moe_layers=1, num_experts=experts,
                     top_k=top_k, expert_intermediate=inter)
    # q, k, v, o projections + router + top_k experts of gate, up, down, counted matmul by matmul
    shapes = [(hidden, 16), (hidden, 8), (hidden, 8), (16, hidden), (hidden, experts)]
    shapes += top_k * [(hidden, inter), (hidden, inter), (inter, hidden)]
    assert cost.linear_per_token() == sum(2 * k * n for k, n in shapes)
    assert cost.expert_bytes_per_layer(4) == experts * 3 * hidden * inter * 4


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="num_moe_layers"):
        ModelCost(num_layers=2, hidden=8, q_width=8, kv_width=8, num_moe_layers=3, num_experts=2, top_k=1,
                  expert_intermediate=4)
    with pytest.raises(ValueError, match="cached_tokens"):
        ModelCost(1, 8, 8, 8, 1, 2, 1, 4).prefill(4, 4)

"""qgZ's two-hop quantized reduce-scatter against the exact fp32 sum, on 4 ranks.

Tolerance, stated: every element of a rank's result lies within the sum of the half-scales of
every quantization it went through (the blocks holding it in each peer's hop-1 chunk, and in
each other node's hop-2 chunk, plus that chunk's own hop-1 error). The bound is computed by
replaying the algorithm with the PyTorch reference quantizer. Node layouts: 2 nodes x 2, 4 x 1
(no intra hop), 1 x 4 (no inter hop); int4 and int8; slices of 1, 5, 7, 13, 300, 333 and 1001
values against blocks of 8 to 256, so pieces end in partial blocks and blocks span slices.
"""
import pytest
import torch

from zeropp_workers import REDUCE_CASES, reduce_input
from zerolib.comm.groups import block_ranks, stride_ranks
from zerolib.ops.quant_reference import dequantize_reference, quantize_reference
from zerolib.zero.zeropp.wire import dequantize_pieces, piece_nbytes, quantize_into

WORLD = 4


def _roundtrip(x: torch.Tensor, bits: int, block: int):
    """Reference quantize + dequantize of one piece, and each element's half-scale."""
    data, scales, _ = quantize_reference(x, bits, block, True)
    values = dequantize_reference(data, scales, torch.empty(0), x.numel(), bits, block, True)
    return values, scales.repeat_interleave(block)[:x.numel()] / 2


def replay_bounds(inputs: list[torch.Tensor], node_size: int, bits: int, block: int, numel: int):
    """Per rank: the error bound of each element of its result (the algorithm's own error)."""
    nodes = WORLD // node_size
    chunk = lambda rank, local: inputs[rank].view(nodes, node_size, numel)[:, local].reshape(-1)  # noqa: E731
    partials = {}
    for node in range(nodes):
        for local in range(node_size):
            total, bound = chunk(node * node_size + local, local).clone(), torch.zeros(nodes * numel)
            for peer in range(node_size):
                if peer != local:
                    values, half = _roundtrip(chunk(node * node_size + peer, local), bits, block)
                    total, bound = total + values, bound + half
            partials[node, local] = total.view(nodes, numel), bound.view(nodes, numel)
    bounds = []
    for rank in range(WORLD):
        node, local = divmod(rank, node_size)
        bound = partials[node, local][1][node].clone()
        for other in range(nodes):
            if other != node:
                _, half = _roundtrip(partials[other, local][0][node], bits, block)
                bound += half + partials[other, local][1][node]
        bounds.append(bound)
    return bounds


@pytest.mark.parametrize("index", range(len(REDUCE_CASES)), ids=lambda i: "L{}-int{}-block{}-slice{}".format(
    *REDUCE_CASES[i]))
def test_two_hop_reduce_matches_the_fp32_sum(zeropp_ranks, index):
    node_size, bits, block, numel = REDUCE_CASES[index]
    inputs = [reduce_input(rank, index, WORLD, numel) for rank in range(WORLD)]
    exact = sum(inputs).view(WORLD, numel)
    bounds = replay_bounds(inputs, node_size, bits, block, numel)
    for rank in range(WORLD):
        got = zeropp_ranks[rank]["reduce"][index]["output"]
        error = (got - exact[rank]).abs()
        slack = 1e-5 * exact.abs().max()  # fp32 summation order
        assert bool((error <= bounds[rank] + slack).all()), (
            f"rank {rank}: error {error.max():.4g} beyond the quantization bound at "
            f"{int((error > bounds[rank] + slack).sum())} of {numel} elements")
        others = [(got - exact[r]).abs().mean() for r in range(WORLD) if r != rank]
        assert error.mean() < min(others), f"rank {rank}: result is closer to another rank's slice"


@pytest.mark.parametrize("index", range(len(REDUCE_CASES)))
def test_two_hop_reduce_sends_the_expected_bytes(zeropp_ranks, index):
    node_size, bits, block, numel = REDUCE_CASES[index]
    nodes = WORLD // node_size
    intra = (node_size - 1) * piece_nbytes(nodes * numel, bits, block)
    inter = (nodes - 1) * piece_nbytes(numel, bits, block)
    hops = int(node_size > 1) + int(nodes > 1)
    for rank in range(WORLD):
        stats = zeropp_ranks[rank]["reduce"][index]["comm"]["all_to_all"]
        assert (stats["calls"], stats["bytes"], stats["inter_bytes"]) == (hops, intra + inter, inter), stats


def test_a_nan_or_inf_on_one_rank_reaches_the_owner_of_its_slice(zeropp_ranks):
    # rank 3 had a NaN inside a block of rank 0's slice, rank 2 an inf in rank 1's slice
    assert [zeropp_ranks[r]["reduce"]["finite"] for r in (0, 1)] == [False, False]


def test_groups_partition_the_world_by_blocks_and_strides():
    assert block_ranks(8, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert stride_ranks(8, 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert block_ranks(4, 4) == [[0, 1, 2, 3]] and stride_ranks(4, 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="3 does not divide the world size 4"):
        block_ranks(4, 3)


def test_a_non_finite_piece_decodes_as_nan_and_finite_ones_within_half_a_scale():
    x = torch.randn(1000)
    wire = torch.empty(2 * piece_nbytes(1000, 8, 256), dtype=torch.uint8)
    quantize_into(x, wire[:wire.numel() // 2], 8, 256)
    poisoned = x.clone()
    poisoned[300] = float("nan")  # mid-block: the native block maximum would skip it
    quantize_into(poisoned, wire[wire.numel() // 2:], 8, 256)
    out = torch.empty(2000, dtype=torch.bfloat16)
    dequantize_pieces(wire, 2, 1000, 8, 256, out)
    assert torch.isnan(out[1000:].float()).all()
    assert (out[:1000].float() - x).abs().max() <= x.abs().max() / 127 / 2 + 0.01 * x.abs().max()  # bf16 rounding


def test_block_sizes_must_keep_scales_aligned():
    with pytest.raises(ValueError, match="multiple of 8"):
        piece_nbytes(100, 4, 12)

"""ZeRO-3 model-state memory per rank against 16Ψ/N, and bytes per step against 3Ψ.

Memory is measured after backward at the accumulation boundary, when gradients, master
weights and optimizer state all exist and every gathered buffer has been released. The ZeRO
paper's (4 + K)Ψ/N counts 2-byte gradients; zerolib reduces into an fp32 gradient shard, so
16-bit runs hold 2Ψ/N more (stated allowance). fp32 runs hold exactly 4Ψ/N params + 4Ψ/N
grads + 8Ψ/N Adam moments (the master is the parameter shard itself), plus padding.
"""
import os

import pytest
import torch

import zerolib
from harness import run_ranks
from zerolib.models import GPT, GPTConfig

MODEL = GPTConfig(vocab_size=64, block_size=16, n_layer=6, n_head=4, n_embd=64)
PADDING_ALLOWANCE = 0.02  # each buffer pads to a multiple of N * 64 elements


def config(dtype: str) -> dict:
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
            "stage3_prefetch_bucket_size": 200_000, "overlap_comm": True}
    cfg = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
           "zero_optimization": zero, "steps_per_print": None}
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def measure(dtype: str) -> dict:
    torch.manual_seed(0)
    model = GPT(MODEL)
    psi = model.num_parameters()
    engine = zerolib.initialize(model, config(dtype))
    rank = int(os.environ["RANK"])
    gen = torch.Generator().manual_seed(rank)
    result = {"psi": psi}
    for step in range(3):
        tokens = torch.randint(0, 64, (2, 17), generator=gen)
        if step == 2:  # the trace is recorded: this step prefetches
            engine.reset_comm_stats()
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        if step == 2:
            result["memory"] = engine.memory_breakdown()
        engine.step()
    result["comm"] = engine.comm_stats()
    result["root_numel"] = engine.stage3.coordinator.units[0].numel
    return result


def run_all():
    return {dtype: measure(dtype) for dtype in ("fp32", "bf16")}


@pytest.fixture(scope="module", params=[2, 4])
def world(request):
    return request.param, run_ranks(run_all, request.param)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_memory_per_rank_follows_16_psi_over_n(world, dtype):
    n, ranks = world
    for rank, results in enumerate(ranks):
        result = results[dtype]
        psi, mem = result["psi"], result["memory"]
        param_bytes = 4 if dtype == "fp32" else 2
        expected = {"params": param_bytes * psi / n, "grads": 4 * psi / n,
                    "master": 0 if dtype == "fp32" else 4 * psi / n, "optimizer_state": 8 * psi / n}
        for kind, want in expected.items():
            got = mem[kind]
            assert want <= got <= want * (1 + PADDING_ALLOWANCE) + 1, f"rank {rank} {kind}: {got} vs {want:.0f}"
        paper = 16 * psi / n  # (4 + K)Ψ/N with K = 12
        allowance = 0 if dtype == "fp32" else 2 * psi / n
        model_states = sum(mem[kind] for kind in expected)
        assert model_states <= (paper + allowance) * (1 + PADDING_ALLOWANCE)
        assert mem["comm_buffers"] == 0, f"rank {rank}: stage 3 kept {mem['comm_buffers']} bytes of comm buffers"


def test_bytes_per_step_are_three_psi(world):
    n, ranks = world
    for rank, results in enumerate(ranks):
        result = results["fp32"]
        psi, comm = result["psi"], result["comm"]
        unit = 4 * psi * (n - 1) / n  # one pass over all parameters, ring share
        gathered = comm["all_gather"]["bytes"] / unit
        reduced = comm["reduce_scatter"]["bytes"] / unit
        # Forward gathers everything, backward everything but the root (kept from the end of
        # forward to the start of backward): 2Ψ minus the root's share.
        root_share = result["root_numel"] / psi
        assert 2 - root_share - 0.01 <= gathered <= 2 - root_share + 0.03, f"rank {rank}: all-gather {gathered:.3f}Ψ"
        assert 1.0 <= reduced <= 1.03, f"rank {rank}: reduce-scatter {reduced:.3f}Ψ"
        assert 2.9 <= gathered + reduced <= 3.03, f"rank {rank}: {gathered + reduced:.3f}Ψ per step"

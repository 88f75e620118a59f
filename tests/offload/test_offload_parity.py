"""ZeRO stages 1-3 with offload_optimizer cpu / nvme (and a partial ratio), and stage 3 with
offload_param cpu or nvme (alone and with optimizer nvme), against the same run
without offload and against plain PyTorch, on 2 ranks spawned once for the whole grid.

Stated bounds: offload only swaps torch's fused AdamW for the native CPU Adam, which rounds
differently in the last bit, so against the run without offload fp32 losses agree to 1e-5 and
the weight update error (support.parity.update_error) is at most 1e-5; bf16 working copies
can round the other way after such a bit, so bf16 gets the bf16 parity bound (0.08, as against
PyTorch). Both are also held to support.parity's bounds against plain PyTorch.
"""
import gc
import itertools
import os

import pytest
import torch

from harness import run_ranks
from support.parity import TOLERANCES, Case, assert_matches_reference, run_engine, update_error, make_model

WORLD = 2
STAGE3 = (("stage3_param_persistence_threshold", 100), ("stage3_prefetch_bucket_size", 10_000))
PARAM_NVME = {"device": "nvme", "buffer_count": 3, "max_in_cpu": 0}
OFFLOADS = {"none": None, "cpu": {"device": "cpu"}, "nvme": {"device": "nvme", "buffer_count": 3},
            "cpu-ratio0.5": {"device": "cpu", "ratio": 0.5}, "param-cpu": None, "param-cpu+nvme": None,
            "param-nvme": None, "param-nvme+nvme": None}
PARAM_OFFLOADS = {"param-cpu": ("none", {"device": "cpu"}), "param-cpu+nvme": ("nvme", {"device": "cpu"}),
                  "param-nvme": ("none", PARAM_NVME), "param-nvme+nvme": ("nvme", PARAM_NVME)}


def case_for(stage: int, dtype: str, offload: str, nvme_path: str) -> Case:
    extra = (("sub_group_size", 3000),) + (STAGE3 if stage == 3 else ())
    if offload in PARAM_OFFLOADS:  # stage 3: shards on the host, optimizer as named
        optimizer, param = PARAM_OFFLOADS[offload]
        extra += (("offload_param", {**param, "nvme_path": nvme_path} if param["device"] == "nvme" else param),)
        offload = optimizer
    if OFFLOADS[offload] is not None:
        extra += (("offload_optimizer", {**OFFLOADS[offload], "nvme_path": nvme_path}),)
    return Case(stage, dtype, gas=2, clip=0.05, steps=3, zero_extra=extra)


GRID = [(stage, dtype, offload) for stage, dtype, offload in
        itertools.product((1, 2, 3), ("fp32", "bf16"), OFFLOADS)
        if not (offload == "cpu-ratio0.5" and dtype == "bf16") and not (offload.startswith("param") and stage < 3)]


def run_grid(nvme_path: str) -> dict:
    """Rank entry point: every (stage, dtype, offload) run in one process group."""
    rank = int(os.environ["RANK"])
    results = {}
    for stage, dtype, offload in GRID:
        case = case_for(stage, dtype, offload, nvme_path)
        results[(stage, dtype, offload)] = run_engine(case, WORLD, rank)
        gc.collect()  # the engine is gone: its swap files must be too
        # this rank's files only: the other rank may already be running the next case
        results[(stage, dtype, offload)]["files_left"] = sorted(f for f in os.listdir(nvme_path)
                                                                if f.startswith(f"zerolib_rank{rank}_"))
    return {"results": results}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("nvme"))
    return run_ranks(run_grid, WORLD, path), path


@pytest.mark.parametrize("stage,dtype,offload", [g for g in GRID if g[2] != "none"], ids=lambda v: str(v))
def test_offload_matches_the_run_without_it(grid, stage, dtype, offload):
    ranks, _ = grid
    initial = {n: p.detach() for n, p in make_model().named_parameters()}
    bound = 1e-5 if dtype == "fp32" else TOLERANCES["bf16"]["update"]
    for rank, per_rank in enumerate(ranks):
        got, base = per_rank["results"][(stage, dtype, offload)], per_rank["results"][(stage, dtype, "none")]
        tol = 1e-5 if dtype == "fp32" else TOLERANCES["bf16"]["loss"]
        assert torch.allclose(torch.tensor(got["losses"]), torch.tensor(base["losses"]), rtol=tol, atol=tol), \
            f"rank {rank}: losses {got['losses']} vs without offload {base['losses']}"
        err = update_error(got["weights"], base["weights"], initial)
        assert err <= bound, f"rank {rank}: update error vs the run without offload {err:.3g} > {bound}"
    case = case_for(stage, dtype, offload, "unused")
    assert_matches_reference(case, WORLD, [r["results"][(stage, dtype, offload)] for r in ranks])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_nvme_holds_no_optimizer_state_in_memory(grid, stage):
    ranks, _ = grid
    for rank, per_rank in enumerate(ranks):
        cpu = per_rank["results"][(stage, "fp32", "cpu")]["memory"]["optimizer_state"]
        nvme = per_rank["results"][(stage, "fp32", "nvme")]["memory"]["optimizer_state"]
        shard_numel = sum(w.numel() for w in per_rank["results"][(stage, "fp32", "cpu")]["weights"].values()) / WORLD
        assert cpu >= 8 * shard_numel * 0.9, f"rank {rank}: cpu offload keeps both moments in memory ({cpu} B)"
        assert nvme == 0, f"rank {rank}: nvme offload left {nvme} B of optimizer state in memory"
        if stage >= 2:  # stage 1 fp32 keeps its full gradient buffers: the shard is a view of them
            held = per_rank["results"][(stage, "fp32", "nvme")]["memory"]["grads"]
            assert held == 0, f"rank {rank}: nvme offload kept {held} B of gradients in memory"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_everything_on_nvme_leaves_only_small_parameters_in_memory(grid, dtype):
    """offload_param nvme + offload_optimizer nvme: after a step, memory holds the parameters
    below the persistence threshold and the swap pools, nothing per partitioned element."""
    ranks, _ = grid
    for rank, per_rank in enumerate(ranks):
        memory = per_rank["results"][(3, dtype, "param-nvme+nvme")]["memory"]
        numel = sum(w.numel() for w in per_rank["results"][(3, dtype, "none")]["weights"].values())
        assert memory["grads"] == memory["master"] == memory["optimizer_state"] == 0, f"rank {rank}: {memory}"
        assert memory["params"] < 0.05 * numel * 4, f"rank {rank}: {memory['params']} B of parameters resident"
        assert memory["swap_buffers"] > 0, f"rank {rank}: the swap pools are memory too and must be counted"


def test_nvme_swap_files_are_removed_with_the_engine(grid):
    ranks, _ = grid
    for rank, per_rank in enumerate(ranks):
        for key, result in per_rank["results"].items():
            assert result["files_left"] == [], f"rank {rank} {key}: {result['files_left']}"

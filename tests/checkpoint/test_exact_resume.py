"""Exact resume on 2 ranks: save at step K, load into a fresh engine (other seed, other RNG),
train to 2K: the same losses and bitwise the same weights as an uninterrupted run, for stages
0-3 x fp32/bf16/fp16 (dropout on, so RNG state matters; fp16 with a moving loss scale)."""
import itertools
import tempfile

import pytest

from ckpt_cases import batches, differences, make_engine, rank, train
from harness import run_ranks

K = 2
CASES = [(stage, dtype, "gpt") for stage, dtype in itertools.product((0, 1, 2, 3), ("fp32", "bf16", "fp16"))]
CASES += [(3, "bf16", "frozen"), (1, "fp16", "frozen")]


def resume_case(stage: int, dtype: str, kind: str, root: str, world_size: int) -> dict:
    """One run saves at step K and goes on to 2K (saving must not perturb it); a fresh engine
    with other weights and another RNG seed loads step K and trains to 2K as well."""
    import torch

    data = batches(world_size, 2 * K)
    engine = make_engine(stage, dtype, kind=kind)
    torch.manual_seed(100 + rank())
    uninterrupted = train(engine, data, range(K))
    engine.save_checkpoint(root, client_state={"epoch": 3, "note": "half way", "t": torch.arange(3)})
    uninterrupted += train(engine, data, range(K, 2 * K))
    want = {"weights": engine.full_state_dict(), "scale": engine.loss_scaler and engine.loss_scaler.scale,
            "lr": engine.get_lr()}
    del engine

    engine = make_engine(stage, dtype, seed=7, kind=kind)  # other initial weights: the load must replace them
    torch.manual_seed(999)
    path, client_state = engine.load_checkpoint(root)
    resumed = train(engine, data, range(K, 2 * K))
    return {"want_losses": uninterrupted[K * 2:], "got_losses": resumed,
            "weight_diffs": differences(engine.full_state_dict(), want["weights"]),
            "scale": (engine.loss_scaler and engine.loss_scaler.scale, want["scale"]),
            "lr": (engine.get_lr(), want["lr"]), "steps": engine.global_steps, "path": path,
            "client_state": client_state}


def run_all(root: str, world_size: int) -> dict:
    return {case: resume_case(*case, root=f"{root}/{'-'.join(map(str, case))}", world_size=world_size)
            for case in CASES}


@pytest.fixture(scope="module")
def results():
    with tempfile.TemporaryDirectory() as root:
        yield run_ranks(run_all, 2, root, 2)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"stage{c[0]}-{c[1]}-{c[2]}")
def test_resume_is_exact(results, case):
    for rank_index, by_case in enumerate(results):
        got = by_case[case]
        assert got["got_losses"] == got["want_losses"], f"rank {rank_index}: losses after resume differ"
        assert got["weight_diffs"] == [], f"rank {rank_index}: weights differ after resume: {got['weight_diffs']}"
        assert got["scale"][0] == got["scale"][1], f"rank {rank_index}: loss scale {got['scale']}"
        assert got["lr"][0] == got["lr"][1]
        assert got["steps"] == 2 * K
        assert got["path"].endswith(f"global_step{K}")
        assert got["client_state"]["epoch"] == 3 and got["client_state"]["note"] == "half way"
        assert got["client_state"]["t"].tolist() == [0, 1, 2]

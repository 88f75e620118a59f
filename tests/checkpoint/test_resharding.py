"""Loading at another world size or stage: saved on 4 ranks -> loaded on 2, 1 -> 2, 2 -> 1,
2 -> 3, and stage 1 <-> stage 3. The loaded master weights, frozen weights and Adam moments
must equal the saved ones exactly; training then goes on with every rank in agreement."""
import tempfile

import pytest

from ckpt_cases import batches, differences, make_engine, snapshot, train
from harness import run_ranks

# (stage, dtype) of each saved checkpoint; the model has a frozen block, so frozen tensors
# travel too (whole under stages 0-2, in ZeRO-3's frozen store under stage 3).
SAVED = [(0, "fp32"), (1, "fp32"), (2, "bf16"), (3, "bf16")]
# loads into another stage: (saved stage, dtype, stage loaded into)
CROSS = [(1, "fp32", 3), (3, "bf16", 1)]


def _save_all(root: str, world_size: int) -> dict:
    import torch

    snapshots = {}
    for stage, dtype in SAVED:
        engine = make_engine(stage, dtype, kind="frozen")
        torch.manual_seed(5)
        train(engine, batches(world_size, 2), range(2))
        engine.save_checkpoint(f"{root}/ws{world_size}/stage{stage}")
        snapshots[stage] = snapshot(engine)
    return snapshots


def _load_one(directory: str, stage: int, dtype: str, world_size: int) -> dict:
    engine = make_engine(stage, dtype, seed=11, kind="frozen")
    engine.load_checkpoint(directory)
    loaded = snapshot(engine)
    losses = train(engine, batches(world_size, 1, seed=3), range(1))
    return {"loaded": loaded, "after_step": engine.full_state_dict(), "losses": losses}


def _load_all(root: str, world_size: int, source_world: int) -> dict:
    result = {}
    for stage, dtype in SAVED:
        result[stage] = _load_one(f"{root}/ws{source_world}/stage{stage}", stage, dtype, world_size)
    return result


def _load_cross(root: str, world_size: int, source_world: int) -> dict:
    return {(saved, into): _load_one(f"{root}/ws{source_world}/stage{saved}", into, dtype, world_size)
            for saved, dtype, into in CROSS}


def world_four(root):
    return _save_all(root, 4)


def world_one_first(root):
    return _save_all(root, 1)


def world_two(root):
    return {"from4": _load_all(root, 2, 4), "from1": _load_all(root, 2, 1), "cross_from4": _load_cross(root, 2, 4),
            "saved": _save_all(root, 2), "cross_from2": _load_cross(root, 2, 2)}


def world_one_again(root):
    return _load_all(root, 1, 2)


def world_three(root):
    return _load_all(root, 3, 2)


@pytest.fixture(scope="module")
def runs():
    # One rank needs no process group, so world size 1 runs here: three spawns, not five.
    with tempfile.TemporaryDirectory() as root:
        one = world_one_first(root)
        four = run_ranks(world_four, 4, root)
        two = run_ranks(world_two, 2, root)
        yield {"saved4": four[0], "saved1": one, "two": two, "saved2": two[0]["saved"],
               "one_again": [world_one_again(root)], "three": run_ranks(world_three, 3, root)}


def _assert_loaded_equal(loaded_by_rank: list[dict], saved: dict, what: str) -> None:
    for rank_index, got in enumerate(loaded_by_rank):
        for key in ("values", "exp_avg", "exp_avg_sq"):
            diffs = differences(got["loaded"][key], saved[key])
            assert diffs == [], f"{what}, rank {rank_index}: {key} differs from the saved one for {diffs}"
        assert set(got["loaded"]["values"]) == set(saved["values"])
        assert got["loaded"]["global_steps"] == saved["global_steps"]
        assert got["loaded"]["lr"] == saved["lr"]
        reference = loaded_by_rank[0]["after_step"]
        assert differences(got["after_step"], reference) == [], f"{what}: ranks disagree after a step"


@pytest.mark.parametrize("stage", [s for s, _ in SAVED])
@pytest.mark.parametrize("change", ["4->2", "1->2", "2->1", "2->3"])
def test_world_size_change(runs, change, stage):
    source, target = change.split("->")
    if target == "2":
        loaded = [r[f"from{source}"][stage] for r in runs["two"]]
    else:
        loaded = [r[stage] for r in runs["one_again" if target == "1" else "three"]]
    _assert_loaded_equal(loaded, runs[f"saved{source}"][stage], f"stage {stage}, world {change}")


@pytest.mark.parametrize("saved_stage, dtype, into", CROSS)
@pytest.mark.parametrize("source_world", [4, 2])
def test_cross_stage(runs, saved_stage, dtype, into, source_world):
    loaded = [r[f"cross_from{source_world}"][(saved_stage, into)] for r in runs["two"]]
    _assert_loaded_equal(loaded, runs[f"saved{source_world}"][saved_stage],
                         f"stage {saved_stage} on {source_world} ranks -> stage {into} on 2")

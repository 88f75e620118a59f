"""ZeRO-3's user-facing pieces: partitioned_init, GatheredParameters, module.state_dict()."""
import os

import pytest
import torch

import zerolib
from harness import run_ranks
from zerolib.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
CONFIG = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100}, "steps_per_print": None}


def build_partitioned():
    torch.manual_seed(0)
    with zerolib.partitioned_init(CONFIG):
        model = GPT(TINY)
    allocated_at_construction = sum(p.numel() for p in model.parameters() if not p.is_meta)
    engine = zerolib.initialize(model, CONFIG)
    return engine, allocated_at_construction


def partitioned_init_worker():
    engine, allocated = build_partitioned()
    shard_numel = sum(t.numel() for t in engine.stage3.store.shards)
    return {"weights": engine.full_state_dict(), "allocated": allocated, "shard_numel": shard_numel,
            "total": engine.stage3.store.layout.padded_numel}


def test_partitioned_init_builds_on_meta_and_values_do_not_depend_on_world_size():
    two = run_ranks(partitioned_init_worker, 2)
    one = run_ranks(partitioned_init_worker, 1)[0]
    for rank, result in enumerate(two):
        assert result["allocated"] == 0, "parameters were allocated inside partitioned_init"
        assert result["shard_numel"] * 2 == result["total"], f"rank {rank} holds more than its half"
        for name, value in one["weights"].items():
            assert torch.equal(result["weights"][name], value), f"{name} differs between 1 and 2 ranks"
    weights = one["weights"]
    assert abs(weights["blocks.0.mlp.fc.weight"].std().item() - 0.02) < 0.003  # GPT._init_weights ran
    assert torch.equal(weights["blocks.0.ln1.weight"], torch.ones(32))  # LayerNorm.reset_parameters ran


def gathered_worker():
    engine, _ = build_partitioned()
    rank = int(os.environ["RANK"])
    weight = engine.module.blocks[0].mlp.fc.weight
    released_before = weight.numel()
    with zerolib.GatheredParameters([weight], modifier_rank=0, engine=engine):
        inside_shape = tuple(weight.shape)
        if rank == 0:
            weight.data.fill_(0.5)
    edited = engine.full_state_dict()["blocks.0.mlp.fc.weight"]
    full = engine.module.state_dict()
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(rank))
    loss = engine(tokens[:, :-1], tokens[:, 1:])
    engine.backward(loss)
    engine.step()
    with pytest.raises(ValueError, match="engine="):
        with zerolib.GatheredParameters([weight]):
            pass
    return {"released_before": released_before, "inside_shape": inside_shape, "edited": edited,
            "released_after": weight.numel(), "state_shapes": {k: tuple(v.shape) for k, v in full.items()},
            "state_fc": full["blocks.0.mlp.fc.weight"].clone()}


def test_gathered_parameters_edits_reach_every_rank_and_the_master_weights():
    for rank, result in enumerate(run_ranks(gathered_worker, 2)):
        assert result["released_before"] == 0 and result["released_after"] == 0, f"rank {rank} kept a gather"
        assert result["inside_shape"] == (128, 32)
        assert torch.all(result["edited"] == 0.5), f"rank {rank} did not adopt rank 0's edit"
        assert torch.all(result["state_fc"] == 0.5)
        expected = {name: tuple(p.shape) for name, p in GPT(TINY).state_dict().items()}
        assert result["state_shapes"] == expected, f"rank {rank}: module.state_dict() returned partial tensors"


def test_a_meta_model_needs_stage_3():
    with zerolib.partitioned_init():
        model = GPT(TINY)
    config = {**CONFIG, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match="stage 3"):
        zerolib.initialize(model, config)


def eval_between_steps_worker(with_eval: bool):
    torch.manual_seed(0)
    engine = zerolib.initialize(GPT(TINY), {**CONFIG, "zero_optimization": {
        "stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0}})
    rank = int(os.environ["RANK"])
    tokens = torch.randint(0, 64, (4, 2, 17), generator=torch.Generator().manual_seed(rank))
    losses, eval_losses = [], []
    for step in range(4):
        loss = engine(tokens[step, :, :-1], tokens[step, :, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if with_eval:
            engine.eval()
            with torch.no_grad():
                eval_losses.append(engine(tokens[0, :, :-1], tokens[0, :, 1:]).item())
            engine.train()
            engine(tokens[0, :, :-1], tokens[0, :, 1:])  # a forward with grad and no backward
    return {"losses": losses, "eval": eval_losses, "live": engine.stage3.coordinator.live_numel()}


def test_eval_and_abandoned_forwards_between_steps_change_nothing():
    plain = run_ranks(eval_between_steps_worker, 2, False)
    mixed = run_ranks(eval_between_steps_worker, 2, True)
    for rank in range(2):
        assert mixed[rank]["losses"] == plain[rank]["losses"], f"rank {rank}: eval forwards changed training"
        assert len(mixed[rank]["eval"]) == 4
        assert plain[rank]["live"] == 0, f"rank {rank}: parameters still gathered after the step"

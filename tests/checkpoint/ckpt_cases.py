"""Rank-side helpers for the checkpoint tests: models, configs, training and state snapshots.

The model has dropout (so RNG state matters for exact resume) and sizes that divide evenly by
no world size (so reslicing crosses shard boundaries inside parameters).
"""
from __future__ import annotations

import os

import torch

import zerolib
from support.models import build
from zerolib.models import GPTConfig

MODEL = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=22, dropout=0.1)
GAS, MICRO, SEQ = 2, 2, 8


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def make_model(seed: int = 0, kind: str = "gpt", config: GPTConfig = MODEL):
    torch.manual_seed(seed)
    return build(kind, config)


def engine_config(stage: int, dtype: str, gather_16bit: bool = False) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": GAS,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-2,
                                                     "warmup_num_steps": 5}},
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 3000, "allgather_bucket_size": 3000,
                              "stage3_param_persistence_threshold": 200,
                              "stage3_gather_16bit_weights_on_model_save": gather_16bit},
        "steps_per_print": None,
    }
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    if dtype == "fp16":
        # a short window makes the scale move during the test, so its state matters on resume
        config["fp16"] = {"enabled": True, "initial_scale_power": 8, "loss_scale_window": 2}
    return config


def make_engine(stage: int, dtype: str, seed: int = 0, kind: str = "gpt", **config_options):
    return zerolib.initialize(make_model(seed, kind), engine_config(stage, dtype, **config_options))


def batches(world_size: int, steps: int, seed: int = 1) -> torch.Tensor:
    """Tokens [steps, GAS, world, MICRO, SEQ+1]: what rank r sees at (step, micro-step)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, MODEL.vocab_size, (steps, GAS, world_size, MICRO, SEQ + 1), generator=gen)


def train(engine, data: torch.Tensor, steps: range) -> list[float]:
    losses = []
    for step in steps:
        for micro in range(GAS):
            tokens = data[step, micro, engine.comm.rank]
            loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    return losses


def full_state(engine, key: str) -> dict[str, torch.Tensor]:
    """Every trainable parameter's full optimizer state ``key``, assembled on every rank."""
    optimizer, result = engine.optimizer, {}
    for spec, master in zip(optimizer.layout.buffers, optimizer.master):
        local = optimizer.optimizer.state[master][key].detach()
        full = local
        if optimizer.layout.num_shards > 1:
            full = torch.empty(spec.padded_numel, dtype=local.dtype)
            engine.comm.all_gather_into(full, local)
        for slot in spec.slots:
            result[slot.name] = full[slot.offset:slot.end].view(slot.shape).clone()
    return result


def snapshot(engine) -> dict:
    """Full fp32 values (masters and frozen), Adam moments and counters: what a checkpoint holds."""
    return {"values": engine.full_state_dict(), "exp_avg": full_state(engine, "exp_avg"),
            "exp_avg_sq": full_state(engine, "exp_avg_sq"), "global_steps": engine.global_steps,
            "lr": engine.get_lr()}


def differences(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bitwise equal (or missing)."""
    return sorted(name for name in want if name not in got or not torch.equal(got[name], want[name]))


def error_text(fn) -> str:
    """The message of the exception ``fn()`` raises, or 'no error'."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test inspects the type and the message
        return f"{type(err).__name__}: {err}"
    return "no error"

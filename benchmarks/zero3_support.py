"""The training setups bench_zero3.py compares, each behind the same three-call interface.

Every variant wraps its own copy of one GPT (same initial weights) and is driven the same way:
``run_step(idx, targets)`` does forward, backward and the optimizer step;
``model_state_bytes()`` counts the bytes of parameters, gradients and optimizer state this rank
holds, each storage once. All optimizers are AdamW with torch's fused CPU kernel, so the
comparison is about partitioning and communication, not about the Adam kernel.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from zerolib.utils.memory import unique_storage_bytes

LEARNING_RATE = 1e-4


@dataclass
class Variant:
    """One way of training the model: a name, a step function and a memory count."""

    name: str
    run_step: Callable[[torch.Tensor, torch.Tensor], None]
    model_state_bytes: Callable[[], int]
    # Extra per-variant facts printed under the table (bytes sent, peak gathered elements).
    describe: Callable[[], str] = lambda: ""
    # Called once after warm-up so that counters such as bytes sent cover the measured steps.
    reset_counters: Callable[[], None] = lambda: None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank stores: a DTensor's local shard, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _torch_state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    params = [_local(p) for p in module.parameters()]
    grads = [_local(p.grad) for p in module.parameters() if p.grad is not None]
    state = [_local(t) for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    return sum(unique_storage_bytes({"params": params, "grads": grads, "optimizer_state": state}).values())


def _torch_step(module: nn.Module, optimizer: torch.optim.Optimizer):
    def run_step(idx, targets):
        loss = module(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run_step


def build_ddp(model: nn.Module) -> Variant:
    """The baseline: DistributedDataParallel with fused AdamW, every state replicated."""
    module = nn.parallel.DistributedDataParallel(copy.deepcopy(model))
    optimizer = torch.optim.AdamW(module.parameters(), lr=LEARNING_RATE, fused=True)
    return Variant("DDP", _torch_step(module, optimizer), lambda: _torch_state_bytes(module, optimizer))


def build_fsdp2(model: nn.Module) -> Variant:
    """PyTorch FSDP2: ``fully_shard`` on each transformer block, then on the root (fp32, CPU)."""
    from torch.distributed.fsdp import fully_shard

    module = copy.deepcopy(model)
    for block in module.blocks:
        fully_shard(block)
    fully_shard(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=LEARNING_RATE, fused=True)
    return Variant("FSDP2", _torch_step(module, optimizer), lambda: _torch_state_bytes(module, optimizer))


def zerolib_config(micro_batch: int, prefetch_numel: int, zero: dict | None = None) -> dict:
    """Stage 3 with default stage3_* settings except the prefetch budget and ``zero`` (more
    zero_optimization keys); no clipping, as in the torch baselines (zerolib and DeepSpeed clip
    at 1.0 by default)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "optimizer": {"type": "AdamW", "params": {"lr": LEARNING_RATE}},
        "zero_optimization": {"stage": 3, "overlap_comm": True,
                              "stage3_prefetch_bucket_size": prefetch_numel, **(zero or {})},
    }


def build_zerolib(model: nn.Module, name: str, micro_batch: int, prefetch_numel: int,
                  zero: dict | None = None) -> Variant:
    """zerolib ZeRO-3; ``prefetch_numel`` 0 gathers every unit on demand."""
    import zerolib

    engine = zerolib.initialize(copy.deepcopy(model), zerolib_config(micro_batch, prefetch_numel, zero))

    def run_step(idx, targets):
        loss = engine(idx, targets)
        engine.backward(loss)
        engine.step()

    def describe():
        stats = engine.comm_stats()
        sent = sum(kind["bytes"] for kind in stats.values())
        calls = sum(kind["calls"] for kind in stats.values())
        steps = max(1, engine.global_steps - steps_at_reset[0])
        store = engine.stage3.store
        partitioned = sum(b.padded_numel for b in store.layout.buffers if b.index not in store.replicated)
        peak = engine.stage3.coordinator.peak_live_numel  # since the engine was built
        peak_mib = peak * store.dtype.itemsize / 2**20
        return (f"{calls / steps:.0f} collectives and {sent / steps / 2**20:.1f} MiB sent per step; peak gathered "
                f"{peak_mib:.1f} MiB = {peak / max(1, partitioned):.0%} of the partitioned parameters")

    steps_at_reset = [0]

    def reset_counters():
        engine.reset_comm_stats()
        steps_at_reset[0] = engine.global_steps

    return Variant(name, run_step, lambda: sum(engine.memory_breakdown().values()), describe, reset_counters)


def deepspeed_unavailable_reason() -> str | None:
    """None if ``import deepspeed`` works here, else why it does not."""
    try:
        import deepspeed  # noqa: F401
    except Exception as error:  # any import failure means: skip it and say why
        return f"import deepspeed failed: {type(error).__name__}: {error}"
    return None


def build_deepspeed(model: nn.Module, micro_batch: int, prefetch_numel: int, zero: dict | None = None) -> Variant:
    """DeepSpeed ZeRO-3 with the same stage-3 settings and torch's fused AdamW."""
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    module = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(module.parameters(), lr=LEARNING_RATE, fused=True)
    config = zerolib_config(micro_batch, prefetch_numel, zero)
    config.pop("optimizer")
    config["train_batch_size"] = micro_batch * dist.get_world_size()
    config["steps_per_print"] = 10**9
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)

    def run_step(idx, targets):
        loss = engine(idx, targets)
        engine.backward(loss)
        engine.step()

    def state_bytes():
        return _torch_state_bytes(engine.module, engine.optimizer.optimizer) + sum(
            t.numel() * t.element_size() for t in engine.optimizer.fp32_partitioned_groups_flat)
    return Variant("DeepSpeed ZeRO-3", run_step, state_bytes)

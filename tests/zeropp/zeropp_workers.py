"""Rank-side code of the ZeRO++ tests: one 4-rank spawn (2 simulated nodes x 2) runs it all.

- ``train``: the example GPT under ZeRO-3 and each ZeRO++ configuration (CONFIGS), on
  a learnable token stream (a fixed Markov chain with four successors per token, entropy
  ln 4), recording the global loss per step, the final fp32 weights, the memory breakdown and
  the bytes of one step split by phase (forward, backward, optimizer step), and the fp32
  weights after SHORT steps.
- ``overflow_steps``: fp16 with an overflowing loss scale and gradient accumulation.
- ``reduce_cases``: the two-hop quantized reduce-scatter on its own, for several node
  layouts, bit widths and slice sizes; the parent compares with the exact fp32 sum.
"""
from __future__ import annotations

import os

import torch

VOCAB = 64
MODEL = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32)
STEPS = 50
MICRO = 4
SEQ = 16
NODE_SIZE = 2
HPZ = 2
MEASURED_STEP = 1  # whose per-phase bytes are recorded (any step: prefetch is off)

ALL_THREE = {"zero_quantized_weights": True, "zero_hpz_partition_size": HPZ, "zero_quantized_gradients": True}
SHORT = 12  # steps of the runs that are compared step by step, not as curves
# name: (zero_optimization extras, steps). ZeRO-3, qgZ and all three train STEPS steps (the
# loss-curve parity); hpZ must equal ZeRO-3 exactly and qwZ is the mildest error, so they run
# SHORT steps. "all-prefetch" is all three with prefetch and the module-order check on: it
# must give exactly the losses of "all" (the same gathers, only earlier).
CONFIGS = {
    "zero3": ({}, STEPS),
    "qwz": ({"zero_quantized_weights": True}, SHORT),
    "hpz": ({"zero_hpz_partition_size": HPZ}, SHORT),
    "qgz": ({"zero_quantized_gradients": True}, STEPS),
    "all": (ALL_THREE, STEPS),
    "all-prefetch": ({**ALL_THREE, "stage3_prefetch_bucket_size": 50_000_000}, SHORT),
}
BF16_CONFIGS = ("zero3", "qwz", "qgz")  # one step each: bytes of 16-bit weights and gradients


def markov_tokens(steps: int, world: int, seed: int = 0) -> torch.Tensor:
    """[steps, world, MICRO, SEQ + 1] tokens; each token is followed by one of 4 fixed successors."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, VOCAB, (VOCAB, 4), generator=gen)
    count = steps * world * MICRO
    tokens = torch.empty(count, SEQ + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, VOCAB, (count,), generator=gen)
    for t in range(1, SEQ + 1):
        tokens[:, t] = successors[tokens[:, t - 1], torch.randint(0, 4, (count,), generator=gen)]
    return tokens.view(steps, world, MICRO, SEQ + 1)


def engine_config(extra: dict, dtype: str = "fp32") -> dict:
    # Reuse distance 0: backward re-gathers every block (what hpZ is for); prefetch off and no
    # order check (unless extra turns prefetch on), so each phase's bytes are its own gathers.
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
            "stage3_prefetch_bucket_size": 0, **extra}
    verify = zero["stage3_prefetch_bucket_size"] > 0
    config = {"train_micro_batch_size_per_gpu": MICRO, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
              "zero_optimization": zero, "comm": {"node_size": NODE_SIZE, "verify_module_order": verify},
              "steps_per_print": None}
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def _delta(after: dict, before: dict) -> dict:
    return {kind: {key: stats[key] - before.get(kind, {}).get(key, 0) for key in ("calls", "bytes", "inter_bytes")}
            for kind, stats in after.items()
            if stats["calls"] != before.get(kind, {}).get("calls", 0)}


def train(extra: dict, steps: int, dtype: str = "fp32") -> dict:
    import zerolib
    from zerolib.models import GPT, GPTConfig

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.manual_seed(0)
    engine = zerolib.initialize(GPT(GPTConfig(**MODEL)), engine_config(extra, dtype))
    data = markov_tokens(STEPS, world)  # the same stream for every run, whatever its length
    losses, phases, weights = [], {}, None
    for step in range(steps):
        tokens = data[step, rank]
        engine.reset_comm_stats()
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        after_forward = engine.comm_stats()
        engine.backward(loss)
        after_backward = engine.comm_stats()
        engine.step()
        if step == MEASURED_STEP:
            phases = {"forward": _delta(after_forward, {}), "backward": _delta(after_backward, after_forward),
                      "step": _delta(engine.comm_stats(), after_backward)}
        total = loss.detach().float().reshape(1)
        torch.distributed.all_reduce(total)  # the global batch's loss, for the curves
        losses.append(total.item() / world)
        if step + 1 == SHORT:
            weights = engine.full_state_dict()  # a collective: every rank calls it
    buffers = engine.stage3.layout.buffers
    return {"losses": losses, "phases": phases, "memory": engine.memory_breakdown(),
            "shard_numels": [b.shard_numel for b in buffers],
            "weights_after_short": weights if rank == 0 and steps >= SHORT else None}


def overflow_steps(extra: dict) -> dict:
    """fp16 from a loss scale of 2^20 (halved on each overflow) and 2 micro-steps per step: the
    first steps overflow, later ones do not; ZeRO++ must skip exactly the steps ZeRO-3 skips."""
    import zerolib
    from zerolib.models import GPT, GPTConfig

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.manual_seed(0)
    config = engine_config(extra)
    config.update(gradient_accumulation_steps=2,
                  fp16={"enabled": True, "initial_scale_power": 20, "hysteresis": 1})
    engine = zerolib.initialize(GPT(GPTConfig(**MODEL)), config)
    data = markov_tokens(STEPS, world)
    skipped, scales = [], []
    for step in range(5):
        for micro in range(2):
            tokens = data[2 * step + micro, rank]
            engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
            engine.step()
        skipped.append(engine.last_step.skipped)
        scales.append(engine.loss_scaler.scale)
    return {"skipped": skipped, "scales": scales}


# -- the two-hop reduce on its own ------------------------------------------------------------
REDUCE_CASES = [  # (node_size, bits, block_size, slice numel)
    (2, 4, 256, 1), (2, 4, 256, 7), (2, 8, 256, 300), (2, 4, 64, 1001), (2, 8, 8, 13),
    (1, 4, 256, 333), (4, 4, 256, 333), (4, 8, 128, 5),
]


def reduce_input(rank: int, case_index: int, world: int, slice_numel: int) -> torch.Tensor:
    """Rank ``rank``'s buffer: slices of very different magnitudes, so a mixed-up slice shows."""
    gen = torch.Generator().manual_seed(1000 * case_index + rank)
    values = torch.randn(world, slice_numel, generator=gen)
    return (values * torch.arange(1, world + 1, dtype=torch.float32)[:, None] ** 2).reshape(-1)


def reduce_cases() -> dict:
    from zerolib.comm import CommContext, init_distributed
    from zerolib.zero.zeropp import HierarchicalQuantizedReduceScatter

    init_distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = {}
    for index, (node_size, bits, block_size, numel) in enumerate(REDUCE_CASES):
        comm = CommContext(rank=rank, world_size=world, node_size=node_size)
        reduce = HierarchicalQuantizedReduceScatter(comm, bits=bits, block_size=block_size)
        output = torch.empty(numel)
        pending = reduce(output, reduce_input(rank, index, world, numel), async_op=True)
        pending.wait()
        results[index] = {"output": output, "comm": comm.ledger.snapshot()}
    # A NaN inside a block on rank 3, in the slice rank 0 owns (the native block maximum skips
    # NaNs), and an inf on rank 2 in rank 1's slice: both must reach the owners' results.
    comm = CommContext(rank=rank, world_size=world, node_size=NODE_SIZE)
    reduce = HierarchicalQuantizedReduceScatter(comm, bits=4, block_size=256)
    full = torch.ones(world * 600)
    if rank == 3:
        full[5] = float("nan")
    if rank == 2:
        full[600 + 7] = float("inf")
    output = torch.empty(600, dtype=torch.bfloat16)  # a 16-bit result buffer too
    reduce(output, full)
    results["finite"] = bool(torch.isfinite(output.float()).all())
    return results


def run_all() -> dict:
    """Everything the tests in tests/zeropp need, from one process group."""
    return {"fp32": {name: train(extra, steps) for name, (extra, steps) in CONFIGS.items()},
            "bf16": {name: train(CONFIGS[name][0], MEASURED_STEP + 1, "bf16") for name in BF16_CONFIGS},
            "fp16_overflow": {name: overflow_steps(CONFIGS[name][0]) for name in ("zero3", "all")},
            "reduce": reduce_cases()}

"""Same seed, same data: a zerolib run on N ranks against plain single-process PyTorch.

The reference is the textbook loop. fp32: one model, ``torch.optim.AdamW``. 16-bit: a 16-bit
working copy for forward/backward and an fp32 master copy that the optimizer steps, with
gradients summed in fp32. Gradient clipping is ``torch.nn.utils.clip_grad_norm_``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from support.models import build
from zerolib.models import GPT, GPTConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


@dataclass(frozen=True)
class Case:
    stage: int
    dtype: str
    gas: int
    clip: float
    micro: int = 2
    steps: int = 3
    seq: int = 16
    lr: float = 1e-2
    model: str = "gpt"
    zero_extra: tuple = ()  # extra zero_optimization items, as (key, value) pairs

    @property
    def name(self) -> str:
        extra = "".join(f"-{key}={value}" for key, value in self.zero_extra)
        return f"{self.model}-stage{self.stage}-{self.dtype}-gas{self.gas}-clip{self.clip}{extra}"


def make_model(seed: int = 0, kind: str = "gpt", config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return build(kind, config)


def make_batches(case: Case, world_size: int, seed: int = 1) -> torch.Tensor:
    """Tokens shaped [steps, gas, world, micro, seq+1]: micro-step g of step s on rank r."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY.vocab_size, (case.steps, case.gas, world_size, case.micro, case.seq + 1),
                           generator=gen)
    if case.model == "branchy":  # the branch must be the same on every rank: share the first token
        tokens[:, :, :, 0, 0] = tokens[:, :, :1, 0, 0]
    return tokens


def engine_config(case: Case) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": case.micro,
        "gradient_accumulation_steps": case.gas,
        "optimizer": {"type": "AdamW", "params": {"lr": case.lr, "weight_decay": 0.1}},
        "gradient_clipping": case.clip,
        "zero_optimization": {"stage": case.stage, "reduce_bucket_size": 20000, "allgather_bucket_size": 20000,
                              "overlap_comm": True, **dict(case.zero_extra)},
        "steps_per_print": None,
    }
    if case.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    if case.dtype == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 8}
    return config


def run_engine(case: Case, world_size: int, rank: int) -> dict:
    """Trains with zerolib on this rank; returns its micro-step losses and the final weights."""
    import zerolib

    engine = zerolib.initialize(make_model(kind=case.model), engine_config(case))
    batches = make_batches(case, world_size)
    losses = []
    for step in range(case.steps):
        for micro in range(case.gas):
            tokens = batches[step, micro, rank]
            loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    result = {"losses": losses, "weights": engine.full_state_dict(), "comm": engine.comm_stats(),
              "memory": engine.memory_breakdown(), "skipped": engine.skipped_steps}
    if engine.stage3 is not None:
        result["trace_misses"] = engine.stage3.coordinator.trace_misses
        result["peak_live_numel"] = engine.stage3.coordinator.peak_live_numel
    return result


def run_reference(case: Case, world_size: int) -> dict:
    """Plain PyTorch on one process over the same global batches; losses as [step][micro][rank]."""
    master = make_model(kind=case.model)
    work = copy.deepcopy(master).to(DTYPES[case.dtype])
    trainable = [p for p in master.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=case.lr, weight_decay=0.1, fused=True)
    scale = 2.0**8 if case.dtype == "fp16" else 1.0
    batches = make_batches(case, world_size)
    losses = torch.zeros(case.steps, case.gas, world_size)
    for step in range(case.steps):
        grads = [torch.zeros_like(p) for p in trainable]
        for micro in range(case.gas):
            for rank in range(world_size):
                tokens = batches[step, micro, rank]
                loss = work(tokens[:, :-1], tokens[:, 1:])
                losses[step, micro, rank] = loss.item()
                work.zero_grad(set_to_none=True)
                (loss.float() * scale).backward()
                for acc, p in zip(grads, [p for p in work.parameters() if p.requires_grad]):
                    if p.grad is not None:
                        acc += p.grad.float() / (scale * case.gas * world_size)
        for p, g in zip(trainable, grads):
            p.grad = g
        if case.clip:
            torch.nn.utils.clip_grad_norm_(trainable, case.clip)
        optimizer.step()
        with torch.no_grad():
            for w, m in zip(work.parameters(), master.parameters()):
                w.copy_(m)
    return {"losses": losses, "weights": {n: p.detach().clone() for n, p in master.named_parameters()}}


def run_cases(cases: list[Case], world_size: int) -> dict[str, dict]:
    """Rank entry point: every case in one process group (one spawn for the whole grid)."""
    import os

    rank = int(os.environ["RANK"])
    return {case.name: run_engine(case, world_size, rank) for case in cases}


# Tolerances, stated. fp32 differs from the reference only by summation order (ranks,
# buckets). 16-bit runs round each micro-batch gradient to 16 bits and sum across ranks in 16
# bits where the reference sums in fp32 (bf16 keeps 8 mantissa bits, fp16 11).
# ``update`` bounds ||w - w_ref|| / ||w_ref - w_0|| over all parameters: the error relative to
# how far training moved the weights. Per-element bounds would be meaningless for parameters
# whose true gradient is zero (attention key biases): Adam turns their rounding noise into
# steps of up to lr, so those elements differ by up to lr * steps between any two reductions.
TOLERANCES = {"fp32": dict(loss=1e-5, update=2e-4), "bf16": dict(loss=2e-3, update=0.08),
              "fp16": dict(loss=1e-3, update=0.05)}


def update_error(weights: dict, reference: dict, initial: dict) -> float:
    diff = sum(((weights[n] - reference[n]) ** 2).sum() for n in reference)
    moved = sum(((reference[n] - initial[n]) ** 2).sum() for n in reference)
    return float((diff / moved).sqrt())


def assert_matches_reference(case: Case, world_size: int, ranks: list[dict]) -> None:
    reference = run_reference(case, world_size)
    tol = TOLERANCES[case.dtype]
    expected = reference["losses"]
    for rank, result in enumerate(ranks):
        got = torch.tensor(result["losses"]).view(case.steps, case.gas)
        want = expected[:, :, rank]
        assert torch.allclose(got, want, rtol=tol["loss"], atol=tol["loss"]), (
            f"{case.name} rank {rank}: losses {got.tolist()} vs reference {want.tolist()}")
        assert result["skipped"] == 0, f"{case.name}: unexpected overflow-skipped steps"
        initial = {n: p.detach() for n, p in make_model(kind=case.model).named_parameters()}
        err = update_error(result["weights"], reference["weights"], initial)
        assert err <= tol["update"], f"{case.name} rank {rank}: weight update error {err:.3g} > {tol['update']}"


class GridRuns:
    """Runs a whole grid of cases once per world size (one spawn) and hands out per-case results."""

    def __init__(self, cases: list[Case]):
        self.cases, self._by_world = cases, {}

    def ranks(self, case: Case, world_size: int) -> list[dict]:
        from harness import run_ranks

        if world_size not in self._by_world:
            self._by_world[world_size] = run_ranks(run_cases, world_size, self.cases, world_size)
        return [rank_results[case.name] for rank_results in self._by_world[world_size]]

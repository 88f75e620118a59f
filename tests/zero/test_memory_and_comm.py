"""Per-rank model-state bytes and per-step communication volume against the ZeRO paper.

One spawn per world size (2 and 4) runs every case: stage 0/1/2 x fp32/bf16 x accumulation
1/2. Each case takes one full step (so Adam's m and v exist), then measures the second step:
memory right after the last backward of the window (before ``step``), and the bytes every
collective put on the wire from its first forward to the end of its ``step``.

Memory, bytes per rank with Ψ trainable parameters (REFERENCE.md, "ZeRO memory"), checked per
kind from ``engine.memory_breakdown()``:

=====  ===========================  ============================================
stage  fp32 (master IS the param)   bf16
=====  ===========================  ============================================
0      4Ψ + 4Ψ + 8Ψ                 2Ψ + (2Ψ + 4Ψ) + 4Ψ + 8Ψ
1      4Ψ + 4Ψ + 8Ψ/N               2Ψ + (2Ψ + 4Ψ/N) + 4Ψ/N + 8Ψ/N
2      4Ψ + 4Ψ/N + 8Ψ/N             2Ψ + 4Ψ/N + 4Ψ/N + 8Ψ/N
=====  ===========================  ============================================

(params + grads + master + Adam m, v). The one departure from the paper: in bf16 the engine
keeps each rank's reduced gradient shard in fp32 (4Ψ/N; 4Ψ at stage 0, which has one shard)
so that accumulation and clipping happen in full precision. The paper's stage 2 has a 2Ψ/N
16-bit gradient partition instead; stages 0/1 keep that fp32 shard beside the 16-bit full
buffer. Allowance: padding only. Every flat buffer is padded to a multiple of N*64 elements,
so a kind may exceed its formula by at most ``buffers * N * 64`` elements of its size and is
never below it.

The same bytes are also counted independently of ``memory_breakdown``: every tensor storage
alive in the process (found through the garbage collector) that appeared after the model was
built, minus the batch. That total may exceed the breakdown only by the engine's scalars.

Communication per step and rank (REFERENCE.md, "Communication volume"), b = bytes per
element of the communication dtype (the param dtype here):
stage 0: all_reduce 2(N-1)/N·Ψ·b; stages 1/2: reduce_scatter (N-1)/N·Ψ·b + all_gather
(N-1)/N·Ψ·b. Stage 2 reduce-scatters on every micro-step, so with accumulation 2 its
reduce_scatter volume doubles; stages 0/1 communicate gradients once per window. Stages 1/2
also all-reduce one fp32 scalar for the global gradient norm.
"""
from __future__ import annotations

import gc
import itertools
import os
import time
from dataclasses import dataclass

import pytest
import torch

from harness import run_ranks

ALIGN = 64  # FlatLayout's per-shard alignment, in elements
SCALAR_ALLOWANCE = 4096  # bytes: step counters and the like, beside the model states
BUCKET_NUMEL = 400_000  # several buffers, so that padding is exercised and stays small


@dataclass(frozen=True)
class Case:
    stage: int
    dtype: str
    gas: int

    @property
    def name(self) -> str:
        return f"stage{self.stage}-{self.dtype}-gas{self.gas}"


CASES = [Case(s, d, g) for s, d, g in itertools.product((0, 1, 2), ("fp32", "bf16"), (1, 2))]


def _model():
    from zerolib.models import GPT, GPTConfig

    torch.manual_seed(0)  # ~1.8M parameters: padding is < 0.1% of each kind
    return GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=192))


def _config(case: Case) -> dict:
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": case.gas,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": case.stage, "reduce_bucket_size": BUCKET_NUMEL,
                                    "allgather_bucket_size": BUCKET_NUMEL, "overlap_comm": True},
              "steps_per_print": None}
    if case.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def _live_storages() -> dict[int, int]:
    """``{storage address: bytes}`` of every tensor the garbage collector can see."""
    gc.collect()
    found = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


def _settled_live_bytes(before: dict, batch: set, reported: int) -> int:
    """Live tensor bytes beside the batch. gloo's worker threads drop their reference to a
    completed collective's buffers a moment after ``wait()`` returns, so a count taken at once
    can include a buffer that is already dead: re-count for up to 0.5 s and keep the smallest."""
    smallest = None
    for _ in range(10):
        live = _live_storages()
        count = sum(n for ptr, n in live.items() if ptr not in before and ptr not in batch)
        smallest = count if smallest is None else min(smallest, count)
        if smallest <= reported + SCALAR_ALLOWANCE:
            break
        time.sleep(0.05)
    return smallest


def _measure_case(case: Case) -> dict:
    import zerolib

    before = _live_storages()
    model = _model()
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    engine = zerolib.initialize(model, _config(case))
    tokens = torch.randint(0, 256, (1, 17), generator=torch.Generator().manual_seed(int(os.environ["RANK"])))
    result = {"numel": numel, "buffers": len(engine.optimizer.layout.buffers)}
    for step in range(2):
        if step == 1:
            engine.reset_comm_stats()
        for _ in range(case.gas):
            loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            if step == 1 and engine.is_gradient_accumulation_boundary():
                result["memory"] = engine.memory_breakdown()
                batch = {t.untyped_storage().data_ptr() for t in (tokens, loss)}
                result["live_bytes"] = _settled_live_bytes(before, batch, sum(result["memory"].values()))
            engine.step()
    result["comm"] = engine.comm_stats()
    del engine, model
    gc.collect()
    return result


def measure_all(cases: list[Case]) -> dict[str, dict]:
    """Rank entry point: every case in one process group."""
    return {case.name: _measure_case(case) for case in cases}


@pytest.fixture(scope="module")
def measured():
    results = {}

    def for_world(world_size):
        if world_size not in results:
            results[world_size] = run_ranks(measure_all, world_size, CASES)
        return results[world_size]
    return for_world


def expected_memory(case: Case, psi: float, n: int) -> dict[str, float]:
    """The formulas in the module docstring, in bytes, for ``psi`` elements per buffer set."""
    sharded = 1 if case.stage == 0 else n
    if case.dtype == "fp32":
        grads = 4 * psi / n if case.stage == 2 else 4 * psi
        return {"params": 4 * psi, "grads": grads, "master": 0, "optimizer_state": 8 * psi / sharded}
    grads = 4 * psi / n if case.stage == 2 else 2 * psi + 4 * psi / sharded
    return {"params": 2 * psi, "grads": grads, "master": 4 * psi / sharded, "optimizer_state": 8 * psi / sharded}


def expected_comm(case: Case, psi: float, n: int) -> dict[str, float]:
    """Bytes per rank per optimizer step by collective kind (gradients and parameters only)."""
    b = 4 if case.dtype == "fp32" else 2
    share = (n - 1) / n * psi * b
    if case.stage == 0:
        return {"all_reduce": 2 * share}
    reductions = case.gas if case.stage == 2 else 1
    return {"reduce_scatter": reductions * share, "all_gather": share}


def padded_bounds(formula, case: Case, result: dict, world_size: int) -> tuple[dict, dict]:
    """``formula`` for Ψ (lower bound) and for Ψ plus every buffer's worst-case padding (upper)."""
    psi, padding = result["numel"], result["buffers"] * world_size * ALIGN
    return formula(case, psi, world_size), formula(case, psi + padding, world_size)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_model_state_bytes_match_zero_formulas(measured, case, world_size):
    for rank, results in enumerate(measured(world_size)):
        got = results[case.name]["memory"]
        low, high = padded_bounds(expected_memory, case, results[case.name], world_size)
        for kind in low:
            assert low[kind] <= got[kind] <= high[kind], (
                f"{case.name} N={world_size} rank {rank}: {kind} holds {got[kind]} bytes, ZeRO formula "
                f"{low[kind]:.0f}..{high[kind]:.0f} (Ψ={results[case.name]['numel']}, + padding)")


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_breakdown_accounts_for_every_live_tensor(measured, case, world_size):
    for rank, results in enumerate(measured(world_size)):
        result = results[case.name]
        reported = sum(result["memory"].values())
        live = result["live_bytes"]
        assert reported <= live <= reported + SCALAR_ALLOWANCE, (
            f"{case.name} N={world_size} rank {rank}: memory_breakdown totals {reported} bytes but "
            f"{live} bytes of tensors are alive beside the batch (allowance {SCALAR_ALLOWANCE})")


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_comm_volume_per_step_matches_zero_paper(measured, case, world_size):
    for rank, results in enumerate(measured(world_size)):
        comm = results[case.name]["comm"]
        low, high = padded_bounds(expected_comm, case, results[case.name], world_size)
        norm_kinds = {"all_reduce"} if case.stage > 0 else set()
        assert set(comm) == set(low) | norm_kinds, f"{case.name} N={world_size} rank {rank}: kinds {sorted(comm)}"
        for kind in low:
            assert low[kind] <= comm[kind]["bytes"] <= high[kind], (
                f"{case.name} N={world_size} rank {rank}: {kind} sent {comm[kind]['bytes']} bytes, ZeRO paper "
                f"{low[kind]:.0f}..{high[kind]:.0f} (+ padding)")
        if norm_kinds:
            norm_bytes = 2 * (4 * (world_size - 1) // world_size)  # one fp32 scalar, as the ledger counts it
            norm = comm["all_reduce"]
            assert (norm["calls"], norm["bytes"]) == (1, norm_bytes), (
                f"{case.name} N={world_size} rank {rank}: expected one fp32-scalar all_reduce, got {norm}")


@pytest.mark.parametrize("world_size", [2, 4])
def test_stage2_reduces_on_every_micro_step(measured, world_size):
    """Stage 2 launches one reduce-scatter per buffer per micro-step; stage 1 once per window."""
    for rank, result_by_case in enumerate(measured(world_size)):
        for stage, gas in itertools.product((1, 2), (1, 2)):
            result = result_by_case[Case(stage, "fp32", gas).name]
            calls = result["comm"]["reduce_scatter"]["calls"]
            expected = result["buffers"] * (gas if stage == 2 else 1)
            assert calls == expected, f"stage {stage} gas {gas} N={world_size} rank {rank}: {calls} reduce-scatters"

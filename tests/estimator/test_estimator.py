"""The estimator against what the engine really holds per rank (engine.memory_breakdown()) on
2 ranks, stages 0-3, fp32 and bf16, within 10%; the CLI; errors naming the bad option."""
import os

import pytest
import torch

import zerolib
from harness import run_ranks
from zerolib.cli import main as cli_main
from zerolib.estimator import activation_bytes, estimate, largest_model, model_state_bytes
from zerolib.models import GPT, GPTConfig

MODEL = GPTConfig(vocab_size=128, block_size=16, n_layer=4, n_head=4, n_embd=64)
WORLD = 2
CASES = [(stage, dtype, threshold) for stage in (0, 1, 2, 3) for dtype in ("fp32", "bf16")
         for threshold in ((0, 100_000) if stage == 3 else (100_000,))]
TOLERANCE = 0.10


def config(stage: int, dtype: str, threshold: int) -> dict:
    cfg = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
           "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": threshold}}
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def measure(stage: int, dtype: str, threshold: int) -> dict:
    torch.manual_seed(0)
    engine = zerolib.initialize(GPT(MODEL), config(stage, dtype, threshold))
    gen = torch.Generator().manual_seed(int(os.environ["RANK"]))
    for step in range(2):  # measured after the second backward: optimizer state exists by then
        tokens = torch.randint(0, MODEL.vocab_size, (2, 17), generator=gen)
        engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
        if step == 1:
            memory = engine.memory_breakdown()
        engine.step()
    return memory


def run_all() -> dict:
    return {case: measure(*case) for case in CASES}


@pytest.fixture(scope="module")
def measured():
    return run_ranks(run_all, WORLD)


@pytest.mark.parametrize("stage,dtype,threshold", CASES)
def test_estimate_matches_measured_storage(measured, stage, dtype, threshold):
    torch.manual_seed(0)
    want = estimate(GPT(MODEL), config(stage, dtype, threshold), num_procs=WORLD)
    for rank, results in enumerate(measured):
        got = results[(stage, dtype, threshold)]
        for kind, nbytes in got.items():
            assert abs(want.by_kind[kind] - nbytes) <= TOLERANCE * max(nbytes, 1), (
                f"rank {rank} {kind}: estimated {want.by_kind[kind]}, measured {nbytes}")
        total = sum(nbytes for kind, nbytes in got.items() if kind not in ("comm_buffers", "hpz_secondary"))
        assert abs(want.model_states - total) <= TOLERANCE * total


def test_stage3_bf16_is_eighteen_bytes_over_n_and_paper_example():
    # ZeRO paper's 7.5B on 64 ranks: 16Ψ/N = 1.875 GB; zerolib keeps fp32 grads: 18Ψ/N.
    result = model_state_bytes(7_500_000_000, num_procs=64, stage=3, dtype="bf16")
    assert result.model_states == 18 * 7_500_000_000 // 64
    assert result.by_place == {"device": result.model_states, "cpu": 0, "nvme": 0}


def test_offload_places_states_like_deepspeed():
    psi, n = 1_000_000, 4
    cpu = model_state_bytes(psi, num_procs=n, stage=2, dtype="bf16", offload_optimizer="cpu")
    assert cpu.by_place == {"device": 2 * psi, "cpu": 16 * psi // n, "nvme": 0}
    nvme = model_state_bytes(psi, num_procs=n, stage=3, dtype="bf16", offload_optimizer="nvme", offload_param="nvme")
    # zerolib swaps the fp32 gradient shard with the optimizer state (DeepSpeed keeps it in RAM)
    assert nvme.by_place == {"device": 0, "cpu": 0, "nvme": 18 * psi // n}
    assert nvme.notes and "gathered" in nvme.notes[0]
    fp32 = model_state_bytes(psi, num_procs=n, stage=3, dtype="fp32", offload_optimizer="nvme", offload_param="nvme")
    assert fp32.by_place["nvme"] == 20 * psi // n, "with the working shard in a file, fp32 keeps a master of its own"


def test_largest_model_fills_memory_then_disk():
    gib = 2**30
    psi, limit = largest_model(24 * gib, overhead_bytes=2 * gib, num_procs=1, stage=3, dtype="fp32")
    assert limit == "memory" and psi == 22 * gib // 16  # 16 bytes per parameter in RAM
    psi, limit = largest_model(24 * gib, disk_bytes=80 * gib, overhead_bytes=2 * gib, num_procs=1, stage=3,
                               dtype="fp32", offload_optimizer="nvme", offload_param="nvme")
    assert limit == "disk" and psi == 80 * gib // 20  # params, master, moments, gradients: 20 bytes on disk


def test_checkpointing_shrinks_activations():
    shape = dict(batch=8, seq=2048, hidden=4096, layers=32, dtype="bf16")
    full, kept = activation_bytes(**shape), activation_bytes(**shape, checkpointing=True)
    assert full == 32 * 2048 * 8 * 4096 * 34
    assert kept == 32 * 2048 * 8 * 4096 * 2 + full // 32


def test_cli_prints_states_and_activations(capsys):
    status = cli_main(["estimate", "--model-params", "1e6", "--num_procs", "4", "--stage", "3", "--dtype", "fp32",
                       "--batch", "2", "--seq", "16", "--hidden", "64", "--layers", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "model states" in out and "activations" in out and "with activation checkpointing" in out
    status = cli_main(["estimate", "--memory-gib", "24", "--overhead-gib", "2", "--stage", "3", "--dtype", "fp32"])
    assert status == 0 and f"{22 * 2**30 // 16:,} params (limited by memory)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model-params", "1e6", "--stage", "1", "--offload_param", "cpu"], "offload_param needs stage 3"),
    (["--model-params", "0"], "model params must be >= 1"),
    (["--model-params", "1e6", "--batch", "2"], "need all of --batch"),
])
def test_cli_names_the_bad_option(capsys, argv, message):
    assert cli_main(["estimate", *argv]) == 2
    assert message in capsys.readouterr().out

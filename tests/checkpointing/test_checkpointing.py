"""Activation checkpointing: same losses and weights as without it at stages 0-3 on 2 ranks,
fewer saved bytes, state_dict keys unchanged, and the config options' documented behaviour."""
import os
import warnings

import pytest
import torch

import zerolib
from harness import run_ranks
from zerolib.checkpointing import CheckpointedModule, CheckpointOptions, checkpoint, checkpoint_blocks
from zerolib.models import GPT, GPTConfig

MODEL = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32)
STEPS, WORLD = 3, 2
CASES = [(stage, dtype) for stage in (0, 1, 2, 3) for dtype in ("fp32", "bf16")]


def build(checkpointed: bool) -> GPT:
    torch.manual_seed(0)
    model = GPT(MODEL)
    if checkpointed:
        checkpoint_blocks(model.blocks)
    return model


def train(stage: int, dtype: str, checkpointed: bool) -> dict:
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0}}
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    engine = zerolib.initialize(build(checkpointed), config)
    gen = torch.Generator().manual_seed(int(os.environ["RANK"]))
    losses = []
    for step in range(STEPS):
        if step == STEPS - 1:  # the gather order is recorded by now: a steady-state step
            engine.reset_comm_stats()
        tokens = torch.randint(0, MODEL.vocab_size, (2, 17), generator=gen)
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    weights = {name.replace("checkpointed_module.", ""): w for name, w in engine.full_state_dict().items()}
    return {"losses": losses, "weights": weights, "comm": engine.comm_stats()}


def run_all() -> dict:
    return {(stage, dtype, flag): train(stage, dtype, flag) for stage, dtype in CASES for flag in (False, True)}


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(run_all, WORLD)


@pytest.mark.parametrize("stage,dtype", CASES)
def test_same_training_with_and_without_checkpointing(ranks, stage, dtype):
    # Recomputation repeats the same kernels on the same inputs: only bf16 rounding of a
    # gathered-again parameter could differ, and it does not (the shard is the same).
    tol = 1e-6 if dtype == "fp32" else 1e-3
    for rank, results in enumerate(ranks):
        plain, ckpt = results[(stage, dtype, False)], results[(stage, dtype, True)]
        assert ckpt["losses"] == pytest.approx(plain["losses"], rel=tol, abs=tol), f"rank {rank} stage {stage}"
        assert plain["weights"].keys() == ckpt["weights"].keys()
        for name, want in plain["weights"].items():
            assert torch.allclose(ckpt["weights"][name], want, rtol=tol, atol=tol), f"rank {rank} {name}"


def saved_bytes(model: GPT, tokens: torch.Tensor) -> int:
    total = []

    def pack(tensor):
        total.append(tensor.untyped_storage().nbytes())
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens[:, :-1], tokens[:, 1:])
    return sum(total)


def test_checkpointing_saves_fewer_activation_bytes():
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    plain, ckpt = saved_bytes(build(False), tokens), saved_bytes(build(True), tokens)
    assert ckpt < plain / 2, f"checkpointed forward saved {ckpt} bytes, plain {plain}"


def test_state_dict_keys_and_loading_are_unchanged_by_the_wrapper():
    plain, wrapped = build(False), build(True)
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    wrapped.load_state_dict(plain.state_dict())
    for (name, want), got in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(want, got), name


def test_cpu_checkpointing_matches_plain_gradients():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(3, 8, requires_grad=True)
    checkpoint(layer, x, options=CheckpointOptions(cpu_checkpointing=True)).pow(2).sum().backward()
    got = (x.grad.clone(), layer.weight.grad.clone())
    x.grad, layer.weight.grad = None, None
    layer(x).pow(2).sum().backward()
    assert torch.allclose(got[0], x.grad) and torch.allclose(got[1], layer.weight.grad)


def test_options_from_config_and_partition_activations_warns_why():
    cfg = zerolib.load_config({"train_batch_size": 2, "activation_checkpointing": {
        "cpu_checkpointing": True, "partition_activations": True}})
    with pytest.warns(UserWarning, match="model-parallel"):
        options = CheckpointOptions.from_config(cfg)
    assert options.cpu_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not CheckpointOptions.from_config(zerolib.load_config({"train_batch_size": 2})).cpu_checkpointing


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="fn must be callable"):
        checkpoint(3, torch.ones(1))
    with pytest.raises(TypeError, match="nn.ModuleList"):
        checkpoint_blocks(torch.nn.Linear(2, 2))
    assert isinstance(checkpoint_blocks(torch.nn.ModuleList([torch.nn.Linear(2, 2)]))[0], CheckpointedModule)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_stage3_recomputation_gathers_no_extra_bytes(ranks, dtype):
    # The block is gathered for its own backward before recomputation starts: the re-run
    # pre-hooks find its parameters already whole.
    for rank, results in enumerate(ranks):
        plain, ckpt = results[(3, dtype, False)]["comm"], results[(3, dtype, True)]["comm"]
        assert plain["all_gather"]["bytes"] > 0
        for field in ("calls", "bytes"):
            assert ckpt["all_gather"][field] == plain["all_gather"][field], f"rank {rank} all_gather {field}"

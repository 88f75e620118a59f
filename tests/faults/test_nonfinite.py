"""Fault 4: inf and NaN. fp16 skips an overflowing step and lowers the scale, and stops once a
whole ``loss_scale_window`` overflows at the minimum scale; bf16 and fp32 stop naming the step
and the parameter (``nonfinite_gradients`` "error", the default) or skip the step ("skip", or
DeepSpeed's ``bf16.check_grad_overflow``). A bad loss or gradient on one rank stops every rank."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zerolib
from harness import run_ranks
from zerolib.models import GPT, GPTConfig
from zerolib.zero import LossScaleStuckError, NonFiniteGradientError
from zerolib.zero.loss_scaler import DynamicLossScaler


class PoisonGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient backward (for one parameter only)."""

    @staticmethod
    def forward(ctx, weight):
        return weight.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class Poisonable(nn.Module):
    """emb -> hidden -> head. ``poison``: None, "grad" (NaN gradient of hidden.weight only, the
    loss stays finite), "loss" (a NaN loss, so every gradient is NaN) or "loss_only" (a NaN
    loss whose gradients are all finite)."""

    def __init__(self):
        super().__init__()
        self.emb, self.hidden, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.poison = None

    def forward(self, x, y):
        h = torch.tanh(self.emb(x))
        weight = PoisonGradient.apply(self.hidden.weight) if self.poison == "grad" else self.hidden.weight
        loss = F.mse_loss(self.head(torch.tanh(F.linear(h, weight, self.hidden.bias))).float(), y)
        if self.poison == "loss":
            return loss * float("nan")
        return loss + torch.tensor(float("nan")) if self.poison == "loss_only" else loss


def _engine(stage: int = 1, dtype: str = "fp32", **extra):
    torch.manual_seed(0)
    model = Poisonable()
    config = {"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
              "steps_per_print": None, **extra}
    if dtype != "fp32":
        config[dtype] = {"enabled": True, **config.get(dtype, {})}
    return zerolib.initialize(model, config), model


def _train_step(engine, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 100 * engine.comm.rank)
    x, y = torch.randn(4, 8, generator=gen), torch.randn(4, 4, generator=gen)
    engine.backward(engine(x.to(engine.dtype), y))
    engine.step()


def _state(engine) -> dict:
    moments = {k: v.clone() for k, v in engine.optimizer.state_dict()["state"].get(0, {}).items() if torch.is_tensor(v)}
    return {"weights": engine.full_state_dict(), "moments": moments}


def _same(a: dict, b: dict) -> bool:
    return all(a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a)



def test_loss_scaler_hysteresis_window_and_stuck():
    scaler = DynamicLossScaler(scale=16.0, window=3, hysteresis=2, min_scale=4.0)
    scaler.update(True)
    assert scaler.scale == 16.0  # the first overflow is absorbed by hysteresis
    scaler.update(True)
    assert scaler.scale == 8.0
    scaler.update(True)
    assert scaler.scale == 4.0  # the counter is not refilled after a cut
    for _ in range(3):
        scaler.update(False)
    assert scaler.scale == 8.0  # a clean window doubles it
    stuck = DynamicLossScaler(scale=1.0, window=3, hysteresis=1, min_scale=1.0)
    stuck.update(True)
    stuck.update(True)
    with pytest.raises(LossScaleStuckError, match="minimum loss scale"):
        stuck.update(True)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(single_rank):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=16))
    engine = zerolib.initialize(model, {"train_micro_batch_size_per_gpu": 1, "steps_per_print": None,
                                        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
                                        "fp16": {"enabled": True, "initial_scale_power": 30, "hysteresis": 1}})
    before = engine.full_state_dict()
    tokens = torch.randint(0, 32, (1, 9))
    engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
    engine.step()
    assert engine.skipped_steps == 1 and engine.loss_scaler.scale == 2.0**29
    after = engine.full_state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before), "an overflowing step changed weights"


@pytest.mark.parametrize("fp16, stuck_at, expected", [
    # scale 4 -> 2 -> 1 (steps 1-2), then a whole window of 3 overflows at the minimum (steps 3-5)
    ({"initial_scale_power": 2, "min_loss_scale": 1, "hysteresis": 1, "loss_scale_window": 3}, 5,
     "overflowed at the minimum loss scale 1.0 (fp16.min_loss_scale)"),
    ({"loss_scale": 128, "loss_scale_window": 2}, 2, "overflowed at the static loss scale 128.0 (fp16.loss_scale)"),
], ids=["dynamic", "static"])
def test_fp16_stuck_at_its_lowest_scale_stops_after_a_window(single_rank, fp16, stuck_at, expected):
    engine, model = _engine(dtype="fp16", fp16=fp16)
    before = _state(engine)
    model.poison = "grad"
    with pytest.raises(LossScaleStuckError) as caught:
        for step in range(1, 20):
            _train_step(engine, step)
    message = str(caught.value)
    assert message.startswith(f"step {stuck_at}: fp16: ") and "a whole fp16.loss_scale_window" in message, message
    assert expected in message, message
    assert engine.skipped_steps == stuck_at - 1 and _same(_state(engine), before)


@pytest.mark.parametrize("poison, named", [
    ("grad", "the gradient of 'hidden.weight' holds inf/NaN"),
    ("loss", "the gradient of 'emb.weight' holds inf/NaN (the first parameter in the flat layout whose gradient "
             "does); the loss was not finite on rank 0"),
], ids=["nan_gradient", "nan_loss"])
@pytest.mark.parametrize("stage, dtype", [(1, "fp32"), (3, "bf16")])
def test_nonfinite_stops_naming_step_and_parameter_and_applies_nothing(single_rank, stage, dtype, poison, named):
    engine, model = _engine(stage, dtype)
    _train_step(engine, 1)
    after_step_one = _state(engine)
    model.poison = poison
    with pytest.raises(NonFiniteGradientError) as caught:
        _train_step(engine, 2)
    message = str(caught.value)
    assert message.startswith(f"step 2: {named}"), message
    assert "weights and optimizer state are those after step 1" in message and '"nonfinite_gradients"' in message
    assert engine.global_steps == 1 and _same(_state(engine), after_step_one), "the bad step changed the model"


@pytest.mark.parametrize("dtype, extra", [
    ("fp32", {"nonfinite_gradients": "skip"}),
    ("bf16", {"bf16": {"check_grad_overflow": True}}),  # DeepSpeed's spelling of "skip"
], ids=["nonfinite_gradients_skip", "bf16_check_grad_overflow"])
def test_skip_when_configured(single_rank, dtype, extra):
    engine, model = _engine(2, dtype, **extra)
    _train_step(engine, 1)
    after_step_one = _state(engine)
    model.poison = "grad"
    _train_step(engine, 2)
    assert engine.skipped_steps == 1 and engine.global_steps == 2 and _same(_state(engine), after_step_one)
    model.poison = None
    _train_step(engine, 3)
    assert not _same(_state(engine), after_step_one), "training did not go on after the skipped step"


def poison_rank_one() -> dict:
    """Per stage, what each rank raises when only rank 1's step-2 loss or gradient is bad. The
    engines share one process group: the group must still work after each error."""
    results = {}
    for stage, poison in ((0, "loss_only"), (2, "loss_only"), (3, "grad")):
        engine, model = _engine(stage)
        _train_step(engine, 1)
        model.poison = poison if os.environ["RANK"] == "1" else None
        try:
            _train_step(engine, 2)
            results[stage] = "no error"
        except NonFiniteGradientError as error:
            results[stage] = str(error)
    return results


def test_a_bad_loss_or_gradient_on_one_rank_stops_every_rank():
    results = run_ranks(poison_rank_one, 2, timeout=120)
    for rank, result in enumerate(results):
        for stage in (0, 2):
            assert result[stage].startswith("step 2: the loss was not finite on rank 1."), (rank, stage, result[stage])
        assert result[3].startswith("step 2: the gradient of 'hidden.weight' holds inf/NaN"), (rank, result[3])

"""LR schedules against DeepSpeed's formulas; a single-rank engine without launcher variables.

The fp16 loss scaler's rules are tested with the other non-finite faults in tests/faults."""
import math

import pytest
import torch

import zerolib
from zerolib.models import GPT, GPTConfig
from zerolib.runtime.lr_schedules import OneCycle, WarmupCosineLR, WarmupDecayLR, WarmupLR


def lrs(schedule, steps):
    values = []
    for _ in range(steps):
        values.append(schedule.get_lr()[0])
        schedule.step()
    return values


def sgd(lr=0.1):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)


def test_warmup_lr_log_and_linear():
    log = lrs(WarmupLR(sgd(), 0.0, 1.0, 10, "log"), 12)
    assert log[0] == 0.0 and log[10] == log[11] == 1.0
    assert log[5] == pytest.approx(math.log(6) / math.log(10))
    linear = lrs(WarmupLR(sgd(), 0.1, 0.5, 4, "linear"), 6)
    assert linear == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])


def test_warmup_decay_reaches_zero_at_total():
    values = lrs(WarmupDecayLR(sgd(), total_num_steps=10, warmup_max_lr=1.0, warmup_num_steps=2,
                               warmup_type="linear"), 12)
    assert values[2] == 1.0 and values[6] == pytest.approx(0.5) and values[10] == values[11] == 0.0


def test_warmup_cosine_is_a_ratio_of_the_optimizer_lr():
    values = lrs(WarmupCosineLR(sgd(0.2), total_num_steps=12, warmup_num_steps=2, warmup_type="linear",
                                cos_min_ratio=0.1), 13)
    assert values[0] == 0.0 and values[2] == pytest.approx(0.2)
    assert values[7] == pytest.approx(0.2 * (0.1 + 0.9 * 0.5))
    assert values[12] == pytest.approx(0.02)


def test_one_cycle_lr_and_momentum():
    optimizer = sgd()
    schedule = OneCycle(optimizer, cycle_min_lr=0.1, cycle_max_lr=1.0, cycle_first_step_size=4,
                        decay_lr_rate=1.0, decay_step_size=2)
    values, moms = [], []
    for _ in range(11):
        values.append(schedule.get_lr()[0])
        moms.append(optimizer.param_groups[0]["momentum"])
        schedule.step()
    assert values[:9] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0, 0.775, 0.55, 0.325, 0.1])
    assert values[10] == pytest.approx(0.1 / 2)  # one decay interval past the cycle
    assert moms[0] == pytest.approx(0.9) and moms[4] == pytest.approx(0.8)


def test_schedule_resumes_from_state_dict():
    first = WarmupLR(sgd(), 0.0, 1.0, 10, "linear")
    lrs(first, 3)
    second = WarmupLR(sgd(), 0.0, 1.0, 10, "linear")
    second.load_state_dict(first.state_dict())
    assert second.get_lr() == first.get_lr()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_single_rank_without_launcher_variables(stage, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=16))
    engine = zerolib.initialize(model, {"train_batch_size": 2, "gradient_accumulation_steps": 2,
                                        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
                                        "zero_optimization": {"stage": stage}, "steps_per_print": None})
    tokens = torch.randint(0, 32, (4, 1, 9))
    losses = []
    for micro in range(4):
        assert engine.is_gradient_accumulation_boundary() == (micro % 2 == 1)
        loss = engine(tokens[micro, :, :-1], tokens[micro, :, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert engine.global_steps == 2 and engine.comm.world_size == 1
    assert all(math.isfinite(x) for x in losses)


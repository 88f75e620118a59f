"""DeepSpeed's learning-rate schedules: WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle.

Each schedule is a pure function of the step count, applied to an optimizer's param groups,
so it resumes exactly from ``state_dict()``. Step 0 is the learning rate of the first step.
"""
from __future__ import annotations

import math

import torch


class _Schedule:
    """Base: subclasses give ``lr_at(step, base_lr)``; ``step()`` advances one optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_batch_iteration = 0
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.last_batch_iteration, base)

    def step(self) -> None:
        self.last_batch_iteration += 1
        self._apply()

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict:
        return {"last_batch_iteration": self.last_batch_iteration, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_batch_iteration = int(state["last_batch_iteration"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


def _warmup_fraction(step: int, warmup_steps: int, warmup_type: str) -> float:
    if step >= warmup_steps:
        return 1.0
    if warmup_type == "log":
        return math.log(step + 1) / math.log(warmup_steps) if warmup_steps > 1 else 1.0
    return step / warmup_steps


class WarmupLR(_Schedule):
    """From ``warmup_min_lr`` to ``warmup_max_lr`` over ``warmup_num_steps`` (log or linear), then flat."""

    def __init__(self, optimizer, warmup_min_lr=0.0, warmup_max_lr=0.001, warmup_num_steps=1000,
                 warmup_type="log"):
        self.min_lr, self.max_lr = warmup_min_lr, warmup_max_lr
        self.warmup_steps, self.warmup_type = max(1, warmup_num_steps), warmup_type
        super().__init__(optimizer)

    def _gamma(self, step: int) -> float:
        return _warmup_fraction(step, self.warmup_steps, self.warmup_type)

    def lr_at(self, step, base_lr):
        return self.min_lr + (self.max_lr - self.min_lr) * self._gamma(step)


class WarmupDecayLR(WarmupLR):
    """WarmupLR, then linear decay to 0 at ``total_num_steps``."""

    def __init__(self, optimizer, total_num_steps, warmup_min_lr=0.0, warmup_max_lr=0.001,
                 warmup_num_steps=1000, warmup_type="log"):
        self.total_steps = total_num_steps
        super().__init__(optimizer, warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type)

    def _gamma(self, step):
        if step < self.warmup_steps:
            return super()._gamma(step)
        return max(0.0, (self.total_steps - step) / max(1.0, self.total_steps - self.warmup_steps))


class WarmupCosineLR(_Schedule):
    """Ratio of the optimizer's lr: warm up from ``warmup_min_ratio``, then cosine to ``cos_min_ratio``."""

    def __init__(self, optimizer, total_num_steps, warmup_min_ratio=0.0, warmup_num_steps=1000,
                 cos_min_ratio=0.0001, warmup_type="log"):
        self.total_steps, self.warmup_min_ratio = total_num_steps, warmup_min_ratio
        self.warmup_steps, self.cos_min_ratio, self.warmup_type = max(1, warmup_num_steps), cos_min_ratio, warmup_type
        super().__init__(optimizer)

    def lr_at(self, step, base_lr):
        if step < self.warmup_steps:
            frac = _warmup_fraction(step, self.warmup_steps, self.warmup_type)
            return base_lr * (self.warmup_min_ratio + (1.0 - self.warmup_min_ratio) * frac)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return base_lr * (self.cos_min_ratio + (1.0 - self.cos_min_ratio) * cosine)


class OneCycle(_Schedule):
    """Triangular cycle min→max→min over two phases, then decay; momentum cycles inversely."""

    def __init__(self, optimizer, cycle_min_lr, cycle_max_lr, decay_lr_rate=0.0, cycle_first_step_size=2000,
                 cycle_second_step_size=None, cycle_first_stair_count=0, cycle_second_stair_count=None,
                 decay_step_size=0, cycle_momentum=True, cycle_min_mom=0.8, cycle_max_mom=0.9, decay_mom_rate=0.0):
        self.min_lr, self.max_lr, self.decay_lr_rate = cycle_min_lr, cycle_max_lr, decay_lr_rate
        self.first = max(1, cycle_first_step_size)
        self.second = max(1, cycle_second_step_size or cycle_first_step_size)
        self.first_stairs = cycle_first_stair_count
        self.second_stairs = cycle_first_stair_count if cycle_second_stair_count is None else cycle_second_stair_count
        self.decay_step_size = decay_step_size
        self.cycle_momentum, self.min_mom, self.max_mom = cycle_momentum, cycle_min_mom, cycle_max_mom
        self.decay_mom_rate = decay_mom_rate
        super().__init__(optimizer)

    def _cycle_position(self, step: int) -> float | None:
        """0 at min, 1 at max inside the cycle; None once the cycle is over."""
        if step < self.first:
            frac, stairs = step / self.first, self.first_stairs
        elif step < self.first + self.second:
            frac, stairs = 1.0 - (step - self.first) / self.second, self.second_stairs
        else:
            return None
        return math.floor(frac * stairs) / stairs if stairs else frac

    def _decay_intervals(self, step: int) -> float:
        if not self.decay_step_size:
            return 0.0
        return (step - self.first - self.second) / self.decay_step_size

    def lr_at(self, step, base_lr):
        position = self._cycle_position(step)
        if position is not None:
            return self.min_lr + (self.max_lr - self.min_lr) * position
        return self.min_lr / (1.0 + self.decay_lr_rate * self._decay_intervals(step))

    def momentum_at(self, step: int) -> float:
        position = self._cycle_position(step)
        if position is not None:
            return self.max_mom - (self.max_mom - self.min_mom) * position
        return self.max_mom * (1.0 + self.decay_mom_rate * self._decay_intervals(step))

    def _apply(self):
        super()._apply()
        if not self.cycle_momentum:
            return
        momentum = self.momentum_at(self.last_batch_iteration)
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = momentum


SCHEDULES = {"WarmupLR": WarmupLR, "WarmupDecayLR": WarmupDecayLR, "WarmupCosineLR": WarmupCosineLR,
             "OneCycle": OneCycle}


def build_schedule(scheduler_config, optimizer: torch.optim.Optimizer) -> _Schedule | None:
    """The schedule a ``scheduler`` config block describes, or None without one."""
    if scheduler_config is None:
        return None
    params = scheduler_config.params
    kwargs = params.model_dump(exclude_none=True) if hasattr(params, "model_dump") else dict(params or {})
    return SCHEDULES[scheduler_config.type](optimizer, **kwargs)

"""The `scheduler` block: DeepSpeed's WarmupLR, WarmupDecayLR, WarmupCosineLR and OneCycle.

Defaults are DeepSpeed's. A param that belongs to another scheduler type is the most common
mistake when switching types, so the error names the type it belongs to.
"""
from types import MappingProxyType
from typing import ClassVar, Literal

from pydantic import model_validator

from .base import Count, StrictModel, described
from .errors import KeyIssue
from .typed_block import typed_block

WarmupType = Literal["log", "linear"]


class _SchedulerParams(StrictModel):
    TYPE_NAME: ClassVar[str] = ""

    @classmethod
    def unknown_key_detail(cls, key: str) -> str:
        owners = [name for name, block in SCHEDULERS.items()
                  if key in _params_model(block).model_fields]
        if owners:
            return (f"belongs to scheduler type {' / '.join(owners)}, not {cls.TYPE_NAME}; "
                    f"valid keys are {', '.join(cls.model_fields)}")
        return super().unknown_key_detail(key)


class _EndsAfterWarmup(_SchedulerParams):
    """Checks shared by the schedulers with both total_num_steps and warmup_num_steps."""

    @model_validator(mode="after")
    def _total_covers_warmup(self) -> "_EndsAfterWarmup":
        if self.total_num_steps < self.warmup_num_steps:
            raise KeyIssue("total_num_steps", f"{self.total_num_steps} is below "
                                              f"warmup_num_steps {self.warmup_num_steps}")
        return self


class WarmupLRParams(_SchedulerParams):
    """`scheduler.params` for WarmupLR: warm up, then hold warmup_max_lr."""

    TYPE_NAME = "WarmupLR"

    warmup_min_lr: float = described(0.0, "Learning rate at step 0.", ge=0)
    warmup_max_lr: float = described(1e-3, "Learning rate at the end of warm-up.", ge=0)
    warmup_num_steps: Count = described(1000, "Number of warm-up steps.")
    warmup_type: WarmupType = described("log", "Shape of the warm-up curve.")

    @model_validator(mode="after")
    def _min_below_max(self) -> "WarmupLRParams":
        if self.warmup_min_lr > self.warmup_max_lr:
            raise KeyIssue("warmup_min_lr", f"{self.warmup_min_lr} is above warmup_max_lr "
                                            f"{self.warmup_max_lr}")
        return self


class WarmupDecayLRParams(WarmupLRParams, _EndsAfterWarmup):
    """`scheduler.params` for WarmupDecayLR: warm up, then decay linearly to 0."""

    TYPE_NAME = "WarmupDecayLR"

    total_num_steps: Count = described(description="Step at which the learning rate reaches 0.")


class WarmupCosineLRParams(_EndsAfterWarmup):
    """`scheduler.params` for WarmupCosineLR: ratios of the optimizer's lr, cosine decay."""

    TYPE_NAME = "WarmupCosineLR"

    total_num_steps: Count = described(description="Total number of training steps.")
    warmup_min_ratio: float = described(0.0, "lr ratio at step 0.", ge=0, le=1)
    warmup_num_steps: Count = described(1000, "Number of warm-up steps.")
    cos_min_ratio: float = described(1e-4, "lr ratio at the end of the cosine decay.", ge=0, le=1)
    warmup_type: WarmupType = described("log", "Shape of the warm-up curve.")


class OneCycleParams(_SchedulerParams):
    """`scheduler.params` for OneCycle: a triangular lr (and momentum) cycle, then decay."""

    TYPE_NAME = "OneCycle"

    cycle_min_lr: float = described(description="Lowest learning rate of the cycle.", ge=0)
    cycle_max_lr: float = described(description="Highest learning rate of the cycle.", ge=0)
    decay_lr_rate: float = described(0.0, "lr decay rate after the cycle.", ge=0)
    cycle_first_step_size: Count = described(2000, "Steps of the increasing half.", ge=1)
    cycle_second_step_size: Count | None = described(
        None, "Steps of the decreasing half; null means equal to cycle_first_step_size.", ge=1)
    cycle_first_stair_count: Count = described(0, "Stairs in the first half; 0 is smooth.")
    cycle_second_stair_count: Count | None = described(
        None, "Stairs in the second half; null means equal to cycle_first_stair_count.")
    decay_step_size: Count = described(0, "Steps between decays after the cycle.")
    cycle_momentum: bool = described(True, "Cycle the momentum inversely to the lr.")
    cycle_min_mom: float = described(0.8, "Lowest momentum of the cycle.", ge=0, lt=1)
    cycle_max_mom: float = described(0.9, "Highest momentum of the cycle.", ge=0, lt=1)
    decay_mom_rate: float = described(0.0, "Momentum decay rate after the cycle.", ge=0)

    @model_validator(mode="after")
    def _ordered_bounds(self) -> "OneCycleParams":
        if self.cycle_min_lr > self.cycle_max_lr:
            raise KeyIssue("cycle_min_lr", f"{self.cycle_min_lr} is above cycle_max_lr "
                                           f"{self.cycle_max_lr}")
        if self.cycle_min_mom > self.cycle_max_mom:
            raise KeyIssue("cycle_min_mom", f"{self.cycle_min_mom} is above cycle_max_mom "
                                            f"{self.cycle_max_mom}")
        return self


def _scheduler_block(name: str, params_model: type) -> type:
    """The `{type, params}` model for one scheduler type. params may be left out only when every
    param has a default (no safe default exists for total_num_steps or the OneCycle bounds)."""
    all_defaulted = all(not field.is_required() for field in params_model.model_fields.values())
    default = {"default_factory": params_model} if all_defaulted else {}
    return type(f"{name}Scheduler", (StrictModel,), {
        "__doc__": f"`scheduler` with type {name}.",
        "__annotations__": {"type": Literal[name], "params": params_model},
        "type": described(description="Scheduler type (case-insensitive)."),
        "params": described(description=f"{name}'s arguments.", **default),
    })


def _params_model(block: type) -> type:
    return block.model_fields["params"].annotation


SCHEDULERS = MappingProxyType({
    model.TYPE_NAME: _scheduler_block(model.TYPE_NAME, model)
    for model in (WarmupLRParams, WarmupDecayLRParams, WarmupCosineLRParams, OneCycleParams)
})
UNSUPPORTED_SCHEDULERS = ("LRRangeTest",)

SchedulerConfig = typed_block(SCHEDULERS, UNSUPPORTED_SCHEDULERS)

"""Mixed precision blocks: `fp16` (with dynamic loss scaling) and `bf16`."""
from pydantic import model_validator

from .base import Count, StrictModel, described
from .errors import KeyIssue


class FP16Config(StrictModel):
    """`fp16`: train with fp16 parameters and gradients and an fp32 master copy."""

    enabled: bool = described(False, "Train in fp16 with fp32 master weights.")
    auto_cast: bool = described(
        False, "Cast the inputs of the model's forward to fp16 (DeepSpeed's auto_cast)."
    )
    loss_scale: float = described(
        0.0, "Static loss scale; 0 selects dynamic loss scaling (the usual choice).", ge=0
    )
    initial_scale_power: Count = described(
        16, "Dynamic scaling starts at 2**initial_scale_power.", le=64
    )
    loss_scale_window: Count = described(
        1000, "Steps without overflow before the dynamic scale is doubled.", ge=1
    )
    hysteresis: Count = described(
        2, "Overflows tolerated before the dynamic scale is halved.", ge=1
    )
    consecutive_hysteresis: bool = described(
        False, "Refill the hysteresis budget after every step without overflow."
    )
    min_loss_scale: float = described(
        1.0, "The dynamic scale is never lowered below this value.", gt=0
    )

    @model_validator(mode="after")
    def _min_below_initial(self) -> "FP16Config":
        if self.loss_scale == 0 and self.min_loss_scale > 2.0**self.initial_scale_power:
            raise KeyIssue(
                "min_loss_scale",
                f"{self.min_loss_scale} is above the initial scale "
                f"2**{self.initial_scale_power}; lower it or raise initial_scale_power",
            )
        return self


class BF16Config(StrictModel):
    """`bf16`: train with bf16 parameters and gradients and an fp32 master copy."""

    enabled: bool = described(
        False, "Train in bf16 with fp32 master weights; no loss scaling is needed."
    )
    check_grad_overflow: bool = described(
        False, "DeepSpeed's switch to skip a bf16 step whose gradients hold inf or NaN: true "
        "means the same as `nonfinite_gradients` \"skip\". zerolib checks every step either "
        "way; false leaves the choice to `nonfinite_gradients` (default: stop with an error)."
    )

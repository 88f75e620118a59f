"""The `optimizer` block: Adam, AdamW and SGD with typed params.

DeepSpeed's "Adam" defaults to decoupled weight decay (adam_w_mode true), so a DeepSpeed config
with "Adam" and weight_decay trains AdamW; zerolib keeps that meaning so configs port unchanged.
"""
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import model_validator

from .base import ListAsTuple, StrictModel, described
from .errors import KeyIssue
from .typed_block import typed_block

Betas = Annotated[tuple[float, float], ListAsTuple]

_CLIP_HINT = "gradient clipping is the top-level key 'gradient_clipping'"
_CLIP_HINTS = MappingProxyType({"max_grad_norm": _CLIP_HINT, "clip_grad": _CLIP_HINT})


class AdamParams(StrictModel):
    """`optimizer.params` for Adam and AdamW."""

    MISPLACED_KEYS = _CLIP_HINTS

    lr: float = described(1e-3, "Learning rate.", ge=0)
    betas: Betas = described(
        (0.9, 0.999), "Decay rates of the first and second moment estimates, each in [0, 1)."
    )
    eps: float = described(1e-8, "Added to the denominator for numerical stability.", gt=0)
    weight_decay: float = described(0.0, "Weight decay coefficient.", ge=0)
    torch_adam: bool = described(
        False, "Use torch.optim's implementation instead of zerolib's fused kernel."
    )
    adam_w_mode: bool = described(
        True, "Decoupled weight decay (AdamW); false applies L2 regularisation as in Adam."
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> "AdamParams":
        for index, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise KeyIssue(f"betas[{index}]", f"must be in [0, 1) (got {beta})")
        return self


class SGDParams(StrictModel):
    """`optimizer.params` for SGD (torch.optim.SGD's arguments)."""

    MISPLACED_KEYS = _CLIP_HINTS

    lr: float = described(1e-3, "Learning rate.", ge=0)
    momentum: float = described(0.0, "Momentum factor.", ge=0)
    dampening: float = described(0.0, "Dampening for momentum.", ge=0)
    weight_decay: float = described(0.0, "Weight decay (L2 penalty).", ge=0)
    nesterov: bool = described(False, "Nesterov momentum; needs momentum > 0 and dampening 0.")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGDParams":
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise KeyIssue("nesterov", f"needs momentum > 0 and dampening 0 (got momentum="
                                       f"{self.momentum}, dampening={self.dampening})")
        return self


class AdamOptimizer(StrictModel):
    """`optimizer` with type Adam."""

    type: Literal["Adam"] = described(description="Optimizer type (case-insensitive).")
    params: AdamParams = described(default_factory=AdamParams, description="Adam's arguments.")


class AdamWOptimizer(StrictModel):
    """`optimizer` with type AdamW (Adam with adam_w_mode forced on)."""

    type: Literal["AdamW"] = described(description="Optimizer type (case-insensitive).")
    params: AdamParams = described(default_factory=AdamParams, description="AdamW's arguments.")

    @model_validator(mode="after")
    def _decoupled_decay(self) -> "AdamWOptimizer":
        if not self.params.adam_w_mode:
            raise KeyIssue("params.adam_w_mode", "must be true for AdamW; use type Adam for L2 "
                                                 "regularisation")
        return self


class SGDOptimizer(StrictModel):
    """`optimizer` with type SGD."""

    type: Literal["SGD"] = described(description="Optimizer type (case-insensitive).")
    params: SGDParams = described(default_factory=SGDParams, description="SGD's arguments.")


OPTIMIZERS = MappingProxyType(
    {"Adam": AdamOptimizer, "AdamW": AdamWOptimizer, "SGD": SGDOptimizer})
# DeepSpeed's other optimizer types: recognised so the error says "not supported", not "typo".
UNSUPPORTED_OPTIMIZERS = (
    "OneBitAdam", "ZeroOneAdam", "OneBitLamb", "Lamb", "Lion", "Adagrad", "MuAdam", "MuAdamW",
    "MuSGD", "Muon", "AdamWScheduleFree", "LionW",
)

OptimizerConfig = typed_block(OPTIMIZERS, UNSUPPORTED_OPTIMIZERS)

"""What one optimizer step reports, and how the engine learns how many tokens it processed."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# Names of the columns the CSV monitor writes and `zerolib plot` reads, in order.
FIELDS = ("step", "loss", "lr", "loss_scale", "grad_norm", "step_seconds", "tokens_per_second",
          "params_bytes", "grads_bytes", "master_bytes", "optimizer_state_bytes", "comm_buffers_bytes",
          "hpz_secondary_bytes", "swap_buffers_bytes", "rss_bytes",
          "forward_seconds", "backward_seconds", "optimizer_seconds", "comm_seconds")


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step as the monitors record it. ``None``: not known for this run (no
    loss scaler, no token count). Seconds and tokens cover the whole accumulation window."""

    step: int
    loss: float | None
    lr: float
    loss_scale: float | None
    grad_norm: float | None
    step_seconds: float
    tokens_per_second: float | None
    params_bytes: int
    grads_bytes: int
    master_bytes: int
    optimizer_state_bytes: int
    comm_buffers_bytes: int
    hpz_secondary_bytes: int
    swap_buffers_bytes: int
    rss_bytes: int
    forward_seconds: float
    backward_seconds: float
    optimizer_seconds: float
    comm_seconds: float

    def as_row(self) -> dict[str, float | int | None]:
        return asdict(self)


def tokens_in(args: tuple, kwargs: dict) -> int:
    """Tokens in one forward's inputs: ``input_ids`` if given by name, else the first integer
    tensor among the positional arguments (a token-id batch such as GPT's ``idx``); 0 if none."""
    named = kwargs.get("input_ids")
    if torch.is_tensor(named):
        return named.numel()
    for value in args:
        if torch.is_tensor(value) and not value.is_floating_point() and not value.is_complex():
            return value.numel()
    return 0

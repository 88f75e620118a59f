"""Loss scaling for fp16: dynamic (DeepSpeed's rules) or static."""
from __future__ import annotations

from dataclasses import dataclass


class LossScaleStuckError(FloatingPointError):
    """fp16 training keeps overflowing at the minimum loss scale: it can no longer make progress."""


@dataclass
class DynamicLossScaler:
    """Halves the scale after ``hysteresis`` overflows; doubles it after ``window`` clean steps.

    An overflowing step is skipped. If every step of a whole ``window`` overflows while the scale
    is already at ``min_scale``, training cannot recover, so :meth:`update` raises instead of
    skipping forever. A static scale (``dynamic=False``) never moves, so it is its own minimum:
    a whole window of overflows raises too.
    """

    scale: float = 2.0**16
    window: int = 1000
    hysteresis: int = 2
    min_scale: float = 1.0
    consecutive_hysteresis: bool = False
    dynamic: bool = True
    _hysteresis_left: int = 0
    _clean_steps: int = 0
    _overflows_at_min: int = 0

    def __post_init__(self):
        self._hysteresis_left = self.hysteresis
        if not self.dynamic:
            self.min_scale = self.scale

    def update(self, overflow: bool) -> None:
        if overflow:
            self._clean_steps = 0
            self._after_overflow()
            return
        self._overflows_at_min = 0
        if not self.dynamic:
            return
        if self.consecutive_hysteresis:
            self._hysteresis_left = self.hysteresis
        self._clean_steps += 1
        if self._clean_steps % self.window == 0:
            self.scale *= 2.0
            self._hysteresis_left = self.hysteresis

    def _after_overflow(self) -> None:
        if self.scale <= self.min_scale:
            self._overflows_at_min += 1
            if self._overflows_at_min >= self.window:
                which = "minimum loss scale" if self.dynamic else "static loss scale"
                key = "fp16.min_loss_scale" if self.dynamic else "fp16.loss_scale"
                raise LossScaleStuckError(
                    f"fp16: {self._overflows_at_min} consecutive steps (a whole fp16.loss_scale_window) "
                    f"overflowed at the {which} {self.min_scale} ({key}); the gradients are inf/NaN even "
                    "at that scale. Check the data and learning rate, or train in bf16.")
            return
        # As in DeepSpeed, the counter is not refilled after a cut: later overflows cut at once
        # until a clean window (or, with consecutive_hysteresis, a clean step) refills it.
        if self._hysteresis_left <= 1:
            self.scale = max(self.scale / 2.0, self.min_scale)
        else:
            self._hysteresis_left -= 1

    def state_dict(self) -> dict:
        return {"scale": self.scale, "hysteresis_left": self._hysteresis_left,
                "clean_steps": self._clean_steps, "overflows_at_min": self._overflows_at_min}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self._hysteresis_left = int(state["hysteresis_left"])
        self._clean_steps = int(state["clean_steps"])
        self._overflows_at_min = int(state["overflows_at_min"])


def scaler_from_config(fp16) -> DynamicLossScaler | None:
    """The scaler for an ``fp16`` config block, or None when fp16 is off."""
    if not fp16.enabled:
        return None
    if fp16.loss_scale and fp16.loss_scale > 0:
        return DynamicLossScaler(scale=float(fp16.loss_scale), window=fp16.loss_scale_window, dynamic=False)
    return DynamicLossScaler(
        scale=2.0 ** fp16.initial_scale_power, window=fp16.loss_scale_window, hysteresis=fp16.hysteresis,
        min_scale=float(fp16.min_loss_scale), consecutive_hysteresis=bool(fp16.consecutive_hysteresis))

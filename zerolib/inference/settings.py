"""The ``moe_prefill`` block: how MoEPrefillEngine places experts and batches requests.

The engine's config is ``{"moe_prefill": {...}}``; unknown or misspelt keys are errors naming
the key path (``moe_prefill.gama: unknown key; did you mean 'gamma'?``), as everywhere in
zerolib. docs/moe_prefill.md lists every key (a test keeps the table and this module in step).
"""
from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from zerolib.config.base import StrictModel, described
from zerolib.config.errors import ConfigError, from_validation_error
from zerolib.config.offload import OffloadTarget

Mode = Literal["async_ep", "sync_gather", "dp_ep", "reference"]


class ExpertOffload(OffloadTarget):
    """`moe_prefill.offload`: where each rank's expert shards rest between gathers (none: with
    the model)."""

    window: int = described(2, "With nvme: layers of shards read ahead of the gather (the paper's k); the pool "
                                  "holds window + 2 shards per expert tensor.", ge=1)


class MoEPrefillSettings(StrictModel):
    """`moe_prefill`: the MoE-prefill serving engine."""

    mode: Mode = described(
        "async_ep", "async_ep: experts partitioned by index, the next layer gathered while this one computes; "
                    "sync_gather: the same gather without overlap; dp_ep: experts stay partitioned and tokens "
                    "travel by two all-to-alls per layer; reference: every rank holds the whole model.")
    gamma: float = described(1.2, "Safety factor of the saturation threshold T = t_EP x F x gamma.", ge=1)
    threshold_flops: float | None = described(
        None, "Use this T (per-layer FLOPs per rank and round) instead of measuring it at start-up.", gt=0)
    cache_blocks: int = described(
        256, "Capacity of each rank's prefix KV cache, in 16-token blocks (0 turns it off).", ge=0)
    row_tokens: int = described(
        256, "New tokens per packed row of a forward pass (a longer request gets a row of its own size).", ge=1)
    max_row_tokens: int = described(
        4096, "A family of requests sharing a prefix computed in the call runs in one row (one pass) up to "
              "this many new tokens; a longer one runs over several passes, reading the cache.", ge=1)
    calibration_tokens: int = described(
        128, "Tokens of the start-up forward that measures the FLOP rate F.", ge=16)
    timeout_seconds: float = described(
        600.0, "Timeout of every collective when the engine creates the process group.", gt=0)
    offload: ExpertOffload = described(default_factory=ExpertOffload, description=ExpertOffload.__doc__)


class PrefillConfig(StrictModel):
    """The engine's whole config: one ``moe_prefill`` block."""

    moe_prefill: MoEPrefillSettings = described(default_factory=MoEPrefillSettings,
                                                description=MoEPrefillSettings.__doc__)


def load_prefill_config(config: dict | PrefillConfig | None) -> PrefillConfig:
    """``config`` as a validated :class:`PrefillConfig`; ConfigError names the key path."""
    if isinstance(config, PrefillConfig):
        return config
    if config is None:
        return PrefillConfig()
    if not isinstance(config, dict):
        raise ConfigError("config", f"must be a dict with a 'moe_prefill' block, got {type(config).__name__}")
    try:
        return PrefillConfig.model_validate(config)
    except ValidationError as err:
        raise from_validation_error(err) from None

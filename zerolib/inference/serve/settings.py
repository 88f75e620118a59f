"""The ``serve`` block of a serve-prefill config file: limits and timing of the scoring server.

A config file for ``zerolib serve-prefill --config F`` is the engine's config (its
``moe_prefill`` block and whatever else MoEPrefillEngine reads) plus an optional ``serve`` block
read here; the engine never sees ``serve``. Unknown or misspelt keys are errors naming the key
path (``serve.max_input_tokenz: unknown key; did you mean 'max_input_tokens'?``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from zerolib.config.base import StrictModel, described
from zerolib.config.errors import ConfigError, from_validation_error


class ServeSettings(StrictModel):
    """`serve`: the HTTP scoring server in front of the MoE-prefill engines."""

    router: Literal["prefix", "least_loaded", "round_robin"] = described(
        "prefix", "How requests are placed on ranks: the prefix- and FLOPs-aware cascade, or a baseline.")
    max_requests_per_call: int = described(64, "Most requests one POST /v1/score may carry.", ge=1)
    max_body_bytes: int = described(1 << 20, "Largest request body accepted, in bytes.", ge=64)
    max_input_tokens: int = described(
        4096, "Longest input accepted, in tokens (also capped by the model's positions when known).", ge=1)
    max_candidates: int = described(1024, "Most candidate tokens one request may list.", ge=1)
    max_queue_requests: int = described(
        4096, "Requests waiting to be scored at most; beyond it a POST gets 503 (retry later).", ge=1)
    max_round_requests: int = described(
        512, "Most requests in one round, even when the ranks are not saturated yet.", ge=1)
    batch_wait_seconds: float = described(
        0.002, "How long a round waits for more requests when the queue cannot saturate the ranks.", ge=0)
    idle_tick_seconds: float = described(
        0.5, "While idle, rank 0 tells the other ranks this often that it is alive.", gt=0)
    collective_timeout_seconds: float = described(
        120.0, "Timeout of every collective: a rank that stops answering ends the job after this.", gt=0)
    request_timeout_seconds: float = described(
        300.0, "A POST not answered within this gets 504 and its queued requests are dropped.", gt=0)
    model_factory: str | None = described(
        None, "For a zerolib checkpoint: 'module:function' that builds the empty model to load it into.")


def split_config(config: dict) -> tuple[ServeSettings, dict]:
    """(the ``serve`` block, the rest of the config for the engine)."""
    if not isinstance(config, dict):
        raise ConfigError("config", f"must be a JSON object, got {type(config).__name__}")
    engine_config = {key: value for key, value in config.items() if key != "serve"}
    try:
        settings = ServeSettings.model_validate(config.get("serve", {}))
    except ValidationError as err:
        raise from_validation_error(err, ("serve",)) from None
    return settings, engine_config


def load_config_file(path: str | None) -> tuple[ServeSettings, dict]:
    """Read ``path`` (JSON) into settings and engine config; no path means defaults and ``{}``."""
    if path is None:
        return ServeSettings(), {}
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError("--config", f"cannot read {path}: {err.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("--config", f"{path} is not valid JSON: {err}") from None
    return split_config(config)

"""`load_config`: from a dict, a JSON file or a ZeroConfig to a resolved ZeroConfig.

Order: read → rewrite deprecated spellings → resolve "auto" → validate (pydantic) → resolve
the batch triple and the node size for the world size → check what this version implements →
emit the warnings.
"""
import copy
import json
import os
import warnings
from typing import Any

from pydantic import ValidationError

from .auto import resolve_auto
from .batch import GAS, MICRO, TRAIN, resolve_batch
from .comm import default_node_size
from .deprecated import apply_deprecations
from .errors import ConfigError, ZeroConfigWarning, from_validation_error
from .root import ZeroConfig
from .support import check_implemented as check_support
from .support import ignored_keys_given

__all__ = ["load_config", "resolve_auto"]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(key, "appears twice in the same JSON object; keep one")
        seen[key] = value
    return seen


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file, object_pairs_hook=_reject_duplicates)
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not text, ...
        raise ConfigError(path, f"cannot read the config file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                                f"{exc.msg}") from None
    except ConfigError as exc:
        raise ConfigError(exc.path, f"{exc.detail} (in {path})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, f"the top level must be a JSON object, not {type(data).__name__}")
    return data


def _read_source(source: Any) -> tuple[dict, str | None]:
    """(the config as given, the file it came from or None) for a dict or a path."""
    if isinstance(source, dict):
        return copy.deepcopy(source), None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return _read_json(path), path
    raise ConfigError("config", "expected a dict, a path to a JSON file or a ZeroConfig, "
                                f"got {type(source).__name__}")


def _current_values(cfg: ZeroConfig) -> tuple[dict, dict]:
    """(cfg's current values without those derived for its world size, what was given).

    Current values keep assignments made after loading; the batch keys and node size that
    load_config derived are dropped so that they are derived again for the new world size.
    """
    given = cfg._given if cfg._given is not None else cfg.model_dump(exclude_unset=True)
    current = cfg.model_dump(mode="json")
    for key in (TRAIN, MICRO, GAS):
        if given.get(key) in (None, "auto"):
            del current[key]
    given_comm = given.get("comm")
    if not isinstance(given_comm, dict) or given_comm.get("node_size") is None:
        del current["comm"]["node_size"]
    return current, copy.deepcopy(given)


def _check_world_size(world_size: Any) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError("world_size", f"must be a positive integer (got {world_size!r})")


def _validate(raw: dict, world_size: int, notes: dict[str, str]) -> ZeroConfig:
    try:
        return ZeroConfig.model_validate(raw, context={"world_size": world_size})
    except ValidationError as exc:
        error = from_validation_error(exc)
    if error.detail == "required key is missing" and error.path in notes:
        raise ConfigError(error.path, "is \"auto\", which zerolib cannot resolve without Hugging "
                                      "Face's Trainer and which has no default; set a value")
    raise error


def _with_batch(cfg: ZeroConfig, world_size: int, notes: dict[str, str]) -> ZeroConfig:
    try:
        train, micro, gas = resolve_batch(cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu,
                                          cfg.gradient_accumulation_steps, world_size)
    except ConfigError as exc:
        autos = [key for key in (TRAIN, MICRO, GAS) if key in notes]
        if not autos:
            raise
        raise ConfigError(exc.path, f"{exc.detail}; {', '.join(autos)} \"auto\" cannot be "
                                    "resolved from the others") from None
    return cfg.model_copy(update={TRAIN: train, MICRO: micro, GAS: gas})


def _with_node_size(cfg: ZeroConfig, world_size: int) -> ZeroConfig:
    if cfg.comm.node_size is None:
        cfg.comm.node_size = default_node_size(world_size)
    return cfg


def _complete_default_notes(cfg: ZeroConfig, notes: dict[str, str]) -> None:
    """Append the value each "auto"-to-default key ended up with."""
    for path, note in notes.items():
        if note.endswith("the default"):
            value: Any = cfg
            for part in path.split("."):
                value = getattr(value, part, None)
            shown = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
            notes[path] = f"{note} {json.dumps(shown)}; set it explicitly to silence this"


def _emit(notes: dict[str, str]) -> None:
    for note in notes.values():
        warnings.warn(note, ZeroConfigWarning, stacklevel=3)


def _resolve(raw: dict, world_size: int, check_implemented: bool,
             notes: dict[str, str]) -> ZeroConfig:
    """Validate `raw` (free of deprecated spellings and "auto") and resolve it for world_size."""
    cfg = _with_batch(_validate(raw, world_size, notes), world_size, notes)
    cfg = _with_node_size(cfg, world_size)
    if check_implemented:
        check_support(cfg)
    return cfg


def _load_given(given: dict, world_size: int, model: Any, check_implemented: bool,
                notes: dict[str, str]) -> ZeroConfig:
    """The resolved config from `given` (free of deprecated spellings); notes are added."""
    raw, auto_notes = resolve_auto(given, world_size, model)
    notes.update(auto_notes)
    cfg = _resolve(raw, world_size, check_implemented, notes)
    _complete_default_notes(cfg, notes)
    for path in ignored_keys_given(given):
        notes.setdefault(path, f"accepted but ignored: {path} (zerolib does not act on it)")
    return cfg


def load_config(source: Any, *, world_size: int = 1, model: Any = None,
                check_implemented: bool = True) -> ZeroConfig:
    """Load and resolve a config for `world_size` data-parallel ranks.

    `source` is a dict, a path to a JSON file, or a ZeroConfig (its current values, with the
    batch keys and node size it derived derived again for `world_size`). `model` (optional)
    supplies `model.config.hidden_size` for "auto" bucket sizes. With `check_implemented`,
    settings this version does not implement are rejected.
    Every rejection is a ConfigError naming the key path; warnings are ZeroConfigWarning.
    """
    _check_world_size(world_size)
    notes: dict[str, str] = {}
    if isinstance(source, ZeroConfig):
        current, given = _current_values(source)
        cfg = _resolve(current, world_size, check_implemented, notes)
    else:
        given, file = _read_source(source)
        deprecations: dict[str, str] = {}
        try:
            given = apply_deprecations(given, deprecations)
            cfg = _load_given(given, world_size, model, check_implemented, notes)
        except ConfigError as exc:
            _emit(deprecations)  # they still help to fix a rejected config
            if file is None:
                raise
            raise ConfigError(exc.path, f"{exc.detail} (in {file})", exc.more) from None
        notes = {**deprecations, **notes}
    cfg._given = given
    _emit(notes)
    return cfg

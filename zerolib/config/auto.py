"""Resolution of "auto" values, as written in configs made for Hugging Face's Trainer.

The Trainer fills most "auto" values from its own arguments before DeepSpeed sees them; zerolib
has no Trainer, so it resolves what it can derive (bucket sizes from the model's hidden size, the
batch triple from the other two keys) and otherwise falls back to the key's documented default
with a note. A key with no default and nothing to derive it from is an error naming the key.
"""
from types import MappingProxyType
from typing import Any

from .batch import GAS, MICRO, TRAIN

AUTO = "auto"
Notes = dict[str, str]

# zero_optimization keys derived from the hidden size h, with the Trainer's formulas.
_FROM_HIDDEN = MappingProxyType({
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
})


def hidden_size(model: Any) -> int | None:
    """The model's hidden size from `model.config` (hidden_size, or the largest hidden_sizes)."""
    config = getattr(model, "config", None)
    sizes = getattr(config, "hidden_sizes", None)
    if isinstance(sizes, (list, tuple)) and sizes and all(isinstance(s, int) for s in sizes):
        return max(sizes)
    size = getattr(config, "hidden_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _resolve_block(block: dict, path: str, hidden: int | None, world_size: int,
                   notes: Notes) -> dict:
    resolved = {}
    for key, value in block.items():
        key_path = f"{path}{key}"
        if isinstance(value, dict):
            resolved[key] = _resolve_block(value, f"{key_path}.", hidden, world_size, notes)
        elif not (isinstance(value, str) and value == AUTO):
            resolved[key] = value
        elif path == "zero_optimization." and key in _FROM_HIDDEN and hidden:
            resolved[key] = _FROM_HIDDEN[key](hidden)
            notes[key_path] = f"{key_path}: \"auto\" resolved to {resolved[key]} " \
                              f"from the model's hidden size {hidden}"
        elif key_path in (TRAIN, MICRO, GAS):
            notes[key_path] = (f"{key_path}: \"auto\" resolved from the other batch keys for "
                               f"world_size {world_size}")
        else:
            # Dropping the key lets the schema's default apply; the loader reports the value.
            notes[key_path] = f"{key_path}: \"auto\" resolved to the default"
    return resolved


def resolve_auto(raw: dict, world_size: int, model: Any = None) -> tuple[dict, Notes]:
    """`raw` with every "auto" value replaced or removed, and a note per "auto" key.

    Removed keys take the schema default (or, for the batch triple, are derived from the
    others for `world_size`); notes whose text ends in "the default" are completed with the
    value by the loader once it is known.
    """
    notes: Notes = {}
    return _resolve_block(raw, "", hidden_size(model), world_size, notes), notes

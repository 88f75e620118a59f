"""Blocks shaped `{"type": ..., "params": {...}}` whose params model depends on the type.

`optimizer` and `scheduler` share this shape. The type is matched case-insensitively, as
DeepSpeed does, and canonicalised; DeepSpeed types zerolib does not provide are rejected by name
instead of with a generic "unknown value".
"""
from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, Discriminator, Tag

from .errors import KeyIssue


def _raw_type(raw: Any) -> Any:
    return raw.get("type") if isinstance(raw, dict) else getattr(raw, "type", None)


def canonical_type(raw_type: Any, supported: Mapping[str, type]) -> str | None:
    """The supported type name matching `raw_type` regardless of case, or None."""
    if not isinstance(raw_type, str):
        return None
    by_lower = {name.lower(): name for name in supported}
    return by_lower.get(raw_type.lower())


def typed_block(supported: Mapping[str, type], unsupported: tuple[str, ...]) -> Any:
    """An annotated union validating `{"type", "params"}` with the params model of the type.

    `supported` maps canonical type names to block models (each with `type: Literal[name]`);
    `unsupported` lists DeepSpeed's other type names, which get a clear rejection.
    """

    choices = ", ".join(supported)

    def check_type(raw: Any) -> Any:
        if isinstance(raw, BaseModel):
            return raw  # an assignment of an already validated block
        if not isinstance(raw, dict):
            raise KeyIssue("", f"Input should be an object {{\"type\": one of {choices}, "
                               f"\"params\": {{...}}}} (got {raw!r:.60})")
        kind = raw.get("type")
        name = canonical_type(kind, supported)
        if kind is None:
            raise KeyIssue("type", f"required key is missing; one of {choices}")
        if name is None:
            known = {u.lower() for u in unsupported}
            if isinstance(kind, str) and kind.lower() in known:
                raise KeyIssue("type", f"{kind!r} is a DeepSpeed type zerolib does not support; "
                                       f"use one of {choices}")
            raise KeyIssue("type", f"Input should be one of {choices} (got {kind!r})")
        return {**raw, "type": name}

    def tag(raw: Any) -> str | None:
        name = canonical_type(_raw_type(raw), supported)
        return f"type={name}" if name else None

    members = tuple(Annotated[model, Tag(f"type={name}")] for name, model in supported.items())
    return Annotated[Union[members], Discriminator(tag), BeforeValidator(check_type)]

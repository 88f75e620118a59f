"""The base model every config block derives from, and the value types the blocks share."""
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .errors import KeyIssue, closest_key, from_validation_error


def _whole_number(value: Any) -> Any:
    """Accept 5e8 for a size (JSON writers and DeepSpeed examples use it) but never 2.5 or True."""
    if isinstance(value, bool):
        raise ValueError("Input should be a whole number, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("Input should be a whole number (5e8 and 500000000 are both fine)")
        return int(value)
    return value


def _not_bool(value: Any) -> Any:
    # bool is a subclass of int, so `true` would otherwise pass as 1 for a Literal[0, 1, 2, 3].
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


def _list_to_tuple(value: Any) -> Any:
    # JSON has no tuples; strict mode would reject the list a JSON file gives for `betas`.
    return tuple(value) if isinstance(value, list) else value


# A count of elements or bytes: a non-negative whole number, written as an int or a float like 5e8.
Count = Annotated[int, BeforeValidator(_whole_number), Field(ge=0)]
# A whole number that may be negative where DeepSpeed uses -1 as "not set".
SignedCount = Annotated[int, BeforeValidator(_whole_number)]
NotBool = BeforeValidator(_not_bool)
ListAsTuple = BeforeValidator(_list_to_tuple)


class StrictModel(BaseModel):
    """A config block: unknown keys are errors that suggest the nearest valid key.

    `strict` so that "true" is not silently a bool and 1.5 is not silently an int; DeepSpeed's
    lax parsing lets typos in values pass unnoticed.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # Assignment rejects with ConfigError too (path relative to this block). __init__ is
        # not wrapped: pydantic would then call it for nested blocks and nest the messages.
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    # Keys users commonly put in this block that live elsewhere: key -> where it belongs.
    MISPLACED_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType({})

    @classmethod
    def unknown_key_detail(cls, key: str) -> str:
        """The message for an unknown `key` in this block; subclasses may add hints."""
        if key in cls.MISPLACED_KEYS:
            return f"unknown key; {cls.MISPLACED_KEYS[key]}"
        hint = closest_key(key, cls.model_fields)
        if hint:
            return f"unknown key; did you mean '{hint}'?"
        return "unknown key; valid keys are " + ", ".join(sorted(cls.model_fields))

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # pydantic reports the wrong type with the location
        for key in data:
            if not isinstance(key, str) or not key:
                raise KeyIssue(repr(key), "keys must be non-empty strings")
            if key not in cls.model_fields:
                raise KeyIssue(key, cls.unknown_key_detail(key))
        return data


def described(default: Any = ..., description: str = "", **constraints: Any) -> Any:
    """A Field whose description is mandatory: it is the source of docs/config.md."""
    if not description:
        raise TypeError("every config field needs a description")
    if "default_factory" in constraints:
        return Field(description=description, **constraints)
    return Field(default, description=description, **constraints)

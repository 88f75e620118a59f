"""The error and warning types of zerolib's config, and the conversion of pydantic's errors.

Every rejection of a config is a `ConfigError` whose message starts with the full key path
(`zero_optimization.stage: ...`), so a user can find the offending line in a long JSON file.
"""
import difflib
from typing import Iterable, Sequence

from pydantic import ValidationError

# Longest input echoed back in a message; a whole nested dict would drown the key path.
_MAX_ECHO = 60


class ConfigError(ValueError):
    """A config was rejected. `path` is the dotted key path; the message is `path: detail`."""

    def __init__(self, path: str, detail: str, more: Sequence[str] = ()):
        self.path = path
        self.detail = detail
        self.more = list(more)
        message = f"{path}: {detail}"
        if more:
            message += "\n" + "\n".join(f"  also {line}" for line in more)
        super().__init__(message)


class ZeroConfigWarning(UserWarning):
    """A config was accepted, but something in it deserves attention (deprecated, ignored, auto)."""


class KeyIssue(ValueError):
    """Raised inside validators: `subpath` is relative to the value being validated ("" for
    the value itself).

    Pydantic keeps the original exception in the error's context, so the conversion below can
    append the subpath to pydantic's location and report the full key path.
    """

    def __init__(self, subpath: str, detail: str):
        self.subpath = subpath
        self.detail = detail
        super().__init__(f"{subpath}: {detail}")


def closest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid key nearest in spelling to `key`, or None if none is close."""
    matches = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def format_path(loc: Iterable) -> str:
    """Dotted key path from a pydantic location; list indices become `[i]`.

    Location parts containing '=' are discriminator tags ("type=Adam") that pydantic inserts for
    tagged unions; they are not keys the user wrote, so they are left out.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "=" in str(part):
            continue
        else:
            path += ("." if path else "") + str(part)
    return path or "config"


def _echo(value) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 3] + "..."


def _describe(error: dict, prefix: tuple) -> tuple[str, str]:
    """(path, detail) for one entry of `ValidationError.errors()`."""
    loc = prefix + tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyIssue):
        # The subpath holds keys the user wrote, so it is not filtered for tags like `loc` is.
        parent = format_path(loc) if loc else ""
        path = ".".join(part for part in (parent, cause.subpath) if part)
        return path or "config", cause.detail
    detail = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "model_type":  # pydantic names the Python class; users wrote JSON
        detail = "Input should be an object ({...})"
    if error["type"] == "missing":
        return format_path(loc), "required key is missing"
    if error["type"] not in ("extra_forbidden",) and "input" in error:
        detail += f" (got {_echo(error['input'])})"
    return format_path(loc), detail


def from_validation_error(exc: ValidationError, prefix: tuple = ()) -> ConfigError:
    """One ConfigError carrying every problem pydantic found, the first one in front."""
    described = [_describe(error, prefix) for error in exc.errors()]
    (path, detail), rest = described[0], described[1:]
    return ConfigError(path, detail, [f"{p}: {d}" for p, d in rest])

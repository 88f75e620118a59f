"""The engine's request format, validated, and multi-label requests split into siblings.

    {"input_ids": [int, ...], "candidates": [int, ...]}
    {"text": "...", "candidates": [int, ...]}                    # text needs a tokenizer
    {"input_ids": [...], "candidates": [yes, no],                # multi-label
     "labels": [{"input_ids": [...]}, {"text": "...", "candidates": [...]}]}

A multi-label request is split into sibling requests, prompt + the label's suffix each, scored
against the label's candidates or else the request's; they share the prompt as their prefix, so
the router keeps them on one rank and the prompt is computed once. Its answer gathers the
siblings' results in label order: ``{"labels": [one result per label]}``.

Every problem is a :class:`RequestError` naming the field (``requests[2].candidates: must list
at least 1 candidate``) and carrying the HTTP status the scoring server answers it with. Both
MoEPrefillEngine.score and the server's POST /v1/score validate with this module, so the
engines never see a request they could fail on in the middle of a lockstep call.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from zerolib.config.errors import format_path


class RequestError(ValueError):
    """A request's mistake, with the HTTP ``status`` a server answers it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class LabelItem(BaseModel):
    """One label of a multi-label request: the suffix after the prompt, and its own candidates."""

    model_config = ConfigDict(extra="forbid")
    input_ids: list[StrictInt] | None = None
    text: StrictStr | None = None
    candidates: list[StrictInt] | None = Field(default=None, min_length=1)


class ScoreItem(BaseModel):
    """One request: a prompt (token ids, or text when the server has a tokenizer), candidates,
    and for a multi-label request its labels."""

    model_config = ConfigDict(extra="forbid")
    input_ids: list[StrictInt] | None = None
    text: StrictStr | None = None
    candidates: list[StrictInt] | None = Field(default=None, min_length=1)
    labels: list[LabelItem] | None = Field(default=None, min_length=1)


@dataclass
class ParsedCall:
    """A validated call: what the engines score, and how their results make up the answer."""

    requests: list[dict]  # the engine's request dicts, multi-label siblings flattened in order
    shape: list[int | None]  # per request of the call: None (one result) or its number of labels
    return_logits: bool

    def answer(self, results: list[dict]) -> list[dict]:
        out, at = [], 0
        for count in self.shape:
            if count is None:
                out.append(results[at])
                at += 1
            else:
                out.append({"labels": results[at:at + count]})
                at += count
        return out


@dataclass(frozen=True)
class Limits:
    """What one call may ask; from the ``serve`` settings and the model's vocabulary."""

    max_requests: int
    max_input_tokens: int
    max_candidates: int
    vocab_size: int  # 0: unknown, ids are not range-checked
    input_limit_source: str = "serve.max_input_tokens"  # named when an input is too long


def pydantic_message(err: ValidationError, where: tuple = ()) -> str:
    """The first problems pydantic found, each as ``path: what is wrong``."""
    messages = []
    for problem in err.errors()[:5]:
        loc = where + tuple(problem["loc"])
        path = format_path(loc) if loc else "body"
        detail = problem["msg"]
        if problem["type"] == "extra_forbidden":
            detail = {1: "unknown field (allowed: requests, return_logits)",
                      3: "unknown field (allowed: input_ids or text, candidates, labels)",
                      5: "unknown field (allowed in a label: input_ids or text, candidates)"}.get(
                          len(loc), "unknown field")
        if problem["type"] == "too_short" and path.endswith("candidates"):
            detail = "must list at least 1 candidate"
        messages.append(f"{path}: {detail}")
    return "; ".join(messages)


def _check_ids(where: str, ids: list[int], vocab_size: int) -> None:
    for position, token in enumerate(ids):
        if token < 0 or (vocab_size and token >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size else "non-negative"
            raise RequestError(422, f"{where}[{position}]: token id {token} is outside the vocabulary {bound}")


def _tokens(where: str, item: ScoreItem | LabelItem, limits: Limits, tokenizer, allow_empty: bool) -> list[int]:
    if item.input_ids is None and item.text is None and allow_empty:
        return []
    if (item.input_ids is None) == (item.text is None):
        raise RequestError(422, f"{where}: give exactly one of input_ids and text")
    if item.text is not None:
        if tokenizer is None:
            raise RequestError(422, f"{where}.text: this server has no tokenizer; send input_ids")
        ids = list(tokenizer.encode(item.text))
    else:
        ids = item.input_ids
    if not ids and not allow_empty:
        raise RequestError(422, f"{where}: the input is empty; at least 1 token is needed")
    _check_ids(f"{where}.input_ids", ids, limits.vocab_size)
    return ids


def _candidates(where: str, candidates: list[int] | None, limits: Limits) -> list[int]:
    if candidates is None:
        raise RequestError(422, f"{where}.candidates: missing; list the candidate token ids to score")
    if len(candidates) > limits.max_candidates:
        raise RequestError(422, f"{where}.candidates: {len(candidates)} candidates, more than the limit of "
                                f"{limits.max_candidates} (serve.max_candidates)")
    _check_ids(f"{where}.candidates", candidates, limits.vocab_size)
    return list(candidates)


def _check_length(where: str, length: int, limits: Limits) -> None:
    if length > limits.max_input_tokens:
        raise RequestError(422, f"{where}: input is {length} tokens, longer than the limit of "
                                f"{limits.max_input_tokens} ({limits.input_limit_source})")


def split_request(index: int, item: ScoreItem, limits: Limits, tokenizer) -> list[dict]:
    """The single requests of one entry: itself, or one sibling per label (validated)."""
    where = f"requests[{index}]"
    prompt = _tokens(where, item, limits, tokenizer, allow_empty=item.labels is not None)
    if item.labels is None:
        _check_length(where, len(prompt), limits)
        return [{"input_ids": prompt, "candidates": _candidates(where, item.candidates, limits)}]
    siblings = []
    for number, label in enumerate(item.labels):
        label_where = f"{where}.labels[{number}]"
        tokens = prompt + _tokens(label_where, label, limits, tokenizer, allow_empty=True)
        if not tokens:
            raise RequestError(422, f"{label_where}: the prompt and this label's suffix are both empty")
        _check_length(label_where, len(tokens), limits)
        own = (label_where, label.candidates) if label.candidates is not None else (where, item.candidates)
        siblings.append({"input_ids": tokens, "candidates": _candidates(*own, limits)})
    return siblings


def parse_items(items: list[ScoreItem], limits: Limits, tokenizer=None, return_logits: bool = False) -> ParsedCall:
    """Validated items, labels split into siblings."""
    scored = sum(len(item.labels or [None]) for item in items)
    if scored > limits.max_requests:
        raise RequestError(413, f"requests: {scored} requests (labels count one each) in one call, more than "
                                f"the limit of {limits.max_requests} (serve.max_requests_per_call)")
    parsed = ParsedCall([], [], return_logits)
    for index, item in enumerate(items):
        inputs = split_request(index, item, limits, tokenizer)
        parsed.requests.extend(inputs)
        parsed.shape.append(None if item.labels is None else len(inputs))
    return parsed


def parse_requests(requests: list[dict], limits: Limits, tokenizer=None) -> ParsedCall:
    """``requests`` (dicts in the format above) validated and split."""
    if not isinstance(requests, (list, tuple)):
        raise RequestError(422, f"requests: must be a list of request dicts, got {type(requests).__name__}")
    items = []
    for index, request in enumerate(requests):
        try:
            items.append(ScoreItem.model_validate(request))
        except ValidationError as err:
            raise RequestError(422, pydantic_message(err, ("requests", index))) from None
    return parse_items(items, limits, tokenizer)

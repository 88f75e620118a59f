"""The JSON of ``POST /v1/score``, validated before anything reaches the router or the ranks.

    {"requests": [{"input_ids": [int, ...], "candidates": [int, ...]},
                  {"text": "...", "candidates": [int, ...]},           # text needs a tokenizer
                  {"input_ids": [...], "labels": [[int, ...], ...], "candidates": [yes, no]}],
     "return_logits": false}
    -> {"results": [{"logprobs": [float per candidate], "best": int, "rank": int,
                     "logits": [float per vocabulary entry]  (only with return_logits)},
                    ...,
                    {"labels": [one such result per label]}]}

A multi-label request is split here into sibling requests, prompt + label tokens each, that
share the prompt as their prefix (so the router keeps them on one rank and the prompt is
computed once); its answer gathers the siblings' results in label order.

Every problem is a :class:`RequestError` with an HTTP status and a message naming the field
(``requests[2].candidates: must list at least 1 candidate``): 400 for a body that is not JSON,
413 for a body or a list over its limit, 422 for the rest. The engines must never see a request
they could fail on, because a failure inside the lockstep ``score`` call ends the whole job.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from zerolib.config.errors import format_path


class RequestError(Exception):
    """A client's mistake: answered with ``status`` and ``message``, the server carries on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ScoreItem(BaseModel):
    """One request: a prompt (token ids, or text when the server has a tokenizer) and candidates."""

    model_config = ConfigDict(extra="forbid")
    input_ids: list[StrictInt] | None = None
    text: StrictStr | None = None
    labels: list[list[StrictInt]] | None = Field(default=None, min_length=1)
    candidates: list[StrictInt] = Field(min_length=1)


class ScoreCall(BaseModel):
    """The body of one POST /v1/score."""

    model_config = ConfigDict(extra="forbid")
    requests: list[ScoreItem] = Field(min_length=1)
    return_logits: StrictBool = False


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


def _pydantic_message(err: ValidationError) -> str:
    messages = []
    for problem in err.errors()[:5]:
        path = format_path(problem["loc"]) if problem["loc"] else "body"
        detail = problem["msg"]
        if problem["type"] == "extra_forbidden":
            detail = ("unknown field (allowed: input_ids or text, labels, candidates; "
                      "top level: requests, return_logits)")
        if problem["type"] == "too_short" and path.endswith("candidates"):
            detail = "must list at least 1 candidate"
        messages.append(f"{path}: {detail}")
    return "; ".join(messages)


def _check_ids(where: str, ids: list[int], vocab_size: int) -> None:
    for position, token in enumerate(ids):
        if token < 0 or (vocab_size and token >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size else "non-negative"
            raise RequestError(422, f"{where}[{position}]: token id {token} is outside the vocabulary {bound}")


def _tokens(index: int, item: ScoreItem, limits: Limits, tokenizer) -> list[int]:
    where = f"requests[{index}]"
    if (item.input_ids is None) == (item.text is None):
        raise RequestError(422, f"{where}: give exactly one of input_ids and text")
    if item.text is not None:
        if tokenizer is None:
            raise RequestError(422, f"{where}.text: this server has no tokenizer; send input_ids")
        ids = list(tokenizer.encode(item.text))
    else:
        ids = item.input_ids
    if not ids:
        raise RequestError(422, f"{where}: the input is empty; at least 1 token is needed")
    _check_length(where, len(ids), limits)
    _check_ids(f"{where}.input_ids", ids, limits.vocab_size)
    return ids


def _check_length(where: str, length: int, limits: Limits) -> None:
    if length > limits.max_input_tokens:
        raise RequestError(422, f"{where}: input is {length} tokens, longer than the limit of "
                                f"{limits.max_input_tokens} (serve.max_input_tokens)")


def _siblings(index: int, ids: list[int], labels: list[list[int]], limits: Limits) -> list[list[int]]:
    """One input per label: the prompt, then the label's tokens."""
    out = []
    for number, label in enumerate(labels):
        where = f"requests[{index}].labels[{number}]"
        if not label:
            raise RequestError(422, f"{where}: a label needs at least 1 token")
        _check_ids(where, label, limits.vocab_size)
        _check_length(where, len(ids) + len(label), limits)
        out.append(ids + label)
    return out


def parse_call(body: bytes, limits: Limits, tokenizer=None) -> ParsedCall:
    """The validated call in a POST body, or a :class:`RequestError` naming what is wrong."""
    try:
        call = ScoreCall.model_validate_json(body)
    except ValidationError as err:
        if any(problem["type"] == "json_invalid" for problem in err.errors()):
            raise RequestError(400, f"body is not valid JSON: {err.errors()[0]['msg']}") from None
        raise RequestError(422, _pydantic_message(err)) from None
    scored = sum(len(item.labels or [None]) for item in call.requests)
    if scored > limits.max_requests:
        raise RequestError(413, f"requests: {scored} requests (labels count one each) in one call, more than "
                                f"the limit of {limits.max_requests} (serve.max_requests_per_call)")
    parsed = ParsedCall([], [], call.return_logits)
    for index, item in enumerate(call.requests):
        ids = _tokens(index, item, limits, tokenizer)
        if len(item.candidates) > limits.max_candidates:
            raise RequestError(422, f"requests[{index}].candidates: {len(item.candidates)} candidates, more "
                                    f"than the limit of {limits.max_candidates} (serve.max_candidates)")
        _check_ids(f"requests[{index}].candidates", item.candidates, limits.vocab_size)
        inputs = [ids] if item.labels is None else _siblings(index, ids, item.labels, limits)
        parsed.requests.extend({"input_ids": tokens, "candidates": list(item.candidates)} for tokens in inputs)
        parsed.shape.append(None if item.labels is None else len(inputs))
    return parsed

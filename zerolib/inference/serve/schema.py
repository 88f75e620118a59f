"""The JSON of ``POST /v1/score``, validated before anything reaches the router or the ranks.

    {"requests": [{"input_ids": [int, ...], "candidates": [int, ...]},
                  {"text": "...", "candidates": [int, ...]},           # text needs a tokenizer
                  {"input_ids": [...], "candidates": [yes, no],                 # multi-label
                   "labels": [{"input_ids": [...]}, {"text": "...", "candidates": [...]}]}],
     "return_logits": false}
    -> {"results": [{"logprobs": [float per candidate], "best": int, "rank": int,
                     "logits": [float per vocabulary entry]  (only with return_logits)},
                    ...,
                    {"labels": [one such result per label]}]}

Each request is in the engine's format and is validated, and a multi-label request split into
siblings, by zerolib/inference/requests.py, which the engine's own ``score`` uses too. Every
problem is a :class:`RequestError` with an HTTP status and a message naming the field
(``requests[2].candidates: must list at least 1 candidate``): 400 for a body that is not JSON,
413 for a body or a list over its limit, 422 for the rest. The engines must never see a request
they could fail on, because a failure inside the lockstep ``score`` call ends the whole job.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from zerolib.inference.requests import (Limits, ParsedCall, RequestError, ScoreItem, parse_items,
                                        pydantic_message)

__all__ = ["Limits", "ParsedCall", "RequestError", "ScoreCall", "parse_call"]


class ScoreCall(BaseModel):
    """The body of one POST /v1/score."""

    model_config = ConfigDict(extra="forbid")
    requests: list[ScoreItem] = Field(min_length=1)
    return_logits: StrictBool = False


def parse_call(body: bytes, limits: Limits, tokenizer=None) -> ParsedCall:
    """The validated call in a POST body, or a :class:`RequestError` naming what is wrong."""
    try:
        call = ScoreCall.model_validate_json(body)
    except ValidationError as err:
        if any(problem["type"] == "json_invalid" for problem in err.errors()):
            raise RequestError(400, f"body is not valid JSON: {err.errors()[0]['msg']}") from None
        raise RequestError(422, pydantic_message(err)) from None
    return parse_items(call.requests, limits, tokenizer, call.return_logits)

"""The FastAPI application: ``POST /v1/score``, ``GET /health``, ``GET /metrics``.

Handlers never compute: they validate (schema.py), queue a :class:`Job` and await it. The
round loop on rank 0 scores it. See docs/moe_prefill_frontend.md for the wire format.
"""
from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from zerolib.inference.serve.jobs import Job, QueueFull, RequestQueue, ServerMetrics
from zerolib.inference.serve.schema import Limits, RequestError, parse_call
from zerolib.inference.serve.settings import ServeSettings

# No client reads it (it went away); nginx's code for "client closed request", for the access log.
CLIENT_CLOSED = 499
DISCONNECT_POLL_SECONDS = 0.05


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body is {declared} bytes, more than the limit of {limit} (serve.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"body is more than the limit of {limit} bytes (serve.max_body_bytes)")
    return bytes(body)


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


async def _await_job(job: Job, request: Request, timeout: float) -> str:
    """'done', 'disconnected' or 'timeout'."""
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({job.future, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if job.future.done():
        return "done"
    return "disconnected" if watcher.done() and not watcher.cancelled() else "timeout"


def create_app(queue: RequestQueue, metrics: ServerMetrics, limits: Limits, settings: ServeSettings,
               tokenizer=None) -> FastAPI:
    """The app in front of one round loop. ``tokenizer`` (anything with ``encode(text)``)
    enables ``"text"`` requests."""
    app = FastAPI(title="zerolib MoE-prefill scoring", docs_url=None, redoc_url=None)

    @app.post("/v1/score")
    async def score(request: Request):
        try:
            call = parse_call(await _read_body(request, settings.max_body_bytes), limits, tokenizer)
        except RequestError as err:
            metrics.rejected += 1
            return _error(err.status, err.message)
        if not metrics.alive:
            return _error(503, f"the scoring loop has stopped: {metrics.error}")
        job = Job(call.requests, call.return_logits, asyncio.get_running_loop())
        try:
            queue.submit(job)
        except QueueFull as err:
            metrics.rejected += 1
            return _error(503, str(err))
        outcome = await _await_job(job, request, settings.request_timeout_seconds)
        if outcome != "done":
            job.cancelled = True
            queue.drop(job)
            metrics.cancelled += 1
            if outcome == "disconnected":
                return Response(status_code=CLIENT_CLOSED)
            return _error(504, f"not scored within {settings.request_timeout_seconds} s "
                               f"(serve.request_timeout_seconds); its requests were dropped")
        if job.future.exception() is not None:
            return _error(503, str(job.future.exception()))
        return {"results": call.answer(job.future.result())}

    @app.get("/health")
    async def health():
        snapshot = metrics.snapshot(len(queue))
        keys = ("status", "error", "queue_depth", "ranks", "threshold_flops", "engine_load_last_round_flops",
                "throughput_tokens_per_s")
        return JSONResponse({key: snapshot[key] for key in keys}, status_code=200 if metrics.alive else 503)

    @app.get("/metrics")
    async def metrics_view():
        return metrics.snapshot(len(queue))

    return app

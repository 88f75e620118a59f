"""The MoE-prefill scoring server: FastAPI app, request validation, the multi-rank round loop
and ``zerolib serve-prefill`` (docs/moe_prefill_frontend.md). Needs the ``serve`` extra
(fastapi, uvicorn) only for the HTTP side; the router lives in zerolib.inference.router."""

"""Inference modes: MoE-prefill serving (AsyncEP backend, router, scoring server).

``MoEPrefillEngine(model, config)`` scores prompts against candidate tokens from one forward
pass (docs/moe_prefill.md); the router and the HTTP server in front of it are in
docs/moe_prefill_frontend.md.
"""
from zerolib.inference.engine import MoEPrefillEngine

__all__ = ["MoEPrefillEngine"]

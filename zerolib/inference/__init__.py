"""Inference modes: MoE-prefill serving (AsyncEP backend, router, scoring server)."""

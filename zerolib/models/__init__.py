"""Example models that ship with zerolib (used by examples/, tests and benchmarks)."""
from zerolib.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]

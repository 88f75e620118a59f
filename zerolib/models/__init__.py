"""Example models that ship with zerolib (used by examples/, tests and benchmarks)."""
from zerolib.models.gpt import GPT, GPTConfig
from zerolib.models.moe_gpt import MoEGPT, MoEGPTConfig

__all__ = ["GPT", "GPTConfig", "MoEGPT", "MoEGPTConfig"]

"""Sharded checkpoints: save on every rank, load at any world size or stage, export whole.

See docs/checkpoints.md for the layout on disk and the guarantees.
"""
from zerolib.checkpoint.consolidate import consolidate
from zerolib.checkpoint.load import load_checkpoint
from zerolib.checkpoint.save import save_checkpoint
from zerolib.checkpoint.storage import CheckpointError
from zerolib.checkpoint.weights16 import save_16bit_model

__all__ = ["CheckpointError", "consolidate", "load_checkpoint", "save_16bit_model", "save_checkpoint"]

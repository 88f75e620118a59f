"""Flat parameter layouts, each rank's slices, and parameter storage per ZeRO stage."""
from zerolib.partition.layout import BufferSpec, FlatLayout, ParamSlot
from zerolib.partition.replicated import ReplicatedParams

__all__ = ["BufferSpec", "FlatLayout", "ParamSlot", "ReplicatedParams"]

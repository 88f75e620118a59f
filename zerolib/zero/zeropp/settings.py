"""The ZeRO++ switches, resolved from ``zero_optimization`` by the engine."""
from __future__ import annotations

import math
from dataclasses import dataclass

from zerolib.partition.layout import DEFAULT_ALIGN

WEIGHT_BITS = 8  # qwZ sends int8 weights (ZeRO++ paper); gradients default to int4 (qgZ)


@dataclass(frozen=True)
class ZeroPPSettings:
    """``zero_quantized_weights``, ``zero_hpz_partition_size``, ``zero_quantized_gradients``,
    ``zero_quantized_gradients_bits`` and ``zero_quantized_block_size``; all off by default."""

    quantized_weights: bool = False
    hpz_partition_size: int = 1
    quantized_gradients: bool = False
    gradient_bits: int = 4
    block_size: int = 256

    @classmethod
    def from_zero_optimization(cls, zero) -> "ZeroPPSettings":
        """From a validated ``zero_optimization`` block (zerolib.config)."""
        return cls(quantized_weights=zero.zero_quantized_weights, hpz_partition_size=zero.zero_hpz_partition_size,
                   quantized_gradients=zero.zero_quantized_gradients, gradient_bits=zero.zero_quantized_gradients_bits,
                   block_size=zero.zero_quantized_block_size)

    @property
    def hierarchical_weights(self) -> bool:
        return self.hpz_partition_size > 1

    @property
    def changes_weight_gathers(self) -> bool:
        return self.quantized_weights or self.hierarchical_weights

    @property
    def buffer_align(self) -> int:
        """Element alignment of stage-3 shards: with quantization on, a whole number of blocks,
        so no piece on the wire carries a padded last block (at most N*align elements of
        padding per buffer, in memory only)."""
        if self.quantized_weights or self.quantized_gradients:
            return math.lcm(DEFAULT_ALIGN, self.block_size)
        return DEFAULT_ALIGN

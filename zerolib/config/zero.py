"""The `zero_optimization` block: the ZeRO stage, bucket sizes, stage-3 knobs, offload, ZeRO++.

Defaults are DeepSpeed's, except offload pin_memory (see offload.py). `overlap_comm` keeps
DeepSpeed's dynamic default: on for stage 3, off otherwise.
"""
from typing import Annotated, Any, Literal

from pydantic import ValidationInfo, model_validator

from .base import Count, NotBool, SignedCount, StrictModel, described
from .errors import KeyIssue
from .offload import OffloadOptimizerConfig, OffloadParamConfig

Stage = Annotated[Literal[0, 1, 2, 3], NotBool]
QuantBits = Annotated[Literal[4, 8], NotBool]


class ZeroOptimizationConfig(StrictModel):
    """`zero_optimization`: which model states are partitioned across data-parallel ranks."""

    stage: Stage = described(
        0, "0: plain data parallel; 1: partition optimizer states; 2: + gradients; "
           "3: + parameters.")
    reduce_bucket_size: Count = described(
        500_000_000, "Elements reduced per gradient bucket, at most. Stages 0-2 also cut buckets at "
                     "25 MiB of the communication dtype, as DDP does, so that reduction overlaps backward.",
        ge=1)
    allgather_bucket_size: Count = described(
        500_000_000, "Elements all-gathered per bucket after the step (stages 1-2).", ge=1)
    overlap_comm: bool = described(
        False, "Overlap gradient reduction with the backward pass; in stages 1-2 also finish the "
               "parameter all-gather during the next forward, each module waiting for its own "
               "parameters (a parameter read outside its module's forward is then an error naming "
               "it). Defaults to true for stage 3, false otherwise, as in DeepSpeed.")
    contiguous_gradients: bool = described(
        True, "Copy gradients into one contiguous buffer as they are produced.")
    reduce_scatter: bool = described(
        True, "Reduce gradients with reduce-scatter rather than all-reduce.")
    allgather_partitions: bool = described(
        True, "Gather updated partitions with all-gather rather than broadcasts.")
    round_robin_gradients: bool = described(
        False, "Round-robin gradient partitioning across ranks (stages 1-2).")
    sub_group_size: Count = described(
        1_000_000_000, "Elements per optimizer step sub-group (bounds step memory).", ge=1)
    stage3_prefetch_bucket_size: Count = described(
        50_000_000, "Elements of parameters prefetched ahead of use (stage 3).")
    stage3_param_persistence_threshold: Count = described(
        100_000, "Parameters smaller than this stay gathered (stage 3).")
    stage3_max_live_parameters: Count = described(
        1_000_000_000, "Gathered parameter elements kept alive at most (stage 3).")
    stage3_max_reuse_distance: Count = described(
        1_000_000_000, "Keep a parameter gathered if reused within this many elements (stage 3).")
    stage3_gather_16bit_weights_on_model_save: bool = described(
        False, "Gather full 16-bit weights when saving the model (stage 3).")
    offload_optimizer: OffloadOptimizerConfig = described(
        default_factory=OffloadOptimizerConfig,
        description="Optimizer state offload (stages 1-3).")
    offload_param: OffloadParamConfig = described(
        default_factory=OffloadParamConfig, description="Parameter offload (stage 3 only).")
    zero_quantized_weights: bool = described(
        False, "ZeRO++ qwZ: all-gather weights in int8 with block-wise scales (stage 3).")
    zero_quantized_nontrainable_weights: bool = described(
        False, "Keep frozen weights quantized in int8 (stage 3).")
    zero_hpz_partition_size: Count = described(
        1, "ZeRO++ hpZ: ranks per secondary parameter partition (the node size); 1 disables it.",
        ge=1)
    zero_quantized_gradients: bool = described(
        False, "ZeRO++ qgZ: reduce gradients quantized with a hierarchical all-to-all (stage 3).")
    zero_quantized_gradients_bits: QuantBits = described(
        4, "zerolib extension: bits per gradient value under qgZ, 4 (the ZeRO++ paper's, default) or 8 "
           "(twice the bytes, 16x finer steps).")
    zero_quantized_block_size: Count = described(
        256, "zerolib extension: values per quantization block (one fp32 scale each) for qwZ and qgZ; a "
             "multiple of 8 (so every piece on the wire keeps its scales 4-byte aligned). Scales add "
             "4/block_size bytes per value.", ge=8, multiple_of=8)
    mics_shard_size: SignedCount = described(
        -1, "MiCS shard group size; -1 disables it. Not implemented: accepted and ignored.")
    elastic_checkpoint: bool = described(
        False, "Accepted for compatibility and ignored (DeepSpeed's elastic checkpoints).")
    ignore_unused_parameters: bool = described(
        True, "Tolerate parameters that receive no gradient in a step.")
    legacy_stage1: bool = described(
        False, "Accepted for compatibility and ignored (DeepSpeed's old stage-1 code path).")
    memory_efficient_linear: bool = described(
        True, "Accepted for compatibility and ignored (DeepSpeed's stage-3 linear override).")

    @model_validator(mode="before")
    @classmethod
    def _dynamic_overlap_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("overlap_comm") is None:
            data = {**data, "overlap_comm": data.get("stage") == 3}
        return data

    @model_validator(mode="after")
    def _features_fit_stage(self, info: ValidationInfo) -> "ZeroOptimizationConfig":
        for key, active, minimum in self._stage_requirements():
            if active and self.stage < minimum:
                raise KeyIssue(key, f"needs stage {minimum} or higher (stage is {self.stage})")
        world_size = (info.context or {}).get("world_size")
        hpz = self.zero_hpz_partition_size
        if world_size and hpz > 1 and world_size % hpz:
            raise KeyIssue("zero_hpz_partition_size",
                           f"{hpz} does not divide world_size {world_size}")
        return self

    def _stage_requirements(self) -> list[tuple[str, bool, int]]:
        """(key, whether it is in use, lowest stage that supports it)."""
        return [
            ("offload_optimizer.device", self.offload_optimizer.device != "none", 1),
            ("offload_param.device", self.offload_param.device != "none", 3),
            ("zero_quantized_weights", self.zero_quantized_weights, 3),
            ("zero_quantized_nontrainable_weights", self.zero_quantized_nontrainable_weights, 3),
            ("zero_hpz_partition_size", self.zero_hpz_partition_size > 1, 3),
            ("zero_quantized_gradients", self.zero_quantized_gradients, 3),
        ]

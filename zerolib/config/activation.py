"""The `activation_checkpointing` block (DeepSpeed's activation checkpointing options)."""
from .base import Count, StrictModel, described


class ActivationCheckpointingConfig(StrictModel):
    """`activation_checkpointing`: how checkpointed activations are stored."""

    partition_activations: bool = described(
        False, "Partition checkpointed activations across model-parallel ranks.")
    cpu_checkpointing: bool = described(
        False, "Move checkpointed activations to the CPU; needs partition_activations.")
    contiguous_memory_optimization: bool = described(
        False, "Copy checkpointed activations into one contiguous buffer.")
    number_checkpoints: Count | None = described(
        None, "Checkpoints per forward pass, for the contiguous buffer's size.", ge=1)
    synchronize_checkpoint_boundary: bool = described(
        False, "Synchronize the device at each checkpoint boundary.")
    profile: bool = described(False, "Time the forward and backward of checkpointed segments.")

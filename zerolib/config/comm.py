"""The `comm` block: a zerolib extension (DeepSpeed has no such key)."""
import os

from .base import Count, StrictModel, described


def _local_world_size() -> int | None:
    """LOCAL_WORLD_SIZE as set by torchrun and zerolib's launcher, if it is a positive integer."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class CommConfig(StrictModel):
    """`comm` (zerolib extension): process-group settings."""

    timeout_seconds: Count = described(
        600, "Seconds a collective may wait before the run fails naming the ranks.", ge=1)
    node_size: Count | None = described(
        default_factory=_local_world_size,
        description="Ranks per node group (hpZ, qgZ); set it to simulate several nodes on one "
                    "machine. Defaults to LOCAL_WORLD_SIZE, or the world size if unset.",
        ge=1)

"""The `comm` block: a zerolib extension (DeepSpeed has no such key)."""
import os

from .base import Count, StrictModel, described


def default_node_size(world_size: int) -> int:
    """Ranks per node when the config does not say: LOCAL_WORLD_SIZE (set by torchrun and
    zerolib's launcher) if it is a positive divisor of `world_size`, else `world_size` (one
    node). A launcher variable is not the user's mistake, so it never fails the config."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    local = int(value) if value.isdigit() else 0
    return local if local > 0 and world_size % local == 0 else world_size


class CommConfig(StrictModel):
    """`comm` (zerolib extension): process-group settings."""

    timeout_seconds: Count = described(
        600, "Seconds a collective may wait before the run fails with a CollectiveError naming "
             "the collective, the ranks waiting in it and those that never came.", ge=1)
    node_size: Count | None = described(
        None, "Ranks per node group (hpZ, qgZ); set it to simulate several nodes on one machine. "
              "Unset: LOCAL_WORLD_SIZE if it divides the world size, else the world size; "
              "load_config fills in the value. Must divide the world size.", ge=1)
    verify_module_order: bool = described(
        True, "ZeRO-3: at each gather of the forward, and once at its end, check that every "
              "rank is at the same module, so ranks that took different forward paths (or skipped "
              "a module) fail naming the rank and the module instead of hanging or mixing shards. "
              "A gather made on demand is checked before its data is used; one prefetched along "
              "the recorded order is checked by the end of that forward. Costs one 16-byte "
              "all-gather per gathered module and one per forward.")

"""What this version of zerolib implements, as two tables the lead edits as features land.

UNIMPLEMENTED: settings that exist in the schema but would silently do nothing; a config using
one is rejected by `check_implemented` (called by `load_config` unless told not to).
IGNORED: keys accepted so that DeepSpeed configs load, which zerolib does not act on; writing
one gets a "accepted but ignored" ZeroConfigWarning.
"""
from typing import Callable, NamedTuple

from .errors import ConfigError
from .root import ZeroConfig


class Unimplemented(NamedTuple):
    path: str
    in_use: Callable[[ZeroConfig], bool]
    message: str


# One row per feature; delete the row when the feature lands.
UNIMPLEMENTED: tuple[Unimplemented, ...] = (
    Unimplemented("zero_optimization.zero_quantized_nontrainable_weights",
                  lambda c: c.zero_optimization.zero_quantized_nontrainable_weights,
                  "quantized frozen weights are not implemented yet in this version"),
)

# Dotted key paths: accepted, never acted on. Delete an entry when zerolib starts using the key.
IGNORED: tuple[str, ...] = (
    "zero_optimization.mics_shard_size",
    "zero_optimization.elastic_checkpoint",
    "zero_optimization.legacy_stage1",
    "zero_optimization.memory_efficient_linear",
    "zero_optimization.round_robin_gradients",
    # Always on: gradients live in contiguous flat buffers and are reduce-scattered.
    "zero_optimization.contiguous_gradients",
    "zero_optimization.reduce_scatter",
    "zero_optimization.allgather_partitions",
    # Unused parameters need no flag: buffers without gradients reduce zeros.
    "zero_optimization.ignore_unused_parameters",
    "fp16.auto_cast",
    "optimizer.params.torch_adam",
    "dump_state",
    "seed",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    # comms_logger prints per-kind totals every steps_per_print; not each call as issued.
    "comms_logger.verbose",
    "comms_logger.debug",
    # zerolib.checkpointing leaves buffers to PyTorch's allocator and does not time segments.
    "activation_checkpointing.contiguous_memory_optimization",
    "activation_checkpointing.number_checkpoints",
    "activation_checkpointing.synchronize_checkpoint_boundary",
    "activation_checkpointing.profile",
    # Swapped state always starts as zeros without a read (what fast_init speeds up).
    "zero_optimization.offload_optimizer.fast_init",
    "wandb",
    "flops_profiler",
)


def check_implemented(cfg: ZeroConfig) -> None:
    """Raise one ConfigError naming every setting in `cfg` this version does not implement."""
    missing = [row for row in UNIMPLEMENTED if row.in_use(cfg)]
    if missing:
        first, *rest = missing
        raise ConfigError(first.path, first.message, [f"{r.path}: {r.message}" for r in rest])


def ignored_keys_given(given: dict) -> list[str]:
    """The IGNORED key paths present in the config as the user wrote it."""
    found = []
    for path in IGNORED:
        block = given
        *parents, leaf = path.split(".")
        for parent in parents:
            block = block.get(parent) if isinstance(block, dict) else None
        if isinstance(block, dict) and leaf in block:
            found.append(path)
    return found

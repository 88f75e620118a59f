"""`ZeroConfig`: the whole config, with DeepSpeed's top-level key names."""
import json
from typing import Any, Literal

from pydantic import PrivateAttr, ValidationInfo, model_validator

from .activation import ActivationCheckpointingConfig
from .base import Count, StrictModel, described
from .comm import CommConfig
from .errors import KeyIssue
from .monitor import (CommsLoggerConfig, CSVMonitorConfig, FlopsProfilerConfig,
                      TensorBoardConfig, WandbConfig)
from .offload import AioConfig
from .optim import OptimizerConfig
from .precision import BF16Config, FP16Config
from .scheduler import SchedulerConfig
from .zero import ZeroOptimizationConfig

# gradient_clipping's default. DeepSpeed changed it from 0.0 (off) to 1.0 in June 2026
# (deepspeedai/DeepSpeed#8068); zerolib follows, so a config ported from DeepSpeed trains the
# same and matches the FSDP2 recipes that clip at 1.0. Write 0.0 to disable clipping.
GRADIENT_CLIPPING_DEFAULT = 1.0

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class ZeroConfig(StrictModel):
    """A zerolib config, accepting DeepSpeed's JSON keys. Build it with `load_config`, which
    resolves the batch triple, "auto" values and deprecated spellings for a world size."""

    train_batch_size: Count | None = described(
        None, "Global batch: micro batch × gradient accumulation steps × world size.", ge=1)
    train_micro_batch_size_per_gpu: Count | None = described(
        None, "Samples per rank per forward/backward.", ge=1)
    gradient_accumulation_steps: Count | None = described(
        None, "Micro batches accumulated before each optimizer step.", ge=1)
    optimizer: OptimizerConfig | None = described(
        None, "The optimizer the engine builds; null means the caller passes one.")
    scheduler: SchedulerConfig | None = described(
        None, "The learning-rate scheduler the engine builds; null means none or the caller's.")
    fp16: FP16Config = described(default_factory=FP16Config, description="fp16 training.")
    bf16: BF16Config = described(default_factory=BF16Config, description="bf16 training.")
    nonfinite_gradients: Literal["error", "skip"] = described(
        "error", "zerolib extension, bf16 and fp32 training: what a step does when the loss or "
        "a gradient holds inf or NaN. \"error\" raises NonFiniteGradientError naming the step, "
        "the first parameter whose gradient is not finite and the ranks whose loss was not; "
        "the step is not applied, so the weights and optimizer state stay those of the last "
        "good step (save a checkpoint from there). \"skip\" drops the step, counts it in "
        "`skipped_steps` and logs a warning. fp16 always skips and lowers the loss scale (see "
        "`fp16`).")
    communication_data_type: Literal["fp32", "fp16", "bf16"] | None = described(
        None, "dtype of gradient reduction; null uses the training dtype.")
    gradient_clipping: float = described(
        GRADIENT_CLIPPING_DEFAULT,
        "Clip the global gradient norm to this value; 0 disables clipping. Default 1.0, "
        "DeepSpeed's default since mid-2026 (it was 0.0 before).", ge=0)
    prescale_gradients: bool = described(
        False, "Divide gradients by the world size before the reduction instead of after.")
    gradient_predivide_factor: float = described(
        1.0, "Divide gradients by this factor before the reduction, the rest after.", gt=0)
    steps_per_print: Count | None = described(
        10, "Log progress every this many steps; null disables it.", ge=1)
    wall_clock_breakdown: bool = described(
        False, "Time forward, backward and step separately and log the breakdown.")
    dump_state: bool = described(False, "Print the engine's state after initialisation.")
    seed: Count | None = described(
        None, "zerolib extension: seed torch's generators on every rank at start-up.")
    zero_allow_untested_optimizer: bool = described(
        False, "Allow a caller-supplied optimizer other than Adam, AdamW or SGD with ZeRO.")
    zero_force_ds_cpu_optimizer: bool = described(
        True, "With optimizer offload, require zerolib's CPU Adam rather than a torch one.")
    zero_optimization: ZeroOptimizationConfig = described(
        default_factory=ZeroOptimizationConfig, description="ZeRO stage and its settings.")
    aio: AioConfig = described(default_factory=AioConfig, description="Async I/O for nvme.")
    activation_checkpointing: ActivationCheckpointingConfig = described(
        default_factory=ActivationCheckpointingConfig,
        description="Activation checkpointing options.")
    tensorboard: TensorBoardConfig = described(
        default_factory=TensorBoardConfig, description="TensorBoard monitor.")
    csv_monitor: CSVMonitorConfig = described(
        default_factory=CSVMonitorConfig, description="CSV monitor.")
    wandb: WandbConfig = described(
        default_factory=WandbConfig, description="Weights & Biases monitor (ignored).")
    comms_logger: CommsLoggerConfig = described(
        default_factory=CommsLoggerConfig, description="Collective logging.")
    flops_profiler: FlopsProfilerConfig = described(
        default_factory=FlopsProfilerConfig, description="FLOPs profiler (ignored).")
    comm: CommConfig = described(
        default_factory=CommConfig, description="zerolib extension: process-group settings.")

    # The config as given (after deprecated spellings are rewritten, before "auto" and the batch
    # triple are resolved), so that load_config can re-resolve it for another world size.
    _given: dict | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compatible_blocks(self, info: ValidationInfo) -> "ZeroConfig":
        if self.fp16.enabled and self.bf16.enabled:
            raise KeyIssue("bf16.enabled", "fp16.enabled and bf16.enabled are both true; "
                                           "enable one of them")
        world_size = (info.context or {}).get("world_size")
        node_size = self.comm.node_size
        if world_size and node_size and world_size % node_size:
            raise KeyIssue("comm.node_size", f"{node_size} does not divide world_size "
                                             f"{world_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config with every default explicit, in JSON-compatible types."""
        return self.model_dump(mode="json")

    def resolved_summary(self) -> str:
        """The resolved config as indented JSON, for rank 0 to log at start-up."""
        return "zerolib resolved config:\n" + json.dumps(self.to_dict(), indent=2)

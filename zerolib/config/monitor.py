"""Monitoring and profiling blocks: tensorboard, csv_monitor, wandb, comms_logger, flops_profiler.

zerolib's own measurements come from `engine.comm_stats()` and the benchmarks; these blocks are
accepted so that DeepSpeed configs load, and support.py / the loader say which ones act.
"""
from .base import Count, SignedCount, StrictModel, described


class _FileMonitorConfig(StrictModel):
    enabled: bool = described(False, "Write training metrics with this monitor.")
    output_path: str = described("", "Directory for the monitor's files.")
    job_name: str = described("DeepSpeedJobName", "Sub-directory name for this run.")


class TensorBoardConfig(_FileMonitorConfig):
    """`tensorboard`: loss, lr and loss scale as TensorBoard events."""


class CSVMonitorConfig(_FileMonitorConfig):
    """`csv_monitor`: loss, lr and loss scale as CSV files."""


class WandbConfig(StrictModel):
    """`wandb`: Weights & Biases logging. Accepted and ignored."""

    enabled: bool = described(False, "Log to Weights & Biases (not implemented).")
    group: str | None = described(None, "W&B run group.")
    team: str | None = described(None, "W&B team (entity).")
    project: str = described("deepspeed", "W&B project.")


class CommsLoggerConfig(StrictModel):
    """`comms_logger`: log the collectives the engine issues."""

    enabled: bool = described(False, "Log collectives.")
    verbose: bool = described(False, "Print every collective as it is issued.")
    prof_all: bool = described(True, "Profile every collective kind.")
    debug: bool = described(False, "Add the calling function's name to each record.")
    prof_ops: list[str] = described(
        default_factory=list, description="Collective kinds to profile when prof_all is false.")


class FlopsProfilerConfig(StrictModel):
    """`flops_profiler`: DeepSpeed's FLOPs profiler. Accepted and ignored."""

    enabled: bool = described(False, "Profile FLOPs (not implemented).")
    recompute_fwd_factor: float = described(0.0, "Forward recomputation factor.", ge=0)
    profile_step: Count = described(1, "Step at which to profile.")
    module_depth: SignedCount = described(-1, "Module depth to report; -1 is all.")
    top_modules: Count = described(1, "Number of top modules to report.")
    detailed: bool = described(True, "Print the detailed profile.")
    output_file: str | None = described(None, "File for the profile; null prints it.")


__all__ = ["TensorBoardConfig", "CSVMonitorConfig", "WandbConfig", "CommsLoggerConfig",
           "FlopsProfilerConfig"]

"""``zerolib plot RUN_DIR``: one PNG of a run's loss curve, memory and time breakdown, read from
the CSV monitor's ``RUN_DIR/metrics.csv`` (``RUN_DIR`` is ``csv_monitor.output_path/job_name``).

Needs matplotlib (``pip install matplotlib``, or ``pip install zerolib[plot]``).
"""
from __future__ import annotations

import argparse
import csv
import os

from zerolib.monitor.metrics import FIELDS
from zerolib.monitor.writers import CSV_NAME

MEMORY_KINDS = ("params", "grads", "master", "optimizer_state")
PHASES = ("forward", "backward", "optimizer")
MIB = 2**20


def read_metrics(run_dir: str) -> dict[str, list[float | None]]:
    """Columns of ``run_dir/metrics.csv`` as lists of floats (None where a value is empty)."""
    path = os.path.join(run_dir, CSV_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"zerolib plot: no {CSV_NAME} in {run_dir} (enable csv_monitor; RUN_DIR is "
                                "csv_monitor.output_path/job_name)")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = [f for f in FIELDS if f not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"zerolib plot: {path} lacks the columns {missing}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"zerolib plot: {path} has no rows yet (no optimizer step was recorded)")
    return {f: [float(r[f]) if r[f] != "" else None for r in rows] for f in FIELDS}


def _figure_class():
    try:
        from matplotlib.figure import Figure  # the object API: no global pyplot state or backend
    except ImportError as error:
        raise ImportError("zerolib plot needs matplotlib: pip install matplotlib (or zerolib[plot])") from error
    return Figure


def plot_run(run_dir: str, out_path: str | None = None) -> str:
    """Writes the PNG (default ``run_dir/metrics.png``) and returns its path."""
    metrics = read_metrics(run_dir)
    figure = _figure_class()(figsize=(15, 4.5), layout="constrained")
    loss_ax, memory_ax, time_ax = figure.subplots(1, 3)
    steps = metrics["step"]
    loss_ax.plot(steps, metrics["loss"], marker=".")
    loss_ax.set(title="loss (last micro-batch, rank 0)", xlabel="step")
    bottom = [0.0] * len(steps)
    for kind in MEMORY_KINDS:
        values = [v / MIB for v in metrics[f"{kind}_bytes"]]
        memory_ax.bar(steps, values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values)]
    memory_ax.set(title="model states per rank (MiB), process RSS (right)", xlabel="step")
    memory_ax.legend(fontsize="small", loc="upper left")
    rss_ax = memory_ax.twinx()  # RSS includes the framework: often far above the model states
    rss_ax.plot(steps, [v / MIB for v in metrics["rss_bytes"]], color="black", marker=".")
    rss_ax.set_ylabel("process RSS (MiB)")
    rss_ax.ticklabel_format(axis="y", useOffset=False)
    bottom = [0.0] * len(steps)
    for phase in PHASES:
        values = [v * 1000 for v in metrics[f"{phase}_seconds"]]
        time_ax.bar(steps, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    time_ax.plot(steps, [v * 1000 for v in metrics["step_seconds"]], color="black", label="step (wall)")
    time_ax.plot(steps, [v * 1000 for v in metrics["comm_seconds"]], color="red", linestyle="--",
                 label="comm (inside the phases)")
    time_ax.set(title="time per step (ms)", xlabel="step")
    time_ax.legend(fontsize="small")
    out_path = out_path or os.path.join(run_dir, "metrics.png")
    figure.savefig(out_path, dpi=100)
    return out_path


def main(argv: list[str]) -> int:
    """``zerolib plot RUN_DIR [--out FILE]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="zerolib plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="csv_monitor.output_path/job_name of a run")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/metrics.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.run_dir, args.out))
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(error)
        return 2
    return 0

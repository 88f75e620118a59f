"""Metric writers behind the `csv_monitor` and `tensorboard` config blocks (rank 0 only)."""
from __future__ import annotations

import csv
import os

from zerolib.monitor.metrics import FIELDS, StepMetrics

CSV_NAME = "metrics.csv"


def run_dir(output_path: str, job_name: str) -> str:
    """``output_path/job_name`` (``output_path`` defaults to the working directory)."""
    return os.path.join(output_path or ".", job_name)


class CSVWriter:
    """One wide CSV, ``output_path/job_name/metrics.csv``: a row per optimizer step, a column
    per field of :class:`StepMetrics` (empty when unknown). Appends when the file exists with
    the same header, so a resumed run continues it."""

    def __init__(self, output_path: str, job_name: str):
        directory = run_dir(output_path, job_name)
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, CSV_NAME)
        if os.path.exists(self.path):
            with open(self.path, newline="") as existing:
                header = next(csv.reader(existing), None)
            if header is not None and tuple(header) != FIELDS:
                raise ValueError(f"csv_monitor: {self.path} exists with other columns {header}; "
                                 "choose another csv_monitor.job_name or move the file")
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        if self._file.tell() == 0:
            self._writer.writeheader()

    def write(self, metrics: StepMetrics) -> None:
        self._writer.writerow({k: ("" if v is None else v) for k, v in metrics.as_row().items()})
        self._file.flush()  # a crashed run keeps every step written so far

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """TensorBoard scalars under ``output_path/job_name``, one tag per field (``Train/loss``...)."""

    @staticmethod
    def check_available():
        """torch's SummaryWriter class; a clear error when the ``tensorboard`` package is missing."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch's writer needs the separate tensorboard package
            raise ImportError("tensorboard.enabled is true but the 'tensorboard' package is not installed: "
                              "pip install tensorboard") from error
        return SummaryWriter

    def __init__(self, output_path: str, job_name: str):
        SummaryWriter = self.check_available()
        self.path = run_dir(output_path, job_name)
        self._writer = SummaryWriter(log_dir=self.path)

    def write(self, metrics: StepMetrics) -> None:
        for name, value in metrics.as_row().items():
            if name != "step" and value is not None:
                self._writer.add_scalar(f"Train/{name}", value, metrics.step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

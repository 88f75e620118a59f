"""Training monitors: `csv_monitor`, `tensorboard` and `comms_logger` (docs/monitoring.md)."""
from zerolib.monitor.comms import comm_table, ledger_delta
from zerolib.monitor.hub import MonitorHub
from zerolib.monitor.metrics import FIELDS, StepMetrics, tokens_in
from zerolib.monitor.writers import CSV_NAME, CSVWriter, TensorBoardWriter, run_dir

__all__ = ["MonitorHub", "StepMetrics", "FIELDS", "tokens_in", "CSVWriter", "TensorBoardWriter", "CSV_NAME",
           "run_dir", "comm_table", "ledger_delta"]

"""The engine's one handle on monitoring: collects each step's metrics and hands them to the
enabled writers (rank 0 only), and formats the comm lines of the progress print."""
from __future__ import annotations

import time
import warnings

import psutil

from zerolib.monitor.comms import comm_table, ledger_delta
from zerolib.monitor.metrics import StepMetrics, tokens_in
from zerolib.monitor.writers import CSVWriter, TensorBoardWriter


def _writers_for(cfg, rank: int) -> list:
    if cfg.tensorboard.enabled:  # on every rank, so that no rank goes on alone into a collective
        TensorBoardWriter.check_available()
    if rank != 0:  # every rank sees the same step; one file per run
        return []
    writers = []
    if cfg.csv_monitor.enabled:
        writers.append(CSVWriter(cfg.csv_monitor.output_path, cfg.csv_monitor.job_name))
    if cfg.tensorboard.enabled:
        writers.append(TensorBoardWriter(cfg.tensorboard.output_path, cfg.tensorboard.job_name))
    return writers


class MonitorHub:
    """Built by the engine from its config. ``note_forward`` counts tokens, ``on_step`` records
    one optimizer step, ``comm_time_summary``/``comm_log_lines`` feed the progress print."""

    def __init__(self, cfg, *, rank: int, world_size: int):
        self.writers = _writers_for(cfg, rank)
        self.world_size = world_size
        logger = cfg.comms_logger
        self.comms_logger_enabled = bool(logger.enabled)
        self.comm_kinds = None if logger.prof_all else list(logger.prof_ops)
        if self.comms_logger_enabled and not cfg.steps_per_print:
            warnings.warn("comms_logger prints every steps_per_print steps, and steps_per_print is not set: "
                          "it will print nothing", UserWarning, stacklevel=3)
        self._process = psutil.Process()
        self._tokens = 0
        self._window_start: float | None = None  # set by the first forward: set-up is not a step
        self._phases_before: dict[str, float] = {}
        self._comm_at_step: dict = {}  # ledger at the last recorded step (per-step comm time)
        self._comm_at_print: dict = {}  # ledger at the last progress print (comms_logger, breakdown)

    def note_forward(self, args: tuple, kwargs: dict) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()
        self._tokens += tokens_in(args, kwargs)

    def on_step(self, engine) -> None:
        """Records the optimizer step ``engine`` just took (call once per global step)."""
        now = time.perf_counter()
        seconds, self._window_start = now - (self._window_start or now), now
        tokens, self._tokens = self._tokens * self.world_size, 0  # same batch shape on every rank
        comm_now = engine.comm_stats()
        comm_seconds = sum(s["seconds"] for s in ledger_delta(comm_now, self._comm_at_step).values())
        self._comm_at_step = comm_now
        phases = dict(engine.timers.seconds)
        phase = {k: phases.get(k, 0.0) - self._phases_before.get(k, 0.0) for k in ("forward", "backward", "step")}
        self._phases_before = phases
        if not self.writers:
            return
        metrics = self._metrics(engine, seconds, tokens, phase, comm_seconds)
        for writer in self.writers:
            writer.write(metrics)

    def _metrics(self, engine, seconds, tokens, phase, comm_seconds) -> StepMetrics:
        memory = engine.memory_breakdown()
        report = engine.last_step
        return StepMetrics(
            step=engine.global_steps, loss=engine.last_loss, lr=engine.get_lr()[0],
            loss_scale=engine.loss_scaler.scale if engine.loss_scaler is not None else None,
            grad_norm=report.grad_norm if report is not None else None, step_seconds=seconds,
            tokens_per_second=tokens / seconds if tokens and seconds > 0 else None,
            params_bytes=memory["params"], grads_bytes=memory["grads"], master_bytes=memory["master"],
            optimizer_state_bytes=memory["optimizer_state"], comm_buffers_bytes=memory["comm_buffers"],
            hpz_secondary_bytes=memory["hpz_secondary"], swap_buffers_bytes=memory["swap_buffers"],
            rss_bytes=self._process.memory_info().rss,
            forward_seconds=phase["forward"], backward_seconds=phase["backward"],
            optimizer_seconds=phase["step"], comm_seconds=comm_seconds)

    def timers_were_reset(self) -> None:
        """The engine cleared its phase timers (after a wall_clock_breakdown print)."""
        self._phases_before = {}

    def comm_time_summary(self, engine) -> str:
        """Time spent waiting on collectives since the last print (part of forward/backward/step)."""
        delta = ledger_delta(engine.comm_stats(), self._comm_at_print)
        return f"comm: {sum(s['seconds'] for s in delta.values()) * 1000:.1f} ms"

    def comm_log_lines(self, engine) -> list[str]:
        """comms_logger's table since the last print; moves the print mark forward."""
        now = engine.comm_stats()
        delta, self._comm_at_print = ledger_delta(now, self._comm_at_print), now
        if not self.comms_logger_enabled:
            return []
        return ["comms since last print:"] + comm_table(delta, self.comm_kinds)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

"""Monitors on a real 2-rank run (ZeRO-3, fp16, 2 accumulation steps): the CSV holds one row
per optimizer step with the values the engine saw, TensorBoard gets the same scalars, the
comms_logger's bytes add up to the ledger, and wall_clock_breakdown includes comm time."""
import csv
import logging
import os
import re
import sys

import pytest
import torch

import zerolib
from harness import run_ranks
from zerolib.models import GPT, GPTConfig
from zerolib.monitor import FIELDS, CSVWriter, MonitorHub, tokens_in

MODEL = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
STEPS, GAS, MICRO, SEQ, WORLD = 4, 2, 2, 16, 2


def config(out: str) -> dict:
    return {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GAS, "steps_per_print": 2,
            "wall_clock_breakdown": True, "fp16": {"enabled": True, "initial_scale_power": 8},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "csv_monitor": {"enabled": True, "output_path": out, "job_name": "run"},
            "tensorboard": {"enabled": True, "output_path": out, "job_name": "tb"},
            "comms_logger": {"enabled": True, "prof_all": False, "prof_ops": ["all_gather", "reduce_scatter"]}}


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def train(out: str) -> dict:
    collect = _Collect()
    logger = logging.getLogger("zerolib")
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)  # as get_logger does on rank 0 (the test reads every rank)
    torch.manual_seed(0)
    engine = zerolib.initialize(GPT(MODEL), config(out))
    gen = torch.Generator().manual_seed(int(os.environ["RANK"]))
    steps = []
    for _ in range(STEPS * GAS):
        tokens = torch.randint(0, MODEL.vocab_size, (MICRO, SEQ + 1), generator=gen)
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        if engine.micro_steps % GAS == 0:  # this micro-step ended an accumulation window
            steps.append({"loss": loss.item(), "lr": engine.get_lr()[0], "scale": engine.loss_scaler.scale,
                          "memory": engine.memory_breakdown()})
    engine.monitor.close()
    return {"steps": steps, "comm": engine.comm_stats(), "logs": collect.lines}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("monitor"))
    return out, run_ranks(train, WORLD, out)


def read_rows(out: str) -> list[dict]:
    with open(os.path.join(out, "run", "metrics.csv"), newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == FIELDS
        return list(reader)


def test_csv_has_one_row_per_step_with_the_engine_values(run):
    out, ranks = run
    rows, seen = read_rows(out), ranks[0]["steps"]
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    for row, want in zip(rows, seen):
        assert float(row["loss"]) == pytest.approx(want["loss"], rel=1e-6)
        assert float(row["lr"]) == pytest.approx(want["lr"])
        assert float(row["loss_scale"]) == want["scale"]
        assert float(row["grad_norm"]) > 0
        for kind, nbytes in want["memory"].items():
            assert int(row[f"{kind}_bytes"]) == nbytes, kind
        assert int(row["rss_bytes"]) > 10 * 2**20
        tokens = float(row["tokens_per_second"]) * float(row["step_seconds"])
        assert tokens == pytest.approx(MICRO * SEQ * GAS * WORLD, rel=1e-6)
        phases = sum(float(row[f"{p}_seconds"]) for p in ("forward", "backward", "optimizer"))
        assert 0 < phases <= float(row["step_seconds"])


def test_csv_comm_seconds_add_up_to_the_ledger(run):
    out, ranks = run
    total = sum(s["seconds"] for s in ranks[0]["comm"].values())
    assert sum(float(r["comm_seconds"]) for r in read_rows(out)) == pytest.approx(total, rel=1e-6, abs=1e-9)


def test_only_rank_0_writes_and_tensorboard_gets_the_same_losses(run):
    out, ranks = run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert sorted(os.listdir(out)) == ["run", "tb"]
    events = EventAccumulator(os.path.join(out, "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("Train/loss")]
    assert losses == pytest.approx([s["loss"] for s in ranks[0]["steps"]], rel=1e-6)
    assert "Train/tokens_per_second" in events.Tags()["scalars"]


def test_comms_logger_bytes_match_the_ledger_and_respect_prof_ops(run):
    _, ranks = run
    logs = ranks[0]["logs"]
    table = [line for line in logs if re.match(r"^\w+ +calls", line)]
    assert len([line for line in logs if line == "comms since last print:"]) == STEPS // 2
    assert not any(line.startswith("all_reduce") for line in table)  # not in prof_ops
    for kind in ("all_gather", "reduce_scatter"):
        printed = sum(int(re.search(r"bytes +([\d,]+)", line).group(1).replace(",", ""))
                      for line in table if line.startswith(kind))
        assert printed == ranks[0]["comm"][kind]["bytes"], kind
    assert all("GB/s" in line or "n/a" in line for line in table)


def test_wall_clock_breakdown_includes_comm_time(run):
    _, ranks = run
    progress = [line for line in ranks[0]["logs"] if line.startswith("step ")]
    assert len(progress) == STEPS // 2
    assert all(re.search(r"forward: [\d.]+ ms .*comm: [\d.]+ ms", line) for line in progress)


def test_missing_tensorboard_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    cfg = zerolib.load_config({**config(str(tmp_path)), "train_batch_size": MICRO * GAS})
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MonitorHub(cfg, rank=1, world_size=2)


def test_tokens_come_from_input_ids_or_the_first_integer_tensor():
    ids = torch.zeros(3, 5, dtype=torch.long)
    assert tokens_in((), {"input_ids": ids}) == 15
    assert tokens_in((torch.zeros(2, 2), ids), {}) == 15
    assert tokens_in((torch.zeros(2, 2),), {}) == 0


def test_csv_with_other_columns_is_refused_by_path(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="metrics.csv exists with other columns"):
        CSVWriter(str(tmp_path), "job")

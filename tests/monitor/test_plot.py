"""`zerolib plot RUN_DIR` turns a single-process run's CSV monitor output into a PNG."""
import os

import pytest
import torch

import zerolib
from zerolib.cli import main as cli_main
from zerolib.models import GPT, GPTConfig
from zerolib.plot import read_metrics


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plot")
    torch.manual_seed(0)
    engine = zerolib.initialize(GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)), {
        "train_micro_batch_size_per_gpu": 4, "steps_per_print": None, "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
        "zero_optimization": {"stage": 2}, "csv_monitor": {"enabled": True, "output_path": str(out), "job_name": "job"}})
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(6):
        engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
        engine.step()
    engine.monitor.close()
    return os.path.join(out, "job")


def test_plot_writes_a_png_from_the_csv(run_dir, capsys):
    assert cli_main(["plot", run_dir]) == 0
    path = capsys.readouterr().out.strip()
    assert path == os.path.join(run_dir, "metrics.png")
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    losses = read_metrics(run_dir)["loss"]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the same batch six times: it must fall


def test_plot_names_a_directory_without_metrics(tmp_path, capsys):
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert f"no metrics.csv in {tmp_path}" in capsys.readouterr().out

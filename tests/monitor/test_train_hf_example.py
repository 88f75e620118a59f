"""examples/train_hf.py fine-tunes a tiny random GPT-2 saved with save_pretrained, on 2 ranks
through the zerolib launcher, for 3 steps with the CSV monitor on; then again with activation
checkpointing and a saved result that from_pretrained loads."""
import json
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[dev])")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


def launch(tmp_path, model_dir: str, *extra: str) -> subprocess.CompletedProcess:
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None, "zero_optimization": {"stage": 3},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "csv_monitor": {"enabled": True, "output_path": str(tmp_path), "job_name": "hf"}}
    (tmp_path / "ds.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "zerolib.launcher", "--num_procs", "2", os.path.join(ROOT, "examples", "train_hf.py"),
               "--model", model_dir, "--config", str(tmp_path / "ds.json"), "--steps", str(STEPS), "--seq", "32", *extra]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, f"train_hf.py failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_three_steps_on_two_ranks_write_three_csv_rows(tmp_path, model_dir):
    result = launch(tmp_path, model_dir)
    assert f"finished {STEPS} steps" in result.stdout
    assert f"step {STEPS}/{STEPS}" in result.stderr  # the progress bar reached the end
    rows = (tmp_path / "hf" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + STEPS


def test_checkpointing_and_saving_produce_a_loadable_model(tmp_path, model_dir):
    launch(tmp_path, model_dir, "--checkpointing", "--save", str(tmp_path / "out"))
    before = transformers.GPT2LMHeadModel.from_pretrained(model_dir)
    after = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    moved = [n for (n, a), b in zip(before.named_parameters(), after.parameters()) if not torch.equal(a, b)]
    assert moved, "no weight changed after 3 AdamW steps at lr 1e-3"

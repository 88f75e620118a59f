"""``--model PATH`` loading and the `zerolib serve-prefill` command line.

test_serve_prefill_end_to_end_with_the_real_engine runs the whole command on 2 ranks against a
transformers Qwen3-MoE directory.
"""
import json
import signal

import pytest
import torch

from harness import free_port
from support.serving import tiny_moe
from zerolib.cli import main as cli_main
from zerolib.config.errors import ConfigError
from zerolib.inference.serve.load import load_model
from zerolib.inference.serve.settings import ServeSettings


def save_tiny_qwen3_moe(directory) -> torch.nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=256)
    model = Qwen3MoeForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def test_a_transformers_moe_directory_loads_with_its_weights(tmp_path):
    saved = save_tiny_qwen3_moe(tmp_path)
    model, tokenizer, max_positions = load_model(str(tmp_path), ServeSettings())
    assert type(model).__name__ == "Qwen3MoeForCausalLM" and tokenizer is None and max_positions == 256
    for (name, mine), theirs in zip(model.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name


def test_a_tokenizer_saved_with_the_model_is_loaded_for_text_requests(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    save_tiny_qwen3_moe(tmp_path)
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "is": 1, "it": 2, "spam": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(tmp_path)
    _, tokenizer, _ = load_model(str(tmp_path), ServeSettings())
    assert tokenizer.encode("is it spam") == [1, 2, 3]


def test_a_moe_gpt_trained_with_zerolib_is_served_from_its_checkpoint(tmp_path):
    import zerolib
    from support.moe_models import reference_answers
    from support.serving import VOCAB, one_rank_engine, prefix_workload

    trained = tiny_moe(seed=5)
    config = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
              "zero_optimization": {"stage": 2}, "steps_per_print": None}
    engine = zerolib.initialize(trained, config)
    batch = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        engine.backward(engine(batch[:, :-1], batch[:, 1:]))
        engine.step()
    engine.save_checkpoint(str(tmp_path))
    settings = ServeSettings(model_factory="support.serving:tiny_moe")  # builds seed-0 weights
    model, _, max_positions = load_model(str(tmp_path), settings)
    assert max_positions == 128
    for (name, mine), theirs in zip(model.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    requests = prefix_workload(6, seed=7)
    served = one_rank_engine(model).score(requests)
    for mine, ref in zip(served, reference_answers(trained.eval(), requests), strict=True):
        assert mine["best"] == ref["best"] and mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5)


def test_unloadable_paths_and_factories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(str(tmp_path / "nope"), ServeSettings())
    with pytest.raises(ValueError, match="neither a transformers model directory"):
        load_model(str(tmp_path), ServeSettings())
    (tmp_path / "latest").write_text("global_step1")
    with pytest.raises(ConfigError, match="serve.model_factory: .*zerolib checkpoint"):
        load_model(str(tmp_path), ServeSettings())
    with pytest.raises(ConfigError, match="cannot import 'nowhere:model'"):
        load_model(str(tmp_path), ServeSettings(model_factory="nowhere:model"))


def test_serve_prefill_rejects_bad_arguments_before_starting_ranks(tmp_path, capsys):
    assert cli_main(["serve-prefill", "--model", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "--model" in capsys.readouterr().err
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"serve": {"max_input_tokenz": 5}}))
    assert cli_main(["serve-prefill", "--model", str(tmp_path), "--port", "0", "--config", str(config)]) == 2
    assert "serve.max_input_tokenz: unknown key; did you mean 'max_input_tokens'?" in capsys.readouterr().err
    config.write_text(json.dumps({"moe_prefill": {"mod": "dp_ep"}}))
    assert cli_main(["serve-prefill", "--model", str(tmp_path), "--port", "0", "--config", str(config)]) == 2
    assert "moe_prefill.mod: unknown key; did you mean 'mode'?" in capsys.readouterr().err
    assert cli_main(["serve-prefill", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_serve_prefill_starts_the_worker_on_every_rank_through_the_launcher(tmp_path):
    from zerolib.inference.serve.cli import build_parser, launcher_argv
    from zerolib.launcher.options import parse_launch_args

    args = build_parser().parse_args(["--model", str(tmp_path), "--num_procs", "4", "--port", "8000"])
    launch = parse_launch_args(launcher_argv(args))
    assert launch.num_procs == 4 and launch.module and launch.user_script == "zerolib.inference.serve.worker"
    worker = launch.user_args
    assert worker[worker.index("--host") + 1] == "127.0.0.1", "bound to this machine unless asked"
    assert worker[worker.index("--port") + 1] == "8000" and worker[worker.index("--model") + 1] == str(tmp_path)


def test_serve_prefill_end_to_end_with_the_real_engine(tmp_path):
    httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install zerolib[dev])")
    from test_server_launch import Job

    model = save_tiny_qwen3_moe(tmp_path / "model")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"moe_prefill": {"mode": "async_ep"}, "serve": {"idle_tick_seconds": 0.2}}))
    job = Job(["serve-prefill", "--model", str(tmp_path / "model"), "--num_procs", "2", "--port", "0",
               "--config", str(config), "--master_port", str(free_port())])
    try:
        url = job.wait_for("serving on", timeout=180).split("serving on ")[1].split()[0]
        prefix = [(7 * i) % 96 for i in range(40)]
        requests = [{"input_ids": prefix + [i, i + 1], "candidates": [1, 2, 3]} for i in range(6)]
        results = httpx.post(url + "/v1/score", json={"requests": requests}, timeout=120).json()["results"]
        with torch.no_grad():
            for request, result in zip(requests, results, strict=True):
                logits = model(torch.tensor([request["input_ids"]])).logits[0, -1]
                expected = torch.log_softmax(logits.float(), -1)[request["candidates"]]
                assert result["logprobs"] == pytest.approx(expected.tolist(), abs=1e-4)
    finally:
        job.proc.send_signal(signal.SIGTERM)
        code, output = job.finish()
    assert "[rank0] stopped cleanly" in output and code == 128 + signal.SIGTERM, output

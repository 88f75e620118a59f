""""auto" values and real-world configs (Hugging Face Trainer and DeepSpeed examples)."""
from types import SimpleNamespace

import pytest

from config_helpers import FIXTURES, fixture_dict, load_with_warnings
from zerolib.config import ConfigError, load_config, resolve_auto


def _model(hidden_size: int) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size))


def test_bucket_sizes_resolve_from_the_models_hidden_size():
    raw = {"train_batch_size": 8, "zero_optimization": {
        "stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto"}}
    cfg, notes = load_with_warnings(raw, model=_model(1024), check_implemented=False)
    zero = cfg.zero_optimization
    assert zero.reduce_bucket_size == 1024 * 1024
    assert zero.stage3_prefetch_bucket_size == int(0.9 * 1024 * 1024)
    assert zero.stage3_param_persistence_threshold == 10 * 1024
    assert "zero_optimization.reduce_bucket_size: \"auto\" resolved to 1048576 from the " \
           "model's hidden size 1024" in notes


def test_hidden_sizes_list_uses_the_largest():
    model = SimpleNamespace(config=SimpleNamespace(hidden_sizes=[64, 256, 128]))
    resolved, _ = resolve_auto({"zero_optimization": {"reduce_bucket_size": "auto"}}, 1, model)
    assert resolved["zero_optimization"]["reduce_bucket_size"] == 256 * 256


def test_without_a_model_auto_falls_back_to_the_default_and_says_so():
    cfg, notes = load_with_warnings({"train_batch_size": 8, "gradient_clipping": "auto",
                                     "zero_optimization": {"reduce_bucket_size": "auto"}})
    assert cfg.zero_optimization.reduce_bucket_size == 500_000_000
    assert cfg.gradient_clipping == 1.0
    assert ("zero_optimization.reduce_bucket_size: \"auto\" resolved to the default 500000000; "
            "set it explicitly to silence this") in notes
    assert any(n.startswith("gradient_clipping: \"auto\" resolved to the default 1.0")
               for n in notes)


def test_resolve_auto_does_not_modify_its_input():
    raw = {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}
    resolved, notes = resolve_auto(raw, 2, None)
    assert raw["optimizer"]["params"]["lr"] == "auto"
    assert resolved == {"optimizer": {"type": "AdamW", "params": {}}}
    assert set(notes) == {"optimizer.params.lr"}


def test_auto_without_default_names_the_key_to_set():
    raw = {"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR", "params": {
        "total_num_steps": "auto"}}}
    with pytest.raises(ConfigError, match=r"^scheduler\.params\.total_num_steps: is \"auto\", "
                                          r"which zerolib cannot resolve .*; set a value"):
        load_config(raw)


def _as_trainer_fills_it(name: str, micro: int = 4) -> dict:
    """The fixture with the batch size the Trainer would write (its per_device_train_batch_size)."""
    config = fixture_dict(name)
    config["train_micro_batch_size_per_gpu"] = micro
    return config


def test_hf_trainer_zero2_config_loads():
    with pytest.raises(ConfigError, match=r"^train_batch_size: no batch size given"):
        load_config(FIXTURES / "hf_trainer_zero2.json", check_implemented=False)
    cfg, notes = load_with_warnings(_as_trainer_fills_it("hf_trainer_zero2.json"), world_size=2,
                                    check_implemented=False)
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (8, 1)
    assert cfg.zero_optimization.stage == 2
    assert cfg.zero_optimization.offload_optimizer.device == "cpu"
    assert cfg.zero_optimization.allgather_bucket_size == 200_000_000
    assert cfg.optimizer.type == "AdamW" and cfg.optimizer.params.betas == (0.9, 0.999)
    assert cfg.fp16.enabled is False and cfg.bf16.enabled is False
    assert cfg.steps_per_print == 2000
    assert any(n.startswith("optimizer.params.lr: \"auto\" resolved to the default 0.001")
               for n in notes)


def test_hf_trainer_zero3_config_loads():
    config = _as_trainer_fills_it("hf_trainer_zero3.json")
    load_config(config, world_size=2)
    cfg, _ = load_with_warnings(config, world_size=2, model=_model(768), check_implemented=False)
    zero = cfg.zero_optimization
    assert zero.stage == 3 and zero.offload_param.device == "cpu"
    assert zero.reduce_bucket_size == 768 * 768
    assert zero.stage3_max_live_parameters == 1_000_000_000
    assert zero.stage3_gather_16bit_weights_on_model_save is True


def test_deepspeed_bert_example_loads_without_warnings():
    cfg, notes = load_with_warnings(FIXTURES / "deepspeed_zero1_bert.json", world_size=4)
    assert notes == []
    assert (cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu,
            cfg.gradient_accumulation_steps) == (64, 8, 2)
    assert cfg.scheduler.type == "WarmupDecayLR" and cfg.scheduler.params.total_num_steps == 10000
    assert cfg.fp16.enabled and cfg.zero_optimization.stage == 1

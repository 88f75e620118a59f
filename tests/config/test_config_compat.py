"""Deprecated spellings warn and map to modern keys; unimplemented features fail clearly."""
import re
import warnings

import pytest

from config_helpers import FIXTURES, base, load_with_warnings
from zerolib.config import ConfigError, ZeroConfigWarning, check_implemented, load_config
from zerolib.config.support import IGNORED, UNIMPLEMENTED


def test_legacy_fixture_maps_every_old_spelling():
    cfg, notes = load_with_warnings(FIXTURES / "legacy_spellings.json", world_size=2,
                                    check_implemented=False)
    assert cfg.bf16.enabled is True
    assert cfg.zero_optimization.offload_optimizer.device == "cpu"
    assert cfg.zero_optimization.offload_optimizer.pin_memory is False
    assert cfg.zero_optimization.stage3_gather_16bit_weights_on_model_save is False
    assert cfg.train_batch_size == 16
    old_keys = ["bfloat16", "zero_optimization.cpu_offload",
                "zero_optimization.cpu_offload_use_pin_memory",
                "zero_optimization.stage3_gather_fp16_weights_on_model_save"]
    for key in old_keys:
        assert sum(note.startswith(f"{key} is deprecated; write ") for note in notes) == 1, key
    # The rewritten config loads (optimizer offload to the CPU is implemented) and every old
    # spelling is warned about once.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(FIXTURES / "legacy_spellings.json", world_size=2)
    assert sorted(str(w.message).split(" is deprecated")[0] for w in caught
                  if issubclass(w.category, ZeroConfigWarning)) == sorted(old_keys)


@pytest.mark.parametrize("old, check", [
    ({"zero_optimization": True}, lambda c: c.zero_optimization.stage == 1),
    ({"zero_optimization": False}, lambda c: c.zero_optimization.stage == 0),
    ({"zero_optimization": {"stage": 3, "cpu_offload_params": True}},
     lambda c: c.zero_optimization.offload_param.device == "cpu"),
    ({"fp32_allreduce": True}, lambda c: c.communication_data_type == "fp32"),
    ({"zero_optimization": {"stage": 1, "allgather_size": 100}},
     lambda c: c.zero_optimization.allgather_bucket_size == 100),
])
def test_old_spelling_maps_and_warns_once(old, check):
    cfg, notes = load_with_warnings(base(**old), check_implemented=False)
    assert check(cfg)
    assert len([n for n in notes if "is deprecated" in n]) == 1, notes


@pytest.mark.parametrize("config, pattern", [
    (base(bfloat16={"enabled": True}, bf16={"enabled": True}),
     r"^bfloat16: deprecated spelling of bf16, and both are given"),
    (base(zero_optimization={"stage": 1, "cpu_offload": True,
                             "offload_optimizer": {"device": "none"}}),
     r"^zero_optimization\.cpu_offload: conflicts with zero_optimization\.offload_optimizer"),
    (base(zero_optimization={"cpu_offload": "yes"}),
     r"^zero_optimization\.cpu_offload: Input should be a valid boolean"),
    (base(zero_optimization={"stage": 1, "cpu_offload_use_pin_memory": 1}),
     r"^zero_optimization\.cpu_offload_use_pin_memory: Input should be a valid boolean"),
    (base(fp32_allreduce="yes"), r"^fp32_allreduce: Input should be a valid boolean"),
    (base(fp32_allreduce=True, communication_data_type="bf16"),
     r"^fp32_allreduce: conflicts with communication_data_type"),
])
def test_conflicting_old_and_new_spellings(config, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(config, check_implemented=False)


def test_ignored_keys_warn_by_name():
    _, notes = load_with_warnings(base(wandb={"enabled": False},
                                       zero_optimization={"legacy_stage1": False}))
    assert "accepted but ignored: wandb (zerolib does not act on it)" in notes
    assert any(n.startswith("accepted but ignored: zero_optimization.legacy_stage1") for n in notes)
    _, quiet = load_with_warnings(base())
    assert quiet == []
    loaded, _ = load_with_warnings(base(wandb={"enabled": False}))
    _, reloaded = load_with_warnings(loaded, world_size=2)
    assert reloaded == []  # warned at the first load; to_dict's explicit defaults are not news
    assert set(IGNORED) >= {"zero_optimization.mics_shard_size", "flops_profiler"}


UNIMPLEMENTED_CASES = {
    "zero_optimization.zero_quantized_nontrainable_weights": {
        "zero_optimization": {"stage": 3, "zero_quantized_nontrainable_weights": True}},
}


def test_every_unimplemented_row_has_a_case():
    assert [row.path for row in UNIMPLEMENTED] == list(UNIMPLEMENTED_CASES)


@pytest.mark.parametrize("path", list(UNIMPLEMENTED_CASES))
def test_unimplemented_feature_fails_clearly(path):
    config = base(**UNIMPLEMENTED_CASES[path])
    cfg = load_config(config, world_size=2, check_implemented=False)
    with pytest.raises(ConfigError) as info:
        check_implemented(cfg)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}: ")
    assert any(re.match(rf"(  also )?{re.escape(path)}: .*not implemented yet in this version",
                        line) for line in lines), lines
    with pytest.raises(ConfigError, match=re.escape(f"{path}: ")):
        load_config(config, world_size=2)


def test_defaults_are_all_implemented():
    check_implemented(load_config(base()))

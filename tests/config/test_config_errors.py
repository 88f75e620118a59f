"""Rejections: each names the full key path and what is allowed."""
import json
import re

import pytest

from config_helpers import base
from zerolib.config import ConfigError, load_config

ADAM = {"type": "Adam"}

# (id, config, regex the whole message must start with)
CASES = [
    ("stage-out-of-range", base(zero_optimization={"stage": 5}),
     r"zero_optimization\.stage: Input should be 0, 1, 2 or 3 \(got 5\)"),
    ("stage-bool", base(zero_optimization={"stage": True}),
     r"zero_optimization\.stage: Input should be a number, not a boolean"),
    ("stage-string", base(zero_optimization={"stage": "2"}),
     r"zero_optimization\.stage: Input should be 0, 1, 2 or 3 \(got '2'\)"),
    ("misspelt-top", base(zero_optimisation={"stage": 1}),
     r"zero_optimisation: unknown key; did you mean 'zero_optimization'\?"),
    ("misspelt-nested", base(zero_optimization={"reduce_bucket_sise": 10}),
     r"zero_optimization\.reduce_bucket_sise: unknown key; did you mean 'reduce_bucket_size'\?"),
    ("misspelt-deep", base(zero_optimization={"stage": 1, "offload_optimizer": {"devic": "cpu"}}),
     r"zero_optimization\.offload_optimizer\.devic: unknown key; did you mean 'device'\?"),
    ("unknown-far", base(qqqqqq=1), r"qqqqqq: unknown key; valid keys are "),
    ("unknown-with-equals", base(fp16={"a=b": 1}), r"fp16\.a=b: unknown key"),
    ("negative-lr", base(optimizer={"type": "Adam", "params": {"lr": -0.1}}),
     r"optimizer\.params\.lr: Input should be greater than or equal to 0 \(got -0\.1\)"),
    ("lr-string", base(optimizer={"type": "Adam", "params": {"lr": "1e-3"}}),
     r"optimizer\.params\.lr: Input should be a valid number \(got '1e-3'\)"),
    ("beta-one", base(optimizer={"type": "AdamW", "params": {"betas": [0.9, 1.0]}}),
     r"optimizer\.params\.betas\[1\]: must be in \[0, 1\) \(got 1\.0\)"),
    ("beta-negative", base(optimizer={"type": "Adam", "params": {"betas": [-0.1, 0.9]}}),
     r"optimizer\.params\.betas\[0\]: must be in \[0, 1\)"),
    ("betas-length", base(optimizer={"type": "Adam", "params": {"betas": [0.9]}}),
     r"optimizer\.params\.betas\[1\]: required key is missing"),
    ("optimizer-missing-type", base(optimizer={"params": {"lr": 0.1}}),
     r"optimizer\.type: required key is missing; one of Adam, AdamW, SGD"),
    ("optimizer-unsupported", base(optimizer={"type": "OneBitAdam"}),
     r"optimizer\.type: 'OneBitAdam' is a DeepSpeed type zerolib does not support; "
     r"use one of Adam, AdamW, SGD"),
    ("optimizer-lamb-lowercase", base(optimizer={"type": "lamb"}),
     r"optimizer\.type: 'lamb' is a DeepSpeed type zerolib does not support"),
    ("optimizer-not-object", base(optimizer="adam"),
     r"optimizer: Input should be an object \{\"type\": one of Adam, AdamW, SGD"),
    ("optimizer-unknown", base(optimizer={"type": "Adamm"}),
     r"optimizer\.type: Input should be one of Adam, AdamW, SGD \(got 'Adamm'\)"),
    ("adam-param-in-sgd", base(optimizer={"type": "SGD", "params": {"betas": [0.9, 0.99]}}),
     r"optimizer\.params\.betas: unknown key"),
    ("max-grad-norm", base(optimizer={"type": "Adam", "params": {"max_grad_norm": 1.0}}),
     r"optimizer\.params\.max_grad_norm: unknown key; gradient clipping is the top-level key "
     r"'gradient_clipping'"),
    ("adamw-l2", base(optimizer={"type": "AdamW", "params": {"adam_w_mode": False}}),
     r"optimizer\.params\.adam_w_mode: must be true for AdamW"),
    ("nesterov", base(optimizer={"type": "SGD", "params": {"nesterov": True}}),
     r"optimizer\.params\.nesterov: needs momentum > 0 and dampening 0"),
    ("scheduler-foreign-param", base(scheduler={"type": "WarmupLR", "params": {
        "cycle_min_lr": 0.1}}),
     r"scheduler\.params\.cycle_min_lr: belongs to scheduler type OneCycle, not WarmupLR"),
    ("scheduler-foreign-total", base(scheduler={"type": "WarmupLR", "params": {
        "total_num_steps": 10}}),
     r"scheduler\.params\.total_num_steps: belongs to scheduler type "
     r"WarmupDecayLR / WarmupCosineLR, not WarmupLR"),
    ("scheduler-missing-total", base(scheduler={"type": "WarmupDecayLR", "params": {}}),
     r"scheduler\.params\.total_num_steps: required key is missing"),
    ("scheduler-lrrange", base(scheduler={"type": "LRRangeTest"}),
     r"scheduler\.type: 'LRRangeTest' is a DeepSpeed type zerolib does not support"),
    ("warmup-type", base(scheduler={"type": "WarmupLR", "params": {"warmup_type": "cosine"}}),
     r"scheduler\.params\.warmup_type: Input should be 'log' or 'linear' \(got 'cosine'\)"),
    ("warmup-min-above-max", base(scheduler={"type": "WarmupLR", "params": {
        "warmup_min_lr": 0.1, "warmup_max_lr": 0.01}}),
     r"scheduler\.params\.warmup_min_lr: 0\.1 is above warmup_max_lr 0\.01"),
    ("onecycle-bounds", base(scheduler={"type": "OneCycle", "params": {
        "cycle_min_lr": 0.1, "cycle_max_lr": 0.01}}),
     r"scheduler\.params\.cycle_min_lr: 0\.1 is above cycle_max_lr"),
    ("fp16-and-bf16", base(fp16={"enabled": True}, bf16={"enabled": True}),
     r"bf16\.enabled: fp16\.enabled and bf16\.enabled are both true"),
    ("fp16-enabled-string", base(fp16={"enabled": "true"}),
     r"fp16\.enabled: Input should be a valid boolean \(got 'true'\)"),
    ("hysteresis-zero", base(fp16={"hysteresis": 0}),
     r"fp16\.hysteresis: Input should be greater than or equal to 1 \(got 0\)"),
    ("offload-param-stage2", base(zero_optimization={"stage": 2, "offload_param": {
        "device": "cpu"}}),
     r"zero_optimization\.offload_param\.device: needs stage 3 or higher \(stage is 2\)"),
    ("offload-optimizer-stage0", base(zero_optimization={"offload_optimizer": {"device": "cpu"}}),
     r"zero_optimization\.offload_optimizer\.device: needs stage 1 or higher"),
    ("offload-device", base(zero_optimization={"stage": 2, "offload_optimizer": {
        "device": "gpu"}}),
     r"zero_optimization\.offload_optimizer\.device: Input should be 'none', 'cpu' or 'nvme'"),
    ("nvme-without-path", base(zero_optimization={"stage": 3, "offload_param": {
        "device": "nvme"}}),
     r"zero_optimization\.offload_param\.nvme_path: required when device is 'nvme'"),
    ("hpz-stage2", base(zero_optimization={"stage": 2, "zero_hpz_partition_size": 2}),
     r"zero_optimization\.zero_hpz_partition_size: needs stage 3 or higher"),
    ("size-fraction", base(zero_optimization={"reduce_bucket_size": 2.5e0}),
     r"zero_optimization\.reduce_bucket_size: Input should be a whole number"),
    ("size-negative", base(zero_optimization={"allgather_bucket_size": -5}),
     r"zero_optimization\.allgather_bucket_size: Input should be greater than or equal to 1"),
    ("size-inf", base(zero_optimization={"sub_group_size": float("inf")}),
     r"zero_optimization\.sub_group_size: Input should be a whole number"),
    ("block-not-dict", base(zero_optimization=[1, 2]),
     r"zero_optimization: Input should be an object \(\{\.\.\.\}\) \(got \[1, 2\]\)"),
    ("clipping-negative", base(gradient_clipping=-1.0),
     r"gradient_clipping: Input should be greater than or equal to 0"),
    ("clipping-nan", base(gradient_clipping=float("nan")),
     r"gradient_clipping: Input should be a finite number"),
    ("comm-dtype", base(communication_data_type="int8"),
     r"communication_data_type: Input should be 'fp32', 'fp16' or 'bf16'"),
    ("amp", base(amp={"enabled": True}), r"amp: NVIDIA Apex AMP is not supported; use bf16"),
    ("batch-zero", {"train_batch_size": 0}, r"train_batch_size: Input should be greater than"),
    ("node-size", base(comm={"node_size": 3}), r"comm\.node_size: 3 does not divide world_size 2"),
]


@pytest.mark.parametrize("config, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejection_names_key_path(config, pattern):
    with pytest.raises(ConfigError) as info:
        load_config(config, world_size=2, check_implemented=False)
    assert re.match(pattern, str(info.value)), str(info.value)
    assert info.value.path == str(info.value).split(":")[0]


def test_hpz_must_divide_world_size():
    config = base(train_batch_size=6, zero_optimization={"stage": 3,
                                                         "zero_hpz_partition_size": 4})
    with pytest.raises(ConfigError, match=r"^zero_optimization\.zero_hpz_partition_size: 4 does "
                                          r"not divide world_size 6"):
        load_config(config, world_size=6, check_implemented=False)
    assert load_config(config | {"train_batch_size": 8}, world_size=8,
                       check_implemented=False).zero_optimization.zero_hpz_partition_size == 4


def test_several_problems_are_all_reported():
    config = base(fp16={"enabled": 1}, zero_optimization={"stage": 9})
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert "fp16.enabled" in text and "zero_optimization.stage" in text


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: config file not found")):
        load_config(missing)


def test_bad_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train_batch_size": 8,\n  "fp16": {"enabled": true,}\n}\n')
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": invalid JSON at line 3, "
                                                                 r"column 28"):
        load_config(str(path))


def test_json_errors_other_than_syntax(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="the top level must be a JSON object, not list"):
        load_config(path)
    path.write_text('{"train_batch_size": 8, "train_batch_size": 16}')
    with pytest.raises(ConfigError, match=r"^train_batch_size: appears twice .* \(in "):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)


def test_validation_error_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(base(zero_optimization={"stage": 4})))
    with pytest.raises(ConfigError, match=r"^zero_optimization\.stage: .*\(in .*ds\.json\)"):
        load_config(path)


@pytest.mark.parametrize("source", [42, None, ["train_batch_size"], b"{}"])
def test_unsupported_source_type(source):
    with pytest.raises(ConfigError, match="^config: expected a dict, a path to a JSON file"):
        load_config(source)


@pytest.mark.parametrize("world_size", [0, -2, 1.5, True, "2"])
def test_bad_world_size(world_size):
    with pytest.raises(ConfigError, match="^world_size: must be a positive integer"):
        load_config(base(), world_size=world_size)

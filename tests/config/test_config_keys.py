"""Every documented key is accepted with a valid value, and the value is what the engine reads."""
import pytest
from pydantic import BaseModel

from config_helpers import load_with_warnings
from zerolib.config import ConfigError, ZeroConfig, load_config
from zerolib.config.docgen import _sub_models
from zerolib.config.root import GRADIENT_CLIPPING_DEFAULT

# Every key of every block, each with a valid value that differs from its default, so that the
# round-trip check below proves the value was read rather than defaulted.
FULL = {
    "train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
    "fp16": {"enabled": True, "auto_cast": True, "loss_scale": 0, "initial_scale_power": 12,
             "loss_scale_window": 500, "hysteresis": 3, "consecutive_hysteresis": True,
             "min_loss_scale": 2.0},
    "bf16": {"enabled": False, "check_grad_overflow": True},
    "nonfinite_gradients": "skip", "communication_data_type": "fp32", "gradient_clipping": 0.5, "prescale_gradients": True,
    "gradient_predivide_factor": 2.0, "steps_per_print": 50, "wall_clock_breakdown": True,
    "dump_state": True, "seed": 1234, "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
    "zero_optimization": {
        "stage": 3, "reduce_bucket_size": 1000, "allgather_bucket_size": 2000,
        "overlap_comm": False, "contiguous_gradients": False, "reduce_scatter": False,
        "allgather_partitions": False, "round_robin_gradients": True, "sub_group_size": 3000,
        "stage3_prefetch_bucket_size": 4000, "stage3_param_persistence_threshold": 5000,
        "stage3_max_live_parameters": 6000, "stage3_max_reuse_distance": 7000,
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp/nvme", "pin_memory": False,
                              "buffer_count": 8, "ratio": 0.5, "fast_init": True},
        "offload_param": {"device": "cpu", "nvme_path": "/tmp/p", "pin_memory": False,
                          "buffer_count": 6, "buffer_size": 1234, "max_in_cpu": 5678},
        "zero_quantized_weights": True, "zero_quantized_nontrainable_weights": True,
        "zero_hpz_partition_size": 2, "zero_quantized_gradients": True, "zero_quantized_gradients_bits": 8,
        "zero_quantized_block_size": 64, "mics_shard_size": 4,
        "elastic_checkpoint": True, "ignore_unused_parameters": False, "legacy_stage1": True,
        "memory_efficient_linear": False,
    },
    "aio": {"block_size": 4096, "queue_depth": 4, "thread_count": 2, "single_submit": True,
            "overlap_events": False},
    "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True,
                                 "contiguous_memory_optimization": True, "number_checkpoints": 4,
                                 "synchronize_checkpoint_boundary": True, "profile": True},
    "tensorboard": {"enabled": True, "output_path": "runs/tb", "job_name": "tb"},
    "csv_monitor": {"enabled": True, "output_path": "runs/csv", "job_name": "csv"},
    "wandb": {"enabled": True, "group": "g", "team": "t", "project": "p"},
    "comms_logger": {"enabled": True, "verbose": True, "prof_all": False, "debug": True,
                     "prof_ops": ["all_reduce"]},
    "flops_profiler": {"enabled": True, "recompute_fwd_factor": 1.0, "profile_step": 5,
                       "module_depth": 2, "top_modules": 3, "detailed": False,
                       "output_file": "flops.txt"},
    "comm": {"timeout_seconds": 30, "node_size": 2, "verify_module_order": False},
}

OPTIMIZERS = [
    {"type": "Adam", "params": {"lr": 0.01, "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1,
                                "torch_adam": True, "adam_w_mode": False}},
    {"type": "AdamW", "params": {"lr": 0.01, "betas": [0.8, 0.9], "eps": 1e-6,
                                 "weight_decay": 0.1, "torch_adam": True, "adam_w_mode": True}},
    {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.1,
                               "nesterov": True}},
]
SCHEDULERS = [
    {"type": "WarmupLR", "params": {"warmup_min_lr": 0.001, "warmup_max_lr": 0.01,
                                    "warmup_num_steps": 10, "warmup_type": "linear"}},
    {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.001, "warmup_max_lr": 0.01,
                                         "warmup_num_steps": 10, "warmup_type": "linear",
                                         "total_num_steps": 100}},
    {"type": "WarmupCosineLR", "params": {"total_num_steps": 100, "warmup_min_ratio": 0.1,
                                          "warmup_num_steps": 10, "cos_min_ratio": 0.01,
                                          "warmup_type": "linear"}},
    {"type": "OneCycle", "params": {
        "cycle_min_lr": 0.001, "cycle_max_lr": 0.01, "decay_lr_rate": 0.1,
        "cycle_first_step_size": 10, "cycle_second_step_size": 20, "cycle_first_stair_count": 2,
        "cycle_second_stair_count": 3, "decay_step_size": 5, "cycle_momentum": False,
        "cycle_min_mom": 0.85, "cycle_max_mom": 0.95, "decay_mom_rate": 0.1}},
]


def _paths(data: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in data.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and key != "params":
            paths |= _paths(value, f"{prefix}{key}.")
    return paths


def _schema_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        paths.add(prefix + name)
        if name in ("optimizer", "scheduler"):
            continue  # typed blocks are covered per type below
        for sub in _sub_models(field.rebuild_annotation()):
            paths |= _schema_paths(sub, f"{prefix}{name}.")
    return paths


def _read(cfg, path: str):
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def test_full_config_covers_every_documented_key():
    assert _paths(FULL) | {"optimizer", "scheduler"} == _schema_paths(ZeroConfig)
    for blocks, name in ((OPTIMIZERS, "optimizer"), (SCHEDULERS, "scheduler")):
        for block in blocks:
            loaded, _ = load_with_warnings({**FULL, name: block}, world_size=4,
                                           check_implemented=False)
            params_model = type(getattr(loaded, name).params)
            assert set(block["params"]) == set(params_model.model_fields), block["type"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o["type"])
@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s["type"])
def test_every_key_round_trips(optimizer, scheduler):
    source = {**FULL, "optimizer": optimizer, "scheduler": scheduler}
    cfg, _ = load_with_warnings(source, world_size=4, check_implemented=False)
    for path, value in _leaves(source):
        read = _read(cfg, path)
        expected = tuple(value) if isinstance(read, tuple) else value
        assert read == expected, path


def test_defaults_are_explicit_in_the_resolved_dict():
    cfg = load_config({"train_micro_batch_size_per_gpu": 2})
    resolved = cfg.to_dict()
    assert resolved["gradient_clipping"] == GRADIENT_CLIPPING_DEFAULT == 1.0
    assert resolved["zero_optimization"]["reduce_bucket_size"] == 500_000_000
    assert resolved["zero_optimization"]["offload_optimizer"]["pin_memory"] is True
    assert resolved["fp16"]["initial_scale_power"] == 16
    assert resolved["steps_per_print"] == 10
    assert '"gradient_clipping": 1.0' in cfg.resolved_summary()


def test_type_names_are_case_insensitive_and_canonicalised():
    for raw, canonical in (("adam", "Adam"), ("ADAMW", "AdamW"), ("sgd", "SGD")):
        cfg = load_config({"train_batch_size": 8, "optimizer": {"type": raw}})
        assert cfg.optimizer.type == canonical
    cfg = load_config({"train_batch_size": 8, "scheduler": {"type": "warmuplr"}})
    assert cfg.scheduler.type == "WarmupLR"


def test_sizes_accept_integral_floats_and_overlap_comm_follows_stage():
    cfg = load_config({"train_batch_size": 8, "zero_optimization": {
        "stage": 3, "reduce_bucket_size": 5e8}}, check_implemented=False)
    assert cfg.zero_optimization.reduce_bucket_size == 500_000_000
    assert isinstance(cfg.zero_optimization.reduce_bucket_size, int)
    assert cfg.zero_optimization.overlap_comm is True
    assert load_config({"train_batch_size": 8}).zero_optimization.overlap_comm is False


def test_assignment_is_validated():
    cfg = load_config({"train_batch_size": 8})
    cfg.zero_optimization.stage = 2
    assert cfg.zero_optimization.stage == 2
    with pytest.raises(ConfigError, match=r"^stage: Input should be 0, 1, 2 or 3 \(got 7\)"):
        cfg.zero_optimization.stage = 7
    with pytest.raises(ConfigError, match=r"^train_batch_size: Input should be greater than"):
        cfg.train_batch_size = 0


def test_node_size_defaults_from_local_world_size(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert load_config({"train_batch_size": 8}, world_size=4).comm.node_size == 2
    # A launcher value that does not fit the world size is not the config's fault: one node.
    assert load_config({"train_batch_size": 9}, world_size=3).comm.node_size == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert load_config({"train_batch_size": 8}, world_size=4).comm.node_size == 4
    explicit = load_config({"train_batch_size": 8, "comm": {"node_size": 1}}, world_size=4)
    assert explicit.comm.node_size == 1
    with pytest.raises(ConfigError, match=r"^comm\.node_size: 3 does not divide world_size 4"):
        load_config({"train_batch_size": 8, "comm": {"node_size": 3}}, world_size=4)


def test_typed_blocks_accept_assignment():
    cfg = load_config({"train_batch_size": 8})
    cfg.optimizer = {"type": "sgd", "params": {"lr": 0.5}}
    assert cfg.optimizer.type == "SGD" and cfg.optimizer.params.lr == 0.5
    with pytest.raises(ConfigError, match=r"^optimizer: Input should be an object"):
        cfg.optimizer = "adam"

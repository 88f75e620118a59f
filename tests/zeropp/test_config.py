"""ZeRO++ keys: accepted at stage 3, rejected naming the key where they cannot work."""
import pytest

from zerolib.config import ConfigError, load_config


def config(**zero):
    return {"train_batch_size": 8, "zero_optimization": {"stage": 3, **zero}}


def test_the_three_switches_load_at_stage_3():
    cfg = load_config(config(zero_quantized_weights=True, zero_hpz_partition_size=2, zero_quantized_gradients=True,
                             zero_quantized_gradients_bits=8, zero_quantized_block_size=64), world_size=4)
    zero = cfg.zero_optimization
    assert (zero.zero_quantized_weights, zero.zero_hpz_partition_size, zero.zero_quantized_gradients) == (True, 2, True)
    assert (zero.zero_quantized_gradients_bits, zero.zero_quantized_block_size) == (8, 64)
    default = load_config(config(zero_quantized_gradients=True), world_size=4).zero_optimization
    assert default.zero_quantized_gradients_bits == 4


@pytest.mark.parametrize("key,value", [("zero_quantized_weights", True), ("zero_hpz_partition_size", 2),
                                       ("zero_quantized_gradients", True)])
@pytest.mark.parametrize("stage", [1, 2])
def test_below_stage_3_is_an_error_naming_the_key(key, value, stage):
    message = rf"^zero_optimization\.{key}: needs stage 3 or higher \(stage is {stage}\)"
    with pytest.raises(ConfigError, match=message):
        load_config({"train_batch_size": 8, "zero_optimization": {"stage": stage, key: value}}, world_size=4)


def test_hpz_partition_size_must_divide_the_world_size():
    message = r"^zero_optimization\.zero_hpz_partition_size: 3 does not divide world_size 4"
    with pytest.raises(ConfigError, match=message):
        load_config(config(zero_hpz_partition_size=3), world_size=4)


@pytest.mark.parametrize("key,value,message", [
    ("zero_quantized_gradients_bits", 2, "should be 4 or 8"),
    ("zero_quantized_block_size", 12, "multiple of 8"),
    ("zero_quantized_block_size", 0, "greater than or equal to 8"),
])
def test_bad_quantization_knobs_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=rf"^zero_optimization\.{key}: .*{message}"):
        load_config(config(**{key: value}), world_size=4)


def test_node_size_must_divide_the_world_size():
    with pytest.raises(ConfigError, match=r"^comm\.node_size: 3 does not divide world_size 4"):
        load_config({**config(zero_quantized_gradients=True), "comm": {"node_size": 3}}, world_size=4)

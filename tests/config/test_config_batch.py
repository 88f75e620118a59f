"""The batch triple: train = micro × gas × world_size; any two fix the third."""
import pytest

from config_helpers import load_with_warnings
from zerolib.config import ConfigError, ZeroConfig, load_config

T, M, G = "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"


@pytest.mark.parametrize("given, world_size, expected", [
    ({T: 32, M: 4, G: 2}, 4, (32, 4, 2)),      # all three, consistent
    ({T: 32, M: 4}, 4, (32, 4, 2)),            # gas derived
    ({T: 32, G: 2}, 4, (32, 4, 2)),            # micro derived
    ({M: 4, G: 2}, 4, (32, 4, 2)),             # train derived
    ({T: 32}, 4, (32, 8, 1)),                  # train only: micro = train / world, gas 1
    ({M: 3}, 5, (15, 3, 1)),                   # micro only: gas 1
    ({T: 7}, 1, (7, 7, 1)),
    ({T: 6.0, M: 3e0}, 2, (6, 3, 1)),          # integral floats are whole numbers
])
def test_resolution(given, world_size, expected):
    cfg = load_config(given, world_size=world_size)
    assert (cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu,
            cfg.gradient_accumulation_steps) == expected


@pytest.mark.parametrize("given, world_size, pattern", [
    ({}, 1, rf"^{T}: no batch size given: set {T} or {M}"),
    ({G: 4}, 2, rf"^{M}: {G}=4 alone does not fix the batch: set {M} or {T}"),
    ({T: 32, M: 4, G: 3}, 4,
     rf"^{T}: inconsistent batch: {T}=32, {M}=4, {G}=3, world_size=4, but 4 × 3 × 4 = 48"),
    ({T: 30}, 4, rf"^{M}: cannot be derived: 30 is not divisible by 4 \({T}=30, {M}=None, "
                 rf"{G}=None, world_size=4\)"),
    ({T: 32, M: 3}, 4, rf"^{G}: cannot be derived: 32 is not divisible by 12"),
    ({T: 32, G: 3}, 4, rf"^{M}: cannot be derived: 32 is not divisible by 12"),
    ({T: 2}, 4, rf"^{M}: cannot be derived: 2 is not divisible by 4"),
])
def test_rejection(given, world_size, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(given, world_size=world_size)


def test_reloading_a_config_re_resolves_for_another_world_size():
    cfg = load_config({T: 64, M: 4}, world_size=2)
    assert cfg.gradient_accumulation_steps == 8
    bigger = load_config(cfg, world_size=8)
    assert (bigger.train_batch_size, bigger.train_micro_batch_size_per_gpu,
            bigger.gradient_accumulation_steps) == (64, 4, 2)
    assert cfg.gradient_accumulation_steps == 8  # the original is not changed
    with pytest.raises(ConfigError, match=rf"^{G}: cannot be derived: 64 is not divisible by 12"):
        load_config(cfg, world_size=3)


def test_auto_batch_keys_resolve_from_the_others():
    cfg, notes = load_with_warnings({T: "auto", M: 2, G: "auto"}, world_size=4)
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (8, 1)
    assert any(note.startswith(f"{T}: \"auto\" resolved from the other batch keys")
               for note in notes)


def test_all_auto_batch_names_the_key_to_set():
    with pytest.raises(ConfigError, match=rf"^{T}: no batch size given.*{T}, {M}, {G} \"auto\" "
                                          r"cannot be resolved"):
        load_config({T: "auto", M: "auto", G: "auto"})


def test_reloading_keeps_assignments_and_given_batch_keys():
    cfg = load_config({T: 64, G: 4}, world_size=2)
    cfg.zero_optimization.stage = 2
    cfg.gradient_clipping = 0.0
    again = load_config(cfg, world_size=4)
    assert again.zero_optimization.stage == 2 and again.gradient_clipping == 0.0
    assert (again.train_batch_size, again.train_micro_batch_size_per_gpu,
            again.gradient_accumulation_steps) == (64, 4, 4)
    direct = ZeroConfig(train_micro_batch_size_per_gpu=2)
    assert load_config(direct, world_size=3).train_batch_size == 6

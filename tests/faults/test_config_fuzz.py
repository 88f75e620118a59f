"""Fault 5, seeded fuzzing: mutated configs are either accepted or rejected with a ConfigError
naming a key path; no other exception escapes, a rejection carries no chained traceback from
inside the library (pydantic's or ours), and what is accepted is resolved and self-consistent."""
import copy
import json
import random
import re
import traceback
import warnings
from pathlib import Path

import zerolib.config

import pytest

from config_helpers import fixture_dict
from test_config_keys import FULL, OPTIMIZERS, SCHEDULERS
from zerolib.config import ConfigError, ZeroConfig, load_config

CASES = 600
ODD_VALUES = [None, True, False, 0, -1, 1, 3, 1.5, 5e8, 1e300, float("nan"), "auto", "x", "cpu",
              [], [0.9, 0.99], [1, "a"], {}, {"enabled": True}, {"stage": 2}]
# Dotted keys, list indices, and repr() of keys that are not non-empty strings (7, '').
PATH_SHAPE = re.compile(r"^(\w+|'')((\.(\w+|''))|(\[\d+\]))*$")


def _seed_configs() -> list[dict]:
    """Valid configs for every world size fuzzed, so that each mutation is what gets judged."""
    names = ("hf_trainer_zero2.json", "hf_trainer_zero3.json", "deepspeed_zero1_bert.json",
             "legacy_spellings.json")
    configs = [fixture_dict(name) for name in names]
    for config in configs:
        config["train_micro_batch_size_per_gpu"] = 2
        config.pop("train_batch_size", None)
    full = copy.deepcopy(FULL)
    del full["train_batch_size"]
    full["zero_optimization"]["zero_hpz_partition_size"] = 1
    full["comm"]["node_size"] = 1
    configs += [{**full, "optimizer": o, "scheduler": s} for o, s in zip(OPTIMIZERS, SCHEDULERS)]
    configs.append({"train_micro_batch_size_per_gpu": 2})
    return configs


def _blocks(config: dict) -> list[dict]:
    """Every dict inside `config`, itself included."""
    found = [config]
    for value in config.values():
        if isinstance(value, dict):
            found += _blocks(value)
    return found


def _mutate(config: dict, rng: random.Random) -> None:
    block = rng.choice(_blocks(config))
    keys = list(block)
    key = rng.choice(keys) if keys else "stage"
    kind = rng.choice(["drop", "value", "misspell", "nest", "number", "lift", "foreign_key"])
    if kind == "drop" and keys:
        del block[key]
    elif kind == "value":
        block[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif kind == "misspell" and keys:
        chars = list(key)
        chars[rng.randrange(len(chars))] = rng.choice("aeiou_x")
        block["".join(chars)] = block.pop(key)
    elif kind == "nest":
        block[key] = {"enabled": block.get(key), key: 1}
    elif kind == "number":
        block[key] = rng.choice([-(10 ** 20), -3, 0, 2, 7, 10 ** 20, -0.5, 0.5, 2.0])
    elif kind == "lift":  # a nested key written at the wrong level
        inner = rng.choice(_blocks(config))
        if inner and inner is not block:
            inner_key = rng.choice(list(inner))
            block[inner_key] = copy.deepcopy(inner[inner_key])
    elif kind == "foreign_key":
        block[rng.choice([7, "", "zero_optimization", "amp", "bfloat16", "cpu_offload"])] = True


def _cases():
    seeds = _seed_configs()
    for index in range(CASES):
        rng = random.Random(index)
        config = copy.deepcopy(rng.choice(seeds))
        for _ in range(rng.randint(1, 2)):
            _mutate(config, rng)
        yield index, config, rng.choice([1, 2, 3, 4, 8]), rng.random() < 0.25


def _check_accepted(cfg: ZeroConfig, world_size: int) -> None:
    assert cfg.train_batch_size == (cfg.train_micro_batch_size_per_gpu
                                    * cfg.gradient_accumulation_steps * world_size)
    resolved = cfg.to_dict()
    again = _load(resolved, world_size, False, None)
    assert again.to_dict() == resolved


CONFIG_PACKAGE = Path(zerolib.config.__file__).parent


def _check_rejected(error: ConfigError, config: dict) -> None:
    message = str(error)
    assert message.startswith(f"{error.path}: "), message
    # What a user sees: one error raised by zerolib's config layer, no "during handling of the
    # above exception" chain from pydantic or from deeper in the library.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), message
    raised_in = Path(traceback.extract_tb(error.__traceback__)[-1].filename).parent
    assert raised_in == CONFIG_PACKAGE, f"raised in {raised_in}: {message}"
    assert PATH_SHAPE.match(error.path), message
    top = re.split(r"[.\[]", error.path)[0]
    known = set(config) | set(ZeroConfig.model_fields) | {"config", "world_size"}
    assert top in {str(key) for key in known} or top == "''", message


def _load(config: dict, world_size: int, check: bool, file) -> ZeroConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if file is not None:  # through a JSON file too, where errors also name the file
            file.write_text(json.dumps(config))
            return load_config(file, world_size=world_size, check_implemented=check)
        return load_config(config, world_size=world_size, check_implemented=check)


def test_fuzzed_configs_accept_or_name_a_key_path(tmp_path):
    outcomes = {"accepted": 0, "rejected": 0}
    for index, config, world_size, check in _cases():
        original = copy.deepcopy(config)
        as_file = index % 10 == 0 and all(isinstance(k, str) for b in _blocks(config) for k in b)
        try:
            cfg = _load(config, world_size, check, tmp_path / f"{index}.json" if as_file else None)
            _check_accepted(cfg, world_size)
            outcomes["accepted"] += 1
        except ConfigError as error:
            _check_rejected(error, config)
            assert not as_file or str(error).splitlines()[0].endswith(".json)"), str(error)
            outcomes["rejected"] += 1
        except Exception as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {index}: {type(error).__name__} escaped: {error}\n{config}")
        assert repr(config) == repr(original), f"case {index}: load_config changed its input"
    print(f"fuzz: {outcomes}")
    # Both outcomes must be common, or the mutations are not exercising the validator.
    assert outcomes["accepted"] >= CASES // 20 and outcomes["rejected"] >= CASES // 3, outcomes

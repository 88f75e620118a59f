"""Old spellings still found in DeepSpeed configs in the wild, rewritten to the modern keys.

Each rewrite records a note naming the modern key; the loader turns notes into one
ZeroConfigWarning per key. Spellings with no modern equivalent are rejected with the fix.
"""
from typing import Any, Callable

from .errors import ConfigError

Notes = dict[str, str]


def _move(block: dict, old: str, new: str, where: str, notes: Notes) -> None:
    """Rename key `old` to `new` inside `block` (whose path is `where`)."""
    if old not in block:
        return
    old_path, new_path = f"{where}{old}", f"{where}{new}"
    if new in block:
        raise ConfigError(old_path, f"deprecated spelling of {new_path}, and both are given; "
                                    f"keep only {new_path}")
    block[new] = block.pop(old)
    notes[old_path] = f"{old_path} is deprecated; write {new_path}"


def _pop_bool(block: dict, old: str, old_path: str) -> bool:
    value = block.pop(old)
    if not isinstance(value, bool):
        raise ConfigError(old_path, f"Input should be a valid boolean (got {value!r})")
    return value


def _offload_flag(zero: dict, old: str, target: str, notes: Notes) -> None:
    """`cpu_offload: true` → `offload_optimizer: {device: cpu}` (and the same for params)."""
    if old not in zero:
        return
    old_path = f"zero_optimization.{old}"
    if _pop_bool(zero, old, old_path):
        if isinstance(zero.get(target), dict) and "device" in zero[target]:
            raise ConfigError(old_path, f"conflicts with zero_optimization.{target}.device; "
                                        f"keep only the latter")
        block = zero.get(target)
        zero[target] = {**(block if isinstance(block, dict) else {}), "device": "cpu"}
    notes[old_path] = f"{old_path} is deprecated; write zero_optimization.{target}.device \"cpu\""


def _pin_memory_flag(zero: dict, notes: Notes) -> None:
    old_path = "zero_optimization.cpu_offload_use_pin_memory"
    if "cpu_offload_use_pin_memory" not in zero:
        return
    value = _pop_bool(zero, "cpu_offload_use_pin_memory", old_path)
    for target in ("offload_optimizer", "offload_param"):
        block = zero.get(target)
        if isinstance(block, dict):
            block.setdefault("pin_memory", value)
    notes[old_path] = (f"{old_path} is deprecated; write pin_memory inside "
                       "zero_optimization.offload_optimizer / offload_param")


def _zero_section(config: dict, notes: Notes) -> None:
    zero = config.get("zero_optimization")
    if isinstance(zero, bool):
        config["zero_optimization"] = {"stage": 1 if zero else 0}
        notes["zero_optimization"] = ("zero_optimization as a boolean is deprecated; write "
                                      f"{{\"stage\": {1 if zero else 0}}}")
        return
    if not isinstance(zero, dict):
        return
    zero = config["zero_optimization"] = dict(zero)
    _move(zero, "stage3_gather_fp16_weights_on_model_save",
          "stage3_gather_16bit_weights_on_model_save", "zero_optimization.", notes)
    _move(zero, "allgather_size", "allgather_bucket_size", "zero_optimization.", notes)
    for key in ("offload_optimizer", "offload_param"):
        if isinstance(zero.get(key), dict):
            zero[key] = dict(zero[key])
    _offload_flag(zero, "cpu_offload", "offload_optimizer", notes)
    _offload_flag(zero, "cpu_offload_params", "offload_param", notes)
    _pin_memory_flag(zero, notes)


def _fp32_allreduce(config: dict, notes: Notes) -> None:
    if "fp32_allreduce" not in config:
        return
    if _pop_bool(config, "fp32_allreduce", "fp32_allreduce"):
        if config.get("communication_data_type") not in (None, "fp32"):
            raise ConfigError("fp32_allreduce", "conflicts with communication_data_type; keep "
                                                "only communication_data_type")
        config["communication_data_type"] = "fp32"
    notes["fp32_allreduce"] = "fp32_allreduce is deprecated; write communication_data_type \"fp32\""


def _reject_amp(config: dict, notes: Notes) -> None:
    if "amp" in config:
        raise ConfigError("amp", "NVIDIA Apex AMP is not supported; use bf16 "
                                 "{\"enabled\": true} or fp16 {\"enabled\": true} instead")


def _bfloat16(config: dict, notes: Notes) -> None:
    _move(config, "bfloat16", "bf16", "", notes)


REWRITES: tuple[Callable[[dict, Notes], None], ...] = (
    _reject_amp, _bfloat16, _fp32_allreduce, _zero_section,
)


def apply_deprecations(config: dict[str, Any], notes: Notes) -> dict[str, Any]:
    """A copy of `config` with deprecated spellings rewritten; a note is added for each."""
    config = dict(config)
    for rewrite in REWRITES:
        rewrite(config, notes)
    return config

"""The batch triple: train_batch_size = train_micro_batch_size_per_gpu ×
gradient_accumulation_steps × world_size. Any two fix the third, as in DeepSpeed."""
from .errors import ConfigError

TRAIN, MICRO, GAS = "train_batch_size", "train_micro_batch_size_per_gpu", \
    "gradient_accumulation_steps"


def _triple(train, micro, gas, world_size) -> str:
    return f"{TRAIN}={train}, {MICRO}={micro}, {GAS}={gas}, world_size={world_size}"


def _divide(total: int, divisor: int, key: str, triple: str) -> int:
    if total % divisor:
        raise ConfigError(key, f"cannot be derived: {total} is not divisible by {divisor} "
                               f"({triple}); train = micro × accumulation × world_size")
    return total // divisor


def resolve_batch(train: int | None, micro: int | None, gas: int | None,
                  world_size: int) -> tuple[int, int, int]:
    """(train, micro, gas) with the missing ones derived; ConfigError if they cannot agree."""
    triple = _triple(train, micro, gas, world_size)
    if train is None and micro is None:
        if gas is None:
            raise ConfigError(TRAIN, f"no batch size given: set {TRAIN} or {MICRO} "
                                     f"(and optionally {GAS})")
        raise ConfigError(MICRO, f"{GAS}={gas} alone does not fix the batch: set {MICRO} or "
                                 f"{TRAIN} as well")
    if train is None:
        gas = 1 if gas is None else gas
        return micro * gas * world_size, micro, gas
    if micro is None:
        gas = 1 if gas is None else gas
        return train, _divide(train, gas * world_size, MICRO, triple), gas
    if gas is None:
        return train, micro, _divide(train, micro * world_size, GAS, triple)
    if train != micro * gas * world_size:
        raise ConfigError(TRAIN, f"inconsistent batch: {triple}, but {micro} × {gas} × "
                                 f"{world_size} = {micro * gas * world_size}")
    return train, micro, gas

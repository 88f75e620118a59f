"""Per-rank memory estimates: model states for ZeRO stages 0-3 (with offload) and activations.

Model states follow what zerolib's engine holds (``engine.memory_breakdown()``), not only the
ZeRO paper's formula: gradients are reduced into an **fp32** gradient shard, so 16-bit runs
hold 4 bytes of gradient per owned element where the paper counts 2, and fp32 runs keep no
separate master copy (the parameter shard is the master). Per rank, Ψ parameters, N ranks,
p bytes per working parameter, K optimizer-state bytes per element (8 for Adam, 4 for SGD
with momentum):

=====  =====================  =========================================  ====================
stage  params                 grads                                      master + optimizer
=====  =====================  =========================================  ====================
0      pΨ                     pΨ (+ 4Ψ fp32 copy when p < 4)             (4 if p < 4) Ψ + KΨ
1      pΨ                     pΨ (+ 4Ψ/N fp32 shard when p < 4)          ((4 if p < 4) + K)Ψ/N
2      pΨ                     4Ψ/N                                       ((4 if p < 4) + K)Ψ/N
3      pΨ/N (+ pΨ_small)      4Ψ/N                                       ((4 if p < 4) + K)Ψ/N
=====  =====================  =========================================  ====================

Besides model states, ``comm_buffers``: receive buffers and stage-2 buckets the collectives keep
for reuse, at most three fp32 reduce buckets (12 × reduce_bucket_size bytes); stages 1-2 only. With
c bytes per communicated element: stage 1 holds (N-1)/N·cΨ, stage 2 cΨ + (N-1)/N·cΨ (+ cΨ/N when
c < 4).

``hpz_secondary`` (ZeRO++ hpZ, ``zero_hpz_partition_size`` K > 1, stage 3): 1/K of every
partitioned parameter, pΨ/K, or Ψ(1 + 4/block)/K when qwZ keeps it as int8 blocks with fp32
scales. Like ``comm_buffers`` it is not a model state.

``swap_buffers``: the pools nvme-offloaded state passes through (``buffer_count`` sub-groups
of the optimizer's state and gradients, ``buffer_count`` parameter shards); not a model state.

Ψ_small: stage-3 parameters below ``stage3_param_persistence_threshold`` stay whole on every
rank. Offload: ``offload_optimizer`` moves the fp32 gradient shard (where one is kept apart
from the full gradients), the master and the optimizer state to CPU RAM or, with ``nvme``, to
swap files (zerolib swaps the gradients too, where DeepSpeed keeps them in RAM);
``offload_param`` (stage 3) moves the parameter shards to RAM or disk, and with ``nvme`` an
fp32 run keeps a master copy of its own (4Ψ/N), the working shard being in a file.

:func:`largest_model` turns this around: the most parameters whose states fit a memory (and
disk) budget, given the bytes a run holds besides its model states (measured; see
docs/offload.md).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

PARAM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
KINDS = ("params", "grads", "master", "optimizer_state")
MODEL_STATE_KINDS = KINDS


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank: ``by_kind`` (params, grads, master, optimizer_state, as
    ``engine.memory_breakdown()`` names them), ``by_place`` (device, cpu, nvme) and, when the
    activation shape was given, ``activations`` (bytes kept for backward on the device)."""

    by_kind: dict[str, int]
    by_place: dict[str, int]
    activations: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_states(self) -> int:
        return sum(self.by_kind[kind] for kind in MODEL_STATE_KINDS)


def optimizer_state_bytes(optimizer: str, momentum: float = 0.0) -> int:
    """K: bytes of optimizer state per fp32 element (exp_avg + exp_avg_sq for Adam)."""
    name = optimizer.lower()
    if name in ("adam", "adamw", "cpuadam", "fusedadam"):
        return 8
    if name == "sgd":
        return 4 if momentum else 0
    raise ValueError(f"estimate: unknown optimizer {optimizer!r}; known: Adam, AdamW, SGD")


def _check(num_params: int, num_procs: int, stage: int, dtype: str, offload_optimizer: str, offload_param: str):
    if num_params < 1:
        raise ValueError(f"estimate: model params must be >= 1, got {num_params}")
    if num_procs < 1:
        raise ValueError(f"estimate: num_procs must be >= 1, got {num_procs}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"estimate: stage must be 0, 1, 2 or 3, got {stage}")
    if dtype not in PARAM_BYTES:
        raise ValueError(f"estimate: dtype must be one of {sorted(PARAM_BYTES)}, got {dtype!r}")
    for key, value in (("offload_optimizer", offload_optimizer), ("offload_param", offload_param)):
        if value not in OFFLOAD_DEVICES:
            raise ValueError(f"estimate: {key} must be one of {OFFLOAD_DEVICES}, got {value!r}")
    if offload_optimizer != "none" and stage == 0:
        raise ValueError("estimate: offload_optimizer needs stage 1, 2 or 3 (as in DeepSpeed)")
    if offload_param != "none" and stage != 3:
        raise ValueError("estimate: offload_param needs stage 3 (only stage 3 partitions parameters)")


def _components(psi: int, n: int, stage: int, p: int, k: int, persistent: int,
                separate_master: bool = False) -> list[tuple[str, str, float]]:
    """(kind, part, bytes): the pieces of model state one rank holds."""
    owned = psi if stage == 0 else psi / n  # elements of fp32 master/optimizer state per rank
    mixed = p < 4
    small = min(persistent, psi) if stage == 3 else psi
    parts = [("params", "working", p * (small + (psi - small) / n))]
    if stage < 2:  # autograd accumulates into full buffers; fp32 runs use them as the shard
        parts.append(("grads", "full", p * psi))
    if stage >= 2 or mixed:
        parts.append(("grads", "fp32 shard", 4 * owned))
    if mixed or separate_master:
        parts.append(("master", "fp32", 4 * owned))
    parts.append(("optimizer_state", "fp32", k * owned))
    return parts


def comm_buffer_bytes(psi: int, n: int, stage: int, comm_bytes: int, bucket_numel: int) -> float:
    """Bytes of buffers the collectives keep for reuse (see the module docstring)."""
    if stage in (0, 3):
        return 0.0
    received = (n - 1) / n * comm_bytes * psi
    held = received if stage == 1 else comm_bytes * psi + received + (comm_bytes * psi / n if comm_bytes < 4 else 0)
    return min(held, 12.0 * bucket_numel)


def hpz_secondary_bytes(psi: int, persistent: int, stage: int, param_bytes: int, hpz_partition_size: int,
                        quantized_weights_block: int | None) -> float:
    """Bytes of hpZ's secondary shards (see the module docstring); 0 without hpZ."""
    if stage != 3 or hpz_partition_size <= 1:
        return 0.0
    partitioned = psi - min(persistent, psi)
    per_element = param_bytes if quantized_weights_block is None else 1 + 4 / quantized_weights_block
    return partitioned * per_element / hpz_partition_size


def _place(kind: str, part: str, offload_optimizer: str, offload_param: str) -> str:
    if kind == "params":
        return "device" if offload_param == "none" else offload_param
    if kind == "grads":  # the fp32 shard goes with the optimizer state (nvme: swapped too)
        return offload_optimizer if part == "fp32 shard" and offload_optimizer != "none" else "device"
    return "device" if offload_optimizer == "none" else offload_optimizer


def model_state_bytes(num_params: int, *, num_procs: int, stage: int, dtype: str = "fp32",
                      optimizer_bytes: int = 8, persistent_params: int = 0,
                      offload_optimizer: str = "none", offload_param: str = "none",
                      bucket_numel: int = 500_000_000, comm_bytes: int | None = None,
                      hpz_partition_size: int = 1, quantized_weights_block: int | None = None,
                      swap_buffers: int = 0) -> MemoryEstimate:
    """Model-state bytes per rank for ``num_params`` trainable parameters (see module docstring).

    ``persistent_params``: stage-3 parameters kept whole (below the persistence threshold);
    ``bucket_numel`` and ``comm_bytes`` (default: the working dtype's) size ``comm_buffers``;
    ``hpz_partition_size`` and ``quantized_weights_block`` (qwZ's block size, None without qwZ)
    size ``hpz_secondary``; ``swap_buffers`` is passed through (see :func:`swap_buffer_bytes`)."""
    _check(num_params, num_procs, stage, dtype, offload_optimizer, offload_param)
    by_kind = dict.fromkeys(KINDS, 0.0)
    by_place = {"device": 0.0, "cpu": 0.0, "nvme": 0.0}
    for kind, part, nbytes in _components(num_params, num_procs, stage, PARAM_BYTES[dtype], optimizer_bytes,
                                          persistent_params, separate_master=offload_param == "nvme"):
        by_kind[kind] += nbytes
        by_place[_place(kind, part, offload_optimizer, offload_param)] += nbytes
    comm = comm_buffer_bytes(num_params, num_procs, stage, comm_bytes or PARAM_BYTES[dtype], bucket_numel)
    by_kind["comm_buffers"] = comm  # not a model state, and not in by_place
    by_kind["hpz_secondary"] = hpz_secondary_bytes(num_params, persistent_params, stage, PARAM_BYTES[dtype],
                                                   hpz_partition_size, quantized_weights_block)
    by_kind["swap_buffers"] = swap_buffers
    notes = []
    if offload_param != "none":
        notes.append("offload_param: a block's gathered parameters still occupy the device while it runs "
                     "(at most stage3_max_live_parameters elements)")
    return MemoryEstimate({k: round(v) for k, v in by_kind.items()}, {k: round(v) for k, v in by_place.items()},
                          notes=notes)


def swap_buffer_bytes(*, owned_numel: int, sub_group_size: int, optimizer_buffer_count: int, dtype: str,
                      offload_optimizer: str, offload_param: str, largest_shard: int = 0,
                      param_buffer_count: int = 0) -> int:
    """Bytes of the nvme pools: ``optimizer_buffer_count`` sub-groups of fp32 state (master when
    kept apart, two moments) and as many of gradients; ``param_buffer_count`` parameter shards
    of ``largest_shard`` elements. Each tensor is padded to 4 KiB."""
    def padded(nbytes: float) -> int:
        return -(-int(nbytes) // 4096) * 4096
    total = 0
    if offload_optimizer == "nvme":
        sub_group = min(sub_group_size, owned_numel)
        states = 3 if PARAM_BYTES[dtype] < 4 or offload_param == "nvme" else 2
        total += optimizer_buffer_count * (states + 1) * padded(4 * sub_group)
    if offload_param == "nvme":
        total += param_buffer_count * padded(PARAM_BYTES[dtype] * largest_shard)
    return total


def largest_model(memory_bytes: float, *, disk_bytes: float | None = None, overhead_bytes: float = 0.0,
                  **settings) -> tuple[int, str]:
    """The most parameters one rank can train, and what limits it ("memory" or "disk").

    Memory is one budget for the ``device`` and ``cpu`` places (a CPU-only machine, where both
    are RAM); it must hold those model states plus ``overhead_bytes`` (the process, activations,
    gathered blocks, buffers: measure it, it is not a model state). ``disk_bytes`` bounds the
    ``nvme`` place. ``settings`` go to :func:`model_state_bytes`.
    """
    def fits(psi: int) -> str | None:
        places = model_state_bytes(psi, **settings).by_place
        if places["device"] + places["cpu"] + overhead_bytes > memory_bytes:
            return "memory"
        if disk_bytes is not None and places["nvme"] > disk_bytes:
            return "disk"
        return None

    if fits(1) is not None:
        raise ValueError(f"estimate: even one parameter does not fit: overhead {overhead_bytes:.0f} bytes of "
                         f"{memory_bytes:.0f}")
    low, high = 1, 2
    while fits(high) is None and high < 10**15:
        low, high = high, high * 2
    if fits(high) is None:
        return high, "nothing below 10^15 parameters"
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) is None else (low, middle)
    return low, fits(high)


def activation_bytes(*, batch: int, seq: int, hidden: int, layers: int, dtype: str = "bf16",
                     heads: int | None = None, checkpointing: bool = False) -> int:
    """Activation bytes kept for backward by a transformer's ``layers`` blocks on one rank.

    Per block, Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models") count ``s·b·h·(34 + 5·a·s/h)`` bytes with 16-bit activations, the second term being
    the attention scores; give ``heads`` only when the attention stores them (no fused/SDPA
    attention). fp32 doubles it. With checkpointing every block keeps only its input
    (``s·b·h`` elements) and one block at a time is recomputed in full during backward.
    Logits and the loss (``s·b·vocab``) come on top and are not counted.
    """
    for key, value in (("batch", batch), ("seq", seq), ("hidden", hidden), ("layers", layers)):
        if value < 1:
            raise ValueError(f"estimate: {key} must be >= 1, got {value}")
    if dtype not in PARAM_BYTES:
        raise ValueError(f"estimate: dtype must be one of {sorted(PARAM_BYTES)}, got {dtype!r}")
    scale = PARAM_BYTES[dtype] / 2
    tokens_x_hidden = seq * batch * hidden
    scores = 5 * heads * seq / hidden if heads else 0.0
    per_block = tokens_x_hidden * (34 + scores) * scale
    if not checkpointing:
        return round(layers * per_block)
    return round(layers * tokens_x_hidden * PARAM_BYTES[dtype] + per_block)


def _largest_unit_shard(model, threshold: int, num_procs: int) -> int:
    """Elements of the largest stage-3 unit's shard (its partitioned parameters over N ranks)."""
    from zerolib.partition.coordinator import assign_params_to_units, find_unit_modules

    owner = assign_params_to_units(model, find_unit_modules(model))
    per_unit: dict[int, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.numel() >= threshold:
            per_unit[owner[name]] = per_unit.get(owner[name], 0) + param.numel()
    return -(-max(per_unit.values(), default=0) // num_procs)


def _model_shape(model) -> tuple[int | None, int | None]:
    """(hidden, layers) from a zerolib GPT or Hugging Face config, when it has them."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    return hidden, layers


def estimate(model, config, *, num_procs: int = 1, seq: int | None = None,
             checkpointing: bool = False) -> MemoryEstimate:
    """Per-rank estimate for training ``model`` with ``config`` (dict, JSON path or ZeroConfig)
    on ``num_procs`` ranks. With ``seq``, activations for the config's micro-batch too (hidden
    size and layer count read from ``model.config``)."""
    from zerolib.config import load_config  # the CLI path needs no config parsing

    cfg = load_config(config, world_size=num_procs, model=model, check_implemented=False)
    zero = cfg.zero_optimization
    dtype = "fp16" if cfg.fp16.enabled else "bf16" if cfg.bf16.enabled else "fp32"
    trainable = [p.numel() for p in model.parameters() if p.requires_grad]
    persistent = sum(n for n in trainable if n < zero.stage3_param_persistence_threshold)
    optimizer = cfg.optimizer
    k = optimizer_state_bytes(optimizer.type, getattr(optimizer.params, "momentum", 0.0)) if optimizer else 0
    owned = sum(trainable) if zero.stage == 0 else -(-sum(trainable) // num_procs)
    swap = swap_buffer_bytes(owned_numel=owned, sub_group_size=int(zero.sub_group_size),
                             optimizer_buffer_count=zero.offload_optimizer.buffer_count, dtype=dtype,
                             offload_optimizer=zero.offload_optimizer.device, offload_param=zero.offload_param.device,
                             largest_shard=_largest_unit_shard(model, zero.stage3_param_persistence_threshold,
                                                               num_procs),
                             param_buffer_count=zero.offload_param.buffer_count)
    result = model_state_bytes(sum(trainable), num_procs=num_procs, stage=zero.stage, dtype=dtype, swap_buffers=swap,
                               optimizer_bytes=k, persistent_params=persistent,
                               offload_optimizer=zero.offload_optimizer.device, offload_param=zero.offload_param.device,
                               bucket_numel=int(min(zero.reduce_bucket_size, zero.allgather_bucket_size)),
                               comm_bytes=PARAM_BYTES.get(cfg.communication_data_type or dtype, 4),
                               hpz_partition_size=zero.zero_hpz_partition_size,
                               quantized_weights_block=zero.zero_quantized_block_size
                               if zero.zero_quantized_weights else None)
    if seq is None:
        return result
    hidden, layers = _model_shape(model)
    if hidden is None or layers is None:
        raise ValueError("estimate: seq was given but model.config has no hidden_size/n_embd and "
                         "num_hidden_layers/n_layer; use activation_bytes(...) directly")
    acts = activation_bytes(batch=cfg.train_micro_batch_size_per_gpu, seq=seq, hidden=hidden, layers=layers,
                            dtype=dtype, checkpointing=checkpointing)
    return MemoryEstimate(result.by_kind, result.by_place, acts, result.notes)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3f} GiB"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerolib estimate", description="Per-rank memory estimate.")
    parser.add_argument("--model-params", "--model_params", type=float, default=None,
                        help="trainable parameters (e.g. 7e9); not with --memory-gib")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="instead: print the largest model whose device + cpu states fit this many GiB "
                             "(one memory, as on a CPU-only machine)")
    parser.add_argument("--overhead-gib", type=float, default=0.0,
                        help="with --memory-gib: GiB the run holds besides model states (measured)")
    parser.add_argument("--disk-gib", type=float, default=None, help="with --memory-gib: GiB free for nvme")
    parser.add_argument("--num_procs", "--num-procs", type=int, default=1, help="data-parallel ranks")
    parser.add_argument("--stage", type=int, default=3, choices=(0, 1, 2, 3))
    parser.add_argument("--dtype", default="bf16", choices=sorted(PARAM_BYTES))
    parser.add_argument("--optimizer", default="adam", help="adam, adamw or sgd (sgd counted with momentum)")
    parser.add_argument("--offload_optimizer", "--offload-optimizer", default="none", choices=OFFLOAD_DEVICES)
    parser.add_argument("--offload_param", "--offload-param", default="none", choices=OFFLOAD_DEVICES)
    for name in ("batch", "seq", "hidden", "layers", "heads"):
        parser.add_argument(f"--{name}", type=int, default=None)
    return parser


def main(argv: list[str]) -> int:
    """``zerolib estimate ...``: prints model-state and (with --batch/--seq/--hidden/--layers)
    activation bytes per rank. Returns the exit status."""
    args = _parser().parse_args(argv)
    if args.memory_gib is not None:
        return _print_largest(args)
    try:
        if args.model_params is None:
            raise ValueError("estimate: give --model-params (or --memory-gib for the largest model)")
        result = model_state_bytes(int(args.model_params), num_procs=args.num_procs, stage=args.stage,
                                   dtype=args.dtype, optimizer_bytes=optimizer_state_bytes(args.optimizer, 0.9),
                                   offload_optimizer=args.offload_optimizer, offload_param=args.offload_param)
        shape = (args.batch, args.seq, args.hidden, args.layers)
        if any(v is not None for v in shape) and None in shape:
            raise ValueError("estimate: activations need all of --batch, --seq, --hidden and --layers")
        acts = None
        if args.batch is not None:
            acts = [activation_bytes(batch=args.batch, seq=args.seq, hidden=args.hidden, layers=args.layers,
                                     dtype=args.dtype, heads=args.heads, checkpointing=c) for c in (False, True)]
    except ValueError as error:
        print(f"zerolib estimate: {error}")
        return 2
    print(f"per rank, {int(args.model_params):,} params, {args.num_procs} ranks, stage {args.stage}, {args.dtype}:")
    for kind, nbytes in result.by_kind.items():
        print(f"  {kind:<16} {_gib(nbytes)}")
    print(f"  {'model states':<16} {_gib(result.model_states)}  "
          + ", ".join(f"{place} {_gib(b)}" for place, b in result.by_place.items()))
    if acts is not None:
        print(f"  {'activations':<16} {_gib(acts[0])} ({_gib(acts[1])} with activation checkpointing)")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def _print_largest(args) -> int:
    settings = dict(num_procs=args.num_procs, stage=args.stage, dtype=args.dtype,
                    optimizer_bytes=optimizer_state_bytes(args.optimizer, 0.9),
                    offload_optimizer=args.offload_optimizer, offload_param=args.offload_param)
    disk = args.disk_gib * 2**30 if args.disk_gib is not None else None
    try:
        psi, limit = largest_model(args.memory_gib * 2**30, disk_bytes=disk, overhead_bytes=args.overhead_gib * 2**30,
                                   **settings)
        places = model_state_bytes(psi, **settings).by_place
    except ValueError as error:
        print(f"zerolib estimate: {error}")
        return 2
    print(f"largest model per rank, stage {args.stage}, {args.dtype}, offload_optimizer {args.offload_optimizer}, "
          f"offload_param {args.offload_param}: {psi:,} params (limited by {limit})")
    print(f"  memory {args.memory_gib:g} GiB = model states {_gib(places['device'] + places['cpu'])} "
          f"+ overhead {args.overhead_gib:g} GiB; nvme {_gib(places['nvme'])}"
          + (f" of {args.disk_gib:g} GiB" if disk is not None else ""))
    return 0

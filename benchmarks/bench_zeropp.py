"""ZeRO++ against ZeRO-3: cross-group bytes, total bytes and step time per step, side by side.

Spawns 4 gloo ranks once, simulated as 2 nodes x 2 (``comm.node_size`` 2, hpZ groups of 2),
and builds five engines from the same weights: ZeRO-3, each ZeRO++ switch alone (qwZ, hpZ,
qgZ), then all three. They are stepped in alternation (the order rotates every round) for
``--steps`` rounds after ``--warmup`` untimed ones; a step's time is the slower rank's, between
barriers, and the table prints medians. Bytes are zerolib's ledger (``engine.comm_stats()``):
``bytes`` sent per rank and step, and ``inter_bytes``, the part sent over groups that span
both simulated nodes ("cross-group"). fp32 training is timed; a second pass runs one step of
each variant in bf16, the paper's 16-bit setting, for the bytes only (bf16 matmuls are slow on
this CPU).

Stage-3 settings: ``stage3_max_reuse_distance`` 0 (release after forward, re-gather in backward,
as FSDP2 does, so there is a backward gather for hpZ to keep inside the node), prefetch of 1.5
blocks, persistence threshold 10 * hidden (Hugging Face's "auto": only biases and norms stay
whole), module-order check on (its 16-byte tags count as cross-group bytes).

Goal (ZeRO++ paper, 4x less cross-node volume with scales): cross-group bytes of ZeRO++ at
most 0.3x ZeRO-3's. Step time is reported for information: on one machine the "network" is
loopback, as fast as memory, and quantizing costs CPU time on the same 2 cores.

Usage: PYTHONPATH=. python benchmarks/bench_zeropp.py [--steps N] [--warmup N] [--quick]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_ranks, timed_steps  # noqa: E402  (the benchmarks folder is not a package)

WORLD_SIZE, NODE_SIZE, HPZ = 4, 2, 2
GOAL = 0.30
VARIANTS = {
    "ZeRO-3": {},
    "qwZ": {"zero_quantized_weights": True},
    "hpZ": {"zero_hpz_partition_size": HPZ},
    "qgZ": {"zero_quantized_gradients": True},
    "ZeRO++ (all three)": {"zero_quantized_weights": True, "zero_hpz_partition_size": HPZ,
                           "zero_quantized_gradients": True},
}
SHAPES = {"default": dict(n_layer=6, n_embd=256, n_head=4, seq=64),
          "quick": dict(n_layer=2, n_embd=64, n_head=2, seq=16)}


def make_model(shape: dict):
    from zerolib.models import GPT, GPTConfig

    torch.manual_seed(0)  # every variant starts from the same weights
    return GPT(GPTConfig(n_layer=shape["n_layer"], n_embd=shape["n_embd"], n_head=shape["n_head"],
                         block_size=shape["seq"]))


def build(shape: dict, extra: dict, dtype: str):
    import zerolib

    model = make_model(shape)
    hidden = shape["n_embd"]
    zero = {"stage": 3, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": int(1.5 * 12 * hidden ** 2),
            "stage3_param_persistence_threshold": 10 * hidden, **extra}
    config = {"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": zero, "comm": {"node_size": NODE_SIZE}, "steps_per_print": None}
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    return zerolib.initialize(model, config)


def batch(shape: dict, step: int, seq: int | None = None):
    seq = seq or shape["seq"]
    generator = torch.Generator().manual_seed(1000 * step + dist.get_rank())
    tokens = torch.randint(0, 256, (1, seq + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def train_step(engine, idx, targets) -> float:
    loss = engine(idx, targets)
    engine.backward(loss)
    engine.step()
    return loss.item()


def per_step_bytes(engine, steps: int) -> dict:
    stats = engine.comm_stats()
    return {"bytes": sum(s["bytes"] for s in stats.values()) / steps,
            "inter": sum(s["inter_bytes"] for s in stats.values()) / steps,
            "kinds": {k: (s["bytes"] / steps, s["inter_bytes"] / steps) for k, s in stats.items()}}


def measure(shape_name: str, steps: int, warmup: int) -> dict:
    """Rank entry point: timed fp32 rounds, then one bf16 step per variant for its bytes."""
    from zerolib.utils.logging import get_logger

    get_logger().setLevel(logging.WARNING)  # no resolved-config dump per engine (rank 0 logs INFO)
    shape = SHAPES[shape_name]
    engines = {name: build(shape, extra, "fp32") for name, extra in VARIANTS.items()}
    times = {name: [] for name in engines}
    losses = {}
    names = list(engines)
    for round_index in range(warmup + steps):
        if round_index == warmup:
            for engine in engines.values():
                engine.reset_comm_stats()
        idx, targets = batch(shape, round_index)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            def step(engine=engines[name], name=name):
                losses[name] = train_step(engine, idx, targets)
            seconds = timed_steps(step, 1)[0]
            if round_index >= warmup:
                times[name].append(seconds)
    fp32 = {name: {"times": times[name], "loss": losses[name], **per_step_bytes(engine, steps),
                   "secondary": engine.memory_breakdown()["hpz_secondary"]} for name, engine in engines.items()}
    params = sum(p.numel() for p in make_model(shape).parameters())
    del engines
    bf16 = {}
    for name, extra in VARIANTS.items():
        engine = build(shape, extra, "bf16")
        train_step(engine, *batch(shape, 0, seq=8))  # the trace is recorded: the next step prefetches
        engine.reset_comm_stats()
        train_step(engine, *batch(shape, 1, seq=8))
        bf16[name] = per_step_bytes(engine, 1)
        del engine
    return {"fp32": fp32, "bf16": bf16, "params": params}


MIB = 2 ** 20


def _ratio(label: str, value: float, baseline: float, goal: bool) -> str:
    ratio = value / baseline
    verdict = (f"goal: <= {GOAL:.2f}x  [{'met' if ratio <= GOAL else 'MISSED'}]" if goal else "(information)")
    return f"  {label:<58}{ratio:>6.2f}x   {verdict}"


def report(result: dict, shape_name: str, steps: int) -> None:
    shape = SHAPES[shape_name]
    fp32, bf16 = result["fp32"], result["bf16"]
    print(f"torch {torch.__version__}, {WORLD_SIZE} gloo ranks as 2 nodes x {NODE_SIZE} (comm.node_size {NODE_SIZE}), "
          f"hpZ groups of {HPZ}, {os.cpu_count()} CPUs on this machine (shared: read ratios, not absolute times)")
    print(f"\n== fp32 training: GPT {shape['n_layer']}x{shape['n_embd']}, {result['params'] / 1e6:.2f}M params, "
          f"1x{shape['seq']} tokens per rank, {steps} timed steps per variant ==")
    header = (f"{'variant':<20}{'step ms':>9}{'IQR ms':>13}{'total MiB/step':>16}{'cross-group MiB/step':>22}"
              f"{'hpZ secondary MiB':>19}{'last loss':>11}")
    print(header)
    for name, row in fp32.items():
        q1, _, q3 = statistics.quantiles(row["times"], n=4) if len(row["times"]) >= 2 else (0, 0, 0)
        print(f"{name:<20}{1000 * statistics.median(row['times']):>9.1f}{f'{1000 * q1:.0f}-{1000 * q3:.0f}':>13}"
              f"{row['bytes'] / MIB:>16.3f}{row['inter'] / MIB:>22.3f}{row['secondary'] / MIB:>19.3f}"
              f"{row['loss']:>11.4f}")
    for name, row in fp32.items():
        kinds = ", ".join(f"{k} {b / MIB:.3f} ({i / MIB:.3f} cross)" for k, (b, i) in sorted(row["kinds"].items()))
        print(f"  {name}: {kinds}")
    print(f"\n== the same, bf16 weights and gradients (bytes only; one step each, 1x8 tokens per rank) ==")
    print(f"{'variant':<20}{'total MiB/step':>16}{'cross-group MiB/step':>22}")
    for name, row in bf16.items():
        print(f"{name:<20}{row['bytes'] / MIB:>16.3f}{row['inter'] / MIB:>22.3f}")
    print("\n  ratios against ZeRO-3 measured in the same run:")
    for dtype, rows in (("bf16", bf16), ("fp32", fp32)):
        base = rows["ZeRO-3"]
        for name in VARIANTS:
            if name != "ZeRO-3":
                print(_ratio(f"cross-group bytes {name} / ZeRO-3 ({dtype})", rows[name]["inter"], base["inter"],
                             goal=name.startswith("ZeRO++")))
        print(_ratio(f"total bytes ZeRO++ / ZeRO-3 ({dtype})", rows["ZeRO++ (all three)"]["bytes"], base["bytes"],
                     goal=False))
    base_time = statistics.median(fp32["ZeRO-3"]["times"])
    for name in VARIANTS:
        if name != "ZeRO-3":
            print(_ratio(f"step time {name} / ZeRO-3 (fp32, loopback)", statistics.median(fp32[name]["times"]),
                         base_time, goal=False))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed rounds (default 10, quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--quick", action="store_true", help="a tiny model and 2 rounds: checks the script runs")
    args = parser.parse_args(argv)
    shape_name = "quick" if args.quick else "default"
    steps = args.steps or (2 if args.quick else 10)
    warmup = 1 if args.quick else args.warmup
    result = run_ranks(measure, WORLD_SIZE, shape_name, steps, warmup, timeout=1800)[0]
    report(result, shape_name, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

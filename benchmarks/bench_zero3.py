"""ZeRO-3 step time and memory: zerolib (prefetch and on demand) against FSDP2, DDP, DeepSpeed.

Spawns 2 ranks (gloo, one intra-op thread each) once and runs every variant inside them:
variants are built one after another, then stepped in alternation for ``--steps`` rounds after
``--warmup`` rounds that are not timed. A step is forward + backward + optimizer step between
two barriers; its time is the slower rank's, and the table prints medians.

Memory columns, per rank:
- model state: bytes of parameters, gradients and optimizer state the rank holds after a step
  (each storage once; zerolib's ``engine.memory_breakdown()``; local shards for FSDP2).
- CPU ms: CPU seconds of the step summed over the rank's threads (slower rank), a check on
  wall times disturbed by other jobs on a shared machine.
- RSS growth: how much the process's resident set grew while the variant was built and warmed
  up. Variants share a process, so this is only indicative (the allocator reuses freed pages).

With ``--link-gbit G`` the two ranks talk over an emulated G Gbit/s link (benchmarks/netlink.py)
instead of loopback, where communication is bounded by the link rather than by the cores that
also compute: the setting in which prefetching has something to hide.

The zerolib prefetch variant (and DeepSpeed) prefetch ``--prefetch-blocks`` transformer blocks'
worth of elements (default 1.5; the library default of 5e7 elements covers every model here,
as does any value above the number of blocks). ``--reuse-distance`` sets zerolib's
``stage3_max_reuse_distance`` (default: the library's 1e9, which keeps every block gathered from
its forward to its backward; 0 re-gathers in backward, as FSDP2 does).

Prefetch against on-demand is also given as a paired figure: the median of the per-round ratios
(both variants run in every round, so a slow spell of the machine falls on both), with the
interquartile range of those ratios as the measure of noise.

Usage: PYTHONPATH=. python benchmarks/bench_zero3.py [--sizes floor,10M,40M] [--steps N] [--quick]
       [--link-gbit G] [--prefetch-blocks B] [--reuse-distance D]
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zero3_support as support  # noqa: E402  (the benchmarks folder is not a package)
from netlink import EmulatedLink, enter_link  # noqa: E402

from zerolib.models.gpt import GPT, GPTConfig  # noqa: E402

WORLD_SIZE = 2
# Medians of a few dozen steps on a shared 2-core machine move by a few percent between runs;
# a prefetch "gain" smaller than this is not told apart from noise.
GAIN_THRESHOLD = 0.95
TABLE_HEADER = f"{'variant':<26}{'step ms':>9}{'IQR ms':>14}{'CPU ms':>8}{'state MiB r0/r1':>18}{'RSS+ MiB r0/r1':>17}"


@dataclass(frozen=True)
class Setting:
    """A model shape and the data each rank trains on per step."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    batch: int  # sequences per rank per step
    seq: int  # tokens per sequence
    default_steps: int  # timed rounds when --steps is not given: more where steps are short and noisy

    def model(self) -> GPT:
        torch.manual_seed(0)  # every variant starts from the same weights
        return GPT(GPTConfig(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head, block_size=self.seq))

    def block_numel(self) -> int:
        return 12 * self.n_embd ** 2 + 13 * self.n_embd


SETTINGS = {
    # The overhead floor: 3.44M parameters (vocab 256), one 32-token sequence per rank.
    "floor": Setting("floor", n_layer=6, n_embd=216, n_head=6, batch=1, seq=32, default_steps=40),
    "10M": Setting("10M", n_layer=6, n_embd=384, n_head=6, batch=2, seq=128, default_steps=15),
    "40M": Setting("40M", n_layer=8, n_embd=640, n_head=10, batch=1, seq=64, default_steps=15),
    "quick": Setting("quick", n_layer=2, n_embd=160, n_head=2, batch=1, seq=16, default_steps=2),
}


def build_variants(setting: Setting, args: argparse.Namespace,
                   with_deepspeed: bool) -> list[tuple[support.Variant, float]]:
    """Each variant and the RSS growth (bytes) while it was built and stepped once."""
    model = setting.model()
    # Default budget: the next block and a half, so one unit is always in flight.
    prefetch = int(args.prefetch_blocks * setting.block_numel())
    zero = {} if args.reuse_distance is None else {"stage3_max_reuse_distance": args.reuse_distance}
    builders = [
        lambda: support.build_zerolib(model, "zerolib ZeRO-3 prefetch", setting.batch, prefetch, zero),
        lambda: support.build_zerolib(model, "zerolib ZeRO-3 on-demand", setting.batch, 0, zero),
        lambda: support.build_fsdp2(model),
        lambda: support.build_ddp(model),
    ]
    if with_deepspeed:
        builders.append(lambda: support.build_deepspeed(model, setting.batch, prefetch, zero))
    idx, targets = batch_for(setting, 0)
    built = []
    for build in builders:
        gc.collect()
        before = psutil.Process().memory_info().rss
        variant = build()
        variant.run_step(idx, targets)  # optimizer state exists only after the first step
        built.append((variant, psutil.Process().memory_info().rss - before))
    return built


def batch_for(setting: Setting, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random byte tokens, different per rank and step, the same for every variant."""
    generator = torch.Generator().manual_seed(1000 * step + dist.get_rank())
    tokens = torch.randint(0, 256, (setting.batch, setting.seq + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def timed_step(variant: support.Variant, idx, targets) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one step, each on the slower rank.

    CPU time counts every thread of the rank (gloo's included); it is far less disturbed than
    wall time when other jobs share the cores, but it does not see time spent waiting.
    """
    dist.barrier()
    start, start_cpu = time.perf_counter(), time.process_time()
    variant.run_step(idx, targets)
    dist.barrier()
    elapsed = torch.tensor([time.perf_counter() - start, time.process_time() - start_cpu], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed[0].item(), elapsed[1].item()


def measure(setting: Setting, args: argparse.Namespace, with_deepspeed: bool) -> list[dict]:
    """Per variant: step times (s, one per round), model-state and RSS-growth bytes per rank, a note."""
    steps, warmup = args.steps or setting.default_steps, args.warmup
    built = build_variants(setting, args, with_deepspeed)
    times = {variant.name: [] for variant, _ in built}
    cpu_times = {variant.name: [] for variant, _ in built}
    for round_index in range(warmup + steps):
        if round_index == warmup:
            for variant, _ in built:
                variant.reset_counters()
        idx, targets = batch_for(setting, round_index + 1)
        # Rotate which variant starts the round, so that none is always the one that runs right
        # after a new batch is drawn.
        order = built[round_index % len(built):] + built[:round_index % len(built)]
        for variant, _ in order:
            seconds, cpu_seconds = timed_step(variant, idx, targets)
            if round_index >= warmup:
                times[variant.name].append(seconds)
                cpu_times[variant.name].append(cpu_seconds)
    rows = []
    for variant, rss_growth in built:
        memory = torch.tensor([variant.model_state_bytes(), rss_growth], dtype=torch.float64)
        per_rank = [torch.zeros_like(memory) for _ in range(dist.get_world_size())]
        dist.all_gather(per_rank, memory)
        rows.append({"name": variant.name, "times": times[variant.name], "cpu": cpu_times[variant.name],
                     "note": variant.describe(),
                     "state": [m[0].item() for m in per_rank], "rss": [m[1].item() for m in per_rank]})
    return rows


def _median_ms(row: dict, key: str = "times") -> float:
    return 1000 * statistics.median(row[key])


def _iqr_ms(row: dict) -> str:
    if len(row["times"]) < 4:
        return "n/a"
    q1, _, q3 = statistics.quantiles(row["times"], n=4)
    return f"{1000 * q1:.0f}-{1000 * q3:.0f}"


def print_table(setting: Setting, rows: list[dict]) -> None:
    params = sum(p.numel() for p in setting.model().parameters())
    print(f"\n== {setting.name}: GPT {setting.n_layer}x{setting.n_embd}, {params / 1e6:.2f}M params, "
          f"{setting.batch}x{setting.seq} tokens per rank, {len(rows[0]['times'])} timed steps per variant ==")
    print(TABLE_HEADER)
    mib = 2 ** 20
    for row in rows:
        state = "/".join(f"{b / mib:.1f}" for b in row["state"])
        rss = "/".join(f"{b / mib:.0f}" for b in row["rss"])
        print(f"{row['name']:<26}{_median_ms(row):>9.1f}{_iqr_ms(row):>14}{_median_ms(row, 'cpu'):>8.1f}"
              f"{state:>18}{rss:>17}")
    for row in rows:
        if row["note"]:
            print(f"  {row['name']}: {row['note']}")


def _ratio_line(label: str, numerator: float, denominator: float, goal: str, met) -> str:
    verdict = "" if met is None else ("  [met]" if met(numerator / denominator) else "  [MISSED]")
    return f"  {label:<37}{numerator / denominator:>6.2f}x   goal: {goal}{verdict}"


def _paired_line(prefetch: list[float], on_demand: list[float]) -> str:
    """The median and interquartile range of the per-round ratios prefetch / on-demand."""
    ratios = [p / o for p, o in zip(prefetch, on_demand)]
    spread = "n/a"
    if len(ratios) >= 4:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        spread = f"{q1:.2f}-{q3:.2f}"
    return (f"  {'  paired, per round (IQR ' + spread + ')':<37}{statistics.median(ratios):>6.2f}x   "
            f"goal: (information; {len(ratios)} rounds)")


def print_ratios(setting: Setting, rows: list[dict]) -> None:
    by_name = {row["name"]: row for row in rows}
    time_of = {name: _median_ms(row) for name, row in by_name.items()}
    state_of = {name: max(row["state"]) for name, row in by_name.items()}
    prefetch, on_demand = time_of["zerolib ZeRO-3 prefetch"], time_of["zerolib ZeRO-3 on-demand"]
    print("  step-time ratios (medians):")
    print(_ratio_line("zerolib prefetch / FSDP2", prefetch, time_of["FSDP2"], "<= 1.00x", lambda r: r <= 1.0))
    print(_ratio_line("zerolib prefetch / on-demand", prefetch, on_demand,
                      f"<= {GAIN_THRESHOLD:.2f}x (a gain beyond noise)", lambda r: r <= GAIN_THRESHOLD))
    print(_paired_line(by_name["zerolib ZeRO-3 prefetch"]["times"], by_name["zerolib ZeRO-3 on-demand"]["times"]))
    floor_goal = (lambda r: r <= 1.8) if setting.name == "floor" else None
    print(_ratio_line("zerolib prefetch / DDP", prefetch, time_of["DDP"],
                      "<= 1.80x at the floor" if floor_goal else "(information)", floor_goal))
    if "DeepSpeed ZeRO-3" in time_of:
        print(_ratio_line("zerolib prefetch / DeepSpeed ZeRO-3", prefetch, time_of["DeepSpeed ZeRO-3"],
                          "(information)", None))
        print(_ratio_line("DeepSpeed ZeRO-3 / DDP", time_of["DeepSpeed ZeRO-3"], time_of["DDP"],
                          "(information; 2.9x reported at the floor)", None))
    cpu_of = {name: _median_ms(row, "cpu") for name, row in by_name.items()}
    print("  CPU-time ratios (medians; less sensitive to other jobs on the machine):")
    for label, other in (("FSDP2", "FSDP2"), ("on-demand", "zerolib ZeRO-3 on-demand"), ("DDP", "DDP")):
        print(_ratio_line(f"zerolib prefetch / {label}", cpu_of["zerolib ZeRO-3 prefetch"], cpu_of[other],
                          "(information)", None))
    print("  model-state ratios (max over ranks):")
    print(_ratio_line("zerolib ZeRO-3 / FSDP2", state_of["zerolib ZeRO-3 prefetch"], state_of["FSDP2"],
                      "(information)", None))
    print(_ratio_line("zerolib ZeRO-3 / DDP", state_of["zerolib ZeRO-3 prefetch"], state_of["DDP"],
                      "about 1/N = 0.50x", None))


def rank_main(rank: int, port: int, args: argparse.Namespace, link=None) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE), "LOCAL_WORLD_SIZE": str(WORLD_SIZE)})
    if link is not None:
        enter_link(link, rank)
    torch.set_num_threads(1)
    # Root handlers stop zerolib from installing its INFO logger; the resolved configs would
    # bury the table.
    logging.basicConfig(level=logging.WARNING)
    # torch 2.13 deprecates the *_tensor collectives that zerolib and DeepSpeed call, once per call.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    skip_reason = "not run in --quick mode" if args.quick else support.deepspeed_unavailable_reason()
    if rank == 0:
        where = f"an emulated {link.gbit:g} Gbit/s link" if link is not None else "loopback"
        print(f"torch {torch.__version__}, {WORLD_SIZE} ranks, gloo over {where}, fp32, 1 thread per rank, "
              f"{os.cpu_count()} CPUs on this machine")
        print(f"DeepSpeed ZeRO-3: {'skipped: ' + skip_reason if skip_reason else 'included'}")
        reuse = "1e9 (default)" if args.reuse_distance is None else args.reuse_distance
        print(f"prefetch budget: {args.prefetch_blocks:g} blocks; stage3_max_reuse_distance: {reuse}")
    try:
        for name in args.sizes:
            setting = SETTINGS[name]
            rows = measure(setting, args, with_deepspeed=skip_reason is None)
            if rank == 0:
                print_table(SETTINGS[name], rows)
                print_ratios(SETTINGS[name], rows)
                sys.stdout.flush()
    finally:
        dist.destroy_process_group()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="floor,10M,40M",
                        help=f"comma-separated settings among {', '.join(SETTINGS)} (default: floor,10M,40M)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed rounds, each stepping every variant once (default: 40 at the floor, 15 otherwise)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before the timed ones")
    parser.add_argument("--quick", action="store_true", help="smoke mode: the tiny model, 2 steps, no DeepSpeed")
    parser.add_argument("--link-gbit", type=float, default=None,
                        help="run the ranks over an emulated link of this many Gbit/s instead of loopback")
    parser.add_argument("--prefetch-blocks", type=float, default=1.5,
                        help="prefetch budget of the prefetch variant, in transformer blocks (default 1.5)")
    parser.add_argument("--reuse-distance", type=int, default=None,
                        help="zerolib stage3_max_reuse_distance (default: the library's, 1e9)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.warmup = "quick", 2, 1
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in SETTINGS]
    if unknown:
        parser.error(f"--sizes: unknown setting(s) {', '.join(unknown)}; choose among {', '.join(SETTINGS)}")
    if (args.steps is not None and args.steps < 1) or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps} and {args.warmup})")
    if args.prefetch_blocks <= 0 or (args.reuse_distance is not None and args.reuse_distance < 0):
        parser.error(f"--prefetch-blocks must be > 0 and --reuse-distance >= 0 "
                     f"(got {args.prefetch_blocks} and {args.reuse_distance})")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.link_gbit is None:
        mp.spawn(rank_main, args=(free_port(), args), nprocs=WORLD_SIZE, join=True)
        return
    with EmulatedLink(args.link_gbit) as link:
        mp.spawn(rank_main, args=(free_port(), args, link.spec()), nprocs=WORLD_SIZE, join=True)


if __name__ == "__main__":
    main()

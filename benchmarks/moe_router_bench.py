"""The prefix- and FLOPs-aware router against least-loaded and round-robin, through the real
scoring path, on a prefix-heavy classification mix. Goal (issue 8): router >= 1.15x least-loaded
in tokens/s.

Every rank builds a fresh engine per run (so no router inherits another's warm cache); rank 0
routes each round and sends it to the others (zerolib.inference.serve.rounds, the server's own
loop minus HTTP), every rank calls ``engine.score(requests, assignment)``. The workload arrives
in waves: each wave is many requests over a few long shared prefixes, shuffled; a wave is
scored to the end before the next arrives. Runs are interleaved and repeated (the machine is
shared); medians are printed.

The engine is MoEPrefillEngine (``--mode``, default async_ep) over ``--model DIR`` (a transformers
MoE directory) or else zerolib's MoE GPT of ``--width`` and ``--layers``; its per-rank prefix KV
cache really skips computing cached prefix tokens, so a router that keeps prefixes on one rank
saves work.

    python benchmarks/moe_router_bench.py [--quick] [--ranks 2] [--repeats 3] [--cache_blocks 48]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from common import run_ranks
from zerolib.comm import CommContext
from zerolib.inference.router import make_router
from zerolib.inference.serve.rounds import RoundChannel, RoundMessage, follow_rounds

ROUTER_ORDER = ("prefix", "least_loaded", "round_robin")


def prefix_mix(waves: int, per_wave: int, prefixes: int, prefix_tokens: int, vocab: int, seed: int = 0):
    """``waves`` lists of requests: each a shared prefix (one of ``prefixes``, a few lengths
    around ``prefix_tokens``), a short question of its own, and 4 candidate labels."""
    rng = random.Random(seed)
    shared = [[rng.randrange(vocab) for _ in range(prefix_tokens + 16 * rng.randrange(-2, 3))] for _ in range(prefixes)]
    out = []
    for _ in range(waves):
        wave = [{"input_ids": rng.choice(shared) + [rng.randrange(vocab) for _ in range(rng.randrange(4, 33))],
                 "candidates": rng.sample(range(vocab), 4)} for _ in range(per_wave)]
        out.append(wave)
    return out


def _drive(engine, router, channel: RoundChannel, workload) -> dict:
    """Rank 0: route and score every wave; returns what the run computed and how long it took."""
    rounds = tokens = cached = 0
    flops = 0.0
    start = time.perf_counter()
    for wave in workload:
        queue = list(wave)
        while queue:
            plan = router.plan_round([r["input_ids"] for r in queue])
            requests, queue = queue[:plan.taken], queue[plan.taken:]
            channel.send(RoundMessage("round", requests, plan.assignment))
            engine.score(requests, plan.assignment)
            router.finish_round(plan)
            rounds += 1
            tokens += sum(len(r["input_ids"]) for r in requests)
            cached += sum(plan.cached_tokens)
            flops += sum(plan.costs) * engine.cost.num_layers
    seconds = time.perf_counter() - start
    channel.send(RoundMessage("stop"))
    return {"seconds": seconds, "tokens": tokens, "cached_tokens": cached, "flops": flops, "rounds": rounds}


def compare_routers(make_engine, workload, routers=ROUTER_ORDER, repeats: int = 1, threshold: float | None = None,
                    comm: CommContext | None = None) -> dict | None:
    """Run ``workload`` (a list of waves of requests) once per router per repeat, interleaved,
    each time on a fresh ``make_engine()``; call on every rank. Returns on rank 0
    ``{router: [run dicts]}`` (seconds, tokens, cached_tokens, flops, rounds); None elsewhere.

    ``threshold`` fixes T for every run (default: the first engine's ``threshold``), so that
    the routers differ in placement only.
    """
    comm = comm or CommContext.from_environment()
    channel = RoundChannel(comm)
    runs = {name: [] for name in routers}
    for repeat in range(repeats):
        order = list(routers)[repeat % len(routers):] + list(routers)[:repeat % len(routers)]
        for name in order:
            engine = make_engine()
            if threshold is None:
                threshold = engine.threshold
            comm.barrier()
            if comm.rank != 0:
                follow_rounds(engine, channel)
                continue
            router = make_router(name, engine.cost, threshold, engine.world_size, engine.cache_blocks)
            runs[name].append(_drive(engine, router, channel, workload))
    return runs if comm.rank == 0 else None


def _engine_factory(args, comm: CommContext):
    from zerolib.inference import MoEPrefillEngine
    from zerolib.inference.serve.load import build_engine
    from zerolib.inference.serve.settings import ServeSettings
    from zerolib.models import MoEGPT, MoEGPTConfig

    config = {"moe_prefill": {"mode": args.mode, "cache_blocks": args.cache_blocks}}
    if args.model:
        return lambda: build_engine(args.model, config, ServeSettings(), comm=comm)[0]

    def make():
        torch.manual_seed(0)
        model = MoEGPT(MoEGPTConfig(vocab_size=256, block_size=512, n_layer=args.layers, n_head=4, n_embd=args.width,
                                    n_experts=8, expert_hidden=2 * args.width))
        return MoEPrefillEngine(model, config, comm=comm)
    return make


def _bench_rank(args) -> dict | None:
    comm = CommContext.from_environment(timeout_seconds=300)
    make = _engine_factory(args, comm)
    probe = make()
    workload = prefix_mix(args.waves, args.per_wave, args.prefixes, args.prefix_tokens, probe.cost.vocab_size or 256)
    # T: the engine's measured one, or --round_requests average requests per rank per round, in
    # the requests' full (uncached) prefill FLOPs
    mean_cost = statistics.mean(probe.cost.prefill(len(r["input_ids"])) for wave in workload for r in wave)
    threshold = args.round_requests * mean_cost if args.round_requests else probe.threshold
    runs = compare_routers(make, workload, repeats=args.repeats, threshold=threshold, comm=comm)
    if runs is None:
        return None
    runs["_meta"] = {"threshold": threshold, "mean_request_flops": mean_cost, "world_size": comm.world_size,
                     "engine": f"MoEPrefillEngine ({args.mode}) over {args.model or 'MoEGPT'}"}
    return runs


def report(runs: dict) -> list[str]:
    meta = runs.pop("_meta")
    lines = [f"engine {meta['engine']} on {meta['world_size']} ranks (gloo, shared machine: medians of "
             f"interleaved runs); "
             f"T = {meta['threshold']:.3e} per-layer FLOPs ({meta['threshold'] / meta['mean_request_flops']:.1f} "
             f"uncached requests per rank per round)",
             f"{'router':<14}{'tokens/s':>11}{'wall s':>9}{'rounds':>8}{'cache-hit tok':>15}{'computed GFLOP':>16}"]
    median = {name: {key: statistics.median(run[key] for run in rs) for key in rs[0]} for name, rs in runs.items()}
    for name, m in median.items():
        lines.append(f"{name:<14}{m['tokens'] / m['seconds']:>11.0f}{m['seconds']:>9.2f}{m['rounds']:>8.0f}"
                     f"{m['cached_tokens']:>15.0f}{m['flops'] / 1e9:>16.2f}")
    speed = {name: m["tokens"] / m["seconds"] for name, m in median.items()}
    for baseline in ("least_loaded", "round_robin"):
        if "prefix" in speed and baseline in speed:
            goal = " (goal >= 1.15)" if baseline == "least_loaded" else ""
            flops = median[baseline]["flops"] / median["prefix"]["flops"]
            lines.append(f"prefix / {baseline} tokens/s: {speed['prefix'] / speed[baseline]:.2f}x{goal}; "
                         f"computed FLOPs {baseline} / prefix: {flops:.2f}x")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run that only shows the script works")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="a transformers MoE directory (default: zerolib's MoE GPT)")
    parser.add_argument("--mode", default="async_ep", choices=("async_ep", "sync_gather", "dp_ep", "reference"))
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--per_wave", type=int, default=96)
    parser.add_argument("--prefixes", type=int, default=6, help="distinct shared prefixes")
    parser.add_argument("--prefix_tokens", type=int, default=160)
    parser.add_argument("--cache_blocks", type=int, default=48,
                        help="prefix cache per rank, in blocks (48: the default mix's ~60 prefix blocks "
                             "fit in two ranks' caches together but not in one; 256 holds them all everywhere)")
    parser.add_argument("--round_requests", type=float, default=None,
                        help="fix T at this many uncached requests per rank and round (default: the engine's T)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.waves, args.per_wave, args.width, args.layers = 1, 2, 24, 64, 2
    if args.ranks < 1 or args.repeats < 1:
        parser.error("--ranks and --repeats must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    runs = run_ranks(_bench_rank, args.ranks, args, timeout=1800)[0]
    print("\n".join(report(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

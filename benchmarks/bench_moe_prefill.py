"""MoE-prefill backends side by side: AsyncEP, sync gather and DP+EP on 2 gloo ranks, and the
single-process reference, in tokens/s on the same requests. Goal (issue 8): AsyncEP >= 1.3x DP+EP
at the batch size where T is met.

``reference`` is data-parallel with the whole model on every rank (no expert moves: the ceiling
AsyncEP approaches while holding 1/N of the experts); "1 process" is the single-process reference
with one thread.

Workloads: short, medium and long prompts (fresh random tokens every call, so no prefix is
cached) at several batch sizes, and a prefix-heavy classification mix (a few long shared
prompts, short questions). Every rank builds one engine per mode over the same zerolib MoE GPT;
modes and repeats are interleaved (the machine is shared), medians are printed. Then the router
against least-loaded on benchmarks/moe_router_bench.py's prefix-heavy mix and loop, with its
defaults (4 waves of 96 requests over 6 prefixes of ~160 tokens, 48 cache blocks per rank, T at
8 uncached requests per rank and round; run that script for the other settings).

With ``--link-gbit G`` the two ranks talk over an emulated G Gbit/s link (benchmarks/netlink.py)
instead of loopback, where a transfer is a memcpy paid for by the same two cores that compute.

    python benchmarks/bench_moe_prefill.py [--quick] [--repeats 3] [--width 512] [--experts 16] [--link-gbit G]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from common import print_table, run_ranks
from moe_router_bench import compare_routers, prefix_mix
from netlink import EmulatedLink, enter_link
from zerolib.comm import CommContext
from zerolib.inference import MoEPrefillEngine
from zerolib.models import MoEGPT, MoEGPTConfig

MODES = ("async_ep", "sync_gather", "dp_ep", "reference")  # reference here: 2 ranks, each whole
VOCAB = 1024


def build_model(args) -> MoEGPT:
    torch.manual_seed(0)
    return MoEGPT(MoEGPTConfig(vocab_size=VOCAB, block_size=2048, n_layer=args.layers, n_head=8, n_embd=args.width,
                               n_experts=args.experts, top_k=2, expert_hidden=args.expert_hidden or 2 * args.width))


def workloads(args) -> list[tuple[str, int, int]]:
    """(name, prompt tokens, requests per call); the batch is the call's requests over both ranks."""
    out = []
    for name, tokens in (("short", args.short), ("medium", args.medium), ("long", args.long)):
        for requests in args.batches:
            if tokens * requests <= args.max_call_tokens:
                out.append((name, tokens, requests))
    return out


def requests_for(tokens: int, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(VOCAB) for _ in range(tokens)], "candidates": [1, 2, 3]}
            for _ in range(count)]


def prefix_requests(args, seed: int) -> list[dict]:
    waves = prefix_mix(1, args.prefix_requests, 4, args.prefix_tokens, VOCAB, seed=seed)
    return waves[0]


def timed_score(engine: MoEPrefillEngine, requests: list[dict]) -> tuple[float, float]:
    """(wall seconds, seconds this rank waited on expert gathers or all-to-alls) of one call."""
    engine.comm.barrier()
    engine.comm.ledger.reset()
    start = time.perf_counter()
    engine.score(requests)
    wall = time.perf_counter() - start
    exposed = sum(stats["seconds"] for kind, stats in engine.comm.ledger.snapshot().items()
                  if kind in ("all_gather", "all_to_all"))
    return wall, exposed


def _bench_rank(args, link=None) -> dict | None:
    if link is not None:
        import os

        enter_link(link, int(os.environ["RANK"]))
    comm = CommContext.from_environment(timeout_seconds=600)
    engines = {mode: MoEPrefillEngine(build_model(args), {"moe_prefill": {"mode": mode, "cache_blocks": 512}},
                                      comm=comm) for mode in MODES}
    seconds = {}
    for repeat in range(args.repeats):
        order = MODES[repeat % len(MODES):] + MODES[:repeat % len(MODES)]
        for index, (name, tokens, count) in enumerate(workloads(args)):
            requests = requests_for(tokens, count, seed=1000 * repeat + index)
            for mode in order:
                seconds.setdefault((name, tokens, count, mode), []).append(timed_score(engines[mode], requests))
        requests = prefix_requests(args, seed=repeat)
        for mode in order:
            seconds.setdefault(("prefix mix", args.prefix_tokens, len(requests), mode), []).append(
                timed_score(engines[mode], requests))
    probe = engines["async_ep"]
    meta = {"t_ep": probe.t_ep, "flops_rate": probe.flops_rate, "threshold": probe.threshold, "cost": probe.cost,
            "params": sum(p.numel() for p in build_model(args).parameters())}
    router = None
    if not args.skip_router:
        waves = prefix_mix(args.router_waves, args.router_per_wave, 6, args.router_prefix_tokens, VOCAB, seed=99)
        mean_cost = statistics.mean(probe.cost.prefill(len(r["input_ids"])) for wave in waves for r in wave)
        config = {"moe_prefill": {"mode": "async_ep", "cache_blocks": args.router_cache_blocks}}
        router = compare_routers(lambda: MoEPrefillEngine(build_model(args), config, comm=comm), waves,
                                 routers=("prefix", "least_loaded"), repeats=args.repeats,
                                 threshold=args.router_round_requests * mean_cost, comm=comm)
    return {"seconds": seconds, "meta": meta, "router": router} if comm.rank == 0 else None


@torch.no_grad()
def reference_seconds(args) -> dict:
    """The single-process reference: one process with the whole model, one thread like each rank
    (two intra-op threads ran slower than one on these small matmuls)."""
    torch.set_num_threads(1)
    engine = MoEPrefillEngine(build_model(args), {"moe_prefill": {"mode": "reference", "cache_blocks": 512}},
                              comm=CommContext())
    seconds = {}
    for repeat in range(args.repeats):
        for index, (name, tokens, count) in enumerate(workloads(args)):
            requests = requests_for(tokens, count, seed=1000 * repeat + index)
            seconds.setdefault((name, tokens, count), []).append(timed_score(engine, requests)[0])
        requests = prefix_requests(args, seed=repeat)
        seconds.setdefault(("prefix mix", args.prefix_tokens, len(requests)), []).append(
            timed_score(engine, requests)[0])
    return seconds


def report(result: dict, reference: dict, args) -> None:
    meta, seconds = result["meta"], result["seconds"]
    cost = meta["cost"]
    print(f"MoE GPT {meta['params'] / 1e6:.1f}M params: {args.layers} layers, width {args.width}, {args.experts} "
          f"experts of width {args.expert_hidden or 2 * args.width} (top 2), fp32, 2 gloo ranks, 1 thread each; "
          f"medians of {args.repeats} interleaved runs")
    print(f"measured at start-up: t_EP {meta['t_ep'] * 1e3:.2f} ms per layer gather, F {meta['flops_rate']:.3g} "
          f"FLOP/s, T = t_EP x F x 1.2 = {meta['threshold']:.3g} per-layer FLOPs per rank")
    rows, met_rows = [], []
    for (name, tokens, count) in dict.fromkeys(key[:3] for key in seconds):
        total = tokens * count
        rate = {mode: total / statistics.median(wall for wall, _ in seconds[(name, tokens, count, mode)])
                for mode in MODES}
        exposed = {mode: statistics.median(wait for _, wait in seconds[(name, tokens, count, mode)])
                   for mode in MODES}
        rate["single"] = total / statistics.median(reference[(name, tokens, count)])
        per_rank_flops = cost.prefill(tokens) * count / 2
        meets = per_rank_flops >= meta["threshold"] if name != "prefix mix" else None
        row = [name, str(tokens), str(count), f"{per_rank_flops:.2e}", {True: "yes", False: "no", None: "-"}[meets]]
        row += [f"{rate[m]:.0f}" for m in (*MODES, "single")]
        row += [f"{rate['async_ep'] / rate['dp_ep']:.2f}x", f"{rate['async_ep'] / rate['sync_gather']:.2f}x"]
        row += ["/".join(f"{exposed[m] * 1e3:.0f}" for m in ("async_ep", "sync_gather", "dp_ep"))]
        rows.append(row)
        if meets:
            met_rows.append((name, tokens, count, rate["async_ep"] / rate["dp_ep"]))
    print_table(["workload", "tokens", "requests", "FLOPs/rank/layer", ">= T", *[f"{m} tok/s" for m in MODES],
                 "1 process tok/s", "async/dp_ep", "async/sync", "comm wait ms a/s/dp"], rows)
    print("comm wait: time rank 0 spent blocked on expert gathers (async_ep, sync_gather) or all-to-alls (dp_ep) "
          "in one call; what AsyncEP hides is the difference to sync_gather")
    smallest = {}
    for name, tokens, count, ratio in met_rows:
        smallest.setdefault((name, tokens), (count, ratio))
    for (name, tokens), (count, ratio) in smallest.items():
        print(f"{name} prompts ({tokens} tokens): smallest batch meeting T is {count} requests; AsyncEP / DP+EP "
              f"there {ratio:.2f}x (goal >= 1.3x: {'met' if ratio >= 1.3 else 'MISSED'})")
    if result["router"]:
        runs = result["router"]
        speed = {name: statistics.median(r["tokens"] / r["seconds"] for r in rs) for name, rs in runs.items()}
        flops = {name: statistics.median(r["flops"] for r in rs) for name, rs in runs.items()}
        ratio = speed["prefix"] / speed["least_loaded"]
        print(f"router on the prefix mix ({args.router_waves} waves of {args.router_per_wave}, cache "
              f"{args.router_cache_blocks} blocks per rank): prefix {speed['prefix']:.0f} tok/s, least-loaded "
              f"{speed['least_loaded']:.0f} tok/s = {ratio:.2f}x (goal >= 1.15x: {'met' if ratio >= 1.15 else 'MISSED'}); "
              f"computed FLOPs least-loaded / prefix {flops['least_loaded'] / flops['prefix']:.2f}x")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run that only shows the script works")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--expert_hidden", type=int, default=None, help="default: twice the width")
    parser.add_argument("--short", type=int, default=64)
    parser.add_argument("--medium", type=int, default=256)
    parser.add_argument("--long", type=int, default=1024)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8, 32],
                        help="requests per call (over both ranks)")
    parser.add_argument("--max_call_tokens", type=int, default=16384, help="skip batches with more tokens")
    parser.add_argument("--prefix_tokens", type=int, default=384)
    parser.add_argument("--prefix_requests", type=int, default=48)
    parser.add_argument("--router_waves", type=int, default=4)
    parser.add_argument("--router_per_wave", type=int, default=96)
    parser.add_argument("--router_prefix_tokens", type=int, default=160)
    parser.add_argument("--router_round_requests", type=float, default=8.0,
                        help="T for the router runs, in uncached requests per rank and round")
    parser.add_argument("--router_cache_blocks", type=int, default=48)
    parser.add_argument("--skip_router", action="store_true")
    parser.add_argument("--link-gbit", type=float, default=None,
                        help="run the ranks over an emulated link of this many Gbit/s instead of loopback")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.width, args.layers, args.experts = 1, 64, 2, 4
        args.short, args.medium, args.long, args.batches = 16, 32, 64, [2, 4]
        args.prefix_tokens, args.prefix_requests, args.router_waves, args.router_per_wave = 48, 8, 1, 8
        args.router_prefix_tokens = 48
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.link_gbit is None:
        result = run_ranks(_bench_rank, 2, args, timeout=3600)[0]
    else:
        with EmulatedLink(args.link_gbit) as link:
            result = run_ranks(_bench_rank, 2, args, link.spec(), timeout=3600)[0]
        print(f"ranks joined by an emulated {args.link_gbit:g} Gbit/s link (tc tbf on a veth pair)")
    report(result, reference_seconds(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

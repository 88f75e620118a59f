"""Step time and per-rank model-state bytes: zerolib stages 0/1/2 against DDP (+ DeepSpeed).

    PYTHONPATH=$PWD python benchmarks/bench_zero_step.py [--quick] [--profile zero2] [--link-gbit 2]

Spawns 2 gloo ranks (1 thread each) once; every variant is built in the same processes on the
same model (zerolib.models.GPT, same seed) and the same batch, and the variants take turns in
rounds (order rotated each round) so that noise from other work on the machine falls on all of
them alike. A step is forward + backward + optimizer step; its time is the slowest rank's.
Figures are medians over all timed steps.

Baseline: torch DistributedDataParallel (gradient_as_bucket_view=True, so gradients live in
its buckets) + torch.optim.AdamW(fused=True). Memory is the per-rank bytes of model states
(distinct tensor storages of parameters, gradients, fp32 master and optimizer state) right
after backward, before the step, where they peak; it is not RSS (the process's RSS holds all
variants at once, so it could not be split between them).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from dataclasses import dataclass

import torch

from common import median, print_table, rank, run_ranks, timed_steps, unique_bytes
from netlink import EmulatedLink, LinkSpec, enter_link

WORLD_SIZE = 2


@dataclass(frozen=True)
class Setting:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    micro_batch: int
    steps_per_round: int
    rounds: int
    goal: float  # stage 1/2 step time at most this many times DDP's


SETTINGS = [
    Setting("realistic (GPT ~25M, 1x128 tokens/rank)", 8, 512, 8, 128, 1, 3, 4, goal=1.05),
    Setting("overhead floor (GPT 3.44M, 1x32 tokens/rank)", 4, 264, 4, 32, 1, 15, 5, goal=1.30),
]
DEEPSPEED_FLOOR_NOTE = "DeepSpeed 0.19.8 measured here: ZeRO-1 1.56x, ZeRO-2 1.69x DDP (REFERENCE)"


def make_model(setting: Setting):
    from zerolib.models import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, block_size=setting.seq_len, n_layer=setting.n_layer,
                         n_head=setting.n_head, n_embd=setting.n_embd))


def zero_config(stage: int, micro_batch: int) -> dict:
    return {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.1}},
            "gradient_clipping": 0.0, "steps_per_print": None,
            "zero_optimization": {"stage": stage, "overlap_comm": True,
                                  "reduce_bucket_size": 25_000_000, "allgather_bucket_size": 25_000_000}}


class Variant:
    """One way of training the model; ``step()`` runs forward, backward and the optimizer."""

    def __init__(self, name: str, batch):
        self.name, self.batch = name, batch
        self.model_state_bytes = None
        self.steps_taken = 0

    def forward_backward(self):
        raise NotImplementedError

    def optimizer_step(self):
        raise NotImplementedError

    def state_bytes(self) -> int | None:
        return None

    def step(self):
        self.forward_backward()
        if self.steps_taken == 1:  # the second step: Adam's m and v exist from the first
            self.model_state_bytes = self.state_bytes()
        self.optimizer_step()
        self.steps_taken += 1


class DDPVariant(Variant):
    def __init__(self, setting: Setting, batch):
        super().__init__("DDP + fused AdamW", batch)
        model = make_model(setting)
        self.ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

    def forward_backward(self):
        self.ddp(*self.batch).backward()

    def optimizer_step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # keep the bucket views, as DDP intends

    def state_bytes(self):
        params = list(self.ddp.module.parameters())
        state = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return unique_bytes(params + [p.grad for p in params] + state)


class ZeroVariant(Variant):
    def __init__(self, setting: Setting, batch, stage: int):
        import zerolib

        super().__init__(f"zerolib stage {stage}", batch)
        self.engine = zerolib.initialize(make_model(setting), zero_config(stage, setting.micro_batch))

    def forward_backward(self):
        self.engine.backward(self.engine(*self.batch))

    def optimizer_step(self):
        self.engine.step()

    def state_bytes(self):
        return sum(self.engine.memory_breakdown().values())


class DeepSpeedVariant(Variant):
    def __init__(self, setting: Setting, batch, stage: int):
        import deepspeed

        super().__init__(f"DeepSpeed ZeRO-{stage}", batch)
        config = {**zero_config(stage, setting.micro_batch), "steps_per_print": 10**9}  # 0 divides by zero there
        self.engine, *_ = deepspeed.initialize(model=make_model(setting), config=config)

    def forward_backward(self):
        self.engine.backward(self.engine(*self.batch))

    def optimizer_step(self):
        self.engine.step()


def deepspeed_status() -> str | None:
    """None when DeepSpeed imports, else why it is skipped."""
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # an ImportError, or a broken install raising anything else
        return f"{type(err).__name__}: {err}"
    return None


def build_variants(setting: Setting) -> list[Variant]:
    gen = torch.Generator().manual_seed(100 + rank())
    tokens = torch.randint(0, 256, (setting.micro_batch, setting.seq_len + 1), generator=gen)
    batch = (tokens[:, :-1], tokens[:, 1:])
    variants = [DDPVariant(setting, batch)] + [ZeroVariant(setting, batch, s) for s in (0, 1, 2)]
    if deepspeed_status() is None:
        variants += [DeepSpeedVariant(setting, batch, s) for s in (1, 2)]
    return variants


def profile_variant(variant: Variant, steps: int) -> str:
    """Rank 0's cProfile of ``steps`` steps, top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        variant.step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def run_setting(setting: Setting, profile: str | None) -> dict:
    """Rank entry point for one setting: alternate the variants, return medians and bytes."""
    variants = build_variants(setting)
    for variant in variants:  # warm-up: allocate optimizer state, first-call costs
        timed_steps(variant.step, 2)
    times = {v.name: [] for v in variants}
    for round_index in range(setting.rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            times[variant.name] += timed_steps(variant.step, setting.steps_per_round)
    result = {"rows": [(v.name, median(times[v.name]), v.model_state_bytes) for v in variants],
              "collectives": time_collectives(sum(p.numel() for p in make_model(setting).parameters()))}
    chosen = [v for v in variants if profile and v.name.replace(" ", "").lower().endswith(profile)]
    if chosen:
        result["profile"] = profile_variant(chosen[0], setting.steps_per_round * 2)
    return result


def time_collectives(numel: int, repeats: int = 7) -> dict[str, float]:
    """Median seconds of the raw collectives behind each variant, on ``numel`` fp32 elements.

    DDP all-reduces the gradients; stages 1/2 reduce-scatter them and all-gather the parameters.
    Timing them bare shows how much of a stage's step is the backend's collective speed.
    """
    world = torch.distributed.get_world_size()
    full, shard = torch.randn(numel - numel % world), torch.empty(numel // world)
    calls = {"all_reduce": lambda: torch.distributed.all_reduce(full),
             "reduce_scatter": lambda: torch.distributed.reduce_scatter_tensor(shard, full),
             "all_gather": lambda: torch.distributed.all_gather_into_tensor(full, shard)}
    return {name: median(timed_steps(call, repeats)) for name, call in calls.items()}


def run_all(settings: list[Setting], profile: str | None, link: LinkSpec | None = None) -> list[dict]:
    from zerolib.comm.context import init_distributed

    if link is not None:
        enter_link(link, rank())
    torch.set_num_threads(1)
    init_distributed()  # DDP needs the group before any zerolib engine would create it
    return [run_setting(s, profile) for s in settings]


def report(setting: Setting, result: dict) -> None:
    rows = result["rows"]
    ddp_time, ddp_bytes = rows[0][1], rows[0][2]
    table = []
    for name, seconds, nbytes in rows:
        goal = ""
        if "stage 1" in name or "stage 2" in name:
            goal = f"goal <= {setting.goal:.2f}x: {'met' if seconds / ddp_time <= setting.goal else 'MISSED'}"
        mem = "n/a" if nbytes is None else f"{nbytes / 2**20:.1f} MiB ({nbytes / ddp_bytes:.2f}x)"
        table.append([name, f"{seconds * 1e3:.1f}", f"{seconds / ddp_time:.2f}x", mem, goal])
    print(f"\n== {setting.name}")
    print_table(["variant", "step ms (median)", "vs DDP", "model states/rank", ""], table)
    bare = result["collectives"]
    zero_pair = bare["reduce_scatter"] + bare["all_gather"]
    print(f"bare collectives on all parameters (fp32, same ranks): all_reduce "
          f"{bare['all_reduce'] * 1e3:.1f} ms; reduce_scatter {bare['reduce_scatter'] * 1e3:.1f} ms + all_gather "
          f"{bare['all_gather'] * 1e3:.1f} ms = {zero_pair / bare['all_reduce']:.2f}x the all_reduce")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, noisier)")
    parser.add_argument("--profile", help="cProfile one variant on rank 0, e.g. zero2 (matches 'stage 2')")
    parser.add_argument("--link-gbit", type=float, default=None,
                        help="run the ranks over an emulated link of this many Gbit/s (benchmarks/netlink.py) "
                             "instead of loopback")
    args = parser.parse_args()
    profile = args.profile.replace("zero", "stage") if args.profile else None
    settings = SETTINGS
    if args.quick:
        settings = [Setting(**{**s.__dict__, "rounds": 1, "steps_per_round": 2}) for s in SETTINGS]
    if args.link_gbit is None:
        results = run_ranks(run_all, WORLD_SIZE, settings, profile, timeout=3600)[0]
    else:
        with EmulatedLink(args.link_gbit) as link:
            print(f"ranks joined by an emulated {args.link_gbit:g} Gbit/s link (tc tbf on a veth pair)")
            results = run_ranks(run_all, WORLD_SIZE, settings, profile, link.spec(), timeout=3600)[0]
    why_not = deepspeed_status()
    for setting, result in zip(settings, results):
        report(setting, result)
        if "profile" in result:
            print(f"\ncProfile of {args.profile}, rank 0:\n{result['profile']}")
    print(f"\n{DEEPSPEED_FLOOR_NOTE}")
    if why_not:
        print(f"DeepSpeed skipped: it does not import here ({why_not}); this script does not install it.")


if __name__ == "__main__":
    main()

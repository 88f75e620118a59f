"""MoEPrefillEngine on 2 and 4 gloo ranks against the single-process reference.

One spawn per world size runs every model class (transformers' Qwen3-MoE and Mixtral, zerolib's
MoEGPT) in every mode and hands out the results per case. Each engine scores the same workload
twice, so the second call reads shared prefixes from the prefix KV cache. Tolerance: fp32
reordering (1e-5 on log-probabilities; packing, prefix caching and expert dispatch change only
the order of sums).
"""
import os

import pytest
import torch

from support.moe_models import MODEL_KINDS, build_model, reference_answers, workload
from zerolib.offload.aio import round_up

MODES = ("async_ep", "sync_gather", "dp_ep", "reference")
WORLD_SIZES = (2, 4)
# (model, case name) -> the moe_prefill block: every mode with max_row_tokens too short for a
# family of requests sharing a prefix (it runs over two passes, the second reading the cache),
# then the default (one pass: siblings read their prefix from the same row) with the shards in
# host memory, and the NVMe tier
CASES = {**{(kind, mode): {"mode": mode, "row_tokens": 48, "max_row_tokens": 48} for kind in MODEL_KINDS
            for mode in MODES},
         ("moe_gpt", "async_ep offload cpu"): {"mode": "async_ep", "row_tokens": 48, "offload": {"device": "cpu"}},
         ("qwen3_moe", "async_ep offload nvme"): {"mode": "async_ep", "row_tokens": 48,
                                                 "offload": {"device": "nvme", "nvme_path": "TMP", "window": 1}}}


def _layer_bytes(engine) -> int:
    return sum(numel * 4 for numel in engine.model.experts[0].numels)


def run_grid() -> dict:
    """On every rank: each (model, mode) engine's answers and what it held and sent."""
    from zerolib.inference import MoEPrefillEngine

    import tempfile

    out = {}
    swap_dir = tempfile.mkdtemp(prefix="moe_nvme_")
    for (kind, case), block in CASES.items():
        mode = block["mode"]
        if block.get("offload", {}).get("nvme_path") == "TMP":
            block = {**block, "offload": {**block["offload"], "nvme_path": swap_dir}}
        engine = MoEPrefillEngine(build_model(kind), {"moe_prefill": block})
        engine.comm.ledger.reset()
        first = engine.score(workload())
        comm, passes = engine.comm.ledger.snapshot(), engine.stats["passes"] - 1  # minus the start-up pass
        second = engine.score(workload())
        experts = engine.model.experts
        out[(kind, case)] = {
            "answers": [first, second], "stats": dict(engine.stats), "comm": comm, "passes": passes,
            "layer_bytes": _layer_bytes(engine), "moe_layers": len(experts),
            "resting_bytes": engine.placement.resting_bytes() if engine.placement else 0,
            "param_numels": [sum(p.numel() for _, p in layer.params()) for layer in experts],
            "full_numels": [sum(layer.numels) for layer in experts], "kind_numels": experts[0].numels,
            "peak_live": engine.placement.coordinator.peak_live_numel if mode in ("async_ep", "sync_gather") else 0,
            "swap_files": len(os.listdir(swap_dir)),
        }
        engine.close()
        out[(kind, case)]["swap_files_after_close"] = len(os.listdir(swap_dir))
    return out


class Grid:
    def __init__(self):
        self._runs = {}

    def rank_results(self, world_size: int, kind: str, mode: str) -> list[dict]:
        from harness import run_ranks

        if world_size not in self._runs:
            self._runs[world_size] = run_ranks(run_grid, world_size, timeout=400)
        return [rank[(kind, mode)] for rank in self._runs[world_size]]


GRID = Grid()
REFERENCES = {}


def reference(kind: str) -> list[dict]:
    if kind not in REFERENCES:
        REFERENCES[kind] = reference_answers(build_model(kind), workload())
    return REFERENCES[kind]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("kind, mode", list(CASES))
def test_answers_match_the_single_process_reference(world_size, kind, mode):
    ranks = GRID.rank_results(world_size, kind, mode)
    assert all(rank["answers"] == [None, None] for rank in ranks[1:]), "only rank 0 returns the answers"
    for call, answers in enumerate(ranks[0]["answers"]):
        for index, (mine, ref) in enumerate(zip(answers, reference(kind), strict=True)):
            assert mine["best"] == ref["best"], f"call {call} request {index}"
            assert mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5), f"call {call} request {index}"
    cached = sum(rank["stats"]["cached_tokens"] for rank in ranks)
    assert cached >= 8 * 32, "requests sharing a prefix read it from the cache instead of computing it"


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_async_ep_holds_one_nth_of_the_experts_and_gathers_the_next_layer_ahead(world_size):
    for kind in MODEL_KINDS:
        for mode in ("async_ep", "sync_gather"):
            rank = GRID.rank_results(world_size, kind, mode)[0]
            partitioned = rank["moe_layers"] - 1  # the first MoE layer stays whole
            assert rank["resting_bytes"] == partitioned * rank["layer_bytes"] // world_size, (kind, mode)
            assert rank["param_numels"][0] == rank["full_numels"][0], "first MoE layer whole"
            assert rank["param_numels"][1:] == [0] * partitioned, "other layers released between passes"
            gather = rank["comm"]["all_gather"]
            per_pass = partitioned * rank["layer_bytes"] * (world_size - 1) // world_size
            assert gather["bytes"] == rank["passes"] * per_pass and gather["calls"] == rank["passes"] * partitioned * 2
            assert "all_to_all" not in rank["comm"], "AsyncEP dispatches locally: no all-to-all"
            layer_numel = rank["layer_bytes"] // 4
            expected_peak = 2 * layer_numel if mode == "async_ep" else layer_numel
            assert rank["peak_live"] == expected_peak, f"{kind} {mode}: double buffer (prefetch) or one layer"


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_dp_ep_keeps_its_experts_and_moves_tokens_by_two_all_to_alls_per_layer(world_size):
    for kind in MODEL_KINDS:
        rank = GRID.rank_results(world_size, kind, "dp_ep")[0]
        assert rank["param_numels"] == [numel // world_size for numel in rank["full_numels"]]
        a2a = rank["comm"]["all_to_all"]
        assert a2a["calls"] == rank["passes"] * rank["moe_layers"] * 3, "counts, dispatch, combine per layer"
        assert "all_gather" not in rank["comm"], "DP+EP never gathers weights"


def test_nvme_tier_keeps_expert_shards_in_swap_files_and_removes_them():
    for world_size in WORLD_SIZES:
        rank = GRID.rank_results(world_size, "qwen3_moe", "async_ep offload nvme")[0]
        partitioned = rank["moe_layers"] - 1
        pool = [3 * round_up(numel // world_size * 4) for numel in rank["kind_numels"]]  # window 1 + 2 buffers
        assert rank["swap_files"] == 2 * partitioned, "one swap file per expert tensor kind and layer"
        assert rank["resting_bytes"] == sum(pool), "in memory: only the read pool, no shard"
        assert rank["swap_files_after_close"] == 0, "close() removes the swap files"


def test_a_family_sharing_a_prefix_runs_in_one_pass_when_it_fits_a_row():
    for world_size in WORLD_SIZES:
        long_rows = GRID.rank_results(world_size, "moe_gpt", "async_ep offload cpu")[0]
        short_rows = GRID.rank_results(world_size, "moe_gpt", "async_ep")[0]
        assert long_rows["passes"] == 1 and short_rows["passes"] == 2, (long_rows["passes"], short_rows["passes"])


def test_reference_mode_moves_no_weights():
    rank = GRID.rank_results(2, "moe_gpt", "reference")[0]
    assert "all_gather" not in rank["comm"] and "all_to_all" not in rank["comm"]
    assert rank["param_numels"] == rank["full_numels"]


def test_ranks_with_different_weights_are_refused():
    from harness import run_ranks

    messages = run_ranks(_build_with_rank_seed, 2)
    assert all("rank 1's model differs from rank 0's" in message for message in messages), messages


def _build_with_rank_seed():
    import os

    from zerolib.inference import MoEPrefillEngine

    try:
        MoEPrefillEngine(build_model("moe_gpt", seed=int(os.environ["RANK"])), {})
    except ValueError as err:
        return str(err)
    return "no error"


def test_dp_ep_needs_experts_that_split_evenly():
    from harness import run_ranks

    messages = run_ranks(_dp_ep_uneven, 4)
    assert all("dp_ep needs the experts of 'trunk.blocks.0.mlp.experts' (6) to split evenly over 4" in m
               for m in messages), messages


def _dp_ep_uneven():
    from zerolib.inference import MoEPrefillEngine

    try:
        MoEPrefillEngine(build_model("moe_gpt", num_experts=6), {"moe_prefill": {"mode": "dp_ep"}})
    except Exception as err:  # noqa: BLE001 - the message is what is checked
        return str(err)
    return "no error"


def test_score_errors_name_the_request_and_field():
    from zerolib.inference import MoEPrefillEngine
    from zerolib.inference.requests import RequestError

    engine = MoEPrefillEngine(build_model("moe_gpt"), {"moe_prefill": {"mode": "async_ep"}})
    cases = [([{"input_ids": [1, 2], "candidates": []}], r"requests\[0\].candidates: must list at least 1"),
             ([{"input_ids": [1], "candidates": [1]}, {"input_ids": [1, 200], "candidates": [1]}],
              r"requests\[1\].input_ids\[1\]: token id 200 is outside the vocabulary \[0, 96\)"),
             ([{"input_ids": [1], "candidates": [1], "label": [2]}], r"requests\[0\].label: unknown field"),
             ([{"text": "hi", "candidates": [1]}], r"requests\[0\].text: this server has no tokenizer"),
             ([{"input_ids": list(range(90)) * 3, "candidates": [1]}], "longer than the limit of 256 .the model's")]
    for requests, message in cases:
        with pytest.raises(RequestError, match=message):
            engine.score(requests)
    with pytest.raises(ValueError, match="assignment lists 1 ranks for 2 requests"):
        engine.score(workload()[:2], assignment=[0])


def test_unsupported_models_are_refused_with_their_class_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    from zerolib.inference import MoEPrefillEngine
    from zerolib.models import GPT, GPTConfig

    with pytest.raises(ValueError, match="and zerolib's MoEGPT; got GPT"):
        MoEPrefillEngine(GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2)), {})
    dense = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="LlamaForCausalLM has no experts modules"):
        MoEPrefillEngine(dense, {})


def test_the_docs_table_lists_every_moe_prefill_key():
    import os

    from zerolib.inference.settings import ExpertOffload, MoEPrefillSettings

    doc = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "moe_prefill.md")
    with open(doc) as file:
        text = file.read()
    for key in MoEPrefillSettings.model_fields:
        assert f"| `{key}` |" in text, f"docs/moe_prefill.md does not document moe_prefill.{key}"
    for key in ExpertOffload.model_fields:
        assert f"`{key}`" in text, f"docs/moe_prefill.md does not document moe_prefill.offload.{key}"


def test_multi_label_requests_answer_per_label_and_compute_the_prompt_once():
    from zerolib.inference import MoEPrefillEngine

    model = build_model("qwen3_moe")
    engine = MoEPrefillEngine(model, {"moe_prefill": {"mode": "reference"}})
    prompt = list(range(40))
    request = {"input_ids": prompt, "candidates": [1, 2],
               "labels": [{"input_ids": [7]}, {"input_ids": [8, 9], "candidates": [3]}, {"input_ids": [10]}]}
    before = engine.stats["computed_tokens"]
    (answer,) = engine.score([request])
    siblings = [{"input_ids": prompt + [7], "candidates": [1, 2]}, {"input_ids": prompt + [8, 9], "candidates": [3]},
                {"input_ids": prompt + [10], "candidates": [1, 2]}]
    for mine, ref in zip(answer["labels"], reference_answers(model, siblings), strict=True):
        assert mine["best"] == ref["best"] and mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5)
    assert engine.stats["computed_tokens"] - before == 41 + (8 + 2) + (8 + 1), \
        "the prompt's two full blocks are computed once, each sibling computes the rest"


def test_return_logits_gives_the_whole_last_position():
    from zerolib.inference import MoEPrefillEngine

    model = build_model("mixtral")
    engine = MoEPrefillEngine(model, {"moe_prefill": {"mode": "reference"}})
    (answer,) = engine.score([{"input_ids": [3, 1, 4, 1, 5], "candidates": [9, 2]}], return_logits=True)
    from support.moe_models import last_logits

    assert torch.allclose(torch.tensor(answer["logits"]), last_logits(model, [3, 1, 4, 1, 5]), atol=1e-5)

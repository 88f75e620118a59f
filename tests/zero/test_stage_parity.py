"""Stages 0/1/2 x fp32/bf16/fp16 x accumulation 1/2 x clipping on/off, on 2 and 4 ranks,
against plain single-process PyTorch (tolerances in support/parity.py)."""
import itertools

import pytest

from harness import run_ranks
from support.parity import Case, assert_matches_reference, run_cases

CASES = [Case(stage, dtype, gas, clip) for stage, dtype, gas, clip in
         itertools.product((0, 1, 2), ("fp32", "bf16", "fp16"), (1, 2), (0.0, 0.05))]


@pytest.fixture(scope="module")
def grid_results():
    results = {}

    def for_world(world_size):
        if world_size not in results:
            results[world_size] = run_ranks(run_cases, world_size, CASES, world_size)
        return results[world_size]
    return for_world


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_plain_pytorch(grid_results, case, world_size):
    ranks = [rank_results[case.name] for rank_results in grid_results(world_size)]
    assert_matches_reference(case, world_size, ranks)

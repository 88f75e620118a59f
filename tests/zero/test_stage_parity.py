"""Stages 0/1/2 x fp32/bf16/fp16 x accumulation 1/2 x clipping on/off, on 2 and 4 ranks,
against plain single-process PyTorch (tolerances in support/parity.py)."""
import itertools

import pytest

from support.parity import Case, GridRuns, assert_matches_reference

CASES = [Case(stage, dtype, gas, clip) for stage, dtype, gas, clip in
         itertools.product((0, 1, 2), ("fp32", "bf16", "fp16"), (1, 2), (0.0, 0.05))]
# The grid runs with overlap_comm (stages 1-2 then finish the parameter all-gather during the
# next forward); these run without it, the path DeepSpeed's default takes.
CASES += [Case(stage, dtype, 2, 0.05, zero_extra=(("overlap_comm", False),))
          for stage, dtype in itertools.product((1, 2), ("fp32", "fp16"))]


@pytest.fixture(scope="module")
def grid():
    return GridRuns(CASES)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_plain_pytorch(grid, case, world_size):
    ranks = grid.ranks(case, world_size)
    assert_matches_reference(case, world_size, ranks)

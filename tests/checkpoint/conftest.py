"""One 2-rank process group serves the safety and export tests (spawning is the slow part)."""
import tempfile

import pytest

from ckpt_workers import two_rank_suite
from harness import run_ranks


@pytest.fixture(scope="session")
def two_ranks():
    with tempfile.TemporaryDirectory() as safety_root:
        marker = f"{safety_root}/pwned"
        ranks = run_ranks(two_rank_suite, 2, safety_root, marker)
        yield {"safety": {"root": safety_root, "marker": marker, "ranks": [r["safety"] for r in ranks]}}

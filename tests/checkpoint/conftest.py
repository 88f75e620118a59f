"""One 2-rank process group serves the safety, export and crash tests (spawning is the slow part)."""
import tempfile
from pathlib import Path

import pytest

from ckpt_workers import crash_a_save, two_rank_suite
from harness import run_ranks


@pytest.fixture(scope="session")
def two_ranks():
    with tempfile.TemporaryDirectory() as safety_root, tempfile.TemporaryDirectory() as crash_root:
        codes = crash_a_save(crash_root)
        marker = f"{safety_root}/pwned"
        ranks = run_ranks(two_rank_suite, 2, safety_root, marker, crash_root)
        yield {"safety": {"root": safety_root, "marker": marker, "ranks": [r["safety"] for r in ranks]},
               "crash": {"root": Path(crash_root), "codes": codes, "resumed": [r["resumed"] for r in ranks]}}

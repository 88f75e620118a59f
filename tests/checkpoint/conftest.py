"""One 2-rank process group serves the safety, export and crash tests (spawning is the slow part)."""
import multiprocessing as mp
import tempfile
from pathlib import Path

import pytest

from harness import free_port, run_ranks


def two_rank_suite(safety_root: str, marker: str, crash_root: str) -> dict:
    from test_crash_safety import resume_after_crash
    from test_safety_and_export import safety_run

    return {"safety": safety_run(safety_root, marker), "resumed": resume_after_crash(crash_root)}


def _crash_a_save(root: str) -> list:
    """Runs ``crashing_rank`` on 2 ranks (rank 1 dies mid-save); returns the exit codes."""
    from test_crash_safety import crashing_rank

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=crashing_rank, args=(r, 2, port, root)) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [proc.exitcode for proc in procs]


@pytest.fixture(scope="session")
def two_ranks():
    with tempfile.TemporaryDirectory() as safety_root, tempfile.TemporaryDirectory() as crash_root:
        codes = _crash_a_save(crash_root)
        marker = f"{safety_root}/pwned"
        ranks = run_ranks(two_rank_suite, 2, safety_root, marker, crash_root)
        yield {"safety": {"root": safety_root, "marker": marker, "ranks": [r["safety"] for r in ranks]},
               "crash": {"root": Path(crash_root), "codes": codes, "resumed": [r["resumed"] for r in ranks]}}

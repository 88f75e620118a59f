"""Rank entry points for the checkpoint tests, in a module name no other test folder uses
(spawned ranks import it by name; a function in conftest.py would resolve to another conftest)."""
import multiprocessing as mp

from harness import free_port


def two_rank_suite(safety_root: str, marker: str, crash_root: str) -> dict:
    from test_crash_safety import resume_after_crash
    from test_safety_and_export import safety_run

    return {"safety": safety_run(safety_root, marker), "resumed": resume_after_crash(crash_root)}


def crash_a_save(root: str) -> list:
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



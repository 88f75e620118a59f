"""Rank entry points for the checkpoint tests, in a module name no other test folder uses
(spawned ranks import it by name; a function in conftest.py would resolve to another conftest).

A rank that dies while saving is tested under the launcher in tests/faults/test_rank_crash.py."""


def two_rank_suite(safety_root: str, marker: str) -> dict:
    from test_safety_and_export import safety_run

    return {"safety": safety_run(safety_root, marker)}

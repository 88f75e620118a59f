import pytest

from harness import run_ranks


@pytest.fixture(scope="session")
def zeropp_ranks():
    """Every rank's results of zeropp_workers.run_all, from one 4-rank spawn (2 nodes x 2)."""
    from zeropp_workers import run_all

    return run_ranks(run_all, 4, timeout=600)

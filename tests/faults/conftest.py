import os
import sys

import pytest

# The config fuzzing starts from the config tests' seed configs (tests/config): make their
# helpers importable when this folder runs alone.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "config"))


@pytest.fixture
def single_rank(monkeypatch):
    """No launcher variables: the engine runs as one rank without a process group."""
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)

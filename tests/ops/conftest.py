"""Shared fixtures: build every runnable SIMD path of the CPU ops once, in parallel, up front."""
from __future__ import annotations

import pytest
import torch

from op_builder import CPUAdamBuilder, QuantizerBuilder, runnable_simd_levels
from op_builder.prebuild import build_in_parallel

# "reference" is the PyTorch fallback; the others are the native SIMD paths this CPU can run.
IMPLEMENTATIONS = ("reference", *runnable_simd_levels())


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the machine is shared, and spinning OpenMP teams on oversubscribed
    cores make every test slow. test_cpu_adam checks the multi-threaded split separately."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def native_ops_built() -> None:
    """Build (or find cached) both CPU ops for every runnable path; the first run compiles."""
    builders = [builder(level) for builder in (CPUAdamBuilder, QuantizerBuilder) for level in runnable_simd_levels()]
    results = build_in_parallel(builders, rebuild_cached=False)
    skipped = {name: outcome for name, outcome in results.items() if outcome.startswith("skipped")}
    if skipped:
        pytest.skip(f"native ops cannot build on this machine: {skipped}")
    failed = {name: outcome for name, outcome in results.items() if outcome not in ("built", "cached")}
    assert not failed, f"native op builds failed: {failed}"


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request) -> str:
    """Each test using this runs once on the PyTorch reference and once per native SIMD path."""
    if request.param != "reference":
        request.getfixturevalue("native_ops_built")
    return request.param

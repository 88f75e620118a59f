"""benchmarks/bench_zero3.py runs end to end in its smoke mode and prints its table.

No timing is asserted: the script's figures are read by people, not by tests.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_zero3.py")


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_quick_mode_prints_every_variant_and_ratio():
    result = _run("--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "variant" in out and "step ms" in out and "state MiB r0/r1" in out, out
    for variant in ("zerolib ZeRO-3 prefetch", "zerolib ZeRO-3 on-demand", "FSDP2", "DDP"):
        assert f"\n{variant} " in out, f"no table row for {variant}:\n{out}"
    for ratio in ("zerolib prefetch / FSDP2", "zerolib prefetch / on-demand", "zerolib prefetch / DDP"):
        assert ratio in out, f"no ratio line {ratio!r}:\n{out}"
    assert "DeepSpeed ZeRO-3: skipped" in out, out


def test_unknown_size_is_rejected_by_name():
    result = _run("--sizes", "floor,huge", timeout=60)
    assert result.returncode == 2
    assert "huge" in result.stderr and "floor" in result.stderr, result.stderr

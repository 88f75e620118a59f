"""benchmarks/bench_moe_prefill.py runs end to end in its --quick mode and prints every backend, the
threshold and the goal lines. No timing is asserted: the figures are read by people."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_moe_prefill.py")


def test_quick_mode_prints_every_backend_and_the_goals():
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, SCRIPT, "--quick"], cwd=os.path.join(REPO, "benchmarks"), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for column in ("async_ep tok/s", "sync_gather tok/s", "dp_ep tok/s", "reference tok/s", "1 process tok/s"):
        assert column in out, f"no column {column!r}:\n{out}"
    for workload in ("short", "medium", "long", "prefix mix"):
        assert f"\n{workload} " in out, f"no row for {workload}:\n{out}"
    assert "T = t_EP x F x 1.2 = " in out and "router on the prefix mix" in out and "(goal >= 1.15x" in out, out

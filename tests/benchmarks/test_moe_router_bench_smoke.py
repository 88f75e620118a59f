"""benchmarks/moe_router_bench.py runs end to end in its --quick mode and prints every router
and both ratios. No timing is asserted: the figures are read by people."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "moe_router_bench.py")


def test_quick_mode_prints_each_router_and_the_ratios():
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, SCRIPT, "--quick"], cwd=os.path.join(REPO, "benchmarks"), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for router in ("prefix", "least_loaded", "round_robin"):
        assert f"\n{router} " in out, f"no row for {router}:\n{out}"
    assert "prefix / least_loaded tokens/s:" in out and "(goal >= 1.15)" in out, out
    assert "prefix / round_robin tokens/s:" in out and "T = " in out, out

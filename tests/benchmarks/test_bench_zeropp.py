"""benchmarks/bench_zeropp.py --quick runs end to end and prints every variant and ratio.

No figure is asserted: the script's numbers are read by people (docs/zeropp.md), not tests.
"""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = ("ZeRO-3", "qwZ", "hpZ", "qgZ", "ZeRO++ (all three)")


def test_quick_mode_prints_bytes_and_times_for_every_variant():
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_zeropp.py"), "--quick"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    for variant in VARIANTS:
        rows = re.findall(rf"^{re.escape(variant)} +\d", out, re.M)
        assert len(rows) == 2, f"no fp32 and bf16 rows for {variant}:\n{out}"
    for dtype in ("bf16", "fp32"):
        assert re.search(rf"cross-group bytes ZeRO\+\+ \(all three\) / ZeRO-3 \({dtype}\) +\d+\.\d+x +goal", out), out
    assert "step time ZeRO++ (all three) / ZeRO-3" in out, out

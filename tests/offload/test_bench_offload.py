"""Smoke run of benchmarks/bench_offload.py --quick: it completes, both modes (in memory; optimizer
and parameters on NVMe) train the same loss, and every figure it reports is a number."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_offload_quick_runs_and_reports(tmp_path):
    output = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_offload.py"), "--quick",
                             "--nvme-path", str(tmp_path)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert output.returncode == 0, output.stderr[-3000:]
    text = output.stdout
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", text)]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-3, f"memory vs nvme losses differ:\n{text}"
    for label in ("ratio peak RSS nvme / in-memory", "ratio step time nvme / in-memory"):
        assert re.search(rf"{re.escape(label)}: \d+\.\d+", text), f"missing '{label}':\n{text}"
    assert re.search(r"swap I/O: write \d+\.\d+ GB/s \(\d+\.\d+ of raw fresh-file write, \d+\.\d+ of raw "
                     r"overwrite\), read \d+\.\d+ GB/s \(\d+\.\d+ of raw\)", text), text
    assert re.search(r"swap I/O in the \d+ timed steps: \d+\.\d+ GB written, \d+\.\d+ GB read", text), text
    assert os.listdir(tmp_path) == [], "the benchmark leaves no swap or bandwidth files behind"

"""`zerolib report` / `python -m zerolib.ops.report`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from op_builder import CPUAdamBuilder, QuantizerBuilder, selected_simd_level
from zerolib.ops.report import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_report_lists_every_op_and_the_toolchain(native_ops_built, capsys):
    assert main(["--all-simd"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "C++ compiler", "nvcc", "CPU SIMD paths", "op cache", "zerolib_quantizer_cuda"):
        assert needle in out
    for builder in (CPUAdamBuilder(selected_simd_level()), QuantizerBuilder(selected_simd_level())):
        line = next(line for line in out.splitlines() if line.startswith(builder.extension_name))
        assert line.split()[1:4] == ["yes", "yes", "(cached)"], line
    cuda_line = next(line for line in out.splitlines() if line.startswith("zerolib_quantizer_cuda"))
    assert cuda_line.split()[1] in ("yes", "no") and (cuda_line.split()[1] == "yes" or len(cuda_line.split()) > 4)


def test_report_runs_as_a_module_and_rejects_bad_simd():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ZEROLIB_SIMD="bogus")
    done = subprocess.run([sys.executable, "-m", "zerolib.ops.report"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown SIMD level 'bogus'" in done.stderr
    assert "torch" in done.stdout

"""Export streams: its peak memory grows by less than twice the output shard size, however
large the checkpoint (here ~200 MB of fp32 weights, 40 MB shards)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from zerolib.checkpoint.export import parse_size

PROBE = Path(__file__).with_name("export_memory_probe.py")
MAX_SHARD = "40MB"


def _run(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_export_peak_memory_stays_near_one_shard(tmp_path):
    saved = _run("save", str(tmp_path / "ckpt"))
    checkpoint_bytes = sum(f.stat().st_size for f in (tmp_path / "ckpt").rglob("*.pt"))
    assert checkpoint_bytes > 4 * parse_size(MAX_SHARD), "the checkpoint must dwarf one shard for this test to mean anything"
    measured = _run("export", str(tmp_path / "ckpt"), str(tmp_path / "out"), MAX_SHARD)
    assert measured["status"] == 0
    growth = measured["peak"] - measured["before"]
    print(f"export of {checkpoint_bytes / 1e6:.0f} MB checkpoint ({saved['numel']} params), shards of {MAX_SHARD}: "
          f"peak RSS growth {growth / 1e6:.1f} MB")
    assert growth < 2 * parse_size(MAX_SHARD), f"peak RSS grew by {growth / 1e6:.1f} MB"
    index = json.loads((tmp_path / "out" / "pytorch_model.bin.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 4
    for name in files:
        assert (tmp_path / "out" / name).stat().st_size <= parse_size(MAX_SHARD) + 1_000_000
    first = torch.load(tmp_path / "out" / files[0], weights_only=True, mmap=True)
    assert all(t.dtype == torch.float32 for t in first.values())

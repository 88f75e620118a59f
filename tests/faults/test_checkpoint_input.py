"""Fault 6, the manifest: one whose world size disagrees with its files is refused, naming the
file and both counts, by the engine and by the offline reader alike (no rank reads another's
state). A truncated or corrupt file, a file from another model and a pickle with a payload are
tested on two ranks in tests/checkpoint/test_safety_and_export.py (see docs/reliability.md)."""
import json
import shutil

import pytest

from fault_cases import tiny_gpt_engine, train_step
from zerolib.checkpoint import CheckpointError, consolidate


@pytest.mark.parametrize("world_size, files", [
    (2, "so files rank00000.pt..rank00001.pt, but it lists 1: ['rank00000.pt']"),
    (0, None),
], ids=["two_ranks_one_file", "zero"])
def test_a_manifest_with_a_wrong_world_size_is_refused(single_rank, tmp_path, world_size, files):
    engine = tiny_gpt_engine(stage=1, micro_batch=1)
    train_step(engine, 1)
    engine.save_checkpoint(tmp_path / "good", tag="t")
    engine.load_checkpoint(tmp_path / "good")  # the untouched copy loads
    shutil.copytree(tmp_path / "good", tmp_path / "edited")
    manifest_path = tmp_path / "edited" / "t" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["world_size"] = world_size
    manifest_path.write_text(json.dumps(manifest))
    expected = f"{manifest_path}: " + (f"the manifest says world_size {world_size}, {files}" if files
                                       else f"world_size is {world_size}, not a positive integer")
    with pytest.raises(CheckpointError) as by_engine:
        tiny_gpt_engine(stage=1, micro_batch=1).load_checkpoint(tmp_path / "edited")
    with pytest.raises(CheckpointError) as offline:
        consolidate(tmp_path / "edited")
    for caught in (by_engine, offline):
        assert str(caught.value).startswith(expected), str(caught.value)

"""A rank dies while writing its file of a new checkpoint: ``latest`` still names the previous
tag, which loads and trains on; the half-written tag has no manifest and is never read."""
import os

from ckpt_cases import batches, make_engine, train
from zerolib.checkpoint import consolidate

CRASH_STATUS = 17


def _die_half_way(obj, path: str) -> None:
    """Stands in for ``storage.serialize`` on the crashing rank: half a file, then death."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
    os._exit(CRASH_STATUS)


def crashing_rank(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size)})
    import torch

    from zerolib.checkpoint import storage

    torch.set_num_threads(1)
    engine = make_engine(2, "fp32")
    data = batches(world_size, 2)
    train(engine, data, range(1))
    engine.save_checkpoint(root, tag="good")
    train(engine, data, range(1, 2))
    if rank == 1:
        storage.serialize = _die_half_way  # this test process only: the library is untouched
    engine.save_checkpoint(root, tag="broken")  # rank 0 fails in the collective once rank 1 is gone
    os._exit(0)


def resume_after_crash(root: str) -> dict:
    engine = make_engine(2, "fp32", seed=3)
    path, _ = engine.load_checkpoint(root)
    loaded = engine.full_state_dict()
    losses = train(engine, batches(2, 2), range(1, 2))
    return {"path": path, "loaded": loaded, "losses": losses, "steps": engine.global_steps}


def test_a_rank_died_while_writing(two_ranks):
    crashed = two_ranks["crash"]
    assert crashed["codes"][1] == CRASH_STATUS, crashed["codes"]
    assert crashed["codes"][0] != 0, "rank 0 must not report success for a checkpoint its peer never wrote"
    broken = crashed["root"] / "broken"
    assert not (broken / "manifest.json").exists()
    assert not (broken / "rank00001.pt").exists(), "a partial file must never carry the final name"
    assert (crashed["root"] / "latest").read_text() == "good"


def test_previous_checkpoint_loads_and_training_goes_on(two_ranks):
    want = consolidate(two_ranks["crash"]["root"], "good")
    for got in two_ranks["crash"]["resumed"]:
        assert got["path"].endswith("good")
        assert all(got["loaded"][name].equal(want[name]) for name in got["loaded"])
        assert got["steps"] == 2 and all(loss == loss for loss in got["losses"])

"""What must fail loudly, and what leaves zerolib whole: a wrong or different model, a truncated
or corrupted file and a malicious pickle each give a clear error naming the tensor or file;
consolidate/export/save_16bit_model give full weights that a plain GPT loads."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from ckpt_cases import MODEL, batches, engine_config, error_text, make_engine, train
from zerolib.checkpoint import CheckpointError, consolidate
from zerolib.checkpoint.storage import file_digest, load_tensors
from zerolib.models import GPT, GPTConfig


class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_rank_file(directory: Path, name: str, marker: str) -> None:
    """Replaces ``name`` and updates the manifest too, as an attacker owning the folder would."""
    torch.save({"rank": 0, "evil": Payload(marker)}, directory / name)
    manifest = json.loads((directory / "manifest.json").read_text())
    digest, size = file_digest(directory / name)
    manifest["files"][name] = {"sha256": digest, "bytes": size}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_copies(root: str, marker: str) -> None:
    good = Path(root) / "good" / "global_step2"
    for copy in ("truncated", "flipped", "evil"):
        shutil.copytree(good, Path(root) / copy / "global_step2")
        (Path(root) / copy / "latest").write_text("global_step2")
    path = Path(root) / "truncated" / "global_step2" / "rank00001.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path = Path(root) / "flipped" / "global_step2" / "rank00000.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    write_malicious_rank_file(Path(root) / "evil" / "global_step2", "rank00000.pt", marker)


def _partial_load(directory: str, **options) -> dict:
    engine = make_engine(3, "bf16", seed=4, kind="frozen")
    engine.load_checkpoint(directory, **options)
    return {"values": engine.full_state_dict(), "steps": engine.global_steps, "lr": engine.get_lr(),
            "optimizer_state": len(engine.optimizer.state)}


def safety_run(root: str, marker: str) -> dict:
    import zerolib
    from support.models import build

    engine = make_engine(3, "bf16", kind="frozen", gather_16bit=True)
    train(engine, batches(2, 2), range(2))
    engine.save_checkpoint(f"{root}/good")
    engine.save_16bit_model(f"{root}/sixteen")
    result = {"values": engine.full_state_dict(), "lr": engine.get_lr()}
    result["partial_loads"] = {
        "module_only": _partial_load(f"{root}/good", load_module_only=True),
        "no_optimizer": _partial_load(f"{root}/good", load_optimizer_states=False, load_lr_scheduler_states=False)}
    result["no_gather_flag"] = error_text(lambda: make_engine(3, "bf16").save_16bit_model(f"{root}/refused"))
    if engine.comm.rank == 0:
        _corrupt_copies(root, marker)
    engine.comm.barrier()

    def load_into(model, directory):
        return lambda: zerolib.initialize(model, engine_config(3, "bf16")).load_checkpoint(directory)

    wider = GPTConfig(**{**MODEL.__dict__, "n_embd": 24})
    untied = GPTConfig(**{**MODEL.__dict__, "tie_embeddings": False})
    result["errors"] = {
        "wider": error_text(load_into(build("frozen", wider), f"{root}/good")),
        "untied": error_text(load_into(build("frozen", untied), f"{root}/good")),
        "truncated": error_text(lambda: make_engine(3, "bf16", kind="frozen").load_checkpoint(f"{root}/truncated")),
        "flipped": error_text(lambda: make_engine(3, "bf16", kind="frozen").load_checkpoint(f"{root}/flipped")),
        "evil": error_text(lambda: make_engine(3, "bf16", kind="frozen").load_checkpoint(f"{root}/evil")),
        "no_latest": error_text(lambda: make_engine(3, "bf16", kind="frozen").load_checkpoint(f"{root}/nothing")),
    }
    return result


@pytest.fixture(scope="module")
def run(two_ranks):
    return two_ranks["safety"]


def test_different_model_names_the_tensor_and_both_shapes(run):
    for got in run["ranks"]:
        wider = got["errors"]["wider"]
        match = re.search(r"tensor '([^']+)': checkpoint \S+ has shape \[(.*)\], the model has \[(.*)\]", wider)
        assert wider.startswith("CheckpointError") and match, wider
        assert "22" in match.group(2) and "24" in match.group(3), wider
        assert "has no tensor 'lm_head.weight'" in got["errors"]["untied"], got["errors"]["untied"]


def test_truncated_and_corrupt_files_are_named(run):
    for got in run["ranks"]:
        assert "CheckpointError" in got["errors"]["truncated"] and "rank00001.pt" in got["errors"]["truncated"]
        assert "CheckpointError" in got["errors"]["flipped"] and "rank00000.pt" in got["errors"]["flipped"]
    assert any("truncated" in got["errors"]["truncated"] for got in run["ranks"])
    assert any("corrupt" in got["errors"]["flipped"] for got in run["ranks"])


def test_malicious_pickle_is_refused_and_never_runs(run):
    for got in run["ranks"]:
        assert got["errors"]["evil"].startswith("CheckpointError"), got["errors"]["evil"]
    assert any("refusing to unpickle" in got["errors"]["evil"] for got in run["ranks"])
    with pytest.raises(CheckpointError, match="refusing"):
        load_tensors(Path(run["root"]) / "evil" / "global_step2" / "rank00000.pt")
    assert not os.path.exists(run["marker"]), "the payload ran"


def test_missing_latest_is_explained(run):
    assert "latest" in run["ranks"][0]["errors"]["no_latest"]


def test_consolidate_gives_the_saved_full_weights(run):
    full = consolidate(f"{run['root']}/good")
    want = run["ranks"][0]["values"]
    assert set(full) == set(GPT(MODEL).state_dict())
    for name, value in want.items():
        assert value.dtype == torch.float32 and torch.equal(full[name], value), name
    assert full["lm_head.weight"] is full["tok_emb.weight"]


def _plain_gpt(state: dict) -> GPT:
    model = GPT(MODEL).eval()
    model.load_state_dict(state, strict=True)
    return model


def test_sharded_export_loads_into_a_plain_gpt(run, tmp_path):
    from zerolib.cli import main

    assert main(["export", f"{run['root']}/good", str(tmp_path), "--max_shard_size", "20KB"]) == 0
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"pytorch_model-00001-of-{len(files):05d}.bin"
    state = {}
    for name in files:
        state.update(torch.load(tmp_path / name, weights_only=True))
    assert set(state) == set(index["weight_map"])
    tokens = batches(1, 1)[0, 0, 0]
    reference = {**run["ranks"][0]["values"]}
    reference["lm_head.weight"] = reference["tok_emb.weight"]
    assert torch.equal(_plain_gpt(state)(tokens), _plain_gpt(reference)(tokens))


def test_safetensors_bf16_export(run, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    from zerolib.checkpoint.export import main

    assert main([f"{run['root']}/good", str(tmp_path), "--safetensors", "--dtype", "bf16"]) == 0
    state = safetensors.load_file(tmp_path / "model.safetensors")
    for name, value in run["ranks"][0]["values"].items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], value.to(torch.bfloat16)), name
    _plain_gpt(state)


def test_export_rejects_bad_arguments(run, tmp_path, capsys):
    from zerolib.checkpoint.export import main

    assert main([f"{run['root']}/good", str(tmp_path), "--max_shard_size", "5XB"]) == 1
    assert "--max_shard_size '5XB'" in capsys.readouterr().err
    assert main([f"{run['root']}/evil", str(tmp_path)]) == 1
    assert "refusing to unpickle" in capsys.readouterr().err


def test_save_16bit_model(run):
    state = torch.load(Path(run["root"]) / "sixteen" / "pytorch_model.bin", weights_only=True)
    assert set(state) == set(GPT(MODEL).state_dict())
    for name, value in run["ranks"][0]["values"].items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], value.to(torch.bfloat16)), name
    for got in run["ranks"]:
        assert "stage3_gather_16bit_weights_on_model_save" in got["no_gather_flag"], got["no_gather_flag"]


def test_partial_loads(run):
    for got in run["ranks"]:
        module_only, no_optimizer = got["partial_loads"]["module_only"], got["partial_loads"]["no_optimizer"]
        for loaded in (module_only, no_optimizer):
            assert all(torch.equal(loaded["values"][n], v) for n, v in got["values"].items())
            assert loaded["optimizer_state"] == 0, "optimizer state was loaded though not asked for"
        assert module_only["steps"] == 0 and no_optimizer["steps"] == 2
        assert no_optimizer["lr"] != got["lr"], "the schedule was loaded though not asked for"

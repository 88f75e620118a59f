"""The weights of a local Hugging Face checkpoint directory, read tensor by tensor on demand.

``zerolib.initialize(model, config, pretrained=DIR)`` fills a model built under
``zerolib.partitioned_init`` from ``DIR``'s safetensors files (``model.safetensors``, or the
shards listed in ``model.safetensors.index.json``, as ``save_pretrained`` writes them). Only
the file headers are read up front, to match every parameter and persistent buffer to a
checkpoint tensor and check its shape; values are read when the materializer fills the buffer
holding them, so a rank never holds more of the checkpoint than one buffer.

Names match as in ``from_pretrained`` for checkpoints whose keys are the model's state-dict
keys: any name of a tied parameter, with or without the model's ``base_model_prefix``.
Checkpoints that transformers converts while loading (per-expert MoE weights fused into one
tensor, renamed legacy keys) do not match and are refused, naming the keys.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import torch

from zerolib.checkpoint.storage import CheckpointError
from zerolib.utils.logging import get_logger

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHOWN = 5  # names listed in a message before "and N more"


def _listed(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(repr(n) for n in names[:SHOWN]) + more


def _safe_open():
    try:
        from safetensors import safe_open
    except ImportError as error:  # transformers installs it; a bare environment may lack it
        raise ImportError("pretrained= reads safetensors files: pip install safetensors") from error
    return safe_open


def _checkpoint_files(directory: Path) -> dict[str, Path]:
    """``{checkpoint key: file}`` from the index, or from the single file's header."""
    if not directory.is_dir():
        raise CheckpointError(f"pretrained={str(directory)!r} is not a local directory: download the model first "
                              "(e.g. huggingface_hub.snapshot_download) and pass its directory")
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: directory / name for key, name in weight_map.items()}
    single = directory / SINGLE_FILE
    if single.is_file():
        with _safe_open()(single, framework="pt") as file:
            return dict.fromkeys(file.keys(), single)
    found = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE} (found {found[:8]}); "
                          "pretrained= reads safetensors checkpoints as save_pretrained writes them")


class PretrainedWeights:
    """Matches a model's tensors to a checkpoint directory and reads them by model name."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._files = _checkpoint_files(self.directory)
        self._keys: dict[str, str] = {}  # model name -> checkpoint key

    def match(self, wanted: dict[str, tuple[list[str], torch.Size]], base_model_prefix: str = "") -> None:
        """Finds the checkpoint key of each wanted tensor (``{name: (all its names, shape)}``).

        Tensors the checkpoint lacks keep their initialisation (as from_pretrained does for a new
        head), with a warning; checkpoint keys no tensor wants are ignored with a warning. Both
        at once, or a shape that differs, mean the layouts differ: a CheckpointError.
        """
        missing = []
        for name, (aliases, _) in wanted.items():
            key = next((k for a in aliases for k in self._candidates(a, base_model_prefix) if k in self._files), None)
            if key is None:
                missing.append(name)
            else:
                self._keys[name] = key
        unexpected = set(self._files) - set(self._keys.values())
        if missing and unexpected:
            raise CheckpointError(
                f"{self.directory}: the checkpoint's keys do not match the model's: the model has no tensor for "
                f"{_listed(unexpected)} and the checkpoint none for {_listed(missing)}. pretrained= needs the "
                "model's own state-dict keys (save_pretrained of the same class writes them); weights that "
                "transformers converts on load, such as per-expert MoE tensors, are not supported")
        self._check_shapes({name: shape for name, (_, shape) in wanted.items() if name in self._keys})
        logger = get_logger()
        if missing:
            logger.warning("%s has no weights for %s: they keep their fresh initialisation", self.directory,
                           _listed(missing))
        if unexpected:
            logger.warning("%s: checkpoint tensors %s belong to no model tensor and are ignored", self.directory,
                           _listed(unexpected))

    @staticmethod
    def _candidates(name: str, prefix: str) -> list[str]:
        if not prefix:
            return [name]
        if name.startswith(prefix + "."):
            return [name, name[len(prefix) + 1:]]
        return [name, f"{prefix}.{name}"]

    def _check_shapes(self, shapes: dict[str, torch.Size]) -> None:
        wrong = []
        for path, names in self._by_file(shapes).items():
            with _safe_open()(path, framework="pt") as file:
                for name in names:
                    saved = torch.Size(file.get_slice(self._keys[name]).get_shape())
                    if saved != shapes[name]:
                        wrong.append(f"{name} is {tuple(shapes[name])} in the model, {tuple(saved)} in {path.name}")
        if wrong:
            raise CheckpointError(f"{self.directory}: shapes differ: " + "; ".join(wrong[:SHOWN]))

    def _by_file(self, names) -> dict[Path, list[str]]:
        grouped = defaultdict(list)
        for name in names:
            grouped[self._files[self._keys[name]]].append(name)
        return grouped

    def has(self, name: str) -> bool:
        return name in self._keys

    def read(self, names: list[str]):
        """Yields ``(name, tensor)`` for the given model names, opening each file once; the file
        maps are closed after each file, so the pages read leave this process."""
        for path, in_file in self._by_file(names).items():
            with _safe_open()(path, framework="pt") as file:
                for name in in_file:
                    yield name, file.get_tensor(self._keys[name])

    def read_ranges(self, requests: list[tuple[str, int, int]]):
        """Yields ``(name, first, end, values)``: elements ``[first, end)`` of each named tensor,
        flattened, reading only the rows of dimension 0 that hold them."""
        for path, in_file in self._by_file(name for name, _, _ in requests).items():
            wanted = set(in_file)
            with _safe_open()(path, framework="pt") as file:
                for name, first, end in requests:
                    if name in wanted:
                        yield name, first, end, _flat_range(file.get_slice(self._keys[name]), first, end)


def _flat_range(tensor_slice, first: int, end: int) -> torch.Tensor:
    """Elements ``[first, end)`` of a lazily opened tensor in row-major order."""
    shape = tensor_slice.get_shape()
    if not shape:
        return tensor_slice[...].reshape(-1)[first:end]
    row = 1
    for size in shape[1:]:
        row *= size
    top, bottom = first // row, -(-end // row)
    rows = tensor_slice[top:bottom].reshape(-1)
    return rows[first - top * row:end - top * row]

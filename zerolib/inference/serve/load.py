"""``--model PATH`` to an engine: the one place serve-prefill builds MoEPrefillEngine.

PATH is a transformers model directory (``save_pretrained`` output: config.json and weights,
e.g. a small random Qwen3-MoE or Mixtral) or a zerolib checkpoint directory (``latest`` and
its tag, or a tag directory with manifest.json) together with ``serve.model_factory``, the
'module:function' that builds the empty model the checkpoint loads into. Nothing is downloaded.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from zerolib.config.errors import ConfigError
from zerolib.inference.serve.settings import ServeSettings


def _is_checkpoint(path: Path) -> bool:
    return (path / "latest").is_file() or (path / "manifest.json").is_file()


def _factory(spec: str | None, path: Path):
    if not spec:
        raise ConfigError("serve.model_factory", f"--model {path} is a zerolib checkpoint, which holds weights "
                                                 f"but not the model's code: name the 'module:function' that "
                                                 f"builds the model")
    module_name, _, function = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise ConfigError("serve.model_factory", f"cannot import {spec!r}: {err}") from None


def load_model(model_path: str, settings: ServeSettings):
    """(model in eval mode, tokenizer or None, longest input in tokens or None)."""
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"--model {model_path}: no such file or directory")
    if (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True) if has_tokenizer else None
        return model.eval(), tokenizer, getattr(model.config, "max_position_embeddings", None)
    if _is_checkpoint(path):
        from zerolib.checkpoint import consolidate

        model = _factory(settings.model_factory, path)()
        tag_dir = (path, None) if (path / "latest").is_file() else (path.parent, path.name)
        model.load_state_dict(consolidate(*tag_dir), strict=True)
        max_positions = getattr(getattr(model, "config", None), "block_size", None)
        return model.eval(), None, max_positions
    raise ValueError(f"--model {model_path}: neither a transformers model directory (no config.json) nor a "
                     f"zerolib checkpoint (no 'latest' file or manifest.json)")


def build_engine(model_path: str, engine_config: dict, settings: ServeSettings, comm=None):
    """(MoEPrefillEngine, tokenizer or None, longest input or None); call on every rank. ``comm``:
    the server's CommContext, shared so that one ledger counts every byte the job sends."""
    from zerolib.inference import MoEPrefillEngine

    model, tokenizer, max_positions = load_model(model_path, settings)
    return MoEPrefillEngine(model, engine_config, tokenizer=tokenizer, comm=comm), tokenizer, max_positions

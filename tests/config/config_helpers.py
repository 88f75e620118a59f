"""Helpers shared by the config tests (no processes, no torch)."""
import json
import pathlib
import warnings

from zerolib.config import ZeroConfigWarning, load_config

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def fixture_dict(name: str) -> dict:
    """A fixture config file as a dict."""
    return json.loads((FIXTURES / name).read_text())


def load_with_warnings(source, **kwargs):
    """(config, list of ZeroConfigWarning messages) with every warning shown, none filtered."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(source, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, ZeroConfigWarning)]
    return cfg, messages


def base(**extra) -> dict:
    """The smallest valid config (just a batch size) plus `extra` top-level keys."""
    return {"train_batch_size": 8, **extra}

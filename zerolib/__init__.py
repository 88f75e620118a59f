"""zerolib: ZeRO memory optimizations for PyTorch training.

``engine = zerolib.initialize(model, config)`` wraps a module; see docs/getting_started.md.
"""
from zerolib.config import ConfigError, ZeroConfig, load_config
from zerolib.runtime.engine import ZeroEngine, initialize

__all__ = ["initialize", "ZeroEngine", "ZeroConfig", "ConfigError", "load_config"]
__version__ = "0.1.0"

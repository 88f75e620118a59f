"""zerolib: ZeRO memory optimizations for PyTorch training.

``engine = zerolib.initialize(model, config)`` wraps a module; see docs/getting_started.md.
"""
from zerolib.config import ConfigError, ZeroConfig, load_config
from zerolib.partition.materialize import partitioned_init
from zerolib.runtime.engine import ZeroEngine, initialize
from zerolib.runtime.gathered import GatheredParameters

__all__ = ["initialize", "ZeroEngine", "ZeroConfig", "ConfigError", "load_config", "partitioned_init",
           "GatheredParameters"]
__version__ = "0.1.0"

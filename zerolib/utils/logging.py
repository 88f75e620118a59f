"""zerolib's logger: INFO on rank 0 only, so a multi-rank job prints each message once."""
from __future__ import annotations

import logging
import os


def get_logger(name: str = "zerolib") -> logging.Logger:
    """The library logger; configured on first use unless the application configured it."""
    logger = logging.getLogger(name)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[zerolib] %(message)s"))
        logger.addHandler(handler)
        rank = int(os.environ.get("RANK", "0"))
        logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        logger.propagate = False
    return logger

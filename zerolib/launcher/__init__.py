"""The zerolib launcher: one process per rank on this machine, on many nodes, or through a scheduler.

``zerolib script.py``, ``zerolib launch script.py`` and ``python -m zerolib.launcher script.py``
all reach ``main``. Only the standard library is imported, so launching never waits on torch.
See docs/launcher.md.
"""
from zerolib.launcher.agent import NodePlan, rank_env, run_node
from zerolib.launcher.errors import LaunchError
from zerolib.launcher.hostfile import apply_filters, parse_filter, parse_hostfile
from zerolib.launcher.launch import launch, main

__all__ = ["LaunchError", "NodePlan", "apply_filters", "launch", "main", "parse_filter", "parse_hostfile",
           "rank_env", "run_node"]

"""A rank that prints its launcher-set environment and arguments as one JSON line, and a stderr line."""
import json
import os
import sys

KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "CROSS_RANK",
        "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")
print(json.dumps({"env": {key: os.environ.get(key) for key in KEYS}, "argv": sys.argv[1:]}))
print(f"stderr line of rank {os.environ['RANK']}", file=sys.stderr)

"""One rank of a scoring job, started by zerolib's launcher in test_server_launch.py: the serve()
loop of zerolib serve-prefill's worker with MoEPrefillEngine (AsyncEP) over a tiny MoE GPT built
from a seed, so the test can compute the reference answers itself.

usage: serve_tiny_moe.py PORT
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # tests/

import torch  # noqa: E402

from support.serving import tiny_moe  # noqa: E402
from zerolib.comm import CommContext  # noqa: E402
from zerolib.inference import MoEPrefillEngine  # noqa: E402
from zerolib.inference.serve.server import serve  # noqa: E402
from zerolib.inference.serve.settings import ServeSettings  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    settings = ServeSettings(collective_timeout_seconds=30, idle_tick_seconds=0.2)
    comm = CommContext.from_environment(timeout_seconds=settings.collective_timeout_seconds)
    print(f"rank {comm.rank} pid {os.getpid()}", flush=True)
    config = {"moe_prefill": {"mode": "async_ep", "cache_blocks": 64, "threshold_flops": 6.5e6}}
    engine = MoEPrefillEngine(tiny_moe(), config, comm=comm)
    sys.exit(serve(engine, settings, comm=comm, port=int(sys.argv[1]), max_positions=128,
                   announce=lambda line: print(line, flush=True)))

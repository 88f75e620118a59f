"""One rank of a stand-in scoring job, started by zerolib's launcher in test_server_launch.py:
zerolib serve-prefill's worker with the stand-in scorer (real GPT forward, prefix KV cache) in
place of MoEPrefillEngine. SWITCH TO THE REAL ENGINE: the worker itself
(zerolib.inference.serve.worker) runs the same serve() with MoEPrefillEngine.

usage: serve_standin.py PORT
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # tests/

import torch  # noqa: E402

from support.prefill_standin import StandInScorer  # noqa: E402
from support.serving import tiny_gpt  # noqa: E402
from zerolib.comm import CommContext  # noqa: E402
from zerolib.inference.serve.server import serve  # noqa: E402
from zerolib.inference.serve.settings import ServeSettings  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    settings = ServeSettings(collective_timeout_seconds=30, idle_tick_seconds=0.2)
    comm = CommContext.from_environment(timeout_seconds=settings.collective_timeout_seconds)
    print(f"rank {comm.rank} pid {os.getpid()}", flush=True)
    model = tiny_gpt()
    scorer = StandInScorer(model, cache_blocks=64, comm=comm, threshold=6.5e6)
    sys.exit(serve(scorer, settings, comm=comm, port=int(sys.argv[1]), max_positions=128,
                   announce=lambda line: print(line, flush=True)))

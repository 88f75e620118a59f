"""A rank that either fails (FAIL_RANK, FAIL_MODE=raise|sigkill) or sleeps, with a grandchild.

With IGNORE_SIGTERM=1 the sleeping ranks ignore SIGTERM, so only the launcher's SIGKILL ends them.

Sleeping ranks write READY_DIR/rank<r> with their pid and their grandchild's pid; the failing
rank waits for all of those files first, so the test knows every pid it must see ended.
"""
import os
import signal
import subprocess
import sys
import time

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
ready_dir = os.environ["READY_DIR"]
fail_rank = os.environ.get("FAIL_RANK")

if str(rank) == fail_rank:
    others = [r for r in range(world) if r != rank]
    deadline = time.monotonic() + 30
    while not all(os.path.exists(os.path.join(ready_dir, f"rank{r}")) for r in others):
        if time.monotonic() > deadline:
            sys.exit("the other ranks never became ready")
        time.sleep(0.02)
    if os.environ.get("FAIL_MODE") == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"deliberate failure of rank {rank}")

if os.environ.get("IGNORE_SIGTERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
path = os.path.join(ready_dir, f"rank{rank}")
with open(path + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()} {grandchild.pid}")
os.rename(path + ".tmp", path)  # atomic: readers never see a half-written file
print(f"ready rank {rank}", flush=True)
time.sleep(300)

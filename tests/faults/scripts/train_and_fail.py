"""A 2-step ZeRO-3 training run under the launcher in which one rank fails on purpose.

Environment: MODEL and CONFIG (JSON: the GPTConfig fields and the engine config), CKPT_DIR
(where the step-1 checkpoint, ``expected.pt`` and each rank's pid file go), FAULT_RANK,
FAULT_PHASE (forward | backward | step | save: where step 2 fails) and FAULT_MODE (raise |
sigkill). The failing rank writes CKPT_DIR/fault_time just before it fails, so the test can
bound how long the launcher took to end the job. Nothing in zerolib or torch is patched: the
fault comes from a module hook, an autograd function, an optimizer step hook, or an object in
``client_state`` that fails while it is being pickled.
"""
import json
import os
import signal
import time
from pathlib import Path

import torch

import zerolib
from zerolib.models import GPT, GPTConfig

RANK = int(os.environ["RANK"])
CKPT_DIR = Path(os.environ["CKPT_DIR"])
FAULT_RANK, FAULT_PHASE, FAULT_MODE = int(os.environ["FAULT_RANK"]), os.environ["FAULT_PHASE"], os.environ["FAULT_MODE"]
FAULT_STEP = 2


class InjectedFault(RuntimeError):
    pass


class Run:
    step = 0


def trip(phase: str) -> None:
    if phase != FAULT_PHASE or RANK != FAULT_RANK or Run.step != FAULT_STEP:
        return
    (CKPT_DIR / "fault_time").write_text(repr(time.time()))
    if FAULT_MODE == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected {phase} fault on rank {RANK} at step {Run.step}")


class TripInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        trip("backward")
        return grad


class TripWhenPickled:
    def __reduce__(self):
        trip("save")
        return (int, (0,))


(CKPT_DIR / f"pid{RANK}").write_text(str(os.getpid()))
torch.manual_seed(0)
model = GPT(GPTConfig(**json.loads(os.environ["MODEL"])))
engine = zerolib.initialize(model, json.loads(os.environ["CONFIG"]))
model.blocks[1].register_forward_pre_hook(lambda module, args: trip("forward"))
model.blocks[1].register_forward_hook(lambda module, args, output: TripInBackward.apply(output))
engine.optimizer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: trip("step"))

data = torch.randint(0, model.config.vocab_size, (3, 2, 2, 9), generator=torch.Generator().manual_seed(1))
for Run.step in (1, 2):
    tokens = data[Run.step, RANK]
    engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
    engine.step()
    if Run.step == 1:
        engine.save_checkpoint(CKPT_DIR, tag="step1")
        expected = engine.full_state_dict()
        if RANK == 0:
            torch.save(expected, CKPT_DIR / "expected.pt")
engine.save_checkpoint(CKPT_DIR, tag="step2", client_state={"tripwire": TripWhenPickled()} if RANK == FAULT_RANK else {})
print(f"rank {RANK}: no fault was injected", flush=True)

"""Quantized tensors travel through torch.distributed (gloo, 2 ranks) as the ZeRO++ paths send them.

Both ranks load the native quantizer at the same moment (the build lock's real use), quantize
their own tensor, all-gather the fixed-size wire buffers, and reduce the gathered inputs.
"""
from __future__ import annotations

import socket
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zerolib.ops import QuantizedTensor, dequantize, dequantize_reduce, quantize, wire_nbytes
from zerolib.ops.quant_reference import dequantize_reference, quantize_reference

WORLD_SIZE = 2
CASES = [(8, 256, True), (4, 64, False), (8, 100, False), (4, 2, True)]
NUMEL = 10007  # not a multiple of any block size or of 8


def rank_tensor(rank: int, case_index: int) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(100 * case_index + rank)) * (rank + 1)


def run_cases(rank: int) -> None:
    for index, (bits, block_size, symmetric) in enumerate(CASES):
        local = quantize(rank_tensor(rank, index), bits=bits, block_size=block_size, symmetric=symmetric,
                         require_native=True)
        gathered = [torch.empty(wire_nbytes(NUMEL, bits, block_size, symmetric), dtype=torch.uint8)
                    for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, local.to_wire())
        received = [QuantizedTensor.from_wire(buffer, (NUMEL,), bits, block_size, symmetric) for buffer in gathered]
        expected = sum(dequantize_reference(*quantize_reference(rank_tensor(r, index), bits, block_size, symmetric),
                                            NUMEL, bits, block_size, symmetric) for r in range(WORLD_SIZE))
        torch.testing.assert_close(dequantize_reduce(received, require_native=True), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(dequantize(received[rank]), dequantize(local)), f"case {index}: own buffer changed"


def worker(rank: int, port: int, error_file: str) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
        run_cases(rank)
        dist.barrier()
    except BaseException:
        with open(f"{error_file}.{rank}", "w") as handle:
            handle.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wire_buffers_all_gather_and_reduce(native_ops_built, tmp_path):
    error_file = str(tmp_path / "error")
    context = mp.spawn(worker, args=(free_port(), error_file), nprocs=WORLD_SIZE, join=False)
    failure = None
    # A generous bound that only catches a hang (the test takes seconds), never a slow run.
    deadline = time.monotonic() + 300
    try:
        # join() returns False each time one rank exits while others still run.
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                alive = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
                failure = f"ranks {alive} hung"
                for process in context.processes:
                    process.terminate()
                break
    except Exception as error:  # torch raises ProcessRaisedException naming the rank
        failure = str(error)
    errors = [p.read_text() for p in sorted(tmp_path.glob("error.*"))]
    assert failure is None and not errors, "\n".join(errors) or failure

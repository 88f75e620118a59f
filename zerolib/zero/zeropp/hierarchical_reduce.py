"""qgZ: a reduce-scatter of quantized gradients as two all-to-alls, inside nodes then across.

With N ranks in M node groups of L consecutive ranks, rank r = n*L + l must end with slice r
(S elements) of the sum over ranks of a buffer of N*S elements (ZeRO++, arXiv 2306.10209):

1. intra-node hop: view the buffer as [M, L, S]; chunk l' = ``buffer[:, l']`` holds the M
   slices that ranks with index l' own. Each chunk is quantized and sent to node rank l'
   (all-to-all over the node). Rank l sums what it receives, dequantized in fp32: its node's
   partial sum of the M slices owned by index l across nodes.
2. inter-node hop: chunk n' of that partial (S elements) is quantized and sent to rank
   n'*L + l (all-to-all over the ranks with index l, one per node), which sums its M
   dequantized pieces in fp32 into the result.

Each hop dequantizes, sums in fp32 and requantizes, so the error is that of two rounds of
block quantization. A rank's own chunk never goes through the quantizer: it is added exact.
Any S works (the last block of a piece is padded inside the quantizer). A hop over one rank
(L = 1, or M = 1 on a single node) is skipped, which is not a fallback: the other hop still
sends quantized bytes. Hop 2 of a bucket starts once its hop 1 has landed, checked whenever a
later bucket is launched (in bucket order on every rank), so it overlaps the rest of backward.

Bytes per rank and buffer: (L-1) pieces of M*S values over the node, then (M-1) pieces of S
values across nodes, each piece ``S*bits/8`` codes plus 4 bytes per block. An fp16
reduce-scatter sends (N-1)*S*2 bytes, all of it across nodes when the world spans several.
"""
from __future__ import annotations

from typing import Callable

import torch

from zerolib.comm import CommContext, PendingCollective
from zerolib.utils.logging import get_logger
from zerolib.zero.zeropp.wire import piece_nbytes, quantize_into, sum_pieces


class _TwoHopReduction:
    """One bucket's reduction in flight: hop 1 launched, hop 2 launched once hop 1 has landed.

    Every rank must issue the hop-2 all-to-alls over the cross-node group in the same order,
    so they are started strictly in bucket order by the owner (:meth:`start_second_hops`).
    """

    def __init__(self, owner: "HierarchicalQuantizedReduceScatter", first: PendingCollective | None,
                 start_second: Callable[[], PendingCollective]):
        self._owner, self._first, self._start_second = owner, first, start_second
        self.second: PendingCollective | None = None
        self.finished = False

    def ready(self) -> bool:
        return self._first is None or self._first.is_done()

    def begin_second(self) -> None:
        if self._first is not None:
            self._first.wait()  # books the time; then the fp32 partial sum runs
        self.second = self._start_second()

    def wait(self) -> None:
        if self.finished:
            return
        self._owner.start_second_hops(until=self)
        self.second.wait()
        # Drop the buffers the closures hold: the reducer keeps this object until it retires.
        self._first = self._start_second = self.second = None
        self.finished = True


class HierarchicalQuantizedReduceScatter:
    """Callable like ``CommContext.reduce_scatter_sum(output, full, async_op=...)``, quantized."""

    def __init__(self, comm: CommContext, *, bits: int, block_size: int):
        self.comm, self.bits, self.block_size = comm, bits, block_size
        self.node_size = comm.node_size if comm.world_size % comm.node_size == 0 else comm.world_size
        self.nodes = comm.world_size // self.node_size
        self.index_in_node = comm.rank % self.node_size
        self.node = comm.rank // self.node_size
        self.node_group = comm.block_group(self.node_size)
        self.cross_group = comm.stride_group(self.node_size)
        self._in_flight: list[_TwoHopReduction] = []
        if comm.distributed and (self.nodes == 1 or self.node_size == 1):
            hop = "inter-node (one node group)" if self.nodes == 1 else "intra-node (one rank per node group)"
            get_logger().info("qgZ: the %s hop is skipped; comm.node_size %d, world size %d: the other hop still "
                              "sends int%d gradients", hop, self.node_size, comm.world_size, bits)

    def __call__(self, output: torch.Tensor, full: torch.Tensor, *, async_op: bool = False):
        """Sums ``full`` (N * output.numel() elements) over ranks; this rank's slice lands in ``output``."""
        slice_numel = output.numel()
        if full.numel() != self.comm.world_size * slice_numel:
            raise ValueError(f"qgZ reduce-scatter: input has {full.numel()} elements, expected world size "
                             f"{self.comm.world_size} x output {slice_numel}")
        if not self.comm.distributed:
            output.copy_(full.view_as(output))
            return PendingCollective(None, "all_to_all", self.comm.ledger) if async_op else None
        chunks = full.view(self.nodes, self.node_size, slice_numel)
        if self.node_size == 1:
            first, partial = None, lambda: chunks[:, 0].float()
        else:
            first, partial = self._within_node(chunks)
        reduction = _TwoHopReduction(self, first, lambda: self._across_nodes(partial(), output))
        self._in_flight = [r for r in self._in_flight if not r.finished] + [reduction]
        self.start_second_hops()
        if async_op:
            return reduction
        reduction.wait()
        return None

    def start_second_hops(self, until: _TwoHopReduction | None = None) -> None:
        """Starts hop 2 of the waiting reductions, oldest first: those whose hop 1 has landed
        (never blocking), and every one up to ``until`` (blocking on its hop 1)."""
        must = until is not None
        for reduction in self._in_flight:
            if reduction.second is None and not reduction.finished:
                if not (must or reduction.ready()):
                    return
                reduction.begin_second()
            if reduction is until:
                must = False

    def _within_node(self, chunks: torch.Tensor):
        """Hop 1, launched now; returns it and a function that sums what it delivered."""
        numel = self.nodes * chunks.shape[2]
        size = piece_nbytes(numel, self.bits, self.block_size)
        send = torch.empty(self.node_size * size, dtype=torch.uint8, device=chunks.device)
        for peer in range(self.node_size):
            if peer != self.index_in_node:  # our own chunk stays exact; its slot goes only to us
                quantize_into(chunks[:, peer], send[peer * size:(peer + 1) * size], self.bits, self.block_size)
        received = torch.empty_like(send)
        pending = self.comm.all_to_all(received, send, group=self.node_group, async_op=True)
        mine = chunks[:, self.index_in_node]

        def partial() -> torch.Tensor:
            peers = [p for p in range(self.node_size) if p != self.index_in_node]
            total = torch.empty(numel, dtype=torch.float32, device=chunks.device)
            sum_pieces(received, peers, numel, self.bits, self.block_size, total)
            return total.view_as(mine).add_(mine)
        return pending, partial

    def _across_nodes(self, partial: torch.Tensor, output: torch.Tensor) -> PendingCollective:
        """Hop 2, launched now: ``partial`` is [M, S] fp32 (this node's sums of index l's slices)."""
        slice_numel = partial.shape[1]
        if self.nodes == 1:
            output.copy_(partial.view_as(output))
            return PendingCollective(None, "all_to_all", self.comm.ledger)
        size = piece_nbytes(slice_numel, self.bits, self.block_size)
        send = torch.empty(self.nodes * size, dtype=torch.uint8, device=partial.device)
        for node in range(self.nodes):
            if node != self.node:
                quantize_into(partial[node], send[node * size:(node + 1) * size], self.bits, self.block_size)
        received = torch.empty_like(send)
        pending = self.comm.all_to_all(received, send, group=self.cross_group, async_op=True)
        mine = partial[self.node]

        def add_up() -> None:
            peers = [n for n in range(self.nodes) if n != self.node]
            exact = output.dtype == torch.float32 and output.is_contiguous()
            total = output.view(-1) if exact else torch.empty(slice_numel, dtype=torch.float32, device=output.device)
            sum_pieces(received, peers, slice_numel, self.bits, self.block_size, total)
            total.add_(mine)
            if not exact:
                output.copy_(total.view_as(output))
        pending.on_done = add_up
        return pending

"""All-gather and reduce-scatter on gloo as direct point-to-point exchanges, sent in pieces.

gloo's own all_gather and reduce_scatter ran slower than its all_reduce of the same tensor on
this project's machines (docs/comm.md), although they move half the bytes. A direct exchange
(every rank sends each peer what that peer needs) moves the same (N-1)/N of the message per
rank as a ring, with all transfers in flight at once.

Why pieces: one large isend and the matching irecv in the other direction do not overlap on a
gloo pair; the two directions run one after the other. Measured with 2 ranks, 25 MB each way:
on a 1 Gbit/s link 419 ms as one message against 234 ms in 8 pieces (the link's full-duplex
rate); on loopback 50 ms against 32 ms. Pieces of a few MiB keep both directions busy.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

PIECE_BYTES = 4 << 20
# Tags: one block of MAX_PIECES per exchange, so that piece k of a send and of the matching
# receive carry the same tag on both ranks, and two exchanges in flight stay apart.
MAX_PIECES = 4096


def _pieces(tensor: torch.Tensor) -> list[torch.Tensor]:
    flat = tensor.view(-1)
    step = max(1, PIECE_BYTES // tensor.element_size(), -(-flat.numel() // MAX_PIECES))
    return [flat[start:start + step] for start in range(0, flat.numel(), step)]


def exchange(sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]], *, group,
             call_index: int) -> list:
    """Posts the sends and receives, ``(tensor, global peer rank)``, at most one of each per peer,
    in pieces; returns the works to wait on.

    A send to a peer and that peer's matching receive must have the same size; ``call_index``
    must be the same on both ranks for this exchange (the caller counts exchanges per group).
    Pieces to and from one peer are posted alternately so that both directions are in flight.
    """
    outgoing = {peer: _pieces(tensor) for tensor, peer in sends}
    incoming = {peer: _pieces(tensor) for tensor, peer in recvs}
    if len(outgoing) != len(sends) or len(incoming) != len(recvs):
        raise ValueError("gloo exchange: at most one send and one receive per peer")
    base = (call_index % ((1 << 31) // MAX_PIECES)) * MAX_PIECES
    works = []
    for peer in sorted(set(outgoing) | set(incoming)):
        out, into = outgoing.get(peer, []), incoming.get(peer, [])
        for k in range(max(len(out), len(into))):
            if k < len(into):
                works.append(dist.irecv(into[k], src=peer, group=group, tag=base + k))
            if k < len(out):
                works.append(dist.isend(out[k], dst=peer, group=group, tag=base + k))
    return works

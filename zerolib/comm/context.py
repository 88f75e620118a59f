"""Process-group setup and the collectives zerolib issues, each recorded in a ledger.

Collectives are thin functions over ``torch.distributed``: they exist so that every byte
zerolib sends is counted in one place (``CommLedger``) and so that a single-rank run needs no
process group at all.
"""
from __future__ import annotations

import datetime
import os
import pickle
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from zerolib.comm.failures import CallLabel, explain_failure
from zerolib.comm.gloo_p2p import exchange
from zerolib.comm.groups import GroupCache
from zerolib.comm.ledger import CommLedger, wire_bytes
from zerolib.comm.scratch import ScratchPool

_ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_describes_a_job() -> bool:
    return all(key in os.environ for key in _ENV_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(timeout_seconds: float = 600.0) -> bool:
    """Initialises ``torch.distributed`` from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT.

    Returns whether a process group is in use. Without those variables (or with WORLD_SIZE 1)
    the run is a single rank and no group is created. NCCL is used when CUDA is available,
    gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not _env_describes_a_job():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return True


@dataclass
class PendingCollective:
    """An asynchronous collective; :meth:`wait` blocks and books the waiting time.

    ``explain`` turns a backend failure into a :class:`CollectiveError` naming the collective
    and the ranks waiting in it (set by :class:`CommContext` for every collective it issues).
    """

    work: object | None
    kind: str
    ledger: CommLedger
    on_done: object | None = None
    explain: object | None = None

    def is_done(self) -> bool:
        """Whether the transfer has completed (``wait`` would not block on the wire)."""
        works = self.work if isinstance(self.work, list) else [self.work]
        return all(work is None or work.is_completed() for work in works)

    def wait(self) -> None:
        if self.work is not None:
            start = time.perf_counter()
            try:
                for work in (self.work if isinstance(self.work, list) else [self.work]):
                    work.wait()
            except RuntimeError as error:  # a timeout, or a peer that died, as the backend reports it
                if self.explain is None:
                    raise
                raise self.explain(error) from None
            self.ledger.add_seconds(self.kind, time.perf_counter() - start)
            self.work = None
        if self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done()


@dataclass
class CommContext:
    """The data-parallel world this engine runs in, and the ledger of what it sent.

    Collectives run over the default (world) group unless a ``group`` is passed. ``node_size``
    is how many consecutive ranks share a node; collectives over a group that spans several
    nodes count their bytes as ``inter_bytes`` too. A collective that fails or outlasts
    ``timeout_seconds`` raises :class:`CollectiveError` naming it and the ranks waiting in it.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    node_size: int = 1
    timeout_seconds: float = 600.0
    ledger: CommLedger = field(default_factory=CommLedger)
    scratch: ScratchPool = field(default_factory=ScratchPool, init=False, repr=False)
    _calls: dict = field(default_factory=dict, init=False, repr=False)  # collectives issued per group
    _groups: GroupCache | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_environment(cls, timeout_seconds: float = 600.0, node_size: int | None = None) -> "CommContext":
        """Joins (or creates) the process group described by the environment."""
        if not init_distributed(timeout_seconds):
            return cls()
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available() and dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        if node_size is None:
            node_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        return cls(rank=rank, world_size=world_size, device=device, node_size=max(1, node_size),
                   timeout_seconds=timeout_seconds)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def block_group(self, size: int):
        """This rank's group of ``size`` consecutive ranks (its node when ``size`` is
        ``node_size``); None when that is the whole world. Every rank must ask for the same
        sizes in the same order (see zerolib/comm/groups.py)."""
        return self._group_cache().block(size)

    def stride_group(self, size: int):
        """The ranks sharing this rank's index inside blocks of ``size`` (one per block)."""
        return self._group_cache().stride(size)

    def _group_cache(self) -> GroupCache:
        if self._groups is None:
            self._groups = GroupCache(self.rank, self.world_size)
        return self._groups

    def _group_size(self, group) -> int:
        return self.world_size if group is None else dist.get_world_size(group)

    def _crosses_nodes(self, group) -> bool:
        if group is None:
            return self.world_size > self.node_size
        ranks = dist.get_process_group_ranks(group)
        return len({r // self.node_size for r in ranks}) > 1

    def _record(self, kind: str, message_bytes: int, group) -> CallLabel:
        """Books the bytes and numbers the call (see zerolib/comm/failures.py)."""
        size = self._group_size(group)
        self.ledger.record(kind, wire_bytes(kind, message_bytes, size), crosses_nodes=self._crosses_nodes(group))
        return self._next_label(kind, tuple(self._group_ranks(group)))

    def _next_label(self, kind: str, ranks: tuple[int, ...]) -> CallLabel:
        # The members of a group issue its collectives in the same order, so a count per group
        # agrees between them; ranks outside the group never see it.
        self._calls[ranks] = self._calls.get(ranks, 0) + 1
        return CallLabel(kind, ranks, self._calls[ranks])

    def _explainer(self, label: CallLabel):
        """What turns a backend error of call ``label`` into a CollectiveError."""
        issued = time.monotonic()
        return lambda error: explain_failure(label, self.rank, error, time.monotonic() - issued,
                                             self.timeout_seconds)

    def _issue(self, label: CallLabel, start, async_op: bool, on_done=None) -> PendingCollective | None:
        """Runs ``start()`` (which posts the collective and returns its work or works) and waits
        unless ``async_op``; a backend error at either point becomes a CollectiveError."""
        explain = self._explainer(label)
        try:
            work = start()
        except RuntimeError as error:
            raise explain(error) from None
        pending = PendingCollective(work, label.kind, self.ledger, on_done=on_done, explain=explain)
        if async_op:
            return pending
        pending.wait()
        return None

    def all_gather_into(self, output: torch.Tensor, shard: torch.Tensor, *, group=None, async_op=False):
        """Gathers every rank's ``shard`` into ``output`` in rank order (``shard`` may alias it)."""
        if self._group_size(group) == 1:
            if output.data_ptr() != shard.data_ptr():
                output.copy_(shard.view_as(output))
            return PendingCollective(None, "all_gather", self.ledger) if async_op else None
        label = self._record("all_gather", output.numel() * output.element_size(), group)
        if self._is_gloo():
            return self._issue(label, lambda: self._gloo_all_gather(output, shard, group, label.number), async_op)
        return self._issue(label, lambda: dist.all_gather_into_tensor(output, shard, group=group, async_op=True),
                           async_op)

    def _is_gloo(self) -> bool:
        return dist.get_backend() == "gloo"

    def _group_ranks(self, group) -> list[int]:
        return dist.get_process_group_ranks(group) if group is not None else list(range(self.world_size))

    def _gloo_all_gather(self, output: torch.Tensor, shard: torch.Tensor, group, call_index: int) -> list:
        """Direct exchange (zerolib/comm/gloo_p2p.py): our slice to every peer, theirs into
        ``output``. gloo's all-gather ran 4x slower here (25M fp32, 2 ranks: 330 ms against 82
        ms for one broadcast per rank) for the same bytes per rank; 12.5M fp32: 102 ms gloo, 28 ms this."""
        ranks = self._group_ranks(group)
        slices = output.chunk(len(ranks))
        mine = slices[ranks.index(self.rank)]
        if mine.data_ptr() != shard.data_ptr():
            mine.copy_(shard.view_as(mine))
        peers = [r for r in ranks if r != self.rank]
        return exchange([(mine, peer) for peer in peers], [(slices[ranks.index(peer)], peer) for peer in peers],
                        group=group, call_index=call_index)

    def reduce_scatter_sum(self, output: torch.Tensor, full: torch.Tensor, *, group=None, async_op=False):
        """Sums ``full`` across ranks and leaves this rank's 1/N slice of the sum in ``output``."""
        if self._group_size(group) == 1:
            output.copy_(full.view_as(output))
            return PendingCollective(None, "reduce_scatter", self.ledger) if async_op else None
        label = self._record("reduce_scatter", full.numel() * full.element_size(), group)
        if self._is_gloo():
            post, combine = self._gloo_reduce_scatter(output, full, group, label.number)
            return self._issue(label, post, async_op, on_done=combine)
        return self._issue(label, lambda: dist.reduce_scatter_tensor(output, full, op=dist.ReduceOp.SUM, group=group,
                                                                     async_op=True), async_op)

    def _gloo_reduce_scatter(self, output: torch.Tensor, full: torch.Tensor, group, call_index: int):
        """Direct exchange: send chunk j to rank j, receive every peer's copy of our chunk, sum.

        gloo's reduce_scatter (either form) ran 1.25-1.8x slower than its all_reduce of the same
        tensor here (25M fp32, 2 ranks: 91-128 ms against 62-73 ms), although it moves half the
        bytes; point-to-point sends move the same (N-1)/N of the message as a ring, all in
        flight at once, and the sum runs when the caller waits. Receive buffers come from a pool
        because a fresh 50 MB tensor costs as much in page faults as the transfer itself.
        Returns ``(post, combine)``: ``post()`` starts the exchange and returns its works;
        ``combine()`` sums once they are done.
        """
        ranks = self._group_ranks(group)
        me = ranks.index(self.rank)
        chunks = full.chunk(len(ranks))
        sends, received = [], []
        for index, peer in enumerate(ranks):
            if index != me:
                sends.append((chunks[index], peer))
                received.append((self.scratch.take(output.numel(), output.dtype, output.device), peer))

        def post() -> list:
            return exchange(sends, received, group=group, call_index=call_index)

        def combine() -> None:
            if output.data_ptr() != chunks[me].data_ptr():
                output.copy_(chunks[me].view_as(output))
            for buffer, _ in received:
                output.add_(buffer.view_as(output))
                self.scratch.give(buffer)
        return post, combine

    def all_reduce(self, tensor: torch.Tensor, op=None, *, group=None, async_op=False):
        """All-reduces ``tensor`` in place (SUM unless ``op`` says otherwise)."""
        if self._group_size(group) == 1:
            return PendingCollective(None, "all_reduce", self.ledger) if async_op else None
        label = self._record("all_reduce", tensor.numel() * tensor.element_size(), group)
        return self._issue(label, lambda: dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=group, async_op=True),
                           async_op)

    def broadcast(self, tensor: torch.Tensor, src: int = 0, *, group=None):
        """Broadcasts ``tensor`` from global rank ``src`` in place."""
        if self._group_size(group) == 1:
            return
        label = self._record("broadcast", tensor.numel() * tensor.element_size(), group)
        self._issue(label, lambda: dist.broadcast(tensor, src=src, group=group, async_op=True), async_op=False)

    def all_to_all(self, output: torch.Tensor, inp: torch.Tensor, *, group=None, async_op=False):
        """Equal-split all-to-all: chunk j of ``inp`` goes to rank j of the group."""
        if self._group_size(group) == 1:
            output.copy_(inp)
            return PendingCollective(None, "all_to_all", self.ledger) if async_op else None
        label = self._record("all_to_all", inp.numel() * inp.element_size(), group)
        return self._issue(label, lambda: dist.all_to_all_single(output, inp, group=group, async_op=True), async_op)

    def all_to_all_uneven(self, output: torch.Tensor, inp: torch.Tensor, output_splits: list[int],
                          input_splits: list[int], *, group=None, async_op=False):
        """All-to-all by rows: ``input_splits[j]`` rows of ``inp`` go to rank j of the group and
        ``output_splits[j]`` rows from rank j land in ``output``, in rank order. Counted bytes
        are exactly the rows this rank sends to other ranks."""
        if self._group_size(group) == 1:
            output.copy_(inp)
            return PendingCollective(None, "all_to_all", self.ledger) if async_op else None
        ranks = self._group_ranks(group)
        row_bytes = inp[:1].numel() * inp.element_size() if inp.shape[0] else 0
        self.ledger.record("all_to_all", (sum(input_splits) - input_splits[ranks.index(self.rank)]) * row_bytes,
                           crosses_nodes=self._crosses_nodes(group))
        label = self._next_label("all_to_all", tuple(ranks))
        return self._issue(label, lambda: dist.all_to_all_single(output, inp, output_splits, input_splits, group=group,
                                                                 async_op=True), async_op)

    def gather_object(self, obj, dst: int = 0) -> list | None:
        """Every rank's picklable ``obj``, in rank order, on rank ``dst`` (None elsewhere).
        Counted as kind ``gather``: the pickled bytes a rank other than ``dst`` sends."""
        if not self.distributed:
            return [obj]
        payload = pickle.dumps(obj)
        if self.rank != dst:
            self.ledger.record("gather", len(payload))
        explain = self._explainer(self._next_label("gather", tuple(range(self.world_size))))
        gathered = [None] * self.world_size if self.rank == dst else None
        try:
            dist.gather_object(payload, gathered, dst=dst)  # blocking only: there is no async form
        except RuntimeError as error:
            raise explain(error) from None
        return None if gathered is None else [pickle.loads(item) for item in gathered]

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (e.g. a gradient overflow)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.all_reduce(t, dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if not self.distributed:
            return
        explain = self._explainer(self._next_label("barrier", tuple(range(self.world_size))))
        try:  # not booked in the ledger: a barrier moves no data
            dist.barrier()
        except RuntimeError as error:
            raise explain(error) from None

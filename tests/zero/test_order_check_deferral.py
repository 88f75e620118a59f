"""When the ZeRO-3 coordinator waits for a fetch's order-check tag (zerolib/partition/order_check.py).

A fetch that posts its own gather verifies its tag before waiting on that gather; a fetch served
by a gather prefetched along the trace does not wait for its own tag (on one connection that tag
arrives only after every byte prefetched before it), only for the tags up to the fetch that
posted its gather; the rest are verified at the end of the forward. A stand-in for the
communication context (two ranks that always agree, in one process) logs posts and waits in
order, so the test pins the order, not any timing.
"""
import torch
from torch import nn

from zerolib.comm import PendingCollective
from zerolib.comm.ledger import CommLedger
from zerolib.partition import FlatLayout
from zerolib.partition.coordinator import BufferRef, GatherPolicy, ParamCoordinator, Unit
from zerolib.partition.partitioned import PartitionedParams


class _LoggedWork:
    def __init__(self, log: list, label: str):
        self.log, self.label = log, label

    def wait(self):
        self.log.append(f"wait {self.label}")

    def is_completed(self):
        return True


class AgreeingComm:
    """What PartitionedParams and the order check use of CommContext; every rank sent the same."""

    rank, world_size, device, distributed = 0, 2, torch.device("cpu"), True

    def __init__(self):
        self.log: list[str] = []
        self.ledger = CommLedger()
        self.shard_names: dict[int, str] = {}

    def broadcast(self, tensor, src=0):
        pass

    def all_gather_into(self, output, shard, *, group=None, async_op=False):
        output.view(self.world_size, -1).copy_(shard.view(1, -1).expand(self.world_size, -1))
        if shard.dtype == torch.int64:
            unit, before = shard.tolist()
            label = "tag end" if unit < 0 else f"tag #{before + 1}"
        else:
            label = self.shard_names[shard.data_ptr()]
        self.log.append(f"post {label}")
        return PendingCollective(_LoggedWork(self.log, label), "all_gather", self.ledger)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.order = (0, 1, 2)

    def forward(self, x):
        for i in self.order:
            x = self.blocks[i](x)
        return x


def _coordinated_chain():
    model, comm = Chain(), AgreeingComm()
    params = dict(model.named_parameters())
    layout = FlatLayout([[(n, p.shape) for n, p in params.items() if n.startswith(f"blocks.{i}.")] for i in range(3)], 2)
    store = PartitionedParams(layout, params, comm, dtype=torch.float32)
    comm.shard_names = {shard.data_ptr(): f"blocks.{i}" for i, shard in enumerate(store.shards)}
    units = [Unit(0, "<root>", model, ())] + [Unit(i + 1, f"blocks.{i}", b, (BufferRef(store, i),))
                                              for i, b in enumerate(model.blocks)]
    policy = GatherPolicy(prefetch_numel=10**9, max_live_numel=10**9, max_reuse_distance=0)
    return model, comm, ParamCoordinator(units, policy, comm)


def _run(model, comm) -> list[str]:
    comm.log.clear()
    with torch.no_grad():
        model(torch.ones(1, 4))
    return list(comm.log)


def test_prefetched_fetches_do_not_wait_for_their_own_tag():
    model, comm, _ = _coordinated_chain()
    first = _run(model, comm)  # no trace yet: every fetch gathers on demand, its tag verified first
    for i in range(3):
        assert first.index(f"wait tag #{i + 2}") < first.index(f"wait blocks.{i}"), first

    second = _run(model, comm)  # on the trace: the root's fetch prefetches every block
    assert second[:2] == ["post tag #1", "post blocks.0"], second
    last_gather = second.index("wait blocks.2")
    assert second.index("wait tag #1") < second.index("wait blocks.0"), second  # the fetch that posted them
    for fetch in (2, 3, 4):  # the blocks' own tags wait until the end of the forward
        assert second.index(f"wait tag #{fetch}") > last_gather, second
    assert second[-1] == "wait tag end", second


def test_a_fetch_off_the_trace_verifies_every_tag_before_its_gather():
    model, comm, _ = _coordinated_chain()
    _run(model, comm)
    model.order = (0, 2, 1)  # fetch #3 is not the trace's
    log = _run(model, comm)
    assert log.index("wait tag #2") < log.index("wait tag #3") < log.index("wait blocks.2"), log

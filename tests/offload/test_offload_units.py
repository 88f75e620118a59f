"""The NVMe tier's pieces on one process: aligned async I/O, the sub-group swapper and
OffloadAdam against torch.optim.AdamW on flat tensors. Its disk errors (an unwritable path, too
little space, a full disk) are tested with the other faults in tests/faults/test_disk_faults.py."""
import os

import pytest
import torch

from zerolib.offload import (AioSettings, AsyncFileIO, OffloadAdam, SubGroupSwapper, aligned_buffer,
                             plan_sub_groups, supports_direct_io)
from zerolib.offload.aio import ALIGN

SMALL_AIO = AioSettings(block_size=4096, queue_depth=2, thread_count=2)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_async_file_io_round_trip(tmp_path, direct):
    if direct and not supports_direct_io(str(tmp_path)):
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    io = AsyncFileIO(str(tmp_path), SMALL_AIO, direct=direct)
    source = aligned_buffer(50_000)
    assert source.data_ptr() % ALIGN == 0 and source.numel() % ALIGN == 0
    source.copy_(torch.randint(0, 256, (source.numel(),), dtype=torch.uint8))
    target = aligned_buffer(50_000)
    io.write(str(tmp_path / "a.swp"), source, 50_000).result()
    io.read(str(tmp_path / "a.swp"), target, 50_000).result()
    io.close()
    assert torch.equal(source, target)
    assert sorted(os.listdir(tmp_path)) == ["a.swp"], "no staging file or probe may remain"


def test_plan_sub_groups_splits_and_offloads_a_ratio():
    groups, offloaded = plan_sub_groups([100, 50, 50], sub_group_size=40, ratio=0.5)
    assert offloaded == {0}
    assert [(g.tensor, g.lo, g.hi) for g in groups] == [(0, 0, 40), (0, 40, 80), (0, 80, 100)]
    groups, offloaded = plan_sub_groups([100, 50, 50], sub_group_size=1000, ratio=1.0)
    assert offloaded == {0, 1, 2} and [g.numel for g in groups] == [100, 50, 50]


@pytest.mark.parametrize("buffer_count", [1, 2, 4])
def test_swapper_keeps_each_sub_group(tmp_path, buffer_count):
    numels = [1000, 3000, 10, 2048]
    swapper = SubGroupSwapper(str(tmp_path), 0, "t", numels, buffer_count=buffer_count, aio=SMALL_AIO)
    for round_ in range(3):
        for group, numel in enumerate(numels):
            first, second = swapper.acquire(group)
            swapper.prefetch(group + 1)  # the next group's read overlaps this one's use
            assert first.numel() == numel and second.numel() == numel
            expected = 0.0 if round_ == 0 else float(100 * group + round_ - 1)
            assert torch.all(first == expected) and torch.all(second == -expected), (round_, group)
            first.fill_(100 * group + round_)
            second.fill_(-(100 * group + round_))
            swapper.release(group)
        swapper.flush()
        assert swapper.resident_bytes <= buffer_count * 2 * 3072 * 4 + buffer_count * ALIGN
    swapper.close()
    assert os.listdir(tmp_path) == [], "close() removes every swap file"


def _flat_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    masters = [torch.randn(n, generator=gen) for n in (700, 300, 129)]
    grads = [[torch.randn(m.numel(), generator=gen) for m in masters] for _ in range(4)]
    return masters, grads


def _swappers(directory: str, buffer_count: int = 4):
    def make(tag, numels, tensors_per_group):
        return SubGroupSwapper(directory, 0, tag, numels, tensors_per_group=tensors_per_group,
                               buffer_count=buffer_count, aio=SMALL_AIO)
    return make


@pytest.mark.parametrize("where", ["cpu", "nvme", "nvme-1buffer", "ratio0.5", "nvme-swapped"])
def test_offload_adam_matches_torch_adamw(tmp_path, where):
    """``nvme-swapped``: masters, moments and gradients all in swap files (masters handed in on
    the meta device, gradients through the sink, 16-bit copies through a ShardAccess)."""
    masters, grads = _flat_problem()
    reference = [m.clone() for m in masters]
    torch_opt = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1)
    swap = _swappers(str(tmp_path), 1 if where.endswith("1buffer") else 4) if where.startswith("nvme") else None
    swapped = where == "nvme-swapped"
    given = [torch.empty(m.shape, device="meta") for m in masters] if swapped else masters
    opt = OffloadAdam(given, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, adamw_mode=True,
                      sub_group_size=256, ratio=0.5 if where == "ratio0.5" else 1.0, make_swapper=swap,
                      make_device_optimizer=lambda ts: torch.optim.AdamW(ts, lr=1e-2, weight_decay=0.1))
    for index, m in enumerate(masters if swapped else []):
        opt.write_master(index, m)
    copies = [torch.zeros(m.numel(), dtype=torch.bfloat16) for m in masters]
    opt.set_param_copies(copies)
    for step_grads in grads:
        for index, (m, r, g) in enumerate(zip(masters, reference, step_grads)):
            r.grad = g.clone()
            if swapped:  # as the reducer hands them over: two micro-steps of half the gradient
                opt.gradient_sink.accumulate(index, g, 0.5, final=False)
                opt.gradient_sink.accumulate(index, g, 0.5, final=True)
            else:
                m.grad = g.clone()
        if swapped:
            expected = sum(float(g.pow(2).sum()) for g in step_grads)
            assert abs(opt.gradient_sink.squared_norm() - expected) <= 1e-4 * expected
        opt.step()
        if swapped:
            opt.gradient_sink.reset()
        torch_opt.step()
    for index, (r, c) in enumerate(zip(reference, copies)):
        m = opt.read_master(index)
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-6, msg=f"master {index}")
        assert torch.equal(c, m.to(torch.bfloat16)), f"16-bit copy {index} not written in the step"
    state = opt.state_dict()
    for index, r in enumerate(reference):
        torch.testing.assert_close(state["state"][index]["exp_avg"], torch_opt.state[r]["exp_avg"], rtol=1e-5,
                                   atol=1e-7)
        assert int(state["state"][index]["step"]) == 4
    if swap is not None:
        per_group = opt.state_swapper.per_group * max(ALIGN, 256 * 4)  # each tensor padded to 4 KiB
        assert opt.state_swapper.resident_bytes <= (1 if where.endswith("1buffer") else 4) * per_group, \
            "the swap pool holds at most buffer_count sub-groups"
    opt.close()
    assert os.listdir(tmp_path) == []


def test_offload_adam_state_dict_round_trip(tmp_path):
    masters, grads = _flat_problem(1)
    make = lambda ms: OffloadAdam(ms, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0,  # noqa: E731
                                  adamw_mode=True, sub_group_size=200,
                                  make_swapper=_swappers(str(tmp_path)))
    first = make(masters)
    for m, g in zip(masters, grads[0]):
        m.grad = g
    first.step()
    saved = first.state_dict()
    twin = [m.clone() for m in masters]
    second = make(twin)
    second.load_state_dict(saved)
    for opt, ms in ((first, masters), (second, twin)):
        for m, g in zip(ms, grads[1]):
            m.grad = g.clone()
        opt.step()
    for a, b in zip(masters, twin):
        assert torch.equal(a, b)
    first.close()
    second.close()
    assert os.listdir(tmp_path) == []


def test_offloading_a_non_adam_optimizer_is_refused_by_name():
    from zerolib.config import load_config
    from zerolib.offload import offload_optimizer_factory

    config = load_config({"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
                          "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    with pytest.raises(ValueError, match=r"offload_optimizer: optimizer.type must be Adam or AdamW.*'SGD'"):
        offload_optimizer_factory(config, 0, make_device_optimizer=None)


def test_a_parameter_shard_larger_than_buffer_size_is_refused_by_name(tmp_path):
    from zerolib.config import load_config
    from zerolib.offload import ParamSwapFactory, SharedFileIO

    config = load_config({"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW"},
                          "zero_optimization": {"stage": 3, "offload_param": {
                              "device": "nvme", "nvme_path": str(tmp_path), "buffer_size": 1000, "max_in_cpu": 500}}})
    factory = ParamSwapFactory(config, 0, SharedFileIO(AioSettings()))
    with pytest.raises(ValueError, match=r"offload_param.buffer_size: 1000 elements cannot hold the trainable "
                                         r"parameter shard of buffer 2 \(4000 elements on rank 0\)"):
        factory({1: 400, 2: 4000, 3: 300}, torch.float32, "trainable")
    assert os.listdir(tmp_path) == []
    factory = ParamSwapFactory(config, 0, SharedFileIO(AioSettings()))
    swap = factory({1: 400, 2: 900, 3: 300}, torch.float32, "trainable")  # max_in_cpu: 400 fits, 900 not
    assert 1 not in swap and 2 in swap and 3 in swap
    swap.close()


def test_parameter_shards_are_read_ahead_along_the_trace(tmp_path):
    """offload_param nvme on one process: once the first iteration has recorded the order, the
    read of every unit's shard but the first is started before that unit is fetched, the pool
    stays within buffer_count shards, and the swap files go with the engine."""
    import gc

    import zerolib
    from zerolib.models import GPT, GPTConfig

    torch.manual_seed(0)
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100,
                                    "stage3_prefetch_bucket_size": 1, "stage3_max_reuse_distance": 0,
                                    "offload_param": {"device": "nvme", "nvme_path": str(tmp_path), "max_in_cpu": 0,
                                                      "buffer_count": 3}}}
    engine = zerolib.initialize(GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32)), config)
    swap, tokens = engine.stage3.store.swap, torch.randint(0, 64, (2, 17))
    largest = max(swap.group_bytes.values())
    for iteration in range(3):
        ahead, demand = swap.reads_ahead_used, swap.reads_on_demand
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        ahead, demand = swap.reads_ahead_used - ahead, swap.reads_on_demand - demand
        assert swap.resident_bytes <= 3 * largest
        if iteration > 0:
            assert demand == 1 and ahead >= 5, f"iteration {iteration}: {ahead} reads ahead, {demand} on demand"
    assert len(os.listdir(tmp_path)) == len(swap.paths)
    del engine, swap
    gc.collect()
    assert os.listdir(tmp_path) == [], "the swap files are removed with the engine"

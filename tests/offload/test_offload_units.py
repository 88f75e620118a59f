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


@pytest.mark.parametrize("where", ["cpu", "nvme", "nvme-1buffer", "ratio0.5"])
def test_offload_adam_matches_torch_adamw(tmp_path, where):
    masters, grads = _flat_problem()
    reference = [m.clone() for m in masters]
    torch_opt = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1)
    swap = None
    if where.startswith("nvme"):
        count = 1 if where.endswith("1buffer") else 4

        def swap(numels):
            return SubGroupSwapper(str(tmp_path), 0, "adam", numels, buffer_count=count, aio=SMALL_AIO)
    ratio = 0.5 if where == "ratio0.5" else 1.0
    opt = OffloadAdam(masters, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, adamw_mode=True,
                      sub_group_size=256, ratio=ratio, swapper_factory=swap,
                      make_device_optimizer=lambda ts: torch.optim.AdamW(ts, lr=1e-2, weight_decay=0.1))
    copies = [torch.zeros(m.numel(), dtype=torch.bfloat16) for m in masters]
    opt.set_param_copies(copies)
    for step_grads in grads:
        for m, r, g in zip(masters, reference, step_grads):
            m.grad, r.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    for index, (m, r, c) in enumerate(zip(masters, reference, copies)):
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-6, msg=f"master {index}")
        assert torch.equal(c, m.to(torch.bfloat16)), f"16-bit copy {index} not written in the step"
    state = opt.state_dict()
    for index, r in enumerate(reference):
        torch.testing.assert_close(state["state"][index]["exp_avg"], torch_opt.state[r]["exp_avg"], rtol=1e-5,
                                   atol=1e-7)
        assert int(state["state"][index]["step"]) == 4
    opt.close()


def test_offload_adam_state_dict_round_trip(tmp_path):
    masters, grads = _flat_problem(1)
    make = lambda ms: OffloadAdam(ms, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0,  # noqa: E731
                                  adamw_mode=True, sub_group_size=200,
                                  swapper_factory=lambda n: SubGroupSwapper(str(tmp_path), 0, "sd", n))
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


def test_offload_param_nvme_is_still_rejected_clearly():
    from zerolib.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"offload_param.device: parameter offload to nvme is not implemented"):
        load_config({"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW"},
                     "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/tmp"}}})

"""The engine: thin glue from a user's module and config to the ZeRO optimizer path."""
from __future__ import annotations

import os
import weakref
import contextlib
from contextlib import contextmanager

import torch

from zerolib.comm import CommContext
from zerolib.config import ZeroConfig, load_config
from zerolib.monitor import MonitorHub
from zerolib.offload import ParamSwapFactory, SharedFileIO, offload_optimizer_factory
from zerolib.offload.factory import aio_settings
from zerolib.partition.materialize import MetaMaterializer, is_on_meta
from zerolib.partition.replicated import ReplicatedParams, install_forward_waits
from zerolib.runtime.lr_schedules import build_schedule
from zerolib.runtime.optim_factory import build_optimizer
from zerolib.utils.logging import get_logger
from zerolib.utils.memory import unique_storage_bytes
from zerolib.utils.timers import StepTimers
from zerolib.zero import (LossScaleStuckError, NonFiniteGradientError, StepReport, ZeroOptimizer, ZeroSettings,
                         scaler_from_config)
from zerolib.zero.stage3 import Stage3Plan, plan_stage3
from zerolib.zero.zeropp import ZeroPPSettings

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _world_size_from_environment() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _param_dtype(cfg: ZeroConfig) -> torch.dtype:
    if cfg.fp16.enabled:
        return torch.float16
    if cfg.bf16.enabled:
        return torch.bfloat16
    return torch.float32


class ZeroEngine:
    """Runs forward, backward (with accumulation) and step for one data-parallel rank.

    Build it with :func:`zerolib.initialize`. ``engine(*args)`` runs the module's forward;
    ``engine.backward(loss)`` scales the loss for accumulation and fp16 and backpropagates;
    ``engine.step()`` steps the optimizer and schedule at the accumulation boundary only.
    """

    def __init__(self, model: torch.nn.Module, config, pretrained=None):
        self.config = load_config(config, world_size=_world_size_from_environment(), model=model)
        cfg = self.config
        self.comm = CommContext.from_environment(cfg.comm.timeout_seconds, cfg.comm.node_size)
        self.logger = get_logger()
        self.logger.info("%s", cfg.resolved_summary())
        self.dtype = _param_dtype(cfg)
        self.module = model
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
        self.materializer = self._meta_materializer(model, pretrained)
        fp32_values = None if self.materializer else {n: p.detach().float().clone() for n, p in trainable.items()}
        # A meta-device model cannot be moved; the materializer creates its tensors on the device.
        model.to(dtype=self.dtype) if self.materializer else model.to(device=self.comm.device, dtype=self.dtype)
        if self.materializer:
            self.materializer.materialize_buffers()
        self.loss_scaler = scaler_from_config(cfg.fp16)
        self.stage3: Stage3Plan | None = None
        # One I/O thread pool (and one set of I/O statistics) for all of this engine's swap files.
        self.swap_io = SharedFileIO(aio_settings(cfg))
        weakref.finalize(self, self.swap_io.close)  # swap files go with the engine
        self.optimizer = self._build_zero_optimizer(trainable, fp32_values) if cfg.optimizer else None
        self._broadcast_unpartitioned_state()
        self.lr_scheduler = build_schedule(cfg.scheduler, self.optimizer.optimizer) if self.optimizer else None
        self.timers = StepTimers()
        self.global_steps = 0
        self.micro_steps = 0
        self.skipped_steps = 0
        self.last_step: StepReport | None = None
        self._last_loss: torch.Tensor | None = None
        self._loss_finite: torch.Tensor | None = None  # every loss of this accumulation window was finite
        # bf16/fp32: what a step whose loss or gradients are not finite does (fp16 always skips)
        self._skip_nonfinite = cfg.nonfinite_gradients == "skip" or (cfg.bf16.enabled and cfg.bf16.check_grad_overflow)
        self.monitor = MonitorHub(cfg, rank=self.comm.rank, world_size=self.comm.world_size)

    def _meta_materializer(self, model: torch.nn.Module, pretrained) -> MetaMaterializer | None:
        """A model built under ``partitioned_init`` is filled buffer by buffer (stage 3 only),
        from the ``pretrained`` checkpoint directory when one is given."""
        if not is_on_meta(model):
            if pretrained is not None:
                raise ValueError("pretrained= fills a model built under zerolib.partitioned_init (meta device); "
                                 "this model already has its weights: load it with from_pretrained instead")
            return None
        if self.config.zero_optimization.stage != 3 or self.config.optimizer is None:
            raise ValueError("a model built under zerolib.partitioned_init needs zero_optimization.stage 3 "
                             "and an optimizer block: other stages hold every parameter whole")
        materializer = MetaMaterializer(model, self.dtype, self.comm.device)
        config_dir = getattr(getattr(model, "config", None), "name_or_path", "")  # a Hugging Face model's origin
        if pretrained is None and config_dir and os.path.isfile(os.path.join(config_dir, "config.json")):
            self.logger.warning("the model was built on the meta device from the config in %s and gets fresh "
                                "random weights; pass pretrained=%r to zerolib.initialize to load its weights",
                                config_dir, config_dir)
        if pretrained is not None:
            from zerolib.checkpoint.pretrained import PretrainedWeights
            materializer.source = PretrainedWeights(pretrained)
            materializer.source.match(materializer.wanted_from_source(), getattr(model, "base_model_prefix", ""))
        return materializer

    def _build_zero_optimizer(self, trainable, fp32_values) -> ZeroOptimizer:
        cfg, zero = self.config, self.config.zero_optimization
        comm_dtype = _DTYPES[cfg.communication_data_type] if cfg.communication_data_type else self.dtype
        settings = ZeroSettings(
            stage=zero.stage,
            bucket_numel=int(min(zero.reduce_bucket_size, zero.allgather_bucket_size)),
            overlap_comm=bool(zero.overlap_comm),
            comm_dtype=comm_dtype,
            gradient_clipping=float(cfg.gradient_clipping or 0.0),
            predivide_factor=float(cfg.gradient_predivide_factor) if cfg.prescale_gradients else 1.0,
            param_persistence_threshold=int(zero.stage3_param_persistence_threshold),
            prefetch_bucket_numel=int(zero.stage3_prefetch_bucket_size),
            max_live_numel=int(zero.stage3_max_live_parameters),
            max_reuse_distance=int(zero.stage3_max_reuse_distance),
            zeropp=ZeroPPSettings.from_zero_optimization(zero))
        # Reusing receive buffers and buckets saves their page faults on every step (stages 1-2
        # ran 10-20% faster with 25M parameters). At most three fp32 buckets are kept (stage 2:
        # the buckets in flight, their receive buffers), memory the user sizes with
        # reduce_bucket_size. Stage 3 keeps none: between backward passes its memory belongs to
        # the gathered parameters and the activations.
        self.comm.scratch.max_idle_bytes = 0 if zero.stage == 3 else 12 * settings.bucket_numel
        make_optimizer = lambda tensors: build_optimizer(cfg.optimizer, tensors)  # noqa: E731
        if zero.offload_optimizer.device != "none":  # ZeRO-Offload: see zerolib/offload
            make_optimizer = offload_optimizer_factory(cfg, self.comm.rank, make_device_optimizer=make_optimizer,
                                                       io=self.swap_io)
        if zero.stage < 3:
            optimizer = ZeroOptimizer(trainable, self.comm, settings, make_optimizer=make_optimizer,
                                      fp32_values=fp32_values, loss_scaler=self.loss_scaler)
            if isinstance(optimizer.store, ReplicatedParams) and optimizer.store.defer_publish:
                install_forward_waits(self.module, optimizer.store)
                self.module.register_state_dict_pre_hook(lambda *args, **kwargs: optimizer.wait_for_parameters())
            return optimizer
        offload_param = zero.offload_param  # cpu: shards live on the host between gathers; nvme: in files
        offloaded = offload_param.device != "none"
        self.stage3 = plan = plan_stage3(self.module, self.comm, settings, self.dtype, fill=self.materializer,
                                          verify_order=cfg.comm.verify_module_order,
                                          shard_device=torch.device("cpu") if offloaded else None,
                                          pin_memory=offload_param.pin_memory,
                                          shard_swap=ParamSwapFactory(cfg, self.comm.rank, self.swap_io)
                                          if offload_param.device == "nvme" else None,
                                          fill_shard=self.materializer.fill_shard if self.materializer else None)
        if self.materializer is not None:
            self.materializer.materialize_remaining()
        self._register_state_dict_hooks()
        return ZeroOptimizer({n: trainable[n] for n in plan.layout.slots}, self.comm, settings,
                             make_optimizer=make_optimizer, fp32_values=fp32_values, loss_scaler=self.loss_scaler,
                             layout=plan.layout, store=plan.store, reduce_scatter=plan.gradient_reduce_scatter,
                             on_buffer_reduced=lambda index: plan.coordinator.on_buffer_reduced(plan.store, index))

    def _register_state_dict_hooks(self) -> None:
        """``module.state_dict()`` under stage 3 returns full tensors, never empty ones."""
        coordinator = self.stage3.coordinator
        self.module.register_state_dict_pre_hook(lambda *args, **kwargs: coordinator.gather_all())
        self.module.register_state_dict_post_hook(lambda *args, **kwargs: coordinator.release_all())

    def _broadcast_unpartitioned_state(self) -> None:
        """Whole frozen parameters and buffers start equal on every rank, as trainable ones do."""
        with torch.no_grad():
            for p in self.module.parameters():
                if not p.requires_grad and p.numel() > 0:
                    self.comm.broadcast(p.data, 0)
            for b in self.module.buffers():
                self.comm.broadcast(b, 0)

    # -- training ---------------------------------------------------------------------------
    @property
    def gradient_accumulation_steps(self) -> int:
        return self.config.gradient_accumulation_steps

    def is_gradient_accumulation_boundary(self) -> bool:
        """Whether the current micro-step is the last of its accumulation window."""
        return (self.micro_steps + 1) % self.gradient_accumulation_steps == 0

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        self.monitor.note_forward(args, kwargs)
        # stage 3: gathered weights are saved for backward by reference, so releasing a unit
        # after its forward really frees its memory (see ParamCoordinator)
        saving = self.stage3.coordinator.saved_tensors_by_reference() if self.stage3 else contextlib.nullcontext()
        with self.timers.phase("forward"), saving:
            return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagates ``loss / gradient_accumulation_steps`` (times the fp16 loss scale)."""
        if self.optimizer is None:
            raise RuntimeError("engine.backward needs an optimizer: add an 'optimizer' block to the config")
        self._last_loss = loss.detach()
        finite = torch.isfinite(self._last_loss).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        scale = self.loss_scaler.scale if self.loss_scaler is not None else 1.0
        with self.timers.phase("backward"):
            self.optimizer.prepare_backward(self.is_gradient_accumulation_boundary())
            (loss.float() * (scale / self.gradient_accumulation_steps)).backward()
            self.optimizer.finish_backward(self.is_gradient_accumulation_boundary())
            if self.stage3 is not None:
                self.stage3.coordinator.end_iteration()

    def step(self) -> None:
        """Steps optimizer and schedule at the accumulation boundary; otherwise only counts."""
        if self.is_gradient_accumulation_boundary():
            loss_finite, self._loss_finite = self._loss_finite, None
            with self.timers.phase("step"):
                try:
                    self.last_step = self.optimizer.step(loss_finite)
                except LossScaleStuckError as error:
                    raise LossScaleStuckError(f"step {self.global_steps + 1}: {error}") from None
            if self.last_step.skipped:
                self._skipped(self.last_step, loss_finite)
            elif self.lr_scheduler is not None:
                self.lr_scheduler.step()
            self.global_steps += 1
            self.monitor.on_step(self)
            self._report_progress()
        self.micro_steps += 1

    def _skipped(self, report: StepReport, loss_finite: torch.Tensor | None) -> None:
        """An overflowing fp16 step lowered the loss scale; a bf16/fp32 step with inf or NaN
        stops the run unless ``nonfinite_gradients`` is "skip"."""
        step = self.global_steps + 1
        if self.loss_scaler is not None:
            self.skipped_steps += 1
            self.logger.info("step %d: fp16 overflow, step skipped, loss scale now %s", step, self.loss_scaler.scale)
            return
        bad_losses = torch.zeros(self.comm.world_size, device=self.comm.device)
        bad_losses[self.comm.rank] = float(loss_finite is not None and not bool(loss_finite))
        self.comm.all_reduce(bad_losses)  # every rank is here: the decision to skip was global
        ranks = [rank for rank, bad in enumerate(bad_losses.tolist()) if bad]
        where = [f"the gradient of '{report.nonfinite_param}' holds inf/NaN (the first parameter in the "
                 "flat layout whose gradient does)"] if report.nonfinite_param else []
        if ranks:
            where.append(f"the loss was not finite on rank{'s' if len(ranks) > 1 else ''} "
                         f"{', '.join(map(str, ranks))}")
        message = f"step {step}: {'; '.join(where)}"
        if not self._skip_nonfinite:
            raise NonFiniteGradientError(
                f"{message}. The step was not applied: weights and optimizer state are those after step "
                f"{self.global_steps}. Set \"nonfinite_gradients\": \"skip\" to skip such steps instead.")
        self.skipped_steps += 1
        self.logger.warning("%s; step skipped (nonfinite_gradients is \"skip\")", message)

    def _report_progress(self) -> None:
        every = self.config.steps_per_print
        if not every or self.global_steps % every:
            return
        parts = [f"step {self.global_steps}", f"lr {self.get_lr()[0]:.3e}"]
        if self._last_loss is not None:
            parts.append(f"loss {self._last_loss.float().item():.4f}")
        if self.loss_scaler is not None:
            parts.append(f"loss scale {self.loss_scaler.scale:g}")
        if self.last_step is not None:
            parts.append(f"grad norm {self.last_step.grad_norm:.3f}")
        if self.config.wall_clock_breakdown:
            parts.append(self.timers.summary())
            parts.append(self.monitor.comm_time_summary(self))
            self.timers.reset()
            self.monitor.timers_were_reset()
        self.logger.info(" | ".join(parts))
        for line in self.monitor.comm_log_lines(self):
            self.logger.info(line)

    @property
    def last_loss(self) -> float | None:
        """The loss of the last micro-batch passed to :meth:`backward` on this rank."""
        return None if self._last_loss is None else self._last_loss.float().item()

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.optimizer.param_groups]

    def train(self, mode: bool = True) -> "ZeroEngine":
        self.module.train(mode)
        return self

    def eval(self) -> "ZeroEngine":
        return self.train(False)

    # -- inspection -------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter's full fp32 value (master weights for trainable ones), on every rank."""
        self._wait_for_parameters()
        result = self.optimizer.full_master_weights() if self.optimizer else {}
        missing = [(name, p) for name, p in self.module.named_parameters() if name not in result]
        if self.stage3 is not None and missing:
            self.stage3.coordinator.gather_all()
        for name, p in missing:
            result[name] = p.detach().float().clone()
        if self.stage3 is not None and missing:
            self.stage3.coordinator.release_all()
        return result

    @contextmanager
    def gathered_parameters(self, params, modifier_rank: int | None = None):
        """Full ``params`` inside the block; ``modifier_rank``'s edits are kept (see GatheredParameters)."""
        self._wait_for_parameters()
        wanted = {id(p) for p in ([params] if isinstance(params, torch.Tensor) else params)}
        stores = [(self.optimizer.store, True)]
        if self.stage3 is not None and self.stage3.frozen_store is not None:
            stores.append((self.stage3.frozen_store, False))
        touched = []
        for store, trainable in stores:
            for spec in store.layout.buffers:
                if any(id(store.params[slot.name]) in wanted for slot in spec.slots):
                    touched.append((store, spec.index, store.is_available(spec.index), trainable))
                    store.wait_gather(spec.index)
        try:
            yield
        finally:
            for store, index, was_available, trainable in touched:
                if modifier_rank is not None:
                    self._adopt_edits(store, index, modifier_rank, trainable)
                if not was_available:
                    store.release(index)

    def _adopt_edits(self, store, index: int, modifier_rank: int, trainable: bool) -> None:
        full = store.full_buffer(index)
        self.comm.broadcast(full, modifier_rank)
        lo, hi = store.layout.buffers[index].shard_range(self.optimizer.shard)
        shard = store.open_shard(index, self.optimizer.shard, read=False)
        if shard.data_ptr() != full[lo:hi].data_ptr():
            shard.copy_(full[lo:hi])
        store.close_shard(index, dirty=True)
        if trainable:
            self.optimizer.refresh_master(index)

    def _wait_for_parameters(self) -> None:
        if self.optimizer is not None:
            self.optimizer.wait_for_parameters()

    def comm_stats(self) -> dict[str, dict[str, float]]:
        """``{kind: {"calls", "bytes", "inter_bytes", "seconds"}}`` since :meth:`reset_comm_stats`."""
        return self.comm.ledger.snapshot()

    def reset_comm_stats(self) -> None:
        self.comm.ledger.reset()

    def memory_breakdown(self) -> dict[str, int]:
        """Bytes this rank holds per kind: params, grads, master, optimizer_state (the model
        states), comm_buffers (receive buffers kept for reuse by the collectives),
        hpz_secondary (ZeRO++ hpZ's secondary parameter shards; 0 without hpZ) and swap_buffers
        (the nvme offload pools that swapped state passes through; 0 without nvme)."""
        held = dict(self.optimizer.storage_by_kind())
        held["comm_buffers"] = self.comm.scratch.storage()
        held["hpz_secondary"] = self.stage3.secondary_storage() if self.stage3 is not None else []
        if self.stage3 is not None and self.stage3.frozen_store is not None:
            held["swap_buffers"] = held["swap_buffers"] + self.stage3.frozen_store.swap_buffers()
        return unique_storage_bytes(held)

    # -- checkpoints (zerolib.checkpoint; imported here so the engine does not depend on it) --
    def save_checkpoint(self, save_dir, tag=None, client_state=None) -> str:
        """Every rank writes its shard of ``save_dir/tag``; see docs/checkpoints.md."""
        from zerolib.checkpoint import save_checkpoint
        self._wait_for_parameters()
        return save_checkpoint(self, save_dir, tag=tag, client_state=client_state)

    def load_checkpoint(self, load_dir, tag=None, load_optimizer_states=True, load_lr_scheduler_states=True,
                        load_module_only=False):
        """``(path, client_state)`` after loading ``load_dir/tag`` (any world size or stage)."""
        from zerolib.checkpoint import load_checkpoint
        self._wait_for_parameters()
        loaded = load_checkpoint(self, load_dir, tag=tag, load_optimizer_states=load_optimizer_states,
                                 load_lr_scheduler_states=load_lr_scheduler_states, load_module_only=load_module_only)
        self._wait_for_parameters()
        return loaded

    def save_16bit_model(self, save_dir, save_filename="pytorch_model.bin") -> bool:
        """Rank 0 writes the full 16-bit (working dtype) state dict to ``save_dir/save_filename``."""
        from zerolib.checkpoint import save_16bit_model
        self._wait_for_parameters()
        return save_16bit_model(self, save_dir, save_filename)


def initialize(model: torch.nn.Module, config, pretrained=None) -> ZeroEngine:
    """Wraps ``model`` for ZeRO training; ``config`` is a dict, a JSON path or a ``ZeroConfig``.

    ``pretrained``: a local Hugging Face checkpoint directory (safetensors) whose weights fill a
    model built under ``zerolib.partitioned_init``, one buffer at a time (docs/huggingface.md).
    """
    return ZeroEngine(model, config, pretrained=pretrained)

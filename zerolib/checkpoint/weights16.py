"""``save_16bit_model``: the full model in its working dtype, written by rank 0."""
from __future__ import annotations

from pathlib import Path

from zerolib.checkpoint.storage import save_tensors


def save_16bit_model(engine, save_dir, save_filename: str = "pytorch_model.bin") -> bool:
    """Gathers the full module state dict (16-bit under fp16/bf16) and rank 0 writes it.

    Call it on every rank. Under ZeRO-3 it gathers every partitioned parameter, which needs
    ``zero_optimization.stage3_gather_16bit_weights_on_model_save: true`` (as in DeepSpeed).
    """
    zero = engine.config.zero_optimization
    if engine.stage3 is not None and not zero.stage3_gather_16bit_weights_on_model_save:
        raise ValueError("save_16bit_model under ZeRO-3 gathers every parameter on every rank: set "
                         "zero_optimization.stage3_gather_16bit_weights_on_model_save to true, or save a "
                         "checkpoint and run 'zerolib export'")
    # Under ZeRO-3 the engine's state-dict hooks gather every buffer (a collective: all ranks).
    state = engine.module.state_dict()
    if engine.comm.rank == 0:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        # clone(): parameters are views of flat buffers, which torch.save would write whole
        save_tensors({name: tensor.detach().clone() for name, tensor in state.items()},
                     Path(save_dir) / save_filename)
    del state
    engine.comm.barrier()
    return True

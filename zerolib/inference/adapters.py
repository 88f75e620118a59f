"""How the MoE-prefill engine runs a model it did not write: find its experts, call its trunk.

The engine never forks model code. It needs from a model only:

* its **trunk**, the module that maps token ids to last hidden states, called with explicit
  positions, an additive 4-D attention mask over (cached + new) keys and a cache object whose
  ``update(keys, values, layer_index)`` returns all keys and values (a Hugging Face cache's
  contract, which zerolib's MoE GPT follows too);
* its **output head** (the last positions' hidden states to logits);
* its **experts modules**: a module with an integer ``num_experts`` whose own parameters are
  all 3-D with ``num_experts`` rows (``gate_up_proj``/``down_proj`` in transformers' Qwen3-MoE
  and Mixtral, ``w_in``/``w_out`` in zerolib's MoE GPT), called as
  ``experts(hidden, top_k_index, top_k_weights)``; and the router beside it for ``top_k``.

Everything else (the FLOPs model, head widths) is read from the modules' shapes and config.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from zerolib.inference.cost import ModelCost
from zerolib.inference.packing import PackedPass, PrefixKV


@dataclass(frozen=True)
class ExpertsModule:
    """One MoE layer's experts: where they sit in the model and their shape."""

    name: str
    module: nn.Module
    num_experts: int
    top_k: int
    shapes: tuple[torch.Size, ...]  # of its parameters, taken before any partitioning

    @property
    def expert_numel(self) -> int:
        """Elements of one expert's weights."""
        return sum(shape[1:].numel() for shape in self.shapes)

    @property
    def numels(self) -> list[int]:
        """Elements of each parameter (every expert)."""
        return [shape.numel() for shape in self.shapes]

    def params(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"{self.name}.{local}", p) for local, p in self.module.named_parameters(recurse=False)]


def _is_experts(module: nn.Module) -> bool:
    count = getattr(module, "num_experts", None)
    params = list(module.parameters(recurse=False))
    return (isinstance(count, int) and count > 0 and bool(params)
            and all(p.dim() == 3 and p.shape[0] == count for p in params))


def find_experts(model: nn.Module) -> list[ExpertsModule]:
    """Every experts module of ``model`` in layer order, with the ``top_k`` of its router."""
    found = []
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    for name, module in model.named_modules():
        if not _is_experts(module):
            continue
        router = getattr(parents.get(id(module)), "gate", None)
        top_k = getattr(router, "top_k", None) or getattr(getattr(model, "config", None), "num_experts_per_tok", None)
        if not isinstance(top_k, int):
            raise ValueError(f"experts module '{name}': cannot tell how many experts a token uses (no 'top_k' on "
                             f"its sibling 'gate' and no config.num_experts_per_tok)")
        shapes = tuple(p.shape for p in module.parameters(recurse=False))
        found.append(ExpertsModule(name, module, module.num_experts, top_k, shapes))
    return found


class PrefillModel:
    """A model as the engine drives it; subclasses say how to call the trunk."""

    def __init__(self, model: nn.Module, trunk: nn.Module, head: nn.Module, num_layers: int):
        self.model, self.trunk, self.head, self.num_layers = model, trunk, head, num_layers
        self.experts = find_experts(model)
        if not self.experts:
            raise ValueError(f"{type(model).__name__} has no experts modules (a module with 'num_experts' whose "
                             f"parameters are [num_experts, ...] tensors): MoE prefill serves mixture-of-experts models")
        self.dtype = next(model.parameters()).dtype

    def run_trunk(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: PrefixKV):
        raise NotImplementedError

    @torch.no_grad()
    def forward_pass(self, packed: PackedPass) -> tuple[torch.Tensor, PrefixKV]:
        """Hidden states [rows, R, hidden] of a packed pass, and the keys/values it computed."""
        cache = PrefixKV(packed.prefix, self.num_layers)
        hidden = self.run_trunk(packed.input_ids, packed.positions, packed.additive_mask(self.dtype), cache)
        return hidden, cache

    @torch.no_grad()
    def logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        return self.head(hidden_rows).float()

    def cost(self) -> ModelCost:
        raise NotImplementedError

    def _expert_shape(self) -> tuple[int, int, int]:
        """(num_experts, top_k, intermediate width) of the experts, from the first layer's."""
        first = self.experts[0]
        matmuls = self.ffn_matmuls()
        return first.num_experts, first.top_k, first.expert_numel // (matmuls * self.hidden_size())

    def hidden_size(self) -> int:
        raise NotImplementedError

    def ffn_matmuls(self) -> int:
        raise NotImplementedError

    def max_positions(self) -> int | None:
        return None


class TransformersModel(PrefillModel):
    """A transformers causal LM (Qwen3-MoE, Mixtral, ...): trunk ``model.base_model``."""

    def __init__(self, model: nn.Module):
        config = model.config
        super().__init__(model, model.base_model, model.get_output_embeddings(), config.num_hidden_layers)
        self.config = config
        parameters = inspect.signature(self.trunk.forward).parameters
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"

    def run_trunk(self, ids, positions, mask, cache):
        out = self.trunk(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_keyword: cache})
        return out.last_hidden_state

    def hidden_size(self) -> int:
        return self.config.hidden_size

    def ffn_matmuls(self) -> int:
        return 3 if getattr(self.experts[0].module, "has_gate", True) else 2

    def cost(self) -> ModelCost:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        experts, top_k, width = self._expert_shape()
        dense = getattr(c, "intermediate_size", 0) if len(self.experts) < c.num_hidden_layers else 0
        return ModelCost(num_layers=c.num_hidden_layers, hidden=c.hidden_size, q_width=c.num_attention_heads * head_dim,
                         kv_width=c.num_key_value_heads * head_dim, num_moe_layers=len(self.experts),
                         num_experts=experts, top_k=top_k, expert_intermediate=width, dense_intermediate=dense,
                         ffn_matmuls=self.ffn_matmuls(), vocab_size=c.vocab_size)

    def max_positions(self) -> int | None:
        limits = [getattr(self.config, "max_position_embeddings", None), getattr(self.config, "sliding_window", None)]
        limits = [limit for limit in limits if isinstance(limit, int) and limit > 0]
        return min(limits) if limits else None


class MoEGPTModel(PrefillModel):
    """zerolib's MoE GPT (zerolib/models/moe_gpt.py): trunk ``model.trunk``."""

    def __init__(self, model: nn.Module):
        super().__init__(model, model.trunk, model.lm_head, model.config.n_layer)
        self.config = model.config

    def run_trunk(self, ids, positions, mask, cache):
        return self.trunk(ids, positions=positions, attn_mask=mask, cache=cache)

    def hidden_size(self) -> int:
        return self.config.n_embd

    def ffn_matmuls(self) -> int:
        return 2

    def cost(self) -> ModelCost:
        c = self.config
        experts, top_k, width = self._expert_shape()
        return ModelCost(num_layers=c.n_layer, hidden=c.n_embd, q_width=c.n_embd, kv_width=c.n_embd,
                         num_moe_layers=len(self.experts), num_experts=experts, top_k=top_k, expert_intermediate=width,
                         dense_intermediate=c.expert_hidden, ffn_matmuls=2, vocab_size=c.vocab_size)

    def max_positions(self) -> int | None:
        return self.config.block_size


def adapt(model: nn.Module) -> PrefillModel:
    """The engine's view of ``model``, or a ValueError naming what is not supported."""
    from zerolib.models.moe_gpt import MoEGPT

    if isinstance(model, MoEGPT):
        return MoEGPTModel(model)
    if hasattr(model, "config") and hasattr(model, "base_model") and hasattr(model, "get_output_embeddings"):
        return TransformersModel(model)
    raise ValueError(f"MoEPrefillEngine serves transformers causal LMs with MoE layers (e.g. Qwen3MoeForCausalLM, "
                     f"MixtralForCausalLM) and zerolib's MoEGPT; got {type(model).__name__}")

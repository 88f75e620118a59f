"""A small mixture-of-experts GPT built from plain torch modules.

Every ``moe_every``-th block replaces the dense MLP by ``n_experts`` GELU experts, of which a
top-k router picks ``top_k`` per token. The experts of a layer are stored as two 3-D tensors
(``w_in`` [E, I, H] and ``w_out`` [E, H, I]), the layout of Hugging Face's MoE models, so that
zerolib can train it under any ZeRO stage and serve it with the MoE-prefill engine, which
partitions each layer's experts by index and gathers them layer by layer.

It contains no communication. For serving, ``trunk(idx, positions=, attn_mask=, cache=)``
takes explicit positions, an additive attention mask over (cached + new) keys and a cache
object with ``update(key, value, layer_index) -> (all_keys, all_values)``, the contract of a
Hugging Face cache, so one prefill engine drives both this model and theirs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zerolib.models.gpt import GPTConfig, init_weights


@dataclass
class MoEGPTConfig(GPTConfig):
    """GPT's shape plus the experts; ``moe_every`` 1 makes every block an MoE block."""

    n_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 256
    moe_every: int = 1
    router_aux_loss_coef: float = 0.01


class Attention(nn.Module):
    def __init__(self, config: MoEGPTConfig, layer_index: int):
        super().__init__()
        self.n_head, self.layer_index, self.dropout = config.n_head, layer_index, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_index)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class TopKRouter(nn.Module):
    """Softmax over experts, the ``top_k`` largest renormalised; returns (logits, weights, indices)."""

    def __init__(self, config: MoEGPTConfig):
        super().__init__()
        self.top_k = config.top_k
        self.weight = nn.Parameter(torch.zeros(config.n_experts, config.n_embd))

    def forward(self, hidden: torch.Tensor):
        logits = F.linear(hidden, self.weight)
        weights, indices = torch.topk(torch.softmax(logits.float(), dim=-1), self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(hidden.dtype)
        return logits, weights, indices


class Experts(nn.Module):
    """``num_experts`` GELU MLPs; ``forward(hidden, top_k_index, top_k_weights)`` runs each
    token through its chosen experts and sums their outputs, weighted. Only experts that some
    token chose are computed, and an index >= ``num_experts`` means "no expert"."""

    def __init__(self, config: MoEGPTConfig):
        super().__init__()
        self.num_experts = config.n_experts
        self.w_in = nn.Parameter(torch.empty(config.n_experts, config.expert_hidden, config.n_embd))
        self.w_out = nn.Parameter(torch.empty(config.n_experts, config.n_embd, config.expert_hidden))

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        flat_experts = top_k_index.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        counts = torch.bincount(flat_experts, minlength=self.num_experts + 1).tolist()
        token_of = order // top_k_index.shape[-1]
        weight_of = top_k_weights.reshape(-1)[order]
        start = 0
        for expert, count in enumerate(counts[:self.num_experts]):
            if count:
                tokens = token_of[start:start + count]
                y = F.linear(F.gelu(F.linear(hidden[tokens], self.w_in[expert])), self.w_out[expert])
                out.index_add_(0, tokens, y * weight_of[start:start + count, None])
            start += count
        return out


class MoELayer(nn.Module):
    def __init__(self, config: MoEGPTConfig):
        super().__init__()
        self.gate = TopKRouter(config)
        self.experts = Experts(config)
        self.aux_loss: torch.Tensor | None = None  # switch-style load-balancing term of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits, weights, indices = self.gate(flat)
        if self.training:
            chosen = F.one_hot(indices, logits.shape[-1]).sum(dim=1).float().mean(dim=0)
            self.aux_loss = logits.shape[-1] * (chosen * torch.softmax(logits.float(), dim=-1).mean(dim=0)).sum()
        return self.experts(flat, indices, weights).view_as(x)


class DenseMLP(nn.Module):
    def __init__(self, config: MoEGPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.expert_hidden)
        self.proj = nn.Linear(config.expert_hidden, config.n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class MoEBlock(nn.Module):
    def __init__(self, config: MoEGPTConfig, layer_index: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = Attention(config, layer_index)
        self.ln2 = nn.LayerNorm(config.n_embd)
        is_moe = (layer_index + 1) % config.moe_every == 0
        self.mlp = MoELayer(config) if is_moe else DenseMLP(config)

    def forward(self, x, attn_mask=None, cache=None):
        x = x + self.attn(self.ln1(x), attn_mask, cache)
        return x + self.mlp(self.ln2(x))


class MoETrunk(nn.Module):
    """Embeddings, blocks and the final norm: token ids to last hidden states."""

    def __init__(self, config: MoEGPTConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(MoEBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x, attn_mask, cache)
        return self.ln_f(x)


class MoEGPT(nn.Module):
    """``forward(idx, targets=None)`` returns logits, or the mean loss plus the routers'
    load-balancing term (``router_aux_loss_coef`` times their mean) when ``targets`` is given."""

    def __init__(self, config: MoEGPTConfig):
        super().__init__()
        self.config = config
        self.trunk = MoETrunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.trunk.tok_emb.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        init_weights(module)
        if isinstance(module, (Experts, TopKRouter)):
            for param in module.parameters(recurse=False):
                nn.init.normal_(param, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.lm_head(self.trunk(idx))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        aux = [m.aux_loss for m in self.modules() if isinstance(m, MoELayer) and m.aux_loss is not None]
        if aux and self.config.router_aux_loss_coef:
            loss = loss + self.config.router_aux_loss_coef * torch.stack(aux).mean()
        return loss

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

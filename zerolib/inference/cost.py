"""True prefill FLOPs of a decoder-only (MoE) transformer, per layer, from its shape.

The router balances load in these units and the engine's saturation threshold
T = t_EP x F x gamma (docs/moe_prefill.md) is in the same units: FLOPs of one average layer.
A matmul of [m, k] by [k, n] counts 2mkn FLOPs. Per token and layer:

* linear part: the q/k/v/o projections, the router, and top_k experts (dense layers: one
  feed-forward) -- the same for every token;
* attention: a token at position p attends to p + 1 keys (causal), QK^T and AV cost
  4 * q_width * (p + 1).

Prefill of tokens [start, end) of a sequence therefore costs
linear * (end - start) + 4 * q_width * sum_{p=start}^{end-1} (p + 1). With a cached prefix of
M tokens, a prompt of P prefix and S suffix tokens costs C_pfx(P - M) + C_sfx(S, P) as in
REFERENCE.md; :meth:`ModelCost.prefill` computes exactly that sum.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCost:
    """The shape numbers the FLOPs depend on. ``ffn_matmuls`` is 3 for SwiGLU experts
    (gate, up, down) and 2 for a GELU MLP (fc, proj)."""

    num_layers: int
    hidden: int
    q_width: int  # num_heads * head_dim
    kv_width: int  # num_kv_heads * head_dim
    num_moe_layers: int
    num_experts: int
    top_k: int
    expert_intermediate: int
    dense_intermediate: int = 0
    ffn_matmuls: int = 3
    vocab_size: int = 0

    def __post_init__(self):
        if not 0 <= self.num_moe_layers <= self.num_layers or self.num_layers < 1:
            raise ValueError(f"ModelCost: num_moe_layers {self.num_moe_layers} must be within "
                             f"[0, num_layers={self.num_layers}] and num_layers >= 1")

    def linear_per_token(self) -> float:
        """Linear FLOPs of one token through one average layer."""
        attention = 2 * self.hidden * (2 * self.q_width + 2 * self.kv_width)
        moe = 2 * self.hidden * self.num_experts + self.top_k * 2 * self.ffn_matmuls * self.hidden * self.expert_intermediate
        dense = 2 * self.ffn_matmuls * self.hidden * self.dense_intermediate
        num_dense = self.num_layers - self.num_moe_layers
        return attention + (moe * self.num_moe_layers + dense * num_dense) / self.num_layers

    def attention_span(self, start: int, end: int) -> float:
        """Attention FLOPs of tokens [start, end) in one layer: 4 q_width sum (p + 1)."""
        if end <= start:
            return 0.0
        keys = (end * (end + 1) - start * (start + 1)) // 2
        return 4.0 * self.q_width * keys

    def prefill(self, num_tokens: int, cached_tokens: int = 0) -> float:
        """Per-layer FLOPs to prefill a ``num_tokens`` prompt whose first ``cached_tokens``
        have their keys and values cached already."""
        if not 0 <= cached_tokens < max(num_tokens, 1):
            raise ValueError(f"cached_tokens {cached_tokens} must be in [0, num_tokens={num_tokens})")
        return self.linear_per_token() * (num_tokens - cached_tokens) + self.attention_span(cached_tokens, num_tokens)

    def c_pfx(self, prefix_tokens: int, cached_tokens: int) -> float:
        """REFERENCE.md's C_pfx(P - M): the prefix tokens not cached yet."""
        return self.linear_per_token() * (prefix_tokens - cached_tokens) + self.attention_span(cached_tokens, prefix_tokens)

    def c_sfx(self, suffix_tokens: int, prefix_tokens: int) -> float:
        """REFERENCE.md's C_sfx(S, P): the suffix's linear part, its causal self-attention and
        its attention to the P prefix tokens."""
        return (self.linear_per_token() * suffix_tokens
                + self.attention_span(prefix_tokens, prefix_tokens + suffix_tokens))

    def expert_bytes_per_layer(self, bytes_per_element: int) -> int:
        """Bytes of one MoE layer's full expert set (what AsyncEP gathers per layer)."""
        return self.num_experts * self.ffn_matmuls * self.hidden * self.expert_intermediate * bytes_per_element

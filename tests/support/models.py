"""Models that exercise ZeRO-3's corner cases, each a small variation of the example GPT."""
from __future__ import annotations

import torch

from zerolib.models import GPT, GPTConfig


class BlockUsedTwice(GPT):
    """Runs ``blocks[0]`` twice per forward: one module, two uses, one gradient."""

    def forward(self, idx, targets=None):
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        x = self.blocks[0](x)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


class BranchOnData(GPT):
    """Skips ``blocks[1]`` when the first token of the batch is even, so the module order
    changes from step to step (the test gives every rank the same first token)."""

    def forward(self, idx, targets=None):
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for i, block in enumerate(self.blocks):
            if i == 1 and int(idx[0, 0]) % 2 == 0:
                continue
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def build(kind: str, config: GPTConfig) -> GPT:
    """``gpt`` (tied embeddings), ``twice``, ``frozen`` (first block frozen) or ``branchy``."""
    if kind == "twice":
        return BlockUsedTwice(config)
    if kind == "branchy":
        return BranchOnData(GPTConfig(**{**config.__dict__, "n_layer": 3}))
    model = GPT(config)
    if kind == "frozen":
        for p in model.blocks[0].parameters():
            p.requires_grad_(False)
    return model

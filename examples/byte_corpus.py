"""Byte-level text data for the example: a train/held-out split and a per-rank random sampler."""
from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "corpus.txt"


class ByteCorpus:
    """The bytes of one text file, split into a training part and a held-out tail.

    The split is contiguous (the last ``held_out_fraction`` of the file), so no held-out window
    overlaps a training window.
    """

    def __init__(self, path: str | Path = DEFAULT_CORPUS, held_out_fraction: float = 0.1):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} does not exist (see examples/data/README.md)")
        if not 0.0 < held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()
        cut = int(len(data) * (1.0 - held_out_fraction))
        self.path = path
        self.train, self.held_out = data[:cut], data[cut:]

    def check_fits(self, seq_len: int) -> None:
        """Raises if a window of ``seq_len + 1`` bytes does not fit in either part."""
        shortest = min(len(self.train), len(self.held_out))
        if seq_len + 1 > shortest:
            raise ValueError(f"--seq_len {seq_len} is too long for {self.path}: the shorter split has "
                             f"{shortest} bytes")


class RankSampler:
    """Random training windows for one rank: each rank draws from its own seeded stream.

    Seeding with ``(seed, rank)`` makes every rank read different batches, and a rerun with the
    same seed and world size read exactly the same ones.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, *, seed: int, rank: int):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.generator = torch.Generator().manual_seed(seed * 100_003 + rank)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, each ``[batch_size, seq_len]``; targets are inputs shifted by one."""
        starts = torch.randint(0, len(self.tokens) - self.seq_len - 1, (self.batch_size,), generator=self.generator)
        windows = torch.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]


def held_out_windows(tokens: torch.Tensor, seq_len: int, rank: int, world_size: int,
                     batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the held-out bytes, dealt round-robin to the ranks."""
    count = (len(tokens) - 1) // seq_len
    mine = list(range(rank, count, world_size))
    batches = []
    for first in range(0, len(mine), batch_size):
        starts = mine[first:first + batch_size]
        windows = torch.stack([tokens[i * seq_len:i * seq_len + seq_len + 1] for i in starts])
        batches.append((windows[:, :-1], windows[:, 1:]))
    return batches

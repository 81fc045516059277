"""A seeded sampler that owns its permutation, so a resume can skip ahead in O(1)."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Yields a permutation that depends only on (seed, epoch), split across ranks.

    The state is ``{"epoch", "position"}``: ``position`` samples of the epoch (all ranks
    together; this rank's share is ``position / world_size``) are already consumed and the next iteration starts after them, without
    touching the data. ``position`` goes back to 0 once an iteration has started. The
    trainer writes that state (it alone knows what was consumed: loaders prefetch).
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 lengths=None, batch_size: int = 1, bucket_window: int = 50):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.batch_size, self.bucket_window = batch_size, bucket_window
        self.epoch, self.position = 0, 0

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (padded so every rank gets as many)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2 ** 63))
        idx = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        if self.lengths is not None:
            idx = self._bucket(idx, g)
        total = -(-self.length // self.world_size) * self.world_size
        if total > self.length:
            idx = torch.cat([idx, idx[: total - self.length]])
        return idx[self.rank:total:self.world_size]

    def _bucket(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Length bucketing: within windows of ``bucket_window`` batches, sort by length,
        cut into batches and shuffle those batches (still a function of (seed, epoch))."""
        step = self.batch_size * self.bucket_window * self.world_size
        out = []
        for start in range(0, len(idx), step):
            window = idx[start:start + step]
            window = window[torch.argsort(self.lengths[window], stable=True)]
            chunks = list(window.split(self.batch_size * self.world_size))
            out += [chunks[i] for i in torch.randperm(len(chunks), generator=g).tolist()]
        return torch.cat(out)

    def __len__(self) -> int:
        return -(-self.length // self.world_size)

    def __iter__(self):
        start, self.position = self.position, 0
        return iter(self.order(self.epoch)[start:].tolist())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_state_dict(self, state: dict) -> None:
        """``position`` counts samples of the whole epoch (all ranks); this rank skips its share."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"]) // self.world_size

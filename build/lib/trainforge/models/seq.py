"""A small encoder for padded event sequences (the seqset experiment)."""
from __future__ import annotations

import torch
from torch import nn


class SeqEncoder(nn.Module):
    """Each event becomes embed(var_id) + value * w_v + time features; a Transformer encoder
    attends over the events with ``src_key_padding_mask``; a masked mean pools them; a
    linear head gives one logit per sequence. Padded positions take part in nothing."""

    def __init__(self, num_variables=16, dim=32, layers=1, heads=4, dropout=0.0):
        super().__init__()
        self.var = nn.Embedding(num_variables, dim)
        self.value = nn.Linear(1, dim)
        self.time = nn.Linear(1, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["padding_mask"]
        minute = batch["minute"]
        x = self.var(batch["var_id"]) + self.value(batch["value"][..., None]) + self.time(minute[..., None] / 1440.0)
        x = self.encoder(x, src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)

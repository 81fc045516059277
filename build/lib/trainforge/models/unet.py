"""A small UNet for 2-D segmentation, with GroupNorm so results do not depend on batch size."""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(groups, cout), cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(min(groups, cout), cout), nn.SiLU(),
    )


class UNet(nn.Module):
    """Encoder of ``depth`` downsamplings (channels double each time), mirrored decoder
    with skip connections, 1x1 head producing ``out_channels`` logits at input resolution.
    The input size must be divisible by ``2 ** depth``."""

    def __init__(self, in_channels=1, out_channels=1, base_channels=16, depth=2, groups=4):
        super().__init__()
        chans = [base_channels * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, chans[0], groups)])
        self.down.extend(_block(chans[i], chans[i + 1], groups) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(_block(2 * chans[i], chans[i], groups) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

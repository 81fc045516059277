"""A small CNN classifier for small images (the digits experiment)."""
from __future__ import annotations

from torch import nn


class CNN(nn.Module):
    """Two conv blocks (the second after a 2x downsampling), global average pooling and a
    linear head: logits (N, num_classes)."""

    def __init__(self, in_channels=1, num_classes=10, channels=32, dropout=0.1):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU())

        self.features = nn.Sequential(block(in_channels, channels), block(channels, channels), nn.MaxPool2d(2),
                                      block(channels, 2 * channels), block(2 * channels, 2 * channels),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels, num_classes))

    def forward(self, x):
        return self.head(self.features(x))

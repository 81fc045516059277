"""A small 1-D residual network for ECG strips (batch, 1, length) -> class logits."""
from __future__ import annotations

from torch import nn


class Block(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels_in, channels, 7, stride=stride, padding=3, bias=False), nn.BatchNorm1d(channels),
            nn.ReLU(), nn.Conv1d(channels, channels, 7, padding=3, bias=False), nn.BatchNorm1d(channels))
        self.skip = nn.Identity() if stride == 1 and channels_in == channels else \
            nn.Sequential(nn.Conv1d(channels_in, channels, 1, stride=stride, bias=False), nn.BatchNorm1d(channels))

    def forward(self, x):
        return nn.functional.relu(self.body(x) + self.skip(x))


class ResNet1d(nn.Module):
    def __init__(self, channels: int = 16, blocks: int = 3, num_classes: int = 3, dropout: float = 0.1):
        super().__init__()
        layers, width = [nn.Conv1d(1, channels, 15, stride=2, padding=7), nn.BatchNorm1d(channels), nn.ReLU()], channels
        for i in range(blocks):
            layers.append(Block(width, channels * 2 ** i, stride=2))
            width = channels * 2 ** i
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))

"""Cross-entropy with optional class weights: a plain module returning a scalar tensor."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn


class WeightedCE(nn.Module):
    def __init__(self, class_weights: Optional[List[float]] = None, label_smoothing: float = 0.0):
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target, weight=self.weight, label_smoothing=self.label_smoothing)

"""Classification losses: ``(total, {})`` like every trainforge loss."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F


class CELoss(nn.Module):
    """Cross-entropy of logits (N, C) against class indices (N,)."""

    component_names: tuple = ()

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target.long(), label_smoothing=self.label_smoothing), {}

"""Validation metrics: accumulate device tensors per batch, one host read in ``compute``."""
from __future__ import annotations

import torch


class SegmentationMetrics:
    """Dice and IoU of the thresholded sigmoid over the whole validation set (pixel sums)."""

    names = ("dice", "iou")

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._sums = None  # [intersection, predicted, target] pixel counts

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = torch.sigmoid(logits.float()) > self.threshold
        tgt = target > 0.5
        sums = torch.stack([(pred & tgt).sum(), pred.sum(), tgt.sum()]).double()
        self._sums = sums if self._sums is None else self._sums + sums

    def compute(self) -> dict:
        inter, pred, tgt = self._sums.tolist()
        union = pred + tgt - inter
        return {"dice": 2 * inter / (pred + tgt) if pred + tgt else 1.0,
                "iou": inter / union if union else 1.0}

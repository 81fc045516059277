"""Validation metrics: accumulate device tensors per batch, one host read in ``compute``.

A metric has ``names``, ``reset()``, ``update(output, target)`` and ``compute() -> dict``,
and says how its state adds up across DDP ranks: ``sum_states`` (sums and counts) or
``cat_states`` (lists of per-sample tensors, concatenated in rank order); see
``engine/components.MetricSet`` and docs/own-project.md."""
from __future__ import annotations

import torch


class SegmentationMetrics:
    """Dice and IoU of the thresholded sigmoid over the whole validation set (pixel sums)."""

    names = ("dice", "iou")
    sum_states = ("_sums",)  # DDP: summed over ranks before compute

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


class AccuracyMetric:
    """Accuracy of class logits (N, C) by argmax, or of binary logits (N,) by sigmoid > 0.5."""

    names = ("accuracy",)
    sum_states = ("_correct", "_total")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._correct, self._total = None, 0  # a device tensor, a host count

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim == 2 and logits.shape[1] > 1:
            pred = logits.argmax(dim=1)
        else:
            pred = (logits.reshape(target.shape).float() > 0).to(target.dtype)
        correct = (pred == target).sum()
        self._correct = correct if self._correct is None else self._correct + correct
        self._total += target.numel()

    def compute(self) -> dict:
        return {"accuracy": self._correct.item() / self._total if self._total else 0.0}

"""Validation metrics of the whole set, exact under DDP.

``MacroF1`` keeps a confusion matrix (counts add up over ranks: ``sum_states``);
``MacroAUROC`` keeps every sample's probabilities (``cat_states``: concatenated over ranks)
and computes one-vs-rest AUROC per class once over every sample."""
from __future__ import annotations

import torch


class MacroF1:
    sum_states = ("confusion",)

    def __init__(self, num_classes: int = 3):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        index = target.cpu() * self.num_classes + output.argmax(dim=1).cpu()
        self.confusion += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def compute(self) -> float:
        tp = self.confusion.diag()
        f1 = 2 * tp / (self.confusion.sum(0) + self.confusion.sum(1)).clamp(min=1)
        return f1.mean().item()


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve by ranks (ties get their mean rank)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique()[torch.unique(scores, return_counts=True)[1] > 1]:  # ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


class MacroAUROC:
    cat_states = ("probs", "labels")

    def __init__(self, num_classes: int = 3):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.probs, self.labels = [], []

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.probs.append(output.float().softmax(dim=1).cpu())
        self.labels.append(target.cpu())

    def compute(self) -> float:
        probs, labels = torch.cat(self.probs), torch.cat(self.labels)
        return sum(auroc(probs[:, k], labels == k) for k in range(self.num_classes)) / self.num_classes

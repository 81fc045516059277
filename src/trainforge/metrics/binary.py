"""AUROC, AUPRC and accuracy of a binary head over the whole validation set, on the device."""
from __future__ import annotations

import math

import torch


def logits_of(output) -> torch.Tensor:
    """The head's logits: the output itself, or its ``logit`` entry (model dicts)."""
    return output["logit"] if isinstance(output, dict) else output


def average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``scores`` (ascending), ties sharing their average rank."""
    order = torch.argsort(scores)
    _, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # of each tie group
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count one half);
    NaN when a class is absent."""
    pos = labels > 0.5
    n_pos, n_neg = pos.sum().double(), (~pos).sum().double()
    u = average_ranks(scores)[pos].sum() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def auprc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision: sum over distinct thresholds (descending) of precision times the
    gain in recall, as scikit-learn's ``average_precision_score``; NaN without positives."""
    order = torch.argsort(scores, descending=True)
    s, y = scores[order], (labels[order] > 0.5).double()
    _, counts = torch.unique_consecutive(s, return_counts=True)
    last = torch.cumsum(counts, 0) - 1  # the last index of each tie group
    tp = torch.cumsum(y, 0)[last]
    precision = tp / (last + 1).double()
    gain = torch.diff(tp, prepend=tp.new_zeros(1)) / tp[-1]
    return (precision * gain).sum()


class BinaryMetrics:
    """``auroc``, ``auprc`` and ``accuracy`` (logit > 0) of binary logits (B,) or of a
    model output dict's ``logit``. Scores and labels stay device tensors until
    ``compute``, which reads the three numbers in one host transfer."""

    names = ("auroc", "auprc", "accuracy")
    cat_states = ("_scores", "_labels")  # DDP: every rank's, concatenated in rank order, before compute

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._scores, self._labels = [], []

    @torch.no_grad()
    def update(self, output, target: torch.Tensor) -> None:
        self._scores.append(logits_of(output).detach().float().reshape(-1))
        self._labels.append(target.detach().reshape(-1))

    def compute(self) -> dict:
        if not self._scores:
            return dict.fromkeys(self.names, math.nan)
        scores, labels = torch.cat(self._scores), torch.cat(self._labels)
        accuracy = ((scores > 0) == (labels > 0.5)).double().mean()
        values = torch.stack([auroc(scores, labels), auprc(scores, labels), accuracy]).tolist()
        return dict(zip(self.names, values))

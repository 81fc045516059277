"""Segmentation losses on logits. Each returns ``(total, components)``: a scalar tensor and
a dict of named scalar tensors (empty for single losses), all kept on the device."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def focal(logits, target, alpha: float, gamma: float) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels; alpha weighs the positives."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    weight = alpha * target + (1.0 - alpha) * (1.0 - target)
    return (weight * (1.0 - p_t) ** gamma * bce).mean()


def soft_dice(logits, target, smooth: float) -> torch.Tensor:
    """1 - soft Dice over the whole batch (sums over every pixel of every sample)."""
    prob, target = torch.sigmoid(logits.float()), target.float()
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + smooth) / (prob.sum() + target.sum() + smooth)


class FocalLoss(nn.Module):
    component_names: tuple = ()

    def __init__(self, alpha=0.5, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits, target):
        return focal(logits, target, self.alpha, self.gamma), {}


class BCELoss(nn.Module):
    component_names: tuple = ()

    def __init__(self, pos_weight=None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits, target):
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw), {}


class DiceLoss(nn.Module):
    component_names: tuple = ()

    def __init__(self, smooth=1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, logits, target):
        return soft_dice(logits, target, self.smooth), {}


class HybridLoss(nn.Module):
    """focal_weight * focal + dice_weight * dice + bce_weight * bce; components unweighted."""

    component_names = ("focal_loss", "dice_loss", "bce_loss")

    def __init__(self, focal_weight=1.0, dice_weight=1.0, bce_weight=0.5, alpha=0.5, gamma=2.0, smooth=1.0):
        super().__init__()
        self.weights = {"focal_loss": focal_weight, "dice_loss": dice_weight, "bce_loss": bce_weight}
        self.alpha, self.gamma, self.smooth = alpha, gamma, smooth

    def forward(self, logits, target):
        parts = {
            "focal_loss": focal(logits, target, self.alpha, self.gamma),
            "dice_loss": soft_dice(logits, target, self.smooth),
            "bce_loss": F.binary_cross_entropy_with_logits(logits.float(), target.float()),
        }
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts

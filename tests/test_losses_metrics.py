"""Losses and metrics against independent references: the published formulas written out
plainly in float64 numpy, and scikit-learn's accuracy, F1 (= Dice on binary masks) and
Jaccard (= IoU). Agreement to 1e-6."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

from trainforge.losses import BCELoss, CELoss, DiceLoss, FocalLoss, HybridLoss
from trainforge.metrics import AccuracyMetric, SegmentationMetrics

TOL = 1e-6


@pytest.fixture
def seg_batch():
    """Logits in a moderate range and sparse masks, like a segmentation batch."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 1, 16, 16, generator=g)
    target = (torch.rand(4, 1, 16, 16, generator=g) > 0.7).float()
    return logits, target


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def focal_reference(logits, target, alpha, gamma):
    """Lin et al. 2017, eq. 5: FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), p_t = p for a
    positive and 1 - p for a negative, alpha_t likewise alpha or 1 - alpha; mean over pixels."""
    x, y = logits.double().numpy(), target.double().numpy()
    p = sigmoid(x)
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, alpha, 1 - alpha)
    return float(np.mean(-alpha_t * (1 - p_t) ** gamma * np.log(p_t)))


def bce_reference(logits, target):
    x, y = logits.double().numpy(), target.double().numpy()
    p = sigmoid(x)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def dice_loss_reference(logits, target, smooth):
    """1 - (2 |P.Y| + s) / (|P| + |Y| + s) with soft P = sigmoid(logits), over the whole batch."""
    p, y = sigmoid(logits.double().numpy()), target.double().numpy()
    return float(1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth))


@pytest.mark.parametrize("alpha,gamma", [(0.5, 2.0), (0.25, 2.0), (0.75, 0.0), (0.9, 3.5)])
def test_focal_loss_matches_the_published_formula(seg_batch, alpha, gamma):
    loss, parts = FocalLoss(alpha=alpha, gamma=gamma)(*seg_batch)
    assert parts == {}
    assert abs(loss.item() - focal_reference(*seg_batch, alpha, gamma)) < TOL


@pytest.mark.parametrize("smooth", [1.0, 0.0, 10.0])
def test_dice_loss_matches_the_soft_dice_formula(seg_batch, smooth):
    loss, _ = DiceLoss(smooth=smooth)(*seg_batch)
    assert abs(loss.item() - dice_loss_reference(*seg_batch, smooth)) < TOL


def test_bce_loss_matches_the_formula_also_with_pos_weight(seg_batch):
    logits, target = seg_batch
    assert abs(BCELoss()(logits, target)[0].item() - bce_reference(logits, target)) < TOL
    x, y, w = logits.double().numpy(), target.double().numpy(), 3.0
    p = sigmoid(x)
    weighted = float(np.mean(-(w * y * np.log(p) + (1 - y) * np.log(1 - p))))
    assert abs(BCELoss(pos_weight=w)(logits, target)[0].item() - weighted) < TOL


def test_hybrid_loss_is_the_weighted_sum_of_the_references(seg_batch):
    loss_fn = HybridLoss(focal_weight=2.0, dice_weight=0.5, bce_weight=1.5, alpha=0.25, gamma=1.5, smooth=2.0)
    total, parts = loss_fn(*seg_batch)
    focal, dice, bce = (focal_reference(*seg_batch, 0.25, 1.5), dice_loss_reference(*seg_batch, 2.0),
                        bce_reference(*seg_batch))
    assert abs(parts["focal_loss"].item() - focal) < TOL
    assert abs(parts["dice_loss"].item() - dice) < TOL
    assert abs(parts["bce_loss"].item() - bce) < TOL
    assert abs(total.item() - (2.0 * focal + 0.5 * dice + 1.5 * bce)) < TOL


def test_cross_entropy_with_label_smoothing_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    logits, target = 2 * torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    x, eps = logits.double().numpy(), 0.1
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    q = np.full_like(logp, eps / 10)
    q[np.arange(32), target.numpy()] += 1 - eps
    reference = float(np.mean(-(q * logp).sum(axis=1)))
    assert abs(CELoss(label_smoothing=eps)(logits, target)[0].item() - reference) < TOL


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_dice_and_iou_equal_sklearn_f1_and_jaccard_over_batches(threshold):
    g = torch.Generator().manual_seed(2)
    metric = SegmentationMetrics(threshold=threshold)
    preds, targets = [], []
    for size in (5, 3, 8):  # accumulated over batches of different sizes = one computation over all pixels
        logits = 2 * torch.randn(size, 1, 12, 12, generator=g)
        target = (torch.rand(size, 1, 12, 12, generator=g) > 0.6).float()
        metric.update(logits, target)
        preds.append((sigmoid(logits.double().numpy()) > threshold).ravel())
        targets.append(target.numpy().ravel() > 0.5)
    y_pred, y_true = np.concatenate(preds), np.concatenate(targets)
    out = metric.compute()
    assert abs(out["dice"] - f1_score(y_true, y_pred)) < TOL
    assert abs(out["iou"] - jaccard_score(y_true, y_pred)) < TOL


def test_accuracy_equals_sklearn_for_class_and_binary_logits():
    g = torch.Generator().manual_seed(3)
    multi, binary = AccuracyMetric(), AccuracyMetric()
    y_true, y_pred, b_true, b_pred = [], [], [], []
    for size in (7, 16, 1):
        logits, target = torch.randn(size, 10, generator=g), torch.randint(0, 10, (size,), generator=g)
        multi.update(logits, target)
        y_true += target.tolist()
        y_pred += logits.numpy().argmax(axis=1).tolist()
        blogits, btarget = torch.randn(size, generator=g), torch.randint(0, 2, (size,), generator=g).float()
        binary.update(blogits, btarget)
        b_true += btarget.tolist()
        b_pred += (sigmoid(blogits.double().numpy()) > 0.5).astype(float).tolist()
    assert abs(multi.compute()["accuracy"] - accuracy_score(y_true, y_pred)) < TOL
    assert abs(binary.compute()["accuracy"] - accuracy_score(b_true, b_pred)) < TOL

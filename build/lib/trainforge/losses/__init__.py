"""Losses: ``loss(output, target) -> (total, {component: value})``; ``component_names``
lists the component keys so the CSV columns are known before training starts."""
from trainforge.losses.classification import CELoss
from trainforge.losses.elbo import ELBOLoss
from trainforge.losses.segmentation import BCELoss, DiceLoss, FocalLoss, HybridLoss

__all__ = ["BCELoss", "CELoss", "DiceLoss", "ELBOLoss", "FocalLoss", "HybridLoss"]

"""Datasets and data specs. A data spec (``data=`` group) holds loader settings
(batch_size, num_workers, pin_memory), builds its train/val datasets and its metrics."""
from trainforge.data.glint import GlintData
from trainforge.data.sampler import EpochSampler

__all__ = ["GlintData", "EpochSampler"]

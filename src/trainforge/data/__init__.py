"""Datasets and data specs. A data spec (``data=`` group) holds loader settings
(batch_size, num_workers, pin_memory), builds its train/val datasets and its metrics;
``Datasets`` takes plain PyTorch datasets, ``DataSpec`` is the base of a data option."""
from trainforge.data.digits import DigitsData
from trainforge.data.glint import GlintData
from trainforge.data.plain import Datasets
from trainforge.data.spec import DataSpec
from trainforge.data.sampler import EpochSampler
from trainforge.data.seqset import SeqSetData

__all__ = ["DataSpec", "Datasets", "DigitsData", "GlintData", "EpochSampler", "SeqSetData"]

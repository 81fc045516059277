"""``data=seqset``: the data option of the sequence sets (``SeqSetData``).

The file format, its generator and the flat event batches (``layout=events``) are in
:mod:`trainforge.data.events`; the [batch, sets, events] batches (``layout=sets``) in
:mod:`trainforge.data.sets`. Their names stay importable from here.
"""
from __future__ import annotations

import h5py
import numpy as np

from trainforge.data.events import *  # noqa: F401,F403  (the names this module had)
from trainforge.data.events import FIELDS, GENERATOR_SEED, SeqDataset, make_seqset, pad_collate
from trainforge.data.h5 import atomic_h5, check_h5
from trainforge.data.sets import SetSeqDataset
from trainforge.data.spec import DataSpec
from trainforge.errors import DataError
from trainforge.metrics import AccuracyMetric


def patients(path) -> int:
    """The number of patients in a sequence-set file, after checking its arrays and offsets."""
    n = check_h5(path, ["label"], {"label": ()})
    events = check_h5(path, list(FIELDS), {k: () for k in FIELDS})
    with h5py.File(path, "r") as f:
        offsets = f["offsets"][:] if "offsets" in f else None
    if offsets is None or offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != events \
            or np.any(np.diff(offsets) < 0):
        raise DataError(f"{path}: 'offsets' must be ({n + 1},) increasing from 0 to {events} (the number of events)")
    return n


class SeqSetData(DataSpec):
    """Train/val sequence datasets and their batching, optional length bucketing, metrics.

    ``layout=events``: flat padded batches (:func:`pad_collate`), accuracy.
    ``layout=sets``: [batch, sets, events] batches built by vectorised indexing
    (:class:`~trainforge.data.sets.SetSeqDataset`), AUROC/AUPRC/accuracy.
    ``max_sets`` (sets layout) and ``max_sequence_length`` both keep the most recent end.
    """

    collate_fn = staticmethod(pad_collate)
    LAYOUTS = ("events", "sets")

    def __init__(self, path, cache_dir, batch_size, num_workers=0, pin_memory=False, preload=True, shuffle=True,
                 num_patients=2000, num_variables=16, min_length=8, max_length=128, max_sequence_length=None,
                 val_fraction=0.2, bucket=False, shared_memory=False, layout="events", max_sets=None,
                 mean_set_size=4.0, embed_dim=32, on_device=False, test_patients=400, test_path=None):
        super().__init__(batch_size, num_workers, pin_memory, preload, shuffle, shared_memory, val_fraction, on_device)
        # plain errors naming the argument (the config door checks these keys first: SeqSetConf)
        for key, value in (("max_sequence_length", max_sequence_length), ("max_sets", max_sets)):
            if value is not None and value < 1:
                raise ValueError(f"{key} {value}: must be >= 1 (or None)")
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout {layout!r}: allowed values are {', '.join(self.LAYOUTS)}")
        if min_length < 1 or max_length < min_length or mean_set_size < 1:
            raise ValueError(f"min_length {min_length}, max_length {max_length}, mean_set_size {mean_set_size}: "
                             "need 1 <= min_length <= max_length and mean_set_size >= 1")
        self.max_sequence_length, self.bucket, self.layout, self.max_sets = max_sequence_length, bucket, layout, max_sets

        def make(count: int, seed: int):
            arrays = make_seqset(count, num_variables, min_length, max_length, seed=seed, mean_set_size=mean_set_size,
                                 embed_dim=embed_dim)
            return lambda target: atomic_h5(target, lambda f: [f.create_dataset(k, data=v) for k, v in arrays.items()])

        shape = f"{num_variables}_{min_length}_{max_length}_{mean_set_size:g}_{embed_dim}"
        self.path = self.resolve(path, cache_dir, f"seqset2_{num_patients}_{shape}.h5",
                                 lambda target: make(num_patients, GENERATOR_SEED)(target))
        self.test_path = test_path
        self.own_test = None if path is not None else lambda: self.resolve(  # generated apart, another seed
            None, cache_dir, f"seqset2_test_{test_patients}_{shape}.h5",
            lambda target: make(test_patients, GENERATOR_SEED + 1)(target))
        n = patients(self.path)
        self.num_patients = n
        self.split = self.split_at(n)
        if layout == "sets":
            from trainforge.data.h5 import passthrough

            self.collate_fn = passthrough  # SetSeqDataset.__getitems__ builds whole batches

    def _dataset(self, start: int, stop: int, path=None):
        path, shared = path or self.path, self.shared and path is None
        if self.layout == "sets":
            return SetSeqDataset(path, start, stop, self.preload, self.max_sequence_length, shared, self.max_sets)
        return SeqDataset(path, start, stop, self.preload, self.max_sequence_length, shared)

    def file_set(self, path):
        return self._dataset(0, patients(path), path)

    def own_test_set(self):
        """The embedded set's: ``test_patients`` generated with another seed (train and val
        stay as they were); a file of your own has none (``test_path``)."""
        return self.file_set(self.own_test()) if self.own_test else None

    def train_set(self):
        return self._dataset(0, self.split)

    def val_set(self):
        return self._dataset(self.split, self.num_patients)

    def metrics(self):
        if self.layout == "sets":
            from trainforge.metrics.binary import BinaryMetrics

            return BinaryMetrics()
        return AccuracyMetric()

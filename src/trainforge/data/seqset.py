"""``data=seqset``: synthetic patient-event sequences stored as ragged HDF5 arrays.

Per event: ``var_id`` (int32), ``value`` (float32), ``minute`` (float32, increasing within
a patient) and ``set_id`` (int32: events measured together share one); all events of all
patients are concatenated in flat arrays, and patient ``i`` owns events
``offsets[i]:offsets[i+1]``. Per patient: ``label`` (float32, 0/1). Generated
deterministically on first use, like the glint set.

Batches are padded to their own longest sequence (:func:`pad_collate`);
``max_sequence_length`` truncates longer sequences keeping the **most recent** events
(the last ones), which is what a prediction at the end of a stay can use.
"""
from __future__ import annotations

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from trainforge.data.h5 import atomic_h5, check_h5
from trainforge.data.spec import DataSpec
from trainforge.errors import DataError
from trainforge.metrics import AccuracyMetric

FIELDS = ("var_id", "value", "minute", "set_id")
DTYPES = {"var_id": np.int64, "value": np.float32, "minute": np.float32, "set_id": np.int64}
GENERATOR_SEED = 20261127


def make_seqset(num_patients: int, num_variables: int, min_len: int, max_len: int, seed: int = GENERATOR_SEED):
    """Ragged event arrays and labels. The label depends on a weighted sum of values by
    variable (a few variables matter), so a set/sequence model can learn it."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, num_patients)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    var_id = rng.integers(0, num_variables, total).astype(np.int32)
    value = rng.standard_normal(total).astype(np.float32)
    weight = np.zeros(num_variables, np.float32)
    weight[: max(2, num_variables // 4)] = rng.choice([-1.0, 1.0], max(2, num_variables // 4))
    gaps = rng.exponential(30.0, total).astype(np.float32)
    new_set = rng.random(total) < 0.4
    minute = np.empty(total, np.float32)
    set_id = np.empty(total, np.int32)
    score = np.empty(num_patients, np.float32)
    for i in range(num_patients):
        a, b = offsets[i], offsets[i + 1]
        minute[a:b] = np.cumsum(gaps[a:b] * new_set[a:b])
        set_id[a:b] = np.cumsum(new_set[a:b]) - new_set[a]
        score[i] = (weight[var_id[a:b]] * value[a:b]).sum() / np.sqrt(b - a)
    label = (score > np.median(score)).astype(np.float32)
    return {"var_id": var_id, "value": value, "minute": minute, "set_id": set_id, "offsets": offsets, "label": label}


class SeqDataset(Dataset):
    """Patients ``start..stop`` as dicts of 1-D tensors (one entry per event) and a label.

    The HDF5 file is opened lazily per process; with ``preload`` the flat arrays are read
    into memory once. Sequences longer than ``max_len`` keep their last ``max_len`` events.
    """

    def __init__(self, path, start: int, stop: int, preload: bool, max_len=None, shared: bool = False):
        self.path, self.start, self.stop, self.max_len, self.shared = str(path), start, stop, max_len, shared
        with h5py.File(self.path, "r") as f:
            self.offsets = np.asarray(f["offsets"][start:stop + 1], dtype=np.int64)
            self.labels = torch.from_numpy(np.asarray(f["label"][start:stop], dtype=np.float32))
            a, b = self.offsets[0], self.offsets[-1]
            self._arrays = {k: np.asarray(f[k][a:b], dtype=DTYPES[k]) for k in FIELDS} if preload and not shared \
                else None
        self._file = None
        self._memory()

    def _memory(self):
        """The in-memory event arrays of this split (preloaded or shared), or None."""
        if self._arrays is None and self.shared:
            from trainforge.data.shm import shared_arrays

            arrays = shared_arrays(self.path, FIELDS, [DTYPES[k] for k in FIELDS])
            self._arrays = {k: arrays[k][self.offsets[0]:self.offsets[-1]] for k in FIELDS}
        return self._arrays

    def __len__(self) -> int:
        return self.stop - self.start

    def lengths(self) -> np.ndarray:
        """Sequence lengths after truncation (for length bucketing)."""
        n = np.diff(self.offsets)
        return np.minimum(n, self.max_len) if self.max_len else n

    def __getitem__(self, i: int):
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.max_len:
            a = max(a, b - self.max_len)  # keep the most recent events
        if self._memory() is not None:
            base = int(self.offsets[0])
            events = {k: torch.from_numpy(np.array(self._arrays[k][a - base:b - base])) for k in FIELDS}
        else:
            if self._file is None:
                self._file = h5py.File(self.path, "r")
            events = {k: torch.from_numpy(np.asarray(self._file[k][a:b], dtype=DTYPES[k])) for k in FIELDS}
        return events, self.labels[i]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        if self.shared:
            state["_arrays"] = None
        return state


def pad_collate(samples):
    """Pad a batch to its longest sequence: ({field: (B, T)}, padding_mask (B, T) bool with
    True at padding) plus labels (B,). Padded positions hold 0."""
    longest = max(len(events["var_id"]) for events, _ in samples)
    batch = {}
    for k in FIELDS:
        out = torch.zeros(len(samples), longest, dtype=samples[0][0][k].dtype)
        for row, (events, _) in enumerate(samples):
            out[row, : len(events[k])] = events[k]
        batch[k] = out
    lengths = torch.tensor([len(events["var_id"]) for events, _ in samples])
    batch["padding_mask"] = torch.arange(longest)[None, :] >= lengths[:, None]
    return batch, torch.stack([label for _, label in samples])


class SeqSetData(DataSpec):
    """Train/val sequence datasets, padding collate, optional length bucketing, accuracy."""

    collate_fn = staticmethod(pad_collate)

    def __init__(self, path, cache_dir, batch_size, num_workers=0, pin_memory=False, preload=True, shuffle=True,
                 num_patients=2000, num_variables=16, min_length=8, max_length=128, max_sequence_length=None,
                 val_fraction=0.2, bucket=False, shared_memory=False, on_device=False):
        super().__init__(batch_size, num_workers, pin_memory, preload, shuffle, shared_memory, val_fraction, on_device)
        if max_sequence_length is not None and max_sequence_length < 1:
            raise DataError(f"data.max_sequence_length={max_sequence_length}: must be >= 1 (or null)")
        self.max_sequence_length, self.bucket = max_sequence_length, bucket

        def make(target):
            arrays = make_seqset(num_patients, num_variables, min_length, max_length)
            atomic_h5(target, lambda f: [f.create_dataset(k, data=v) for k, v in arrays.items()])

        name = f"seqset_{num_patients}_{num_variables}_{min_length}_{max_length}.h5"
        self.path = self.resolve(path, cache_dir, name, make)
        n = check_h5(self.path, ["label"], {"label": ()})
        events = check_h5(self.path, list(FIELDS), {k: () for k in FIELDS})
        with h5py.File(self.path, "r") as f:
            offsets = f["offsets"][:] if "offsets" in f else None
        if offsets is None or offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != events \
                or np.any(np.diff(offsets) < 0):
            raise DataError(f"{self.path}: 'offsets' must be ({n + 1},) increasing from 0 to {events} "
                            f"(the number of events)")
        self.num_patients = n
        self.split = self.split_at(n)

    def train_set(self):
        return SeqDataset(self.path, 0, self.split, self.preload, self.max_sequence_length, self.shared)

    def val_set(self):
        return SeqDataset(self.path, self.split, self.num_patients, self.preload, self.max_sequence_length,
                          self.shared)

    def metrics(self):
        return AccuracyMetric()

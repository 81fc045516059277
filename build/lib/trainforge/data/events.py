"""The sequence-set file and its flat event batches (``data=seqset layout=events``):
synthetic patient-event sequences stored as ragged HDF5 arrays.

Per event: ``var_id`` (int32), ``value`` (float32, raw units), ``minute`` (float32,
increasing within a patient) and ``set_id`` (int32: events measured together share one,
consecutive within a patient); all events of all patients are concatenated in flat arrays,
and patient ``i`` owns events ``offsets[i]:offsets[i+1]``. Per patient: ``label`` (float32,
0/1). Per variable: ``var_mean``/``var_std`` (raw units; values are normalised with them
on reading, a missing or zero std is a one-line error) and ``var_embedding`` (V, E).
Generated deterministically on first use, like the glint set.

``layout=events`` (this module's ``SeqDataset``) gives flat padded batches; ``layout=sets`` gives
[batch, sets, events] batches (:mod:`trainforge.data.sets`).

Batches are padded to their own longest sequence (:func:`pad_collate`);
``max_sequence_length`` truncates longer sequences keeping the **most recent** events
(the last ones), which is what a prediction at the end of a stay can use.
"""
from __future__ import annotations

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from trainforge.errors import DataError

FIELDS = ("var_id", "value", "minute", "set_id")
DTYPES = {"var_id": np.int64, "value": np.float32, "minute": np.float32, "set_id": np.int64}
STATS = ("var_mean", "var_std")  # per variable, in raw units: values are normalised with them
GENERATOR_SEED = 20261127


def make_seqset(num_patients: int, num_variables: int, min_len: int, max_len: int, seed: int = GENERATOR_SEED,
                mean_set_size: float = 4.0, embed_dim: int = 32, prevalence: float = 0.3):
    """Ragged event arrays, per-variable statistics and an embedding table, and labels.

    Each patient is a run of sets (events measured together: one ``set_id`` and one
    ``minute``; about ``mean_set_size`` events each). A hidden severity
    ``s(t) = s0 + slope * (t - 1/2)`` (t: time as a fraction of the stay) drives the values
    of half of the variables (loading +-1, plus noise); the slope depends on the label
    (up for 1, down for 0) while the level ``s0`` is wide, so a single value says little
    and the label needs the trend over the sequence. Values are stored in raw units
    (``value = var_mean + var_std * normalised``); ``var_embedding`` (V, ``embed_dim``) is a
    fixed random table standing in for text embeddings of the variable names."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, num_patients)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    patient = np.repeat(np.arange(num_patients), lengths)
    first = np.zeros(total, bool)
    first[offsets[:-1]] = True
    new_set = first | (rng.random(total) < 1.0 / mean_set_size)
    sets = np.cumsum(new_set)  # 1-based global set number
    set_id = (sets - sets[offsets[:-1]][patient]).astype(np.int32)
    gaps = np.where(new_set & ~first, rng.exponential(120.0, total), 0.0)
    clock = np.cumsum(gaps)
    minute = (clock - clock[offsets[:-1]][patient]).astype(np.float32)
    span = np.maximum(minute[offsets[1:] - 1], 1.0)
    t = minute / span[patient]
    label = (rng.random(num_patients) < prevalence).astype(np.float32)
    slope = np.where(label > 0, 2.0, -2.0) + 0.5 * rng.standard_normal(num_patients)
    level = 1.2 * rng.standard_normal(num_patients)
    severity = level[patient] + slope[patient] * (t - 0.5)
    var_id = rng.integers(0, num_variables, total).astype(np.int32)
    loading = np.zeros(num_variables, np.float32)
    half = max(1, num_variables // 2)
    loading[:half] = rng.choice([-1.0, 1.0], half)
    normalised = loading[var_id] * severity + 0.4 * rng.standard_normal(total)
    var_mean = (10.0 ** rng.uniform(0, 2, num_variables)).astype(np.float32)
    var_std = (var_mean * rng.uniform(0.05, 0.3, num_variables)).astype(np.float32)
    value = (var_mean[var_id] + var_std[var_id] * normalised).astype(np.float32)
    embedding = (rng.standard_normal((num_variables, embed_dim)) / np.sqrt(embed_dim)).astype(np.float32)
    return {"var_id": var_id, "value": value, "minute": minute, "set_id": set_id, "offsets": offsets,
            "label": label, "var_mean": var_mean, "var_std": var_std, "var_embedding": embedding}


def read_stats(path) -> tuple:
    """(var_mean, var_std) of a seqset file as float32 tensors; DataError naming the file
    and the variable when one is missing, not finite or has a std <= 0."""
    with h5py.File(path, "r") as f:
        missing = [k for k in STATS if k not in f]
        if missing:
            raise DataError(f"{path}: no dataset {missing[0]!r}: seqset files need per-variable 'var_mean' and "
                            "'var_std' (raw units, one entry per variable) to normalise values")
        mean, std = (np.asarray(f[k][...], dtype=np.float32) for k in STATS)
        top = int(f["var_id"][...].max(initial=-1)) if f["var_id"].shape[0] else -1
    if mean.ndim != 1 or mean.shape != std.shape:
        raise DataError(f"{path}: 'var_mean' {mean.shape} and 'var_std' {std.shape} must be (num_variables,)")
    if top >= len(std):
        raise DataError(f"{path}: 'var_id' reaches {top} but 'var_std' covers {len(std)} variables")
    bad = np.flatnonzero(~np.isfinite(std) | (std <= 0) | ~np.isfinite(mean))
    if len(bad):
        raise DataError(f"{path}: variable {int(bad[0])} has var_mean={mean[bad[0]]}, var_std={std[bad[0]]}: "
                        "every std must be finite and > 0")
    return torch.from_numpy(mean), torch.from_numpy(std)


class SeqDataset(Dataset):
    """Patients ``start..stop`` as dicts of 1-D tensors (one entry per event) and a label.

    The HDF5 file is opened lazily per process; with ``preload`` the flat arrays are read
    into memory once. Sequences longer than ``max_len`` keep their last ``max_len`` events.
    """

    def __init__(self, path, start: int, stop: int, preload: bool, max_len=None, shared: bool = False):
        self.path, self.start, self.stop, self.max_len, self.shared = str(path), start, stop, max_len, shared
        self.var_mean, self.var_std = read_stats(self.path)
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
        events["value"] = self.normalise(events["var_id"], events["value"])
        return events, self.labels[i]

    def normalise(self, var_id: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Raw values to z-scores with the file's per-variable mean and std."""
        return (value - self.var_mean[var_id]) / self.var_std[var_id]

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

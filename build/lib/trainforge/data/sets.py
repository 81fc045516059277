"""``data=seqset layout=sets``: patients as sequences of sets of events, batched as
[batch, sets, events] tensors by vectorised indexing (no Python loop over patients or sets).

A batch is ``(inputs, label)`` with ``inputs``:

- ``var_id`` (B, S, N) long, ``value`` (B, S, N) float (normalised per variable);
- ``event_mask`` (B, S, N) bool and ``set_mask`` (B, S) bool, **True = padding**;
- ``minute`` (B, S): the minute of each set (of its first event);
- ``set_index`` (L,): flat indices ``b * S + s`` of the L real sets (a model can gather
  them without a device-to-host sync);
- ``var_embedding`` (V, E): the file's fixed variable-embedding table, once per batch.

S is the batch's largest number of sets, N its largest set. Sets are left-aligned (set 0
of every patient is real), and every real set holds at least one event, so a model that
masks with these never meets a row with nothing to attend to. Padded positions hold 0.
"""
from __future__ import annotations

import h5py
import numpy as np
import torch

from trainforge.data.events import DTYPES, FIELDS, SeqDataset
from trainforge.errors import DataError


def set_starts(set_id: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flags (one per event) that are True where a new set begins: at each patient's
    first event and wherever ``set_id`` changes. ``offsets`` are relative to ``set_id``."""
    new = np.ones(len(set_id), bool)
    new[1:] = set_id[1:] != set_id[:-1]
    new[offsets[:-1][offsets[:-1] < len(set_id)]] = True
    return new


def kept_starts(new: np.ndarray, offsets: np.ndarray, max_sets, max_len) -> np.ndarray:
    """First event each patient keeps: its last ``max_sets`` sets, then at most its last
    ``max_len`` events (which may cut the first kept set short). Both keep the recent end."""
    begin, end = offsets[:-1].copy(), offsets[1:]
    if max_sets:
        starts = np.flatnonzero(new)  # event index of every set start
        count = np.add.reduceat(new.astype(np.int64), begin) if len(new) else np.zeros(len(begin), np.int64)
        first = np.concatenate([[0], np.cumsum(count)[:-1]])  # index into starts of each patient's set 0
        begin = starts[first + np.maximum(count - max_sets, 0)]
    if max_len:
        begin = np.maximum(begin, end - max_len)
    return begin


def set_batch(arrays: dict, lengths: torch.Tensor, embedding: torch.Tensor) -> dict:
    """The [B, S, N] inputs from the batch's events, concatenated patient after patient
    (``arrays``: flat tensors of FIELDS, ``value`` already normalised; ``lengths``: events
    per patient, each >= 1). Pure tensor indexing: cost independent of Python loops."""
    total, b = int(lengths.sum()), len(lengths)
    patient = torch.repeat_interleave(torch.arange(b), lengths)
    first = torch.zeros(total, dtype=torch.bool)
    first[torch.cumsum(lengths, 0) - lengths] = True
    sid = arrays["set_id"]
    new = first.clone()
    new[1:] |= sid[1:] != sid[:-1]
    set_no = torch.cumsum(new.long(), 0) - 1  # the batch-wide number of each event's set
    start_of = torch.nonzero(new).squeeze(1)  # event index of each set's first event
    patient_first_set = set_no[first]  # set number of each patient's set 0
    s_idx = set_no - patient_first_set[patient]
    e_idx = torch.arange(total) - start_of[set_no]
    n_sets = torch.bincount(patient[start_of], minlength=b)
    s_max, n_max = int(n_sets.max()), int(torch.bincount(set_no).max())
    out = {"event_mask": torch.ones(b, s_max, n_max, dtype=torch.bool)}
    out["event_mask"][patient, s_idx, e_idx] = False
    for key in ("var_id", "value"):
        out[key] = torch.zeros(b, s_max, n_max, dtype=arrays[key].dtype)
        out[key][patient, s_idx, e_idx] = arrays[key]
    out["set_mask"] = torch.arange(s_max)[None, :] >= n_sets[:, None]
    out["set_index"] = torch.nonzero(~out["set_mask"].flatten()).squeeze(1)  # so the model needs no sync
    out["minute"] = torch.zeros(b, s_max, dtype=torch.float32)
    out["minute"][patient[start_of], s_idx[start_of]] = arrays["minute"][start_of]
    out["var_embedding"] = embedding
    return out


class SetSeqDataset(SeqDataset):
    """Patients ``start..stop`` as set-structured batches; ``__getitems__`` returns a whole
    batch (use ``collate_fn=passthrough``). ``max_sets`` keeps each patient's last sets,
    ``max_len`` its last events (applied after ``max_sets``)."""

    def __init__(self, path, start: int, stop: int, preload: bool, max_len=None, shared: bool = False,
                 max_sets=None):
        super().__init__(path, start, stop, preload, max_len, shared)
        self.max_sets = max_sets
        with h5py.File(self.path, "r") as f:
            if "var_embedding" not in f or f["var_embedding"].ndim != 2 \
                    or f["var_embedding"].shape[0] != len(self.var_std):
                raise DataError(f"{self.path}: layout=sets needs 'var_embedding' of shape (num_variables="
                                f"{len(self.var_std)}, E): the fixed embedding of each variable")
            self.embedding = torch.from_numpy(np.asarray(f["var_embedding"][...], dtype=np.float32))
            a, b = self.offsets[0], self.offsets[-1]
            set_id = np.asarray(f["set_id"][a:b], dtype=np.int64)
        rel = self.offsets - self.offsets[0]
        if np.any(np.diff(rel) < 1):
            raise DataError(f"{self.path}: patient {self.start + int(np.argmin(np.diff(rel)))} has no events; "
                            "layout=sets needs at least one event per patient")
        self.begin = kept_starts(set_starts(set_id, rel), rel, max_sets, max_len) + self.offsets[0]

    def lengths(self) -> np.ndarray:
        return self.offsets[1:] - self.begin

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        begin, end = torch.from_numpy(self.begin[idx.numpy()]), torch.from_numpy(self.offsets[1:][idx.numpy()])
        lengths = end - begin
        if self._memory() is not None:
            # every event of the batch, patient after patient, in one gather per field
            starts = torch.cumsum(lengths, 0) - lengths
            rows = torch.repeat_interleave(begin - starts, lengths) + torch.arange(int(lengths.sum()))
            rows = (rows - int(self.offsets[0])).numpy()
            events = {k: torch.from_numpy(np.asarray(self._arrays[k][rows], dtype=DTYPES[k])) for k in FIELDS}
        else:
            if self._file is None:
                self._file = h5py.File(self.path, "r")
            events = {k: torch.from_numpy(np.concatenate([np.asarray(self._file[k][a:b], dtype=DTYPES[k])
                                                          for a, b in zip(begin.tolist(), end.tolist())]))
                      for k in FIELDS}
        events["value"] = self.normalise(events["var_id"], events["value"])
        return set_batch(events, lengths, self.embedding), self.labels[idx]

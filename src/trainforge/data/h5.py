"""HDF5-backed datasets: lazily opened per process, optionally preloaded into memory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from trainforge.errors import DataError


def check_h5(path: str | os.PathLike, keys: Sequence[str], sample_shapes: dict | None = None) -> int:
    """Check that ``path`` is a readable HDF5 file holding ``keys`` with equal first dims.

    Returns the number of samples. ``sample_shapes`` maps a key to the expected shape of one
    sample. Raises DataError naming the file, the key and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"data.path={path}: not a readable HDF5 file ({e.__class__.__name__})") from e
    with f:
        lengths = {}
        for key in keys:
            if key not in f:
                raise DataError(f"{path}: no dataset '{key}' (has: {', '.join(sorted(f.keys()))})")
            shape = f[key].shape
            want = (sample_shapes or {}).get(key)
            if want is not None and tuple(shape[1:]) != tuple(want):
                raise DataError(f"{path}: '{key}' has sample shape {tuple(shape[1:])}, expected {tuple(want)}")
            lengths[key] = shape[0]
        if len(set(lengths.values())) > 1:
            raise DataError(f"{path}: datasets have different lengths {lengths}")
    return next(iter(lengths.values()))


class H5Dataset(Dataset):
    """Samples ``start..stop`` of the arrays ``keys`` of one HDF5 file, as float tensors.

    The file is opened on first access in whichever process reads it (DataLoader workers
    each open their own handle); no h5py handle is ever pickled. With ``preload`` the
    arrays are read once, at construction, into memory.
    """

    def __init__(self, path, keys: Sequence[str], start: int, stop: int, preload: bool = False):
        self.path, self.keys, self.start, self.stop = str(path), tuple(keys), start, stop
        self._file = None
        self._arrays = None
        if preload:
            with h5py.File(self.path, "r") as f:
                self._arrays = [torch.from_numpy(np.asarray(f[k][start:stop], dtype=np.float32))
                                for k in self.keys]

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        if self._arrays is not None:
            return tuple(a[i] for a in self._arrays)
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        j = self.start + i
        return tuple(torch.from_numpy(np.asarray(self._file[k][j], dtype=np.float32)) for k in self.keys)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # each process opens its own handle
        return state


def atomic_h5(path: Path, write) -> None:
    """Create ``path`` by calling ``write(h5py.File)`` on a temp file, then renaming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        write(f)
    os.replace(tmp, path)

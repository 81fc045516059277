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


OPENED: list = []  # every HDF5 file a data option checked in this process, in order (provenance hashes them)


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
    OPENED.append(str(path.resolve()))
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


def passthrough(batch):
    """collate_fn for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch


class H5Dataset(Dataset):
    """Samples ``start..stop`` of the arrays ``keys`` of one HDF5 file, as float tensors.

    The file is opened on first access in whichever process reads it (DataLoader workers
    each open their own handle); no h5py handle is ever pickled. With ``preload`` the
    arrays are read once, at construction, into memory. ``__getitems__`` fetches a whole
    batch by one indexing operation per array (use ``collate_fn=passthrough``).
    """

    def __init__(self, path, keys: Sequence[str], start: int, stop: int, preload: bool = False, dtypes=None,
                 shared: bool = False):
        self.path, self.keys, self.start, self.stop = str(path), tuple(keys), start, stop
        self.dtypes = [np.dtype((dtypes or {}).get(k, np.float32)) for k in self.keys]
        self.shared = shared
        self._file = None
        self._arrays = None
        if shared:
            self._map_shared()
        elif preload:
            with h5py.File(self.path, "r") as f:
                self._arrays = [torch.from_numpy(np.asarray(f[k][start:stop], dtype=d))
                                for k, d in zip(self.keys, self.dtypes)]

    def __len__(self) -> int:
        return self.stop - self.start

    def _map_shared(self) -> None:
        from trainforge.data.shm import as_tensor, shared_arrays

        arrays = shared_arrays(self.path, self.keys, self.dtypes)
        self._arrays = [as_tensor(arrays[k][self.start:self.stop]) for k in self.keys]

    def _memory(self):
        """The in-memory arrays (preloaded or shared), or None to read the file."""
        if self._arrays is None and self.shared:
            self._map_shared()  # a spawned worker maps the shared copy by name
        return self._arrays

    def arrays(self):
        """The in-memory arrays (preloaded or shared), or None when the file is read lazily."""
        return self._memory()

    def _h5(self):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def __getitem__(self, i: int):
        if self._memory() is not None:
            return tuple(a[i] for a in self._arrays)
        j = self.start + i
        return tuple(torch.from_numpy(np.asarray(self._h5()[k][j], dtype=d)) for k, d in zip(self.keys, self.dtypes))

    def __getitems__(self, indices):
        """The batch ``indices`` as a tuple of stacked tensors, one read per array."""
        if self._memory() is not None:
            idx = torch.as_tensor(indices, dtype=torch.long)
            return tuple(a[idx] for a in self._arrays)
        # h5py reads increasing, unique indices: read those once, then restore the order
        rows, inverse = np.unique(np.asarray(indices) + self.start, return_inverse=True)
        return tuple(torch.from_numpy(np.asarray(self._h5()[k][rows], dtype=d)[inverse])
                     for k, d in zip(self.keys, self.dtypes))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # each process opens its own handle
        if self.shared:
            state["_arrays"] = None  # and maps the shared copy itself
        return state


def atomic_h5(path: Path, write) -> None:
    """Create ``path`` by calling ``write(h5py.File)`` on a temp file, then renaming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        write(f)
    os.replace(tmp, path)

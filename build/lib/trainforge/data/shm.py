"""One copy of a data set's arrays in shared memory for every process on the machine.

``data.shared_memory=true``: the arrays of an HDF5 file are written once, as ``.npy``
files, into ``/dev/shm/trainforge-<key>/`` (``$TRAINFORGE_SHM_DIR`` overrides the
folder), where ``<key>`` hashes the file's content and the keys read. Every process that
asks for the same data (concurrent sweep jobs, DDP ranks, DataLoader workers) maps those
files, so the pages exist once in RAM.

Users are counted with ``flock`` on ``trainforge-<key>.lock``: each holds a shared lock
for as long as it maps the data; when the copy is not ``READY`` a process builds it under
the exclusive lock (so only when nobody maps it) and writes ``READY`` last. When a user is done it tries for the exclusive lock without
waiting: it gets it only if it is the last user, and then deletes the files. The kernel
drops the lock of a process that dies, so a crashed user blocks nobody: the next run
reuses complete files (``READY`` present) or rebuilds incomplete ones.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import warnings
import weakref
from pathlib import Path

import h5py
import numpy as np
import torch

_OPEN: dict = {}  # this process's mappings, by key


def shm_root() -> Path:
    return Path(os.environ.get("TRAINFORGE_SHM_DIR", "/dev/shm"))


def content_key(path, keys, dtypes) -> str:
    """blake2b of the file's bytes, the keys and their dtypes."""
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    digest.update(repr([(k, np.dtype(d).str) for k, d in zip(keys, dtypes)]).encode())
    return digest.hexdigest()


def _lock(lock_path: Path, mode: int) -> int:
    """An fd holding ``mode`` (LOCK_SH/LOCK_EX) on the lock file still at ``lock_path``."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, mode)
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the last user deleted it meanwhile: take the new one


def _release(fd: int, folder: Path, lock_path: Path, owner: int) -> None:
    if os.getpid() != owner:  # forked workers share the parent's lock: only the owner releases
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # others still map the data
        os.close(fd)
        return
    shutil.rmtree(folder, ignore_errors=True)
    lock_path.unlink(missing_ok=True)
    os.close(fd)


class SharedArrays:
    """``arrays[key]``: read-only numpy views of the file's datasets, in shared memory."""

    def __init__(self, path, keys, dtypes):
        self.key = content_key(path, keys, dtypes)
        root = shm_root()
        root.mkdir(parents=True, exist_ok=True)
        self.folder, lock_path = root / f"trainforge-{self.key}", root / f"trainforge-{self.key}.lock"
        fd = _lock(lock_path, fcntl.LOCK_SH)  # users share; a copy that is READY is never rebuilt
        try:
            if not (self.folder / "READY").exists():  # nobody maps an unfinished copy: build it alone
                os.close(fd)
                fd = _lock(lock_path, fcntl.LOCK_EX)
                if not (self.folder / "READY").exists():
                    self._build(path, keys, dtypes)
            self.arrays = {k: np.load(self.folder / f"{i}.npy", mmap_mode="r") for i, k in enumerate(keys)}
            fcntl.flock(fd, fcntl.LOCK_SH)  # mapped: from now on only counted as a user
        except BaseException:
            os.close(fd)
            raise
        self._finalizer = weakref.finalize(self, _release, fd, self.folder, lock_path, os.getpid())

    def _build(self, path, keys, dtypes) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # an incomplete copy from a crashed creator
        self.folder.mkdir()
        with h5py.File(path, "r") as f:
            for i, (k, d) in enumerate(zip(keys, dtypes)):
                tmp = self.folder / f".{i}.npy.tmp"
                with open(tmp, "wb") as out:
                    np.save(out, np.asarray(f[k][...], dtype=d))
                os.replace(tmp, self.folder / f"{i}.npy")
        (self.folder / "READY").touch()

    def close(self) -> None:
        self.arrays = {}
        self._finalizer()


def shared_arrays(path, keys, dtypes) -> dict:
    """The process-wide mapping of (path, keys, dtypes); opened once, released at exit."""
    ident = (str(Path(path).resolve()), tuple(keys), tuple(np.dtype(d).str for d in dtypes))
    if ident not in _OPEN:
        _OPEN[ident] = SharedArrays(path, keys, dtypes)
    return _OPEN[ident].arrays


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only shared mapping (never written: no copy is made)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)

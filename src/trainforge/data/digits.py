"""``data=digits``: the real handwritten digits (1,797 8x8 images) that scikit-learn ships
inside its package, converted once to HDF5 with a stratified train/val split.

Layout: ``train/images`` (N, 1, 8, 8) float32 in [0, 1], ``train/labels`` (N,) int64, and
the same under ``val/``. The split takes ``round(val_fraction * n_c)`` images of each class
c (seeded), so both parts keep the class balance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainforge.data.h5 import H5Dataset, atomic_h5, check_h5, passthrough
from trainforge.data.spec import DataSpec
from trainforge.errors import DataError
from trainforge.metrics import AccuracyMetric


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int, test_fraction: float = 0.0):
    """(train_idx, val_idx) or, with ``test_fraction``, (train_idx, val_idx, test_idx): per
    class, a seeded ``round(test_fraction * n_c)`` go to test, then ``round(val_fraction * n_c)``
    to val (without a test part the split is the one it always was)."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        t = int(round(test_fraction * len(idx)))
        k = int(round(val_fraction * len(idx)))
        test.append(idx[:t])
        val.append(idx[t:t + k])
        train.append(idx[t + k:])
    parts = [np.sort(np.concatenate(p)) for p in (train, val, test)]
    return tuple(parts) if test_fraction else tuple(parts[:2])


def write_digits(path: Path, val_fraction: float, seed: int, test_fraction: float = 0.0) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data=digits needs scikit-learn for its bundled digits: pip install scikit-learn") from None
    digits = load_digits()
    images = (digits.images[:, None] / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    parts = dict(zip(("train", "val", "test"), stratified_split(labels, val_fraction, seed, test_fraction)))

    def write(f):
        for part, idx in parts.items():
            f.create_dataset(f"{part}/images", data=images[idx])
            f.create_dataset(f"{part}/labels", data=labels[idx])

    atomic_h5(path, write)


class DigitsData(DataSpec):
    """Train/val datasets, loader settings and accuracy for the digits experiment."""

    collate_fn = staticmethod(passthrough)
    keys = ("images", "labels")

    def __init__(self, path, cache_dir, batch_size, num_workers=0, pin_memory=False, preload=True,
                 shuffle=True, val_fraction=0.2, split_seed=0, shared_memory=False, on_device=False, test_fraction=0.0,
                 test_path=None):
        super().__init__(batch_size, num_workers, pin_memory, preload, shuffle, shared_memory, val_fraction, on_device)
        test = f"_test{test_fraction:g}" if test_fraction else ""  # opt-in: without it, the file of old runs
        self.path = self.resolve(path, cache_dir, f"digits_val{val_fraction:g}{test}_seed{split_seed}.h5",
                                 lambda target: write_digits(target, val_fraction, split_seed, test_fraction))
        self.test_path, self.test_fraction = test_path, test_fraction
        self.sizes = {}
        for part in ("train", "val"):
            keys = [f"{part}/{k}" for k in self.keys]
            self.sizes[part] = check_h5(self.path, keys, {keys[0]: (1, 8, 8), keys[1]: ()})

    def _part(self, part):
        keys = [f"{part}/{k}" for k in self.keys]
        return H5Dataset(self.path, keys, 0, self.sizes[part], self.preload, dtypes={keys[1]: np.int64},
                         shared=self.shared)

    def file_set(self, path):
        """A file with ``test/images`` and ``test/labels`` (this option's layout)."""
        keys = [f"test/{k}" for k in self.keys]
        n = check_h5(path, keys, {keys[0]: (1, 8, 8), keys[1]: ()})
        return H5Dataset(path, keys, 0, n, self.preload, dtypes={keys[1]: np.int64})

    def own_test_set(self):
        """With ``data.test_fraction`` > 0: the stratified test part (none otherwise: digits
        has no room for one without changing the split of runs made before)."""
        return self.file_set(self.path) if self.test_fraction else None

    def train_set(self):
        return self._part("train")

    def val_set(self):
        return self._part("val")

    def metrics(self):
        return AccuracyMetric()

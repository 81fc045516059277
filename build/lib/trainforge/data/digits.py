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


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int):
    """(train_idx, val_idx): per class, a seeded ``round(val_fraction * n_c)`` go to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(val_fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def write_digits(path: Path, val_fraction: float, seed: int) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data=digits needs scikit-learn for its bundled digits: pip install scikit-learn") from None
    digits = load_digits()
    images = (digits.images[:, None] / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    train, val = stratified_split(labels, val_fraction, seed)

    def write(f):
        for part, idx in (("train", train), ("val", val)):
            f.create_dataset(f"{part}/images", data=images[idx])
            f.create_dataset(f"{part}/labels", data=labels[idx])

    atomic_h5(path, write)


class DigitsData(DataSpec):
    """Train/val datasets, loader settings and accuracy for the digits experiment."""

    collate_fn = staticmethod(passthrough)
    keys = ("images", "labels")

    def __init__(self, path, cache_dir, batch_size, num_workers=0, pin_memory=False, preload=True,
                 shuffle=True, val_fraction=0.2, split_seed=0, shared_memory=False, on_device=False):
        super().__init__(batch_size, num_workers, pin_memory, preload, shuffle, shared_memory, val_fraction, on_device)
        self.path = self.resolve(path, cache_dir, f"digits_val{val_fraction:g}_seed{split_seed}.h5",
                                 lambda target: write_digits(target, val_fraction, split_seed))
        self.sizes = {}
        for part in ("train", "val"):
            keys = [f"{part}/{k}" for k in self.keys]
            self.sizes[part] = check_h5(self.path, keys, {keys[0]: (1, 8, 8), keys[1]: ()})

    def _part(self, part):
        keys = [f"{part}/{k}" for k in self.keys]
        return H5Dataset(self.path, keys, 0, self.sizes[part], self.preload, dtypes={keys[1]: np.int64},
                         shared=self.shared)

    def train_set(self):
        return self._part("train")

    def val_set(self):
        return self._part("val")

    def metrics(self):
        return AccuracyMetric()

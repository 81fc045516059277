"""The default experiment's data: synthetic "glint" segmentation (bright blobs on noise).

Generated deterministically (fixed seed) into an HDF5 file on first use, so the default
experiment needs no download: ``images`` (N, 1, S, S) float32 and ``masks`` (N, 1, S, S)
uint8, the first ``(1 - val_fraction) * N`` samples for training, the rest for validation.
"""
from __future__ import annotations

import numpy as np

from trainforge.data.h5 import H5Dataset, atomic_h5, check_h5, passthrough
from trainforge.data.spec import DataSpec
from trainforge.metrics import SegmentationMetrics

GENERATOR_SEED = 20261126
MAX_BLOBS = 4


def make_glint(num_samples: int, size: int, seed: int = GENERATOR_SEED):
    """Return (images, masks): noisy backgrounds with 1-4 bright soft-edged blobs each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = (0.15 + 0.08 * rng.standard_normal((num_samples, size, size))).astype(np.float32)
    # a smooth shading gradient so that a global threshold is not enough
    tilt = rng.uniform(-0.15, 0.15, (num_samples, 2)).astype(np.float32)
    images += (tilt[:, :1, None] * (xx / size - 0.5) + tilt[:, 1:, None] * (yy / size - 0.5))
    masks = np.zeros((num_samples, size, size), dtype=bool)
    count = rng.integers(1, MAX_BLOBS + 1, num_samples)
    for b in range(MAX_BLOBS):
        active = (b < count)[:, None, None]
        cy, cx = (rng.uniform(0.1, 0.9, (2, num_samples)) * size).astype(np.float32)
        radius = rng.uniform(0.05, 0.14, num_samples).astype(np.float32) * size
        amp = rng.uniform(0.35, 0.8, num_samples).astype(np.float32)
        d = np.sqrt((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / radius[:, None, None]
        images += active * amp[:, None, None] * np.exp(-d ** 4)
        masks |= active & (d < 1.0)
    return images[:, None], masks[:, None].astype(np.uint8)


class GlintData(DataSpec):
    """Train/val datasets, loader settings and metrics for the glint experiment.

    ``path`` null means the embedded set in ``cache_dir``; an explicit path must exist.
    """

    collate_fn = staticmethod(passthrough)

    def __init__(self, path, cache_dir, batch_size, num_workers=0, pin_memory=False, preload=True,
                 shuffle=True, num_samples=1280, image_size=64, val_fraction=0.2, threshold=0.5,
                 image_key="images", mask_key="masks", shared_memory=False, on_device=False, test_samples=256,
                 test_path=None):
        super().__init__(batch_size, num_workers, pin_memory, preload, shuffle, shared_memory, val_fraction, on_device)
        self.threshold, self.image_size, self.keys = threshold, image_size, (image_key, mask_key)
        self.cache_dir, self.test_samples, self.test_path, self.embedded = cache_dir, test_samples, test_path, path is None
        self.path = self.resolve(path, cache_dir, f"glint_{image_size}_{num_samples}.h5",
                                 lambda target: self._make(target, num_samples, GENERATOR_SEED))
        shape = (1, image_size, image_size)
        self.num_samples = check_h5(self.path, self.keys, {k: shape for k in self.keys})
        self.split = self.split_at(self.num_samples)

    def _make(self, target, n: int, seed: int) -> None:
        images, masks = make_glint(n, self.image_size, seed)
        atomic_h5(target, lambda f: (f.create_dataset("images", data=images), f.create_dataset("masks", data=masks)))

    def file_set(self, path):
        shape = (1, self.image_size, self.image_size)
        n = check_h5(path, self.keys, {k: shape for k in self.keys})
        return H5Dataset(path, self.keys, 0, n, self.preload)

    def own_test_set(self):
        """The embedded set's: ``test_samples`` generated with another seed (none shared with
        train or val, which stay as they were); a file of your own has none (``test_path``)."""
        if not self.embedded:
            return None
        name = f"glint_test_{self.image_size}_{self.test_samples}.h5"
        return self.file_set(self.resolve(None, self.cache_dir, name,
                                          lambda target: self._make(target, self.test_samples, GENERATOR_SEED + 1)))

    def train_set(self):
        return H5Dataset(self.path, self.keys, 0, self.split, self.preload, shared=self.shared)

    def val_set(self):
        return H5Dataset(self.path, self.keys, self.split, self.num_samples, self.preload, shared=self.shared)

    def metrics(self):
        return SegmentationMetrics(self.threshold)

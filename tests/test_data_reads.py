"""Data-layer promises that had no test (issue 14): a batch is one read per array, also
from the file; the shared-memory copy is keyed by the file's content."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from conftest import SMALL, write_h5
from trainforge.run.build import build
from trainforge.data.glint import make_glint
from trainforge.data.shm import SharedArrays


@pytest.fixture
def count_reads(monkeypatch):
    """Counts reads from HDF5 datasets (each still done by h5py)."""
    calls = []
    real = h5py.Dataset.__getitem__

    def counted(self, key):
        calls.append(self.name)
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)
    return calls


@pytest.mark.parametrize("preload", [False, True])
def test_training_loader_reads_each_batch_with_one_read_per_array(compose_cfg, tmp_path, count_reads, preload):
    (tmp_path / "run").mkdir()
    trainer = build(compose_cfg(*SMALL, f"data.preload={preload}"), tmp_path / "run")
    count_reads.clear()  # construction (the preload itself) is not a batch
    batches = list(trainer.train_loader)
    assert len(batches) == trainer.batches_per_epoch == 8
    assert sorted(set(count_reads)) == ([] if preload else ["/images", "/masks"])
    assert len(count_reads) == (0 if preload else 2 * len(batches))  # not one read per sample
    assert [len(b[0]) for b in batches] == [16] * 8


def test_shared_copy_follows_the_file_content(tmp_path, monkeypatch):
    """Same path, same size, same mtime, one pixel changed: a new key, and the new data."""
    monkeypatch.setenv("TRAINFORGE_SHM_DIR", str(tmp_path / "shm"))
    images, masks = make_glint(16, 16)
    path = write_h5(tmp_path / "d.h5", images=images, masks=masks)
    stat = os.stat(path)
    old = SharedArrays(path, ["images", "masks"], [np.float32, np.float32])  # still mapped while the file changes
    with h5py.File(path, "r+") as f:
        f["images"][3, 0, 2, 2] = 42.0
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    new = SharedArrays(path, ["images", "masks"], [np.float32, np.float32])
    assert new.key != old.key and new.folder != old.folder
    assert new.arrays["images"][3, 0, 2, 2] == 42.0 and old.arrays["images"][3, 0, 2, 2] != 42.0
    new.close()
    old.close()
    assert not list((tmp_path / "shm").glob("trainforge-*"))


def test_shared_copy_of_other_keys_or_dtypes_of_one_file_is_another_copy(tmp_path, monkeypatch):
    """One file read for other arrays, or as another dtype: its own key and its own values."""
    monkeypatch.setenv("TRAINFORGE_SHM_DIR", str(tmp_path / "shm"))
    images, masks = make_glint(8, 16)
    path = write_h5(tmp_path / "d.h5", images=images, masks=masks)
    a = SharedArrays(path, ["images"], [np.float32])
    b = SharedArrays(path, ["masks"], [np.float32])
    c = SharedArrays(path, ["images"], [np.float16])
    assert len({a.key, b.key, c.key}) == 3
    assert np.array_equal(a.arrays["images"], images) and np.array_equal(b.arrays["masks"], masks)
    assert c.arrays["images"].dtype == np.float16 and np.array_equal(c.arrays["images"], images.astype(np.float16))
    for shared in (a, b, c):
        shared.close()

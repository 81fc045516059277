"""The base of every ``data=`` option: loader settings, the embedded-file rule, the split."""
from __future__ import annotations

from pathlib import Path

from trainforge.errors import DataError


class DataSpec:
    """Holds what ``build`` needs for the loaders (``batch_size``, ``num_workers``,
    ``pin_memory``, ``shuffle``, ``collate_fn``, ``bucket``) and what the datasets share
    (``preload``, ``shared``, ``val_fraction``, ``on_device``). Subclasses add ``train_set()``,
    ``val_set()`` and ``metrics()``; a data set whose datasets have ``arrays()`` (fixed-shape
    in-memory tensors) supports ``on_device`` (``data/device.py``)."""

    collate_fn = None
    bucket = False
    test_path = None  # an HDF5 file in the option's own format holding the test split

    def __init__(self, batch_size, num_workers, pin_memory, preload, shuffle, shared_memory, val_fraction,
                 on_device=False):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction {val_fraction}: must be between 0 and 1")  # (the door checks it first)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.preload, self.shuffle, self.shared, self.val_fraction = preload, shuffle, shared_memory, val_fraction
        self.on_device = on_device

    @staticmethod
    def resolve(path, cache_dir, name: str, make) -> Path:
        """An explicit ``path`` as given (it must exist: the checks say so); null means the
        embedded file ``cache_dir/name``, written by ``make(path)`` on first use."""
        if path is not None:
            return Path(path).expanduser()
        if not str(cache_dir).strip():
            raise DataError("data.cache_dir='': names no directory (TRAINFORGE_DATA_DIR set but empty?)")
        path = Path(cache_dir).expanduser() / name
        if not path.is_file():
            try:
                make(path)
            except OSError as exc:  # the cache is a file, or not writable: say which key chose it
                raise DataError(f"data.cache_dir={cache_dir}: cannot hold the embedded data set "
                                f"({exc.strerror or exc}: {exc.filename or path}); point data.cache_dir or "
                                "TRAINFORGE_DATA_DIR at a writable directory") from None
        return path

    def test_set(self):
        """The test split: ``test_path`` (a file in this option's format) when set, else the
        option's own (``own_test_set``: generated apart, or carved out when asked), else None.
        Built only when evaluated: training never reads it."""
        if self.test_path is not None:
            return self.file_set(Path(self.test_path).expanduser())
        return self.own_test_set()

    def file_set(self, path: Path):
        """The dataset of a whole file in this option's format (for ``test_path``)."""
        raise DataError(f"data.test_path={path}: this data option reads no test file")

    def own_test_set(self):
        return None

    def split_at(self, n: int) -> int:
        """Index of the first validation sample: the last ``val_fraction`` of ``n`` go to val."""
        split = int(round(n * (1.0 - self.val_fraction)))
        if split < 1 or split >= n:
            raise DataError(f"{self.path}: {n} samples cannot be split with data.val_fraction={self.val_fraction}")
        return split

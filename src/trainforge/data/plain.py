"""Plain PyTorch datasets as a data option: ``data.train`` / ``data.val`` (and ``data.test``)."""
from __future__ import annotations

from trainforge.data.spec import DataSpec
from trainforge.errors import ConfigError


class Datasets(DataSpec):
    """Any ``torch.utils.data.Dataset`` objects (``build`` makes them from their ``_target_``
    nodes) with the loaders' settings. An item, or what ``collate_fn`` makes of a list of
    items, is ``(inputs, target)``. No metrics of its own: give them in ``metrics``."""

    def __init__(self, train, val, test=None, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                 shuffle: bool = True, collate_fn: str | None = None):
        self.train, self.val, self.test = train, val, test
        self.batch_size, self.num_workers, self.pin_memory, self.shuffle = batch_size, num_workers, pin_memory, shuffle
        self.preload = self.shared = self.on_device = False
        self.collate_fn = _function("data.collate_fn", collate_fn) if collate_fn else None
        for key, dataset in (("train", train), ("val", val)):
            if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
                raise ConfigError(f"data.{key}={type(dataset).__name__}: must be a map-style dataset "
                                  "(a torch.utils.data.Dataset with __getitem__ and __len__)")
            if len(dataset) == 0:
                raise ConfigError(f"data.{key}={type(dataset).__name__}: holds no samples")

    def train_set(self):
        return self.train

    def val_set(self):
        return self.val

    def test_set(self):
        return self.test

    def metrics(self):
        return None


def _function(key: str, path: str):
    from trainforge.config.targets import locate

    fn = locate(key, path)
    if not callable(fn):
        raise ConfigError(f"{key}={path}: must name a function (a list of items -> a batch)")
    return fn

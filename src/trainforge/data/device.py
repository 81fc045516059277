"""``data.on_device=true``: the whole (preloaded) data set on the training device.

For data sets that fit in device memory, the fastest loader is no loader: the arrays are
copied to the device once, and each batch is one ``index_select`` per array on the
device, from a permutation uploaded once per epoch. No workers, no host collate, no
host-to-device copy per step.
"""
from __future__ import annotations

import torch

from trainforge.errors import DataError


class DeviceLoader:
    """Iterates batches ``tuple(a[idx] for a in arrays)`` like a ``DataLoader`` over the same
    arrays with the same sampler and batch size (``drop_last=False``): the batches, and so
    the losses, are identical to the host path's.

    ``sampler`` is any sampler of indices (the trainer's ``EpochSampler``, which keeps the
    position of a resumed epoch), or None for the arrays in order (validation).
    ``dataset`` is kept for ``len(loader.dataset)``.
    """

    def __init__(self, arrays, sampler, batch_size: int, device, dataset=None):
        arrays = tuple(arrays)
        if not arrays or len({len(a) for a in arrays}) != 1:
            raise DataError("data.on_device=true: needs arrays of equal length")
        self.arrays = tuple(a.to(device) for a in arrays)
        self.sampler, self.batch_size, self.device = sampler, batch_size, device
        self.dataset = dataset if dataset is not None else self.arrays[0]

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.arrays[0])
        return -(-n // self.batch_size)

    def __iter__(self):
        if self.sampler is None:
            order = torch.arange(len(self.arrays[0]), device=self.device)
        else:  # one host-to-device copy of the epoch's order
            order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device, non_blocking=True)
        for idx in order.split(self.batch_size):
            yield tuple(a.index_select(0, idx) for a in self.arrays)


def device_loaders(data, train_set, val_set, sampler, device, val_part=None):
    """(train, val) DeviceLoaders for a data spec with ``on_device`` (``val_part``: the
    validation indices of this rank, default all); a clear error where the data set cannot
    live on the device."""
    if not (data.preload or data.shared):
        raise DataError("data.on_device=true: needs data.preload=true (or data.shared_memory=true): "
                        "the arrays are copied to the device once, from memory")
    arrays = [getattr(s, "arrays", lambda: None)() for s in (train_set, val_set)]
    if any(a is None for a in arrays):
        raise DataError(f"data.on_device=true: {type(data).__name__} has no fixed-shape arrays "
                        "(its batches are padded per batch); use data.on_device=false")
    return (DeviceLoader(arrays[0], sampler, data.batch_size, device, train_set),
            DeviceLoader(arrays[1], val_part, data.batch_size, device, val_set))

"""Optional observers of training: TensorBoard scalars and peak GPU memory.

Both ride on LoggingHook (its batch-record ``sinks`` and its epoch-record ``extra``), so
they add no host read to the step. ``build`` installs them only when asked for
(``log.tensorboard=true``) or useful (a CUDA device).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from trainforge.engine.logging import flatten
from trainforge.engine.trainer import HookBase
from trainforge.errors import ConfigError
from trainforge.files import TENSORBOARD

GIB = 2 ** 30


class TensorBoardHook(HookBase):
    """Scalars in ``<run_dir>/tensorboard/``: every batch record as ``batch/<name>``
    (loss, components, grad_norm at update boundaries, lr) and every epoch-record column
    as ``epoch/<column>`` (the names of ``epoch_metrics.csv``).

    One x axis for both: micro-batches since the start of training (``batch/*`` at each
    batch, ``epoch/*`` at the epoch's last batch). A resumed run purges the events past
    its checkpoint (``purge_step``), so TensorBoard shows each batch once, as the CSVs do.
    TensorBoard is imported only here; a missing package is a one-line error before training.
    """

    def __init__(self, run_dir, logging_hook):
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("log.tensorboard=true: the tensorboard package is not installed; "
                              "pip install 'trainforge[tensorboard]' (or tensorboard)")
        self.dir = Path(run_dir) / TENSORBOARD
        self.writer = None
        logging_hook.sinks.append(self.add_batches)

    def before_train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        t = self.trainer
        position = t.epoch * t.batches_per_epoch + t.batch_in_epoch
        self.writer = SummaryWriter(str(self.dir), purge_step=position + 1 if position else None)

    def add_batches(self, records: list) -> None:
        t, add = self.trainer, self.writer.add_scalar
        for rec in records:
            step = rec["epoch"] * t.batches_per_epoch + rec["batch"]
            for name, value in zip(t.value_names, rec["values"]):
                if not (name == "grad_norm" and math.isnan(value)):  # NaN: no update at this micro-batch
                    add(f"batch/{name}", value, step)
            add("batch/lr", rec["lr"], step)

    def after_epoch(self) -> None:
        """Install after LoggingHook: it writes the epoch record this reads."""
        t = self.trainer
        row = flatten(t.history[-1])
        step = row.pop("epoch") * t.batches_per_epoch
        for key, value in row.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()


class GpuMemoryHook(HookBase):
    """On a CUDA device: each epoch's peak memory (training and validation) joins the
    epoch record as ``gpu_mem_peak_gib`` (held by tensors) and ``gpu_mem_reserved_gib``
    (held by PyTorch's caching allocator, close to what nvidia-smi shows). Rank 0's device.

    Install after EvalHook and before LoggingHook. Reading the allocator's counters is a
    host-side call: no device sync.
    """

    def __init__(self, logging_hook):
        self.target = logging_hook

    def before_epoch(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.trainer.device)

    def after_epoch(self) -> None:
        device = self.trainer.device
        self.target.extra.update(gpu_mem_peak_gib=round(torch.cuda.max_memory_allocated(device) / GIB, 4),
                                 gpu_mem_reserved_gib=round(torch.cuda.max_memory_reserved(device) / GIB, 4))

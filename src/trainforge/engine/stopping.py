"""Early stopping: end a run whose monitored metric stopped improving.

``EarlyStopHook`` reads the epoch record LoggingHook wrote (every rank holds the same
reduced values, so every rank decides the same, with no communication) and keeps its
counters as checkpoint state (``state_key``): a run killed and resumed at any point stops
at the same epoch as one that ran straight through.
"""
from __future__ import annotations

import logging
import math

from trainforge.distributed import group as dist
from trainforge.engine.logging import LOGGER, flatten
from trainforge.engine.trainer import HookBase

log = logging.getLogger(LOGGER)


class EarlyStopHook(HookBase):
    """After each validation: a value of ``monitor`` better than the best so far by more
    than ``min_delta`` (in ``mode``'s direction) resets the count of validations without
    improvement; ``patience`` of them in a row end the run (COMPLETED, ``stop_reason``
    ``early_stop``). ``check_finite``: a monitor value that is NaN or infinite ends it at once.

    Install after LoggingHook (it reads the epoch record) and before CheckpointHook (the
    checkpoint of the epoch carries the count)."""

    state_key = "early_stop"

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0, check_finite: bool = True):
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.check_finite = min_delta, check_finite
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.waited = 0  # validations in a row without improvement

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def before_train(self) -> None:
        """A resumed run whose last checkpoint is of the epoch that ended it (killed before it
        recorded its end) ends there again, without training another epoch."""
        t = self.trainer
        if not t.history or t.batch_in_epoch:
            return
        record = t.history[-1]
        value = flatten(record).get(self.monitor)
        if value is not None and not math.isfinite(value) and self.check_finite:
            self._stop(f"{self.monitor} is {value} at epoch {record['epoch']} (trainer.early_stop.check_finite)",
                       record["epoch"])
        elif value is not None and self.waited >= self.patience:
            self._stop(f"{self.monitor} did not improve on {self.best:.6g} (epoch {self.best_epoch}) for "
                       f"{self.waited} validation(s) (trainer.early_stop.patience={self.patience})", record["epoch"])

    def after_epoch(self) -> None:
        t = self.trainer
        record = t.history[-1]
        value = flatten(record).get(self.monitor)
        if value is None:
            return
        if not math.isfinite(value):
            if self.check_finite:
                self._stop(f"{self.monitor} is {value} at epoch {record['epoch']} (trainer.early_stop.check_finite)")
            return
        if self.improved(value):
            self.best, self.best_epoch, self.waited = float(value), record["epoch"], 0
            return
        self.waited += 1
        log.info("Early stopping: no %s better than %.6g (epoch %d) by more than %g for %d of %d validation(s)",
                 self.monitor, self.best, self.best_epoch, self.min_delta, self.waited, self.patience)
        if self.waited >= self.patience:
            self._stop(f"{self.monitor} did not improve on {self.best:.6g} (epoch {self.best_epoch}) for "
                       f"{self.waited} validation(s) (trainer.early_stop.patience={self.patience})")

    def _stop(self, why: str, epoch: int | None = None) -> None:
        t = self.trainer
        epoch = t.epoch + 1 if epoch is None else epoch  # the epoch that ended the run
        if epoch >= t.epochs:  # the last epoch: the run ends here anyway, not early
            return
        log.warning("Early stop after epoch %d of %d: %s", epoch, t.epochs, why)
        t.finish_early(f"early stop: {why}", "early_stop")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "waited": self.waited}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.waited = state["best"], state["best_epoch"], state["waited"]


class PruneHook(HookBase):
    """A search's trial (``hydra/sweeper=search``): after each validation, rank 0 reports
    ``monitor`` to the study and asks its pruner; every rank learns the answer (one
    all-reduce) and a pruned trial ends after this epoch (COMPLETED, ``stop_reason``
    ``pruned``, its checkpoint kept). A resumed trial whose last checkpoint is of the epoch
    that pruned it ends there again. Install where EarlyStopHook goes."""

    def __init__(self, monitor: str, judge):
        self.monitor, self.judge = monitor, judge  # judge(value, epoch) -> prune? (run/trial.py)

    def before_train(self) -> None:
        t = self.trainer
        if t.history and not t.batch_in_epoch:
            self._decide(t.history[-1])

    def after_epoch(self) -> None:
        self._decide(self.trainer.history[-1])

    def _decide(self, record: dict) -> None:
        t = self.trainer
        value = flatten(record).get(self.monitor)
        prune = dist.is_main() and value is not None and record["epoch"] < t.epochs and self.judge(value, record["epoch"])
        if dist.any_rank(bool(prune)):
            log.warning("Pruned after epoch %d of %d: %s=%.6g is behind the search's other trials at this epoch (%r)",
                        record["epoch"], t.epochs, self.monitor, value, self.judge)
            t.finish_early(f"pruned by the search at epoch {record['epoch']} ({self.monitor}={value:.6g})", "pruned")

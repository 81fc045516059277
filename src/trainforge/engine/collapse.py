"""Hooks of the VAE workflow: the loss's step-counted schedule and collapse detection."""
from __future__ import annotations

import logging

from trainforge.engine.logging import LOGGER
from trainforge.files import COLLAPSE_CSV, COLLAPSE_WARNING, RunRecord
from trainforge.engine.trainer import HookBase

log = logging.getLogger(LOGGER)
ACTIONS = ("warn", "stop")


class LossStepHook(HookBase):
    """Tells a loss with ``set_step`` (``loss=elbo``: beta) the optimizer step count before
    training and after every update. ``trainer.step`` is checkpoint state, so a resumed
    run continues the schedule exactly where it was."""

    def before_train(self) -> None:
        self.trainer.loss_fn.set_step(self.trainer.step)

    def after_step(self) -> None:
        self.trainer.loss_fn.set_step(self.trainer.step)


class CollapseHook(HookBase):
    """After each validation (it runs right after EvalHook, which fed ``stats``): writes the
    per-dimension values to ``collapse.csv`` and checks the thresholds.

    A validation is *low* when ``val_active_fraction < min_active_fraction`` or
    ``val_kl_total < min_kl``. After ``patience`` low validations in a row a warning line
    is logged (every validation while it lasts); with ``action=stop`` the run then ends
    after this epoch's checkpoint. The streak is read from the run's history, so a
    resumed run counts exactly as an uninterrupted one.
    """

    def __init__(self, stats, record, min_active_fraction=0.1, min_kl=0.1, patience=2, action="warn"):
        self.stats, self.record = stats, RunRecord.of(record)  # the run's RunRecord, or a run dir
        self.min_active_fraction, self.min_kl, self.patience, self.action = \
            min_active_fraction, min_kl, patience, action

    def before_train(self) -> None:
        """A resumed run keeps the rows of the epochs its checkpoint covers, nothing after."""
        self.record.keep_rows(COLLAPSE_CSV, lambda r: int(r[0]) <= self.trainer.epoch)

    def low(self, val: dict) -> bool:
        return val.get("active_fraction", 1.0) < self.min_active_fraction or val.get("kl_total", 1e9) < self.min_kl

    def after_epoch(self) -> None:
        t = self.trainer
        self._write(t.epoch + 1, t.step)
        streak = 0
        for val in [*(r.get("val", {}) for r in t.history), t.val_metrics]:
            streak = streak + 1 if self.low(val) else 0
        if streak < self.patience:
            return
        val = t.val_metrics
        message = (f"{COLLAPSE_WARNING}: {streak} validations in a row with active units "
                   f"{val['active_units']}/{len(self.stats.per_dim['kl'])} (fraction {val['active_fraction']:.3f}, "
                   f"threshold {self.min_active_fraction}) or raw KL {val['kl_total']:.4f} nats (threshold "
                   f"{self.min_kl}); per-dimension values in {COLLAPSE_CSV}")
        log.warning("%s%s", message, "; stopping (collapse.action=stop)" if self.action == "stop" else "")
        if self.action == "stop":
            t.finish_early(f"collapse.action=stop: {message}", "collapse")

    def _write(self, epoch: int, step: int) -> None:
        per_dim = self.stats.per_dim
        rows = [[epoch, step, d, kl, var, int(act)]
                for d, (kl, var, act) in enumerate(zip(per_dim["kl"], per_dim["var_mu"], per_dim["active"]))]
        self.record.append_rows(COLLAPSE_CSV, rows, header=["epoch", "step", "dim", "kl", "var_mu", "active"])

"""Learning-rate schedules counted in optimizer steps (after gradient accumulation).

Each factory takes the optimizer, ``steps_per_epoch`` (optimizer steps per epoch) and
``epochs``; epoch-valued options convert to steps with ``round(value * steps_per_epoch)``,
so the curve is the same whatever the batch count. The returned object is stepped once
per optimizer update; LR for update ``s`` (0-based) is ``base_lr * factor(s)``.
The closed forms are written in each docstring.
"""
from __future__ import annotations

import math

from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau


class StepSchedule(LambdaLR):
    """LambdaLR whose restored state follows this run's curve: after a resume that changed
    the curve (``trainer.epochs`` with cosine) or the base LR (``optimizer.lr``), the next
    update uses the new curve's LR for the restored step, not the LR the checkpoint's
    optimizer had stored.

    ``step()``, called once per optimizer update, computes what LambdaLR's does
    (``base_lr * lambda(last_epoch)``, the same counters and state) without its per-call
    warning checks and context managers; LambdaLR's own handles the first step (in the
    constructor), ``step(epoch)`` and tensor learning rates."""

    def step(self, epoch=None) -> None:
        groups = self.optimizer.param_groups
        if self._is_initial or epoch is not None or any(isinstance(g["lr"], Tensor) for g in groups):
            return super().step(epoch)
        self._step_count += 1
        self.last_epoch += 1
        lrs = [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)]
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs

    def load_state_dict(self, state_dict) -> None:
        base = list(self.base_lrs)  # this run's (its optimizer.lr): a resume that changed it goes on from the new one
        super().load_state_dict(state_dict)
        self.base_lrs = base
        lrs = [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def constant(optimizer, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """factor(s) = 1."""
    return StepSchedule(optimizer, lambda s: 1.0)


def cosine(optimizer, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0, min_lr: float = 0.0) -> LambdaLR:
    """W = round(warmup_epochs * steps_per_epoch), T = epochs * steps_per_epoch.

    s < W: lr = base * (s + 1) / W (linear warmup reaching base at step W - 1);
    s >= W: lr = min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2 with
    p = min(1, (s - W) / max(1, T - 1 - W)), so the last step uses min_lr.
    """
    warmup, total = round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch
    base = [g["lr"] for g in optimizer.param_groups]

    def factor_for(base_lr):
        def factor(s):
            if s < warmup:
                return (s + 1) / warmup
            p = min(1.0, (s - warmup) / max(1, total - 1 - warmup))
            return (min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))) / base_lr
        return factor

    return StepSchedule(optimizer, [factor_for(b) for b in base])


def step(optimizer, steps_per_epoch: int, epochs: int, step_size: float = 10.0, gamma: float = 0.1) -> LambdaLR:
    """factor(s) = gamma ** floor(s / round(step_size * steps_per_epoch))."""
    size = max(1, round(step_size * steps_per_epoch))
    return StepSchedule(optimizer, lambda s: gamma ** (s // size))


def multistep(optimizer, steps_per_epoch: int, epochs: int, milestones=(30.0, 60.0), gamma: float = 0.1) -> LambdaLR:
    """factor(s) = gamma ** (number of milestones m with s >= round(m * steps_per_epoch))."""
    marks = sorted(round(m * steps_per_epoch) for m in milestones)
    return StepSchedule(optimizer, lambda s: gamma ** sum(s >= m for m in marks))


class Plateau:
    """ReduceLROnPlateau decided right after each validation on ``monitor``.

    ``step()`` (per optimizer update) does nothing; ``observe(metrics)`` gets the epoch's
    metrics dict (``val_loss``, ``val_dice``, ...) once per validation.
    """

    def __init__(self, optimizer, monitor: str, mode: str, factor: float, patience: int, min_lr: float):
        self.monitor = monitor
        self.inner = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)

    def step(self) -> None:
        pass

    def observe(self, metrics: dict) -> None:
        self.inner.step(metrics[self.monitor])

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def plateau(optimizer, steps_per_epoch: int, epochs: int, monitor: str = "val_loss", mode: str = "min",
            factor: float = 0.1, patience: int = 5, min_lr: float = 0.0) -> Plateau:
    return Plateau(optimizer, monitor, mode, factor, patience, min_lr)

"""An exponential moving average (EMA) of the model's weights.

``EMAHook`` keeps a copy of the plain module on the model's device and moves it towards
the trained weights after every ``every``-th optimizer update, with one fused foreach op
(no host sync). Its weights and update count are checkpoint state (``state_key``), so a
run killed anywhere and resumed holds bitwise the EMA of one that ran straight through.
Under DDP every rank holds the same parameters after each update, so every rank's EMA is
the same with no communication. Validation may use it (``EvalHook``'s ``ema``).
"""
from __future__ import annotations

import copy

import torch

from trainforge.distributed import group as dist
from trainforge.engine.trainer import HookBase


def decay_at(decay: float, updates: int, warmup: bool) -> float:
    """The decay of update number ``updates`` (0-based): with ``warmup``,
    ``min(decay, (1 + t) / (10 + t))``, so the first updates follow the weights closely
    instead of averaging in the initial ones for thousands of steps."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


class EMAHook(HookBase):
    """``module``: the averaged copy (eval mode, no gradients). Float parameters and
    buffers are averaged; other buffers (BatchNorm's batch counter) are copied.

    Install before CheckpointHook: a mid-epoch checkpoint then holds the EMA of the very
    update it records."""

    state_key = "ema"

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True, every: int = 1):
        self.decay, self.warmup, self.every = decay, warmup, every
        plain = dist.unwrap(model)
        self.module = copy.deepcopy(plain).eval().requires_grad_(False)
        self.updates = 0
        self.seen_step = 0
        self.ema_avg, self.model_avg, self.ema_copy, self.model_copy = [], [], [], []
        for e, m in zip([*self.module.parameters(), *self.module.buffers()], [*plain.parameters(), *plain.buffers()]):
            pair = (self.ema_avg, self.model_avg) if e.is_floating_point() else (self.ema_copy, self.model_copy)
            pair[0].append(e)
            pair[1].append(m)

    def before_train(self) -> None:
        self.seen_step = self.trainer.step  # a resumed run: updates before it are in the state

    def after_step(self) -> None:
        step = self.trainer.step
        if step == self.seen_step:  # no optimizer update at this micro-batch
            return
        self.seen_step = step
        if step % self.every == 0:
            self.update()

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - decay_at(self.decay, self.updates, self.warmup)
        torch._foreach_lerp_(self.ema_avg, self.model_avg, weight)
        if self.ema_copy:
            torch._foreach_copy_(self.ema_copy, self.model_copy)
        self.updates += 1

    def weights(self) -> dict:
        """The averaged weights as a state_dict on the CPU (for best_model_weights.pt)."""
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup, "every": self.every}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]

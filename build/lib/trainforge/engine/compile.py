"""``trainer.compile=true``: the model through ``torch.compile``.

The trainer trains the compiled wrapper; everything that saves or loads weights goes
through ``distributed.unwrap`` (the plain module, no ``_orig_mod.`` prefix), so a
checkpoint is the same with or without compile and resumes either way.
"""
from __future__ import annotations

import logging
import time

import torch

from trainforge.engine.logging import LOGGER
from trainforge.engine.trainer import HookBase
from trainforge.errors import ConfigError

log = logging.getLogger(LOGGER)


def compile_model(model: torch.nn.Module, enabled: bool, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile(model, backend=backend)`` when ``enabled`` (compilation itself happens
    at the first step); a backend torch does not know is a ConfigError, also when compile
    is off (a sweep over ``trainer.compile=true,false`` must not fail in half its jobs)."""
    from torch._dynamo import list_backends  # Optimizer.__init__ imports torch._dynamo anyway

    if backend not in list_backends(exclude_tags=()):
        raise ConfigError(f"trainer.compile_backend={backend}: not a torch.compile backend; "
                          f"allowed: {', '.join(sorted({*list_backends(), 'aot_eager'}))}")
    return torch.compile(model, backend=backend) if enabled else model


class CompileReport(HookBase):
    """Logs, once per process, how long the first training step took: with a compiled
    model that is the compile warm-up (later recompiles, e.g. for eval mode or a smaller
    last batch, show in the epoch time)."""

    def __init__(self):
        self.start = None

    def before_epoch(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def after_step(self) -> None:
        if self.start is not None and self.start > 0:
            log.info("torch.compile warm-up: the first step took %.1fs (compilation included)",
                     time.perf_counter() - self.start)
            self.start = 0.0  # reported

"""What stdout shows while training: a progress bar on a terminal, batch lines otherwise.

``log.progress`` picks the mode (``config.progress_mode`` checks it): ``auto`` is a bar
when stdout is a terminal and the plain batch lines of docs/run-directory.md (Log lines) when it is
not (nohup, tee, sweep jobs, CI); ``bar``, ``lines`` and ``false`` force one. The lines
themselves are LoggingHook's; ``training.log`` gets every batch line in every mode.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

from trainforge.engine.logging import LOGGER
from trainforge.engine.trainer import HookBase


def resolve(mode: str, stream=None) -> str:
    """``auto`` -> ``bar`` if ``stream`` (default stdout) is a terminal, else ``lines``."""
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class ProgressHook(HookBase):
    """A tqdm bar per epoch on stdout (batches done, loss, LR, it/s, ETA of the epoch).

    Install it before EvalHook: the bar closes when the epoch's last step is done, so
    validation and the epoch block print below it. While a bar is open, console log
    records (warnings, non-finite batch lines) go through ``tqdm.write`` so they print
    above the bar instead of through it. Batch records come from LoggingHook's sinks,
    so the bar costs no extra host read.
    """

    def __init__(self, logging_hook, stream=None):
        self.stream = stream
        self.bar = None
        self.stack = contextlib.ExitStack()
        logging_hook.sinks.append(self.update)

    def before_epoch(self) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        t, stream = self.trainer, self.stream or sys.stdout
        # a terminal that reports no size (some ptys, emacs shells) would hide the bar
        width = {"dynamic_ncols": True} if _columns(stream) else {"ncols": 100, "nrows": 50}
        self.bar = self.stack.enter_context(tqdm(
            total=t.batches_per_epoch, initial=t.batch_in_epoch, desc=f"Epoch {t.epoch + 1}/{t.epochs}",
            unit="batch", file=stream, leave=True, **width))
        self.stack.enter_context(logging_redirect_tqdm([logging.getLogger(LOGGER)]))

    def update(self, records: list) -> None:
        if self.bar is None or not records:
            return
        rec = records[-1]
        if rec["epoch"] == self.trainer.epoch:
            self.bar.set_postfix(loss=f"{rec['values'][0]:.4g}", lr=f"{rec['lr']:.3g}", refresh=False)
            self.bar.update(rec["batch"] - self.bar.n)

    def after_epoch(self) -> None:
        self.close()

    def after_train(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar; at the epoch's end it shows the full count (on a GPU the last
        record may still be in flight)."""
        if self.bar is None:
            return
        if self.trainer.epoch_done():
            self.bar.update(self.bar.total - self.bar.n)
        self.stack.close()
        self.bar = None

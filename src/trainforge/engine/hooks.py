"""The periodic side effects of training, as hooks run in list order.

``build`` installs them as [EvalHook, LoggingHook, PlateauHook, CheckpointHook,
PreemptionHook]: validation first so the epoch record has its val metrics; logging next,
which writes the epoch record into ``trainer.history`` and the CSV/JSON files; plateau
decides from that record; the checkpoint comes after them so it carries the complete
history; preemption last, so its save at the end of training follows every flush.
"""
from __future__ import annotations

import logging
import time

import torch

from trainforge.distributed import group as dist
from trainforge.engine.checkpoint import CheckpointManager, LATEST
from trainforge.engine.logging import (LOGGER, BatchCSV, batch_file_writer, batch_line, epoch_block, flatten,
                                      flush_handlers, write_epoch_files)
from trainforge.engine.rng import RNGState
from trainforge.engine.trainer import HookBase, batch_len, call, to_device
from trainforge.files import RunRecord

log = logging.getLogger(LOGGER)


class EvalHook(HookBase):
    """After each epoch: the validation loss (sample-weighted mean), its components and the
    metrics (a ``MetricSet``), into ``trainer.val_metrics`` ({"loss": .., "dice": .., ...}).
    ``sharded`` (DDP): this rank's loader holds its own contiguous part of the set (no sample
    twice, none padded); the loss sums and sample counts are summed over ranks and each metric
    is synced by its protocol, so the values equal a one-process run's (to float rounding).
    Unsharded, every rank evaluates the whole set and nothing is reduced."""

    def __init__(self, loader, metrics, sharded: bool = False, ema=None, validate_with: str = "raw"):
        from trainforge.engine.components import MetricState

        self.loader, self.metrics, self.sharded = loader, metrics, sharded
        self.ema, self.validate_with = ema, validate_with if ema is not None else "raw"
        metrics.sharded = sharded
        self.states = [MetricState(k, m) for k, m in metrics.state_dicts().items()]  # saved in checkpoints

    def after_epoch(self) -> None:
        """``validate_with`` (with an EMA, ``trainer.ema``): ``raw`` the trained weights,
        ``ema`` the EMA's (as ``val_*``), ``both`` (the EMA's as ``val_ema_*``)."""
        t = self.trainer
        model = dist.unwrap(t.model)  # the plain module: no DDP collectives in evaluation
        if self.validate_with == "ema":
            t.val_metrics = self.evaluate(self.ema.module)
            return
        t.val_metrics = self.evaluate(model)
        model.train()
        if self.validate_with == "both":
            t.val_metrics.update({f"ema_{k}": v for k, v in self.evaluate(self.ema.module).items()})

    def evaluate(self, model) -> dict:
        """Loss, components and metrics of ``model`` over the validation set (this rank's
        part, reduced over the ranks when sharded)."""
        t = self.trainer
        return validate(model, self.loader, t.loss_fn, self.metrics, t.device, t.precision, t.call_style,
                        self.sharded)


@torch.no_grad()
def validate(model, loader, loss_fn, metrics, device, precision, call_style: str = "whole",
             sharded: bool = False) -> dict:
    """``{"loss": .., <component>: .., <metric>: ..}`` of ``model`` in eval mode over
    ``loader``: the loss as the sample-weighted mean, the metrics by their protocols; with
    ``sharded`` the loader holds this rank's part and the sums are reduced over the ranks.
    Training's validation (``EvalHook``) and ``trainforge eval`` are this one function."""
    model.eval()
    metrics.reset()
    names = tuple(getattr(loss_fn, "component_names", ()))
    sums = torch.zeros(1 + len(names), dtype=torch.float64, device=device)
    count = 0
    for batch in loader:
        inputs, target = to_device(batch, device)
        with precision.autocast():
            output = call(model, inputs, call_style)
        loss, parts = loss_fn(output, target)
        n = batch_len(target)
        sums += torch.stack([loss, *(parts[k] for k in names)]).double() * n
        count += n
        metrics.update(output, target)
    if sharded:
        sums, count = dist.summed(sums), dist.summed(count)
    values = (sums / count).tolist()
    return {"loss": values[0], **dict(zip(names, values[1:])), **metrics.compute()}


class LoggingHook(HookBase):
    """Batch lines (stdout every ``interval`` batches, training.log every batch), the epoch
    block, ``epoch_metrics.csv``, ``metrics.json`` and optionally ``batch_metrics.csv``.

    Batch values reach the host through the trainer's meter, one step late on a GPU, so
    logging never stalls the step. ``progress`` false keeps batch lines off stdout (a
    progress bar shows them instead, or nothing). Each ``sinks`` callable gets every list
    of batch records written (the progress bar, TensorBoard); ``extra`` fields set by
    earlier hooks join the epoch record (peak GPU memory).
    """

    def __init__(self, record, interval=1, progress=True, batch_metrics=False):
        self.record, self.interval, self.progress = RunRecord.of(record), interval, progress  # or a run dir
        self.batch_metrics, self.batch_csv = batch_metrics, None
        self.sinks: list = []
        self.extra: dict = {}
        self.first = 1
        self.file_only = None  # training.log's direct writer for batch lines (before_train)
        self.note = ""  # a line for the next epoch block only (what changed since the run's last start)

    def before_train(self) -> None:
        t = self.trainer
        if self.batch_metrics:
            names = ["loss", *t.component_names, "grad_norm"]
            self.batch_csv = BatchCSV(self.record, ["epoch", "batch", "step", *names, "lr"])
            self.batch_csv.truncate_after(t.epoch + 1, t.batch_in_epoch)
        self.last_lr = t.optimizer.param_groups[0]["lr"]
        self.file_only = batch_file_writer()
        if t.history or t.batch_in_epoch:  # resumed: the files restart from the checkpoint's history
            write_epoch_files(self.record, t.history)

    def before_epoch(self) -> None:
        self.start = time.perf_counter()
        self.first = self.trainer.batch_in_epoch + 1  # shown on stdout whatever the interval

    def after_step(self) -> None:
        self._write(self.trainer.collect())

    def _write(self, records: list) -> None:
        t = self.trainer
        for rec in records:
            loss, batch = rec["values"][0], rec["batch"]
            line = batch_line(rec["epoch"] + 1, t.epochs, batch, t.batches_per_epoch, loss, rec["lr"])
            on_grid = self.progress and (batch % self.interval == 0 or batch == self.first)
            if rec["nonfinite"] and t.on_nonfinite == "skip":
                line += f" - skipped update ({t.consecutive_nonfinite} consecutive)"
            if self.file_only is not None and not (on_grid or rec["nonfinite"]):
                self.file_only(line)  # training.log alone: no LogRecord
            else:
                log.info(line, extra={"console": on_grid or rec["nonfinite"], "batch": True})
            if self.batch_csv is not None:
                self.batch_csv.add([rec["epoch"] + 1, batch, rec["step"], *rec["values"], rec["lr"]])
            self.last_lr = rec["lr"]
        for sink in self.sinks:
            sink(records)

    def after_epoch(self) -> None:
        t = self.trainer
        self._write(t.collect(block=True))
        record = {"epoch": t.epoch + 1, "train": t.stats.summary(), "val": dict(t.val_metrics),
                  "lr": self.last_lr, "epoch_time": time.perf_counter() - self.start, **self.extra}
        t.history.append(record)
        times = [r["epoch_time"] for r in t.history]
        eta = sum(times) / len(times) * (t.epochs - t.epoch - 1)
        log.info(epoch_block(record, t.epochs, eta, self.note))
        self.note = ""
        write_epoch_files(self.record, t.history)
        if self.batch_csv is not None:
            self.batch_csv.flush()

    def flush(self) -> None:
        self._write(self.trainer.collect(block=True))
        flush_handlers()  # training.log holds every line the coming checkpoint covers
        if self.batch_csv is not None:
            self.batch_csv.flush()

    def after_train(self) -> None:
        self.flush()


class PlateauHook(HookBase):
    """Feeds the epoch record to a plateau scheduler right after validation (rank 0's
    record; every rank holds the same reduced values)."""

    def after_epoch(self) -> None:
        t = self.trainer
        t.scheduler.observe(flatten(t.history[-1]))


def component_states(trainer) -> dict:
    """The components that keep their own state in the checkpoint: every hook (and the
    parts a hook lists in ``states``: the user's metrics), and the loss, with a ``state_key`` and ``state_dict()`` / ``load_state_dict()`` (early stopping,
    EMA weights, ...). Saved under ``state_key``; a checkpoint without it (an older one)
    restores the component fresh, with a warning naming it."""
    found = {}
    for part in (*trainer.hooks, *(s for h in trainer.hooks for s in getattr(h, "states", ())), trainer.loss_fn):
        key = getattr(part, "state_key", None)
        if key:
            if key in found or key in RESERVED_KEYS:
                raise ValueError(f"state_key {key!r} of {type(part).__name__}: already a checkpoint key")
            found[key] = part
    return found


# the checkpoint's own keys (docs/run-directory.md): a component's state_key must be another
RESERVED_KEYS = ("format_version", "epoch", "step", "batch_in_epoch", "model", "optimizer", "scheduler", "scaler",
                 "rng", "sampler", "epoch_stats", "best", "history", "retention", "config", "overrides",
                 "config_sources", "time",
                 "world_size")


class CheckpointHook(HookBase):
    """``latest_checkpoint.pth`` every epoch (and every ``every_n_steps`` updates within
    one), epoch files, best model and retention through the CheckpointManager.

    A checkpoint is never written from an epoch whose losses went non-finite.
    """

    def __init__(self, manager: CheckpointManager, config_yaml: str, save_optimizer=True, every_n_steps=0,
                 overrides=(), sources=None, best_weights=None):
        self.manager, self.config_yaml, self.overrides = manager, config_yaml, list(overrides)
        self.best_weights = best_weights  # the weights a new best saves (default: the model's; an EMA's)
        self.sources = sources  # how the config was composed (config/sources.py)
        self.save_optimizer, self.every_n_steps = save_optimizer, every_n_steps
        self.saved_step = -1

    def objects(self, saving: bool = True) -> dict:
        """What a checkpoint holds. Every rank calls this at a save (the RNG states of all
        ranks are gathered); rank 0 alone writes."""
        t = self.trainer
        objs = {"model": dist.unwrap(t.model), "optimizer": t.optimizer, "scheduler": t.scheduler,
                "scaler": t.precision, "rng": RNGState.gathered() if saving else RNGState()}
        if not self.save_optimizer:
            del objs["optimizer"]
        objs.update(component_states(t))
        return objs

    def extra(self) -> dict:
        return {**self.trainer.state_dict(), "config": self.config_yaml, "overrides": self.overrides,
                "config_sources": self.sources}

    def restore(self, ckpt: dict) -> list:
        """Load every object's state from ``ckpt``; RNG last, so nothing consumes it after.
        Returns the names of objects the checkpoint did not hold."""
        objects = self.objects(saving=False)
        if "optimizer" not in objects:
            objects["optimizer"] = self.trainer.optimizer
        rng = objects.pop("rng")
        missing = [name for name in objects if name not in ckpt]
        for name, obj in objects.items():
            if name in ckpt:
                obj.load_state_dict(ckpt[name])
        self.trainer.load_state_dict(ckpt)
        self.manager.load_state_dict(ckpt["retention"])
        self._rebase_monitor()
        self.saved_step = self.trainer.step
        rng.load_state_dict(ckpt["rng"], resumed=True)
        return missing

    def _rebase_monitor(self) -> None:
        """A resume forced through a change of checkpoint.monitor or mode: the kept epoch
        files are ranked by their epochs' values of the new monitor, and the best starts
        over (best_model.pth is replaced by the next epoch's)."""
        m = self.manager
        if (m.best["monitor"], m.best["mode"]) == (m.monitor, m.mode):
            return
        log.warning("checkpoint.monitor changed from %s (%s) to %s (%s): best_model.pth is the next epoch's, "
                    "then the best from there on", m.best["monitor"], m.best["mode"], m.monitor, m.mode)
        m.rebase({r["epoch"]: flatten(r).get(m.monitor) for r in self.trainer.history})

    def after_step(self) -> None:
        t = self.trainer
        due = (self.every_n_steps and t.at_boundary() and t.step % self.every_n_steps == 0
               and t.step != self.saved_step and t.batch_in_epoch < t.batches_per_epoch)
        if due:
            self.save_latest()

    def safe(self) -> bool:
        """Under ``stop`` a non-finite loss may have reached the weights: save nothing.
        (Under ``skip`` those updates never happened.) One host read, per save only."""
        t = self.trainer
        return t.on_nonfinite == "skip" or t.stats.nonfinite.item() == 0

    def save_latest(self) -> bool:
        """Save the current state as latest (used mid-epoch and on preemption)."""
        if not self.safe():
            return False
        self.trainer.flush()
        self.manager.save_latest(self.objects(), self.extra())
        self.saved_step = self.trainer.step
        return True

    def after_epoch(self) -> None:
        t = self.trainer
        if not self.safe():
            log.warning("epoch %d had non-finite losses: no checkpoint written", t.epoch + 1)
            return
        self.trainer.flush()
        monitor = self.manager.monitor
        metric = flatten(t.history[-1]).get(monitor)
        weights = self.best_weights or (
            lambda: {k: v.detach().cpu() for k, v in dist.unwrap(t.model).state_dict().items()})
        if self.manager.save_epoch(t.epoch + 1, metric, self.objects(), self.extra(), weights):
            log.info("New best %s %.6f at epoch %d: saved best_model.pth", monitor, metric, t.epoch + 1)
        self.saved_step = t.step

    @property
    def last_good(self) -> str:
        path = self.manager.run_dir / LATEST
        return str(path) if path.exists() else "none"


class PreemptionHook(HookBase):
    """SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 ask the trainer to stop after the step in
    flight; ``after_train`` then saves ``latest_checkpoint.pth`` and hands the signal on
    to whatever handler was there before (submitit's requeue, for one). A second signal
    of the same kind gets the previous handler at once."""

    def __init__(self, checkpointer: CheckpointHook):
        self.checkpointer, self.previous, self.armed = checkpointer, {}, False

    def before_train(self) -> None:
        self.arm()

    def arm(self) -> None:
        """Install the handlers (once; main thread only) and act on any signal a deferral
        remembered. ``run`` arms them before it marks the run RUNNING, so a signal from then
        on gets a checkpoint and PREEMPTED, even before the first step."""
        import threading

        from trainforge.distributed import signals

        if self.armed or threading.current_thread() is not threading.main_thread():
            return
        self.armed = True
        self.previous = signals.take(self._handle)
        signals.replay(self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        name = signal.Signals(signum).name
        signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))  # a second one is not gentle
        log.warning("%s received: finishing the current step, then saving latest_checkpoint.pth", name)
        self.trainer.request_stop(f"preempted by {name}", name)

    def after_train(self) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {sig: h for sig, h in self.previous.items() if callable(h)}
        t = self.trainer
        if t.preempted_by and self.checkpointer.save_latest():
            log.warning("Saved %s at epoch %d, batch %d, step %d", self.checkpointer.last_good,
                        t.epoch + 1, t.batch_in_epoch, t.step)

    def hand_on(self) -> None:
        """After the save: pass the signal to the handler that was installed before ours
        if it is a Python function (submitit's requeue); the default ones are replaced
        by the documented exit code."""
        import signal

        sig = getattr(signal, self.trainer.preempted_by or "", None)
        handler = self.previous.get(sig)
        if handler is not None and handler is not signal.default_int_handler:
            handler(sig, None)

"""BaseTrainer: the loop, one ``run_step``, and hook dispatch. Nothing else.

Side effects (validation, logging, checkpoints) are hooks (``engine/hooks.py``), run in
list order. The trainer takes built objects, never config.
"""
from __future__ import annotations

import math

import torch

from trainforge.distributed import group as dist
from trainforge.engine.amp import NO_CONTEXT
from trainforge.engine.meters import EpochStats, StepMeter, stack_rows  # noqa: F401  (their old home)
from trainforge.errors import NonFiniteLossError


# without clipping, the gradient norm is measured on every this-many-th window (it costs
# a few kernels and a fair amount of host work per measure; see BaseTrainer._grad_norm)
GRAD_NORM_EVERY = 16

def to_device(obj, device: torch.device):
    """Tensors (also inside tuples, lists and dicts) moved without blocking the host."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)([to_device(v, device) for v in obj])
    return obj


def call(model, inputs, style: str = "whole"):
    """The model on a batch's inputs: ``model(inputs)``, or spread as ``model(*inputs)`` /
    ``model(**inputs)`` (``style``: how ``forward`` takes them, ``engine/components.call_style``)."""
    if style == "spread":
        return model(*inputs)
    if style == "keywords":
        return model(**inputs)
    return model(inputs)


def batch_len(target) -> int:
    """Samples in a batch: the first dimension of its target (or of the target's first tensor)."""
    if isinstance(target, torch.Tensor):
        return len(target)
    parts = target.values() if isinstance(target, dict) else target if isinstance(target, (tuple, list)) else ()
    for part in parts:
        if isinstance(part, (torch.Tensor, dict, tuple, list)):
            return batch_len(part)
    return len(target)


class HookBase:
    """A periodic side effect. The trainer calls, in hook-list order::

        before_train()
        for each epoch:
            before_epoch()
            for each micro-batch: run_step(); after_step()
            after_epoch()
        after_train()

    plus ``flush()``, called before any checkpoint is written: write out whatever is
    buffered, so the files on disk cover everything the checkpoint covers.
    ``after_step`` runs every micro-batch: keep it cheap and free of host syncs.
    """

    trainer: "BaseTrainer" = None

    def before_train(self): ...
    def before_epoch(self): ...
    def after_step(self): ...
    def after_epoch(self): ...
    def after_train(self): ...
    def flush(self): ...


class BaseTrainer:
    """Runs ``epochs`` epochs of ``run_step`` over ``train_loader`` and calls the hooks.

    Counters: ``epoch`` (0-based index of the current epoch; equals the number of finished
    epochs between epochs), ``batch_in_epoch`` (micro-batches done in it) and ``step``
    (optimizer updates, the one counter schedules use). Per-step scalars go through
    ``meter``; hooks read them with ``collect()``.
    """

    def __init__(self, model, optimizer, scheduler, loss_fn, train_loader, sampler, precision, device,
                 epochs, grad_accum=1, clip_grad=None, on_nonfinite="stop", max_nonfinite=10, hooks=(),
                 grad_norm_every=GRAD_NORM_EVERY, call_style="whole"):
        self.model, self.optimizer, self.scheduler, self.loss_fn = model, optimizer, scheduler, loss_fn
        self.train_loader, self.sampler, self.precision, self.device = train_loader, sampler, precision, device
        self.epochs, self.grad_accum, self.clip_grad = epochs, grad_accum, clip_grad
        self.grad_norm_every, self.call_style = grad_norm_every, call_style
        self._no_norm = torch.full((), math.nan, device=device)  # grad_norm where none was measured
        self.on_nonfinite, self.max_nonfinite, self.consecutive_nonfinite = on_nonfinite, max_nonfinite, 0
        # skip without a host sync: fused optimizers skip on device when found_inf is set
        self.device_skip = getattr(optimizer, "_step_supports_amp_scaling", False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.component_names = tuple(getattr(loss_fn, "component_names", ()))
        self.value_names = ("loss", *self.component_names, "grad_norm")
        self.batches_per_epoch = len(train_loader)
        self._samples = len(sampler)
        self.epoch = self.step = self.batch_in_epoch = 0
        self.history: list = []  # epoch records, written by LoggingHook
        self.val_metrics: dict = {}  # the last validation's results, written by EvalHook
        self.stop_reason: str | None = None
        self.stop_kind: str | None = None  # a run ended early on purpose: early_stop, pruned, collapse
        self.preempted_by: str | None = None  # the signal that asked this run to stop
        self.stop_request: tuple | None = None  # (reason, signal) a rank received, until the ranks agree
        self.world = dist.world_size()  # fixed for the trainer's life (the process group exists first)
        self.meter = StepMeter(device, lockstep=self.world > 1)
        self.stats = EpochStats(self.value_names, device)
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self

    # ---- loop ----
    def fit(self) -> None:
        self._call("before_train")
        while self.epoch < self.epochs and not self.stop_reason:
            self.sampler.set_epoch(self.epoch)  # keeps a resumed position within the epoch
            if self.batch_in_epoch == 0:
                self.stats.reset()
            self._call("before_epoch")
            self.model.train()
            for batch in self.train_loader:
                self.run_step(batch)
                self._call("after_step")
                if self.at_boundary():
                    self._agree_on_stop()
                if self.stop_reason and self.at_boundary() and not self.epoch_done():
                    break
            # a signal on the epoch's last step still gets the epoch's validation and checkpoint
            if self.stop_reason and not (self.epoch_done() and self.preempted_by):
                break
            self._call("after_epoch")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._call("after_train")

    def run_step(self, batch) -> None:
        """One micro-batch: forward, backward and, at a window boundary, the update."""
        inputs, target = to_device(batch, self.device)
        samples = batch_len(target)
        weight = samples / self._window_samples()
        self.batch_in_epoch += 1
        boundary = self.at_boundary()  # this micro-batch ends its accumulation window
        with self._sync_context(boundary):
            with self.precision.autocast():
                output = call(self.model, inputs, self.call_style)
            loss, parts = self.loss_fn(output, target)
            self.precision.backward(loss if weight == 1.0 else loss * weight)  # x1.0 is exact: skip the kernel
        lr = self.optimizer.param_groups[0]["lr"]  # the LR this window's update uses
        grad_norm = self._update() if boundary else self._no_norm
        # the row is read later (the meter and the epoch stats stack rows in blocks): the loss and
        # grad norm are fresh tensors, kept by reference (no kernel); the components are copied
        # by one stack, since a loss may return a buffer it changes in place later (ELBO's beta)
        components = [parts[k].detach().float() for k in self.component_names]
        values = (loss.detach().float(), *(torch.stack(components).unbind() if components else ()), grad_norm.float())
        values = dist.weighted_mean(values, samples)  # the global batch's values, on every rank
        self.stats.add(values)
        meta = {"epoch": self.epoch, "batch": self.batch_in_epoch, "step": self.step, "lr": lr}
        self.meter.push(meta, values)

    def _update(self) -> torch.Tensor:
        """Unscale, clip (global norm), step; the scheduler only follows real updates.
        Returns the gradient norm before clipping, or NaN where it is not measured
        (see ``_grad_norm``).

        With ``on_nonfinite=skip`` a window whose gradient norm is not finite makes no
        update: fused optimizers skip it on the device (``found_inf``), others after one
        host read. The schedule still advances (the window consumed its slot)."""
        self.precision.unscale_(self.optimizer)
        grad_norm = self._grad_norm()
        if self.on_nonfinite == "skip" and not self.precision.fp16:  # fp16's scaler skips itself
            if self.device_skip:
                self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
                self.optimizer.step()
                del self.optimizer.found_inf
            elif torch.isfinite(grad_norm):
                self.optimizer.step()
            stepped = True  # the schedule moves on either way: the window consumed its slot
        else:
            stepped = self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.scheduler.step()
            self.step += 1
        return grad_norm

    def _grad_norm(self) -> torch.Tensor:
        """The global gradient norm (before clipping), computed only where it is used:
        every window when clipping or ``on_nonfinite=skip`` needs it or ``grad_norm_every``
        is 1 (per-batch metrics), else the first window of the epoch and every
        ``grad_norm_every``-th after it (the epoch's ``grad_norm`` is their mean).
        Elsewhere NaN: not measured."""
        if self.clip_grad is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad).detach()
        window = (self.batch_in_epoch - 1) // self.grad_accum
        if self.on_nonfinite == "skip" or window % self.grad_norm_every == 0:
            grads = [p.grad for p in self.params if p.grad is not None]
            return torch.nn.utils.get_total_norm(grads).detach() if grads else self._no_norm.new_zeros(())
        return self._no_norm

    # ---- helpers for the step and the hooks ----
    def _sync_context(self, boundary: bool):
        """DDP's ``no_sync`` (around forward and backward, as DDP needs) inside an
        accumulation window: gradients are all-reduced once, at the window's last
        micro-batch (``boundary``). A plain module gets a null context."""
        if boundary or not hasattr(self.model, "no_sync"):
            return NO_CONTEXT
        return self.model.no_sync()

    def epoch_done(self) -> bool:
        return self.batch_in_epoch >= self.batches_per_epoch

    def at_boundary(self) -> bool:
        """True after the last micro-batch of an accumulation window (or of the epoch)."""
        return self.batch_in_epoch % self.grad_accum == 0 or self.batch_in_epoch == self.batches_per_epoch

    def _window_samples(self) -> int:
        """Samples in the accumulation window of the current micro-batch (the last window
        of an epoch may be partial), so each micro-batch's mean loss is weighted by its share."""
        bs = self.train_loader.batch_size
        first = self.batch_in_epoch - self.batch_in_epoch % self.grad_accum
        last = min(first + self.grad_accum, self.batches_per_epoch)
        return min(last * bs, self._samples) - first * bs

    def collect(self, block: bool = False) -> list:
        """Host records of finished steps, oldest first, checked against the non-finite
        policy: ``stop`` stops at the first non-finite loss, ``skip`` after
        ``max_nonfinite`` consecutive ones. Each record gets ``nonfinite`` (bool)."""
        records = self.meter.ready(block)
        for rec in records:
            loss = rec["values"][0]
            rec["nonfinite"] = not math.isfinite(loss)
            if not rec["nonfinite"]:
                self.consecutive_nonfinite = 0
                continue
            self.consecutive_nonfinite += 1
            where = f"epoch {rec['epoch'] + 1}, batch {rec['batch']}, step {rec['step']}"
            if self.stop_reason:
                continue
            if self.on_nonfinite == "stop":
                self.stop_reason = f"non-finite loss ({loss}) at {where}"
            elif self.consecutive_nonfinite >= self.max_nonfinite:
                self.stop_reason = (f"non-finite loss ({loss}) at {where}: {self.consecutive_nonfinite} "
                                    f"consecutive (trainer.max_nonfinite={self.max_nonfinite})")
        return records

    def raise_if_nonfinite(self, last_good: str) -> None:
        if self.stop_reason and self.stop_reason.startswith("non-finite"):
            raise NonFiniteLossError(f"{self.stop_reason}; last good checkpoint: {last_good}")

    def state_dict(self) -> dict:
        """Counters and history. At an epoch's end the position is the next epoch's start.
        The sampler position counts samples of the whole (global) epoch consumed."""
        done = self.epoch_done()
        epoch, batch = self.epoch + done, 0 if done else self.batch_in_epoch
        world = self.world
        return {"epoch": epoch, "batch_in_epoch": batch, "step": self.step, "history": list(self.history),
                "sampler": {"epoch": epoch, "position": batch * self.train_loader.batch_size * world},
                "epoch_stats": self.stats.state_dict(), "world_size": world}

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters; from another world size (a forced resume) the epoch goes
        on from the same global sample position."""
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        if state.get("world_size", 1) != self.world:
            self.batch_in_epoch = state["sampler"]["position"] // (self.train_loader.batch_size * self.world)
        self.history = list(state["history"])
        self.sampler.load_state_dict(state["sampler"])
        if self.batch_in_epoch:
            self.stats.load_state_dict(state["epoch_stats"])

    def request_stop(self, reason: str, signal_name: str | None = None) -> None:
        """Stop at the next window boundary (the step in flight finishes first). With several
        ranks the request waits for that boundary, where the ranks agree to stop together."""
        if self.world > 1:
            self.stop_request = self.stop_request or (reason, signal_name)
            return
        self.stop_reason = self.stop_reason or reason
        self.preempted_by = self.preempted_by or signal_name

    def finish_early(self, reason: str, kind: str) -> None:
        """End the run after this epoch, on purpose (it completes). For decisions made from
        the epoch record, which every rank holds the same: each rank decides alone."""
        self.stop_reason, self.stop_kind = self.stop_reason or reason, self.stop_kind or kind

    def _agree_on_stop(self) -> None:
        """At a window boundary: every rank stops if any rank was asked to (one host-side
        all-reduce over gloo; nothing at world size 1)."""
        if self.world == 1 or self.preempted_by or not dist.any_rank(self.stop_request is not None):
            return
        reason, name = self.stop_request or ("preempted: another rank received a stop signal", "peer")
        self.stop_reason = self.stop_reason or reason
        self.preempted_by = name

    def flush(self) -> None:
        self._call("flush")

    def _call(self, name: str) -> None:
        for hook in self.hooks:
            getattr(hook, name)()

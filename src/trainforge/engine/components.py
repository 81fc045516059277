"""Your own components, as the loop needs them: how a model is called with a batch's inputs,
a loss that returns a tensor, the validation metrics (and how they add up across ranks),
callbacks. The protocols are documented in docs/own-project.md.
"""
from __future__ import annotations

import inspect
import typing

import torch

from trainforge.distributed import group as dist
from trainforge.engine.trainer import HookBase, batch_len, call  # noqa: F401  (the loop's side of the call)
from trainforge.errors import ConfigError


# ---- the model's call -----------------------------------------------------------------
def call_style(model, inputs) -> str:
    """How ``model`` takes a batch's ``inputs``: ``whole`` (``model(inputs)``), ``spread``
    (a tuple as positional arguments, ``model(*inputs)``) or ``keywords`` (a dict,
    ``model(**inputs)``). A tuple or dict is spread only where ``forward`` takes its parts:
    a ``forward(self, batch)`` gets it whole."""
    if not isinstance(inputs, (tuple, list, dict)):
        return "whole"
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return "whole"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = any(p.kind == p.VAR_POSITIONAL for p in params)
    if isinstance(inputs, dict):
        names = {p.name for p in params}
        takes_all = any(p.kind == p.VAR_KEYWORD for p in params) or set(inputs) <= names
        return "keywords" if takes_all and not (len(positional) == 1 and positional[0].name not in inputs) else "whole"
    required = [p for p in positional if p.default is p.empty]
    return "spread" if star or (len(positional) > 1 and len(required) <= len(inputs) <= len(positional)) else "whole"


# ---- the loss -------------------------------------------------------------------------
class PlainLoss(torch.nn.Module):
    """A loss of the PyTorch convention (``fn(output, target) -> scalar tensor``), or one that
    returns ``(total, {name: value})`` without naming its components beforehand, as the loop
    takes it: ``(total, parts)`` with ``component_names`` (found on the dry batch)."""

    def __init__(self, fn, component_names=()):
        super().__init__()
        self.fn, self.component_names = fn, tuple(component_names)

    def forward(self, output, target):
        out = self.fn(output, target)
        return (out, {}) if isinstance(out, torch.Tensor) else out


def as_loss(fn):
    """``fn`` itself where it names its components (trainforge's losses), else :class:`PlainLoss`."""
    return fn if hasattr(fn, "component_names") else PlainLoss(fn)


# ---- metrics --------------------------------------------------------------------------
@typing.runtime_checkable
class Metric(typing.Protocol):
    """What a validation metric is (``metrics: {name: {_target_: ...}}``): ``update(output,
    target)`` per validation batch (the model's output and the batch's target, on the device),
    ``compute()`` once per validation (a number or a 0-d tensor; with a ``names`` tuple, a
    dict of those names), ``reset()`` before each validation. Optional: ``sum_states`` or
    ``cat_states`` (how its state adds up over DDP ranks, see :class:`MetricSet`),
    ``state_dict()`` / ``load_state_dict()`` (saved in checkpoints). ``torchmetrics`` metrics
    fit as they are."""

    def update(self, output, target) -> None: ...
    def compute(self): ...
    def reset(self) -> None: ...


def is_torchmetric(metric) -> bool:
    return any(k.__module__.startswith("torchmetrics.") and k.__name__ == "Metric" for k in type(metric).__mro__)


class MetricSet:
    """The validation metrics fed by one pass: the data option's (a metric with ``names``,
    whose ``compute`` returns a dict of them) and the ``metrics`` node's, each named by its
    key (``compute`` returns a number or a 0-d tensor), or by its ``names``.

    Under DDP with a sharded validation, before ``compute``: a metric listing ``sum_states``
    (attributes holding tensors or numbers: sums and counts) gets them summed over ranks; one
    listing ``cat_states`` (attributes holding lists of tensors: per-sample scores) gets every
    rank's lists, concatenated in rank order; a ``torchmetrics`` metric syncs itself; any other
    gets every rank's inputs replayed into it in rank order. Either way its value is computed
    once over every sample (AUROC, F1 of the whole set).
    """

    def __init__(self, metrics: dict, device=None):
        self.metrics, self.device = {k: m for k, m in metrics.items() if m is not None}, device
        for key, m in self.metrics.items():
            for method in ("update", "compute", "reset"):
                if not callable(getattr(m, method, None)):
                    raise ConfigError(f"metrics.{key}={type(m).__name__}: has no {method}(); a metric needs "
                                      "update(output, target), compute() and reset()")
            if device is not None and isinstance(m, torch.nn.Module):
                m.to(device)
        self.names = tuple(n for key, m in self.metrics.items() for n in getattr(m, "names", (key,)))
        self.sharded = False  # set by EvalHook: this rank sees its part of the validation set
        self.inputs: dict = {}  # key -> [(output, target)] of metrics that gather their inputs

    def _gathers(self, m) -> bool:
        """Whether ``m`` needs every rank's inputs (it declares no way to add up its state)."""
        return self.sharded and not (hasattr(m, "sum_states") or hasattr(m, "cat_states") or is_torchmetric(m))

    def reset(self) -> None:
        self.inputs = {}
        for m in self.metrics.values():
            m.reset()

    @torch.no_grad()
    def update(self, output, target) -> None:
        for key, m in self.metrics.items():
            if self._gathers(m):
                self.inputs.setdefault(key, []).append(_to_cpu((output, target)))
            else:
                m.update(output, target)

    def compute(self) -> dict:
        out = {}
        for key, m in self.metrics.items():
            if self.sharded:
                self._sync(key, m)
            value = _unsynced(m) if is_torchmetric(m) and not self.sharded else m.compute()
            out.update(_named(key, m, value))
        return out

    def _sync(self, key, m) -> None:
        if hasattr(m, "sum_states"):
            for name in m.sum_states:
                setattr(m, name, dist.summed(getattr(m, name)))
        elif hasattr(m, "cat_states"):
            for name in m.cat_states:
                mine = getattr(m, name)
                device = mine[0].device if mine else None
                setattr(m, name, [_to_device(v, device) for part in dist.gather_objects(_to_cpu(list(mine)))
                                  for v in part])
        elif self._gathers(m):
            m.reset()
            for part in dist.gather_objects(self.inputs.get(key, [])):
                for output, target in part:
                    m.update(*_to_device((output, target), self.device))  # where the inputs were

    def state_dicts(self) -> dict:
        """{key: metric} of the metrics that keep a state of their own (``state_dict``)."""
        return {k: m for k, m in self.metrics.items() if callable(getattr(m, "state_dict", None))}


def _unsynced(metric):
    """A torchmetrics metric's value from this rank's state alone (every rank saw every sample)."""
    sync, metric._to_sync = metric._to_sync, False
    try:
        return metric.compute()
    finally:
        metric._to_sync = sync


def _named(key, metric, value) -> dict:
    names = getattr(metric, "names", None)
    if names is not None:
        if not isinstance(value, dict) or set(value) != set(names):
            raise ConfigError(f"metrics.{key}={type(metric).__name__}: compute() must return a dict of its names "
                              f"{list(names)}; it returned {type(value).__name__}")
        return {k: _number(key, metric, v) for k, v in value.items()}
    return {key: _number(key, metric, value)}


def _number(key, metric, value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # a count stays an integer in the log and the CSV
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    raise ConfigError(f"metrics.{key}={type(metric).__name__}: compute() must return a number or a 0-d tensor "
                      f"(or, with a names tuple, a dict); it returned {type(value).__name__}{shape}")


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _to_device(obj, device):
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# ---- callbacks ------------------------------------------------------------------------
class Callback(HookBase):
    """The base of a callback of your own (``callbacks: {name: {_target_: ...}}``): override any
    of ``before_train``, ``before_epoch``, ``after_step``, ``after_epoch``, ``after_train``;
    ``self.trainer`` is the running trainer (``epoch``, ``step``, ``history``, ``model``,
    ``val_metrics``, ``request_stop(reason)``). Give it ``state_dict()`` and
    ``load_state_dict(state)`` and its state travels in every checkpoint. Any object with some
    of these methods works as well; subclassing is optional."""


class UserCallback(HookBase):
    """A callback object of the user's (``callbacks.<name>``) as a hook: the methods it has are
    called, with ``trainer`` set on it; its state, if it has one, is saved as ``callback.<name>``."""

    METHODS = ("before_train", "before_epoch", "after_step", "after_epoch", "after_train", "flush")

    def __init__(self, name: str, obj):
        self.name, self.obj = name, obj
        if not any(callable(getattr(obj, m, None)) for m in self.METHODS[:5]):
            raise ConfigError(f"callbacks.{name}={type(obj).__name__}: has none of the hook methods "
                              f"{', '.join(self.METHODS[:5])} (see trainforge.Callback)")
        if callable(getattr(obj, "state_dict", None)):
            self.state_key = f"callback.{name}"
        for method in self.METHODS:  # the object's own methods, called as the hooks' are
            fn = getattr(obj, method, None)
            setattr(self, method, fn if callable(fn) else _nothing)

    def __setattr__(self, key, value):
        if key == "trainer" and "obj" in self.__dict__:
            self.obj.trainer = value
        super().__setattr__(key, value)

    def state_dict(self):
        return self.obj.state_dict()

    def load_state_dict(self, state):
        self.obj.load_state_dict(state)


def _nothing() -> None:
    return None


class MetricState:
    """A user metric's own state in the checkpoint (``metric.<name>``)."""

    def __init__(self, name: str, metric):
        self.state_key, self.metric = f"metric.{name}", metric

    def state_dict(self):
        return self.metric.state_dict()

    def load_state_dict(self, state):
        self.metric.load_state_dict(state)

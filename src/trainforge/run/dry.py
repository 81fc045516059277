"""The dry batch: one small batch through the data, the model, the loss and the metrics
before the run opens, so that a broken contract is one line (exit 2) and not a crash in
the first step with a FAILED run directory left behind.

It changes nothing: no optimizer step, no gradient (``no_grad``), the model's buffers
(BatchNorm statistics) and every RNG state put back, the metrics reset. The objects are
the run's own, built once.
"""
from __future__ import annotations

import contextlib

import torch

from trainforge.engine.components import PlainLoss, call_style
from trainforge.engine.rng import RNGState
from trainforge.engine.trainer import call, to_device
from trainforge.errors import ConfigError, TrainforgeError



def _what(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} ({', '.join(type(v).__name__ for v in obj[:4])})"
    if isinstance(obj, dict):
        return f"a dict with keys {list(obj)[:6]}"
    return f"a {type(obj).__name__}"


def first_batch(dataset, collate_fn, batch_size: int, names: dict):
    """A batch of the first items of ``dataset``, made as the loader makes one."""
    from torch.utils.data import default_collate

    idx = list(range(min(batch_size, len(dataset))))
    try:
        items = dataset.__getitems__(idx) if hasattr(dataset, "__getitems__") else [dataset[i] for i in idx]
        batch = (collate_fn or default_collate)(items)
    except TrainforgeError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's dataset or collate function
        raise ConfigError(f"{names['data']}: reading items {idx} failed: {type(e).__name__}: {_first_line(e)}") from e
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ConfigError(f"{names['data']}: an item (or what data.collate_fn makes of a list of items) must be "
                          f"a pair (inputs, target); it gave {_what(batch)} (more inputs: ((x, mask), y) or "
                          "({'x': x, 'mask': mask}, y))")
    return batch


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


@contextlib.contextmanager
def unchanged(model):
    """Every RNG state and the model's buffers as they were, after the block."""
    rng = RNGState().state_dict()
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        model.train(training)
        RNGState().load_state_dict(rng)


def dry_batch(model, loss_fn, metrics, loader, collate_fn, device, precision, names: dict) -> str:
    """Check the contracts on one batch of the training set (the loader's batch size, the
    first items); returns how the model is called (``call_style``).
    A loss of the PyTorch convention gets its ``component_names`` here. ``names`` says what
    the config calls each part (``{"data": "data=my_pkg.Signals", "model": ..., "loss": ...}``)."""
    with unchanged(model), torch.no_grad():
        inputs, target = to_device(first_batch(loader.dataset, collate_fn, loader.batch_size, names), device)
        style = call_style(model, inputs)
        model.train()
        try:
            with precision.autocast():
                output = call(model, inputs, style)
        except Exception as e:  # noqa: BLE001 - the user's model
            raise ConfigError(f"{names['model']}: failed on a batch of {names['data']} (inputs: {_what(inputs)}): "
                              f"{type(e).__name__}: {_first_line(e)}") from e
        check_loss(loss_fn, output, target, names["loss"])
        for key, metric in metrics.metrics.items():
            try:
                metric.update(output, target)
            except Exception as e:  # noqa: BLE001 - the user's metric
                raise ConfigError(f"metrics.{key}={type(metric).__name__}: update(output, target) failed on a batch "
                                  f"(output: {_what(output)}, target: {_what(target)}): {type(e).__name__}: "
                                  f"{_first_line(e)}") from e
        metrics.reset()
    return style


def check_loss(loss_fn, output, target, name: str) -> None:
    """The loss takes the model's output and the target and returns a scalar tensor, or
    ``(total, {name: scalar})``."""
    must = "must return a scalar tensor, or (total, {name: value})"
    fn = loss_fn.fn if isinstance(loss_fn, PlainLoss) else loss_fn
    try:
        result = fn(output, target)
    except Exception as e:  # noqa: BLE001 - the user's loss
        raise ConfigError(f"{name}: cannot take the model's output ({_what(output)}) and the target "
                          f"({_what(target)}): {type(e).__name__}: {_first_line(e)}") from e
    total, parts = (result, {}) if isinstance(result, torch.Tensor) else \
        result if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict) else (result, None)
    if not (isinstance(total, torch.Tensor) and total.numel() == 1 and total.is_floating_point()) or parts is None:
        raise ConfigError(f"{name}: {must}; it returned {_what(result)}")
    for key, value in parts.items():
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise ConfigError(f"{name}: {must}; its component {key!r} is {_what(value)}, not a scalar")
    if isinstance(loss_fn, PlainLoss):
        loss_fn.component_names = tuple(parts)
    elif set(loss_fn.component_names) - set(parts):
        raise ConfigError(f"{name}: returned the components {list(parts)}, but its component_names are "
                          f"{list(loss_fn.component_names)}")

"""The Python API: ``compose``, ``fit``, ``load`` (re-exported as ``trainforge.compose`` ...).

    import trainforge
    cfg = trainforge.compose(["experiment=digits", "trainer.epochs=3"])
    result = trainforge.fit(cfg, run_dir="runs/digits")      # errors raise; nothing calls sys.exit
    model, cfg = trainforge.load("runs/digits", ckpt="best")  # the weights that won, in eval mode

Works from a notebook or a script: no Hydra app is needed around it.
"""
from __future__ import annotations

import dataclasses
import datetime
import weakref
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainforge.errors import CheckpointError, ConfigError
from trainforge.files import BEST, BEST_WEIGHTS, CONFIG, LATEST, METRICS_JSON, read_status

_COMPOSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # cfg -> (overrides, sources) it came from


def compose(overrides=(), config_dir=None, config_name: str = "train") -> DictConfig:
    """The config ``trainforge OVERRIDES`` would train: the packaged configs, and
    ``config_dir`` (a folder of your own) after them, as ``--config-dir`` adds it."""
    from trainforge.config.sources import compose_config, sources_with

    overrides, sources = list(overrides), sources_with([config_dir] if config_dir else [], config_name)
    cfg = compose_config(sources, overrides)
    _COMPOSED[cfg] = (overrides, sources)
    return cfg


@dataclasses.dataclass
class Result:
    """What ``fit`` returns: how the run ended and where it is."""

    status: str
    best: dict
    metrics: list
    run_dir: Path

    @property
    def best_value(self):
        return self.best.get("value")


def fit(cfg, run_dir=None, overrides=None) -> Result:
    """Train ``cfg`` into ``run_dir`` (default ``outputs/DATE/TIME``), as ``python train.py``
    does. A refused config or a failed run raises (ConfigError and the other trainforge
    errors); a run stopped by a signal raises ``Preempted`` after saving its checkpoint."""
    import json

    from trainforge.config import validate
    from trainforge.run.train import run

    if run_dir is None:
        now = datetime.datetime.now()
        run_dir = Path("outputs") / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S_%f")
    composed, sources = _COMPOSED.get(cfg, ([], None))
    overrides = list(overrides if overrides is not None else composed)
    validate(cfg)
    run(cfg, run_dir=run_dir, overrides=overrides, validated=True, sources=sources)
    record = read_status(run_dir)
    metrics_file = Path(run_dir) / METRICS_JSON
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else []
    return Result(record.get("status", "UNKNOWN"), record.get("best") or {}, metrics, Path(run_dir))


def load(source, ckpt: str = "best", device: str = "cpu", weights: str | None = None):
    """``(model, cfg)``: the model of a run, built from the run's own saved config.yaml (not
    today's configs) with the weights of ``ckpt`` (``best``, ``latest``, or a checkpoint
    file), in eval mode on ``device``. ``source`` is a run directory or a checkpoint file.
    ``weights``: ``raw`` the trained weights, ``ema`` their moving average (a run with
    ``trainer.ema``); unset, ``best`` gives the weights that won (the EMA's when it was
    validated; ``status.json``'s ``best.weights`` says which) and the others the raw ones."""
    import torch

    from trainforge.engine.checkpoint import load_checkpoint, safe_load
    from trainforge.run.build import build_model

    if weights not in (None, "raw", "ema"):
        raise ConfigError(f"weights={weights}: allowed values are raw, ema")
    source = Path(source).expanduser()
    run_dir = source if source.is_dir() else source.parent.parent if source.parent.name == "checkpoints" \
        else source.parent
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{source}: no {CONFIG} there (give a run directory, or a checkpoint inside one)")
    cfg = OmegaConf.load(run_dir / CONFIG)
    if ckpt == "best" and not source.is_file():  # never another file in its place: the weights that won, or an error
        path = run_dir / (BEST_WEIGHTS if weights is None else BEST)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file (the run saved no best epoch); load it with ckpt='latest'")
        state = safe_load(path) if weights is None else _weights(load_checkpoint(path), weights, path)
    else:
        path = source if source.is_file() else run_dir / LATEST if ckpt == "latest" else Path(ckpt)
        state = _weights(load_checkpoint(path), weights or "raw", path)
    model = build_model(cfg.model, warm_start=False)
    model.load_state_dict(state)
    return model.to(torch.device(device)).eval(), cfg


def _weights(checkpoint: dict, weights: str, path) -> dict:
    if weights == "raw":
        return checkpoint["model"]
    if "ema" not in checkpoint:
        raise CheckpointError(f"{path}: holds no EMA weights (its run had no trainer.ema.decay); "
                              "load weights='raw'")
    return checkpoint["ema"]["module"]

"""cfg -> objects, in one visible order. The only caller of ``hydra.utils.instantiate``."""
from __future__ import annotations

import inspect
import logging
import math
import os

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from trainforge.data import EpochSampler
from trainforge.engine import distributed as dist
from trainforge.engine.amp import Precision
from trainforge.engine.checkpoint import CheckpointManager, load_weights
from trainforge.engine.compile import CompileReport, compile_model
from trainforge.engine.hooks import CheckpointHook, EvalHook, LoggingHook, PlateauHook, PreemptionHook
from trainforge.engine.logging import LOGGER
from trainforge.engine.rng import seed_everything
from trainforge.engine.trainer import GRAD_NORM_EVERY, BaseTrainer
from trainforge.errors import ConfigError, TrainforgeError


def instantiate(node, **kwargs):
    """hydra's instantiate, letting a constructor's own user error through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, TrainforgeError):
            raise e.__cause__ from None
        raise


def resolve_device(name: str) -> torch.device:
    """auto: the job's first visible GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device={name}: allowed values are auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: no CUDA GPU is visible to this process")
    return device


def set_determinism(enabled: bool, threads) -> None:
    if threads:
        torch.set_num_threads(threads)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def available_metrics(loss_fn, metrics) -> list:
    """Every epoch-record column a monitor may name."""
    train = ["train_loss", "train_loss_min", "train_loss_max", "train_grad_norm"]
    train += [f"train_{c}" for c in loss_fn.component_names]
    val = ["val_loss", *(f"val_{c}" for c in loss_fn.component_names), *(f"val_{m}" for m in metrics.names)]
    return val + train


def check_monitor(key: str, name: str, available: list) -> None:
    if name not in available:
        raise ConfigError(f"{key}={name}: not a metric of this experiment; available: {', '.join(available)}")


def build_model(node, warm_start: bool) -> torch.nn.Module:
    """The model of ``node``; ``init_weights`` (a weights file) is loaded if ``warm_start``."""
    node = OmegaConf.to_container(node, resolve=True)
    init = node.pop("init_weights", None)
    model = instantiate(node)
    if init and warm_start:
        missing, unexpected = load_weights(model, init)
        logging.getLogger(LOGGER).info("Warm start from %s: %d missing keys %s, %d unexpected keys %s", init,
                                       len(missing), missing[:10], len(unexpected), unexpected[:10])
    return model


def build(cfg, run_dir, overrides=(), resuming=False) -> BaseTrainer:
    """Build the trainer for ``cfg`` writing into ``run_dir``. Order: determinism, device,
    seed, data, loaders, model, loss, optimizer, scheduler, precision, hooks, trainer.
    ``overrides`` (the command line's) travel in each checkpoint for ``resume``."""
    t = cfg.trainer
    set_determinism(t.deterministic, t.threads)
    device = resolve_device(t.device)
    seed_everything(cfg.seed)

    data = instantiate(cfg.data)
    train_set, val_set = data.train_set(), data.val_set()
    lengths = train_set.lengths() if data.bucket else None
    sampler = EpochSampler(len(train_set), seed=cfg.seed, shuffle=data.shuffle, rank=dist.rank(),
                           world_size=dist.world_size(), lengths=lengths, batch_size=data.batch_size)
    loader_args = dict(batch_size=data.batch_size, num_workers=data.num_workers, pin_memory=data.pin_memory,
                       persistent_workers=data.num_workers > 0, collate_fn=data.collate_fn)
    # the loader's own generator keeps worker seeding off the global RNG (exact resume)
    train_loader = DataLoader(train_set, sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed),
                              **loader_args)
    val_loader = DataLoader(val_set, shuffle=False, **loader_args)
    if data.on_device:  # same sampler, same batches: one index op each, on the device
        from trainforge.data.device import device_loaders

        train_loader, val_loader = device_loaders(data, train_set, val_set, sampler, device)

    model = build_model(cfg.model, warm_start=not resuming).to(device)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = compile_model(model, t.compile, t.compile_backend)
    loss_fn = instantiate(cfg.loss).to(device)
    make_optimizer = instantiate(cfg.optimizer, _convert_="all")
    fused = {}
    if t.on_nonfinite == "skip" and "fused" in inspect.signature(make_optimizer.func).parameters:
        fused = {"fused": True}  # lets a non-finite window be skipped on the device, without a sync
    optimizer = make_optimizer(model.parameters(), **fused)
    steps_per_epoch = math.ceil(len(train_loader) / t.grad_accum)
    scheduler = instantiate(cfg.scheduler, _convert_="all")(optimizer, steps_per_epoch=steps_per_epoch,
                                                            epochs=t.epochs)
    precision = Precision(t.precision, device, num_params, compiled=t.compile)
    metrics = data.metrics()

    ck = cfg.checkpoint
    available = available_metrics(loss_fn, metrics)
    check_monitor("checkpoint.monitor", ck.monitor, available)
    hooks = [EvalHook(val_loader, metrics),
             LoggingHook(run_dir, cfg.log.interval, cfg.log.progress, cfg.log.batch_metrics)]
    if hasattr(scheduler, "observe"):
        check_monitor("scheduler.monitor", scheduler.monitor, available)
        hooks.append(PlateauHook())
    manager = CheckpointManager(run_dir, ck.save_freq, ck.keep_last_n, ck.top_k, ck.monitor, ck.mode)
    checkpointer = CheckpointHook(manager, OmegaConf.to_yaml(cfg, resolve=True), ck.save_optimizer,
                                  ck.every_n_steps, overrides)
    hooks += [checkpointer, PreemptionHook(checkpointer)]
    if t.compile:
        hooks.append(CompileReport())
    return BaseTrainer(model, optimizer, scheduler, loss_fn, train_loader, sampler, precision, device,
                       epochs=t.epochs, grad_accum=t.grad_accum, clip_grad=t.clip_grad,
                       on_nonfinite=t.on_nonfinite, max_nonfinite=t.max_nonfinite, hooks=hooks,
                       grad_norm_every=1 if cfg.log.batch_metrics else GRAD_NORM_EVERY)

"""cfg -> objects, in one visible order. The only caller of ``hydra.utils.instantiate``."""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import re

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from trainforge.data import EpochSampler
from trainforge.distributed import group as dist
from trainforge.engine.amp import Precision
from trainforge.engine.checkpoint import CheckpointManager, load_weights
from trainforge.engine.compile import CompileReport, compile_model
from trainforge.config.targets import is_function
from trainforge.engine.components import as_loss
from trainforge.engine.hooks import CheckpointHook, EvalHook, LoggingHook, PlateauHook, PreemptionHook
from trainforge.engine.logging import LOGGER
from trainforge.engine.rng import seed_everything
from trainforge.engine.trainer import GRAD_NORM_EVERY, BaseTrainer
from trainforge.errors import ConfigError, TrainforgeError
from trainforge.files import RunRecord
from trainforge.run.trial import judge_from_env


def instantiate(node, group: str | None = None, **kwargs):
    """hydra's instantiate; a constructor's error becomes a one-line ConfigError naming
    ``group`` (default: the node's key) and its key where the message names one (:func:`blame`)."""
    if group is None:
        group = node._key() if OmegaConf.is_config(node) and node._key() else "config"
    with blame(group, node):
        return hydra_instantiate(node, **kwargs)


@contextlib.contextmanager
def blame(group: str, node):
    """Turn an error raised by ``group``'s constructor (torch's optimizers, models, data)
    into ``group.key=value: message`` when the message names one of the node's keys,
    else ``group=<target>: message``. trainforge's own user errors pass unchanged."""
    try:
        yield
    except (InstantiationException, TypeError, ValueError, AssertionError) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        if isinstance(cause, TrainforgeError):
            raise cause from None
        raise constructor_error(group, node, cause) from e


# how torch's constructors name some keys in their messages ("Invalid learning rate: -1.0")
TORCH_WORDS = {"lr": ("learning rate",), "eps": ("epsilon",), "betas": ("beta parameter",)}


def constructor_error(group: str, node, exc: BaseException) -> ConfigError:
    items = node if isinstance(node, dict) else OmegaConf.to_container(node, resolve=True)
    # hydra's own messages (a _target_ it cannot import) span lines: join them
    text = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip() and "full_key" not in ln)
    text = text or type(exc).__name__
    named = [k for k in sorted(items, key=len, reverse=True) if not k.startswith("_") and
             any(re.search(rf"\b{re.escape(w)}\b", text, re.I) for w in (k, *TORCH_WORDS.get(k, ())))]
    if named:
        value = items[named[0]]
        return ConfigError(f"{group}.{named[0]}={value}: {text} (raised by {items.get('_target_')})")
    return ConfigError(f"{group}={items.get('_target_')}: {text}")


def resolve_device(name: str) -> torch.device:
    """auto: the job's first visible GPU if there is one, else the CPU. With several ranks
    each rank takes GPU ``<local rank>`` of the job's visible devices."""
    try:
        device = torch.device(name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise ConfigError(f"trainer.device={name}: allowed values are auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: no CUDA GPU is visible to this process")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}: no Apple MPS device is available to this process")
    if device.type == "cuda":
        index = int(os.environ.get("LOCAL_RANK", 0)) if dist.world_size() > 1 else device.index or 0
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def set_determinism(enabled: bool, threads) -> None:
    if not threads and dist.world_size() > 1:  # ranks on one machine share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size()))
        threads = max(1, (os.cpu_count() or 1) // local)
    if threads:
        torch.set_num_threads(threads)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def available_metrics(loss_fn, metrics, ema_columns: bool = False) -> list:
    """Every epoch-record column a monitor may name (``val_ema_*`` too when the EMA is
    validated beside the weights: ``trainer.ema.validate_with=both``)."""
    train = ["train_loss", "train_loss_min", "train_loss_max", "train_grad_norm"]
    train += [f"train_{c}" for c in loss_fn.component_names]
    val = ["loss", *loss_fn.component_names, *metrics.names]
    return [f"val_{v}" for v in val] + [f"val_ema_{v}" for v in val if ema_columns] + train


def check_monitor(key: str, name: str, available: list) -> None:
    if name not in available:
        raise ConfigError(f"{key}={name}: not a metric of this experiment; available: {', '.join(available)}")


def build_model(node, warm_start: bool) -> torch.nn.Module:
    """The model of ``node``; ``init_weights`` (a weights file) is loaded if ``warm_start``."""
    node = OmegaConf.to_container(node, resolve=True)
    init = node.pop("init_weights", None)
    model = instantiate(node, "model")
    if init and warm_start:
        from trainforge.config import WEIGHTS_FILE

        if WEIGHTS_FILE(init):  # a resume=auto that found no checkpoint starts fresh: the door let it by
            raise ConfigError(f"model.init_weights={init}: {WEIGHTS_FILE(init)}")
        missing, unexpected = load_weights(model, init)
        loaded = len(model.state_dict()) - len(missing)
        if loaded == 0:
            raise ConfigError(f"model.init_weights={init}: none of its {len(unexpected)} keys is one of this "
                              f"model's (model={node.get('_target_')}; the file has e.g. {unexpected[:3]})")
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        untrained = [k for k in missing if k in frozen]
        if untrained:
            raise ConfigError(f"model.init_weights={init}: holds no weights for {len(untrained)} frozen "
                              f"parameters (model.freeze_encoder=true would freeze them untrained), e.g. "
                              f"{untrained[:3]}")
        logging.getLogger(LOGGER).info("Warm start from %s: loaded %d keys, %d missing keys %s, %d unexpected "
                                       "keys %s", init, loaded, len(missing), missing[:10], len(unexpected),
                                       unexpected[:10])
    return model


def logging_hooks(log_cfg, record, device) -> tuple:
    """(display, logs): the progress bar, if any, which goes before EvalHook so that it
    closes before validation; then, after EvalHook, peak GPU memory (before the epoch
    record is made, after validation ran), LoggingHook, TensorBoard (reads the record).
    The ranks that write nothing show nothing: no bar, no TensorBoard."""
    from trainforge.config import progress_mode
    from trainforge.engine import progress

    mode = progress.resolve(progress_mode(log_cfg.progress)) if record.writes else "false"
    logger = LoggingHook(record, log_cfg.interval, mode == "lines", log_cfg.batch_metrics)
    display = [progress.ProgressHook(logger)] if mode == "bar" else []
    logs = [logger]
    if device.type == "cuda":
        from trainforge.engine.monitors import GpuMemoryHook

        logs.insert(0, GpuMemoryHook(logger))
    if log_cfg.tensorboard and record.writes:
        from trainforge.engine.monitors import TensorBoardHook

        logs.append(TensorBoardHook(record.run_dir, logger))
    return display, logs


def build(cfg, run_dir, overrides=(), resuming=False, record=None, sources=None) -> BaseTrainer:
    """Build the trainer for ``cfg`` writing into ``run_dir`` through ``record`` (the run's
    RunRecord; default: one that writes on rank 0). Order: determinism, device, seed, data,
    loaders, model, loss, optimizer, scheduler, precision, the dry batch, hooks, trainer (the
    order the random draws are made in: a resume depends on it; the dry batch draws nothing).
    ``overrides`` (the command line's) travel in each checkpoint for ``resume``, and so do
    ``sources`` (how it was composed)."""
    record = record or RunRecord(run_dir, writes=dist.is_main())
    t = cfg.trainer
    set_determinism(t.deterministic, t.threads)
    device = resolve_device(t.device)
    seed_everything(cfg.seed)
    data, sampler, train_loader, val_loader = build_data(cfg, device)
    if t.test_after_fit:
        if not has_test_split(cfg, data):  # said before training, not after it
            raise ConfigError(f"trainer.test_after_fit=true: data={cfg.data.get('_target_')} has no test split; "
                              "set data.test_path, data.test (plain datasets) or data.test_fraction (digits)")
    model = build_model(cfg.model, warm_start=not resuming).to(device)
    if dist.world_size() > 1:  # same initial weights on every rank, then each rank its own random stream
        seed_everything(cfg.seed + dist.rank())
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = compile_model(model, t.compile, t.compile_backend)
    loss_fn = build_loss(cfg, device)
    metrics = build_metrics(cfg, data, device)
    optimizer = build_optimizer(cfg, model)
    model = dist.wrap(model, device, t.sync_batchnorm)  # DDP at world size > 1
    steps_per_epoch = math.ceil(len(train_loader) / t.grad_accum)
    with blame("scheduler", cfg.scheduler):
        scheduler = instantiate(cfg.scheduler, "scheduler", _convert_="all")(
            optimizer, steps_per_epoch=steps_per_epoch, epochs=t.epochs)
    precision = Precision(t.precision, device, num_params, compiled=t.compile)
    style = "whole"
    if t.dry_batch:
        from trainforge.run.dry import dry_batch

        style = dry_batch(dist.unwrap(model), loss_fn, metrics, train_loader, data.collate_fn, device,
                          precision, _names(cfg))
    hooks = build_hooks(cfg, record, (overrides, sources), device, val_loader, loss_fn, metrics, scheduler, model)
    return BaseTrainer(model, optimizer, scheduler, loss_fn, train_loader, sampler, precision, device,
                       epochs=t.epochs, grad_accum=t.grad_accum, clip_grad=t.clip_grad,
                       on_nonfinite=t.on_nonfinite, max_nonfinite=t.max_nonfinite, hooks=hooks,
                       grad_norm_every=1 if cfg.log.batch_metrics else GRAD_NORM_EVERY, call_style=style)


def _names(cfg) -> dict:
    """How the config names the data, model and loss (for the dry batch's messages)."""
    data = cfg.data.train.get("_target_") if "train" in cfg.data else cfg.data.get("_target_")
    return {"data": f"data{'.train' if 'train' in cfg.data else ''}={data}",
            "model": f"model={cfg.model.get('_target_')}", "loss": f"loss={cfg.loss.get('_target_')}"}


def build_data(cfg, device) -> tuple:
    """(data option, sampler, train loader, val loader). Under DDP each rank's validation
    loader holds its contiguous part of the set (``shard``), if every rank gets a sample."""
    node = cfg.data
    skip_test = {"test": None} if "test" in node and "train" in node else {}  # built when evaluated, not here
    data = instantiate(node, "data", **skip_test)
    train_set, val_set = data.train_set(), data.val_set()
    lengths = train_set.lengths() if data.bucket else None
    sampler = EpochSampler(len(train_set), seed=cfg.seed, shuffle=data.shuffle, rank=dist.rank(),
                           world_size=dist.world_size(), lengths=lengths, batch_size=data.batch_size)
    loader_args = dict(batch_size=data.batch_size, num_workers=data.num_workers, pin_memory=data.pin_memory,
                       persistent_workers=data.num_workers > 0, collate_fn=data.collate_fn)
    # the loader's own generator keeps worker seeding off the global RNG (exact resume)
    train_loader = DataLoader(train_set, sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed),
                              **loader_args)
    part = shard(len(val_set))
    val_loader = DataLoader(val_set, sampler=part, **loader_args)
    if data.on_device:  # same sampler, same batches: one index op each, on the device
        from trainforge.data.device import device_loaders

        train_loader, val_loader = device_loaders(data, train_set, val_set, sampler, device, part)
    return data, sampler, train_loader, val_loader


def shard(n: int):
    """This rank's part of ``n`` validation samples: a contiguous block (rank order is sample
    order; no sample twice, none padded), or all of them at world size 1 or when some rank
    would get none."""
    world, rank = dist.world_size(), dist.rank()
    if world == 1 or n < world:
        return range(n)
    return range(n * rank // world, n * (rank + 1) // world)


def has_test_split(cfg, data) -> bool:
    """Whether the data option of ``cfg`` (built: ``data``) has a test split."""
    if "train" in cfg.data:  # plain datasets: data.test, built only when evaluated
        return cfg.data.get("test") is not None
    return data.test_set() is not None


def build_loss(cfg, device):
    """The loss of ``cfg.loss`` as the loop calls it (a function target is taken as partial)."""
    partial = {"_partial_": True} if is_function("loss", cfg.loss._target_) else {}
    loss_fn = as_loss(instantiate(cfg.loss, "loss", **partial))
    return loss_fn.to(device) if isinstance(loss_fn, torch.nn.Module) else loss_fn


def build_metrics(cfg, data, device):
    """The validation metrics: the data option's (if it has any) and the ``metrics`` node's."""
    from trainforge.engine.components import MetricSet

    metrics = {"data": data.metrics()}
    for key, node in cfg.metrics.items():
        if key in metrics:
            raise ConfigError(f"metrics.{key}: the name is taken; give the metric another key")
        metrics[key] = instantiate(node, f"metrics.{key}")
    return MetricSet(metrics, device)


def build_optimizer(cfg, model):
    make_optimizer = instantiate(cfg.optimizer, "optimizer", _convert_="all")
    fused = {}
    if cfg.trainer.on_nonfinite == "skip" and "fused" in inspect.signature(make_optimizer.func).parameters:
        fused = {"fused": True}  # lets a non-finite window be skipped on the device, without a sync
    # a model may give parameter groups (its own LR for a head, frozen parts left out)
    params = model.param_groups(cfg.optimizer.lr) if hasattr(model, "param_groups") else model.parameters()
    with blame("optimizer", cfg.optimizer):
        return make_optimizer(params, **fused)


def build_hooks(cfg, record, composed, device, val_loader, loss_fn, metrics, scheduler, model) -> list:
    """The hooks, in the order they run: progress bar, EMA, EvalHook, the VAE hooks (between
    it and the logging hooks), logging, plateau, callbacks, early stop, checkpoints,
    preemption, compile report."""
    metrics, vae_hooks = vae_monitoring(cfg, record, loss_fn, metrics)
    ck, ema, validate_with = cfg.checkpoint, build_ema(cfg.trainer.ema, model), cfg.trainer.ema.validate_with
    available = available_metrics(loss_fn, metrics, ema_columns=ema is not None and validate_with == "both")
    check_monitor("checkpoint.monitor", ck.monitor, available)
    display, logs = logging_hooks(cfg.log, record, device)
    sharded = len(shard(len(val_loader.dataset))) < len(val_loader.dataset)  # DDP: each rank its part
    evaluator = EvalHook(val_loader, metrics, sharded, ema, validate_with)
    hooks = [*display, *([ema] if ema else []), evaluator, *vae_hooks, *logs]
    if hasattr(scheduler, "observe"):
        check_monitor("scheduler.monitor", scheduler.monitor, available)
        hooks.append(PlateauHook())
    hooks += build_callbacks(cfg)
    if cfg.trainer.early_stop.patience:
        from trainforge.engine.stopping import EarlyStopHook

        stop = cfg.trainer.early_stop
        hooks.append(EarlyStopHook(ck.monitor, ck.mode, stop.patience, stop.min_delta, stop.check_finite))
    judge = judge_from_env()  # a search's trial: report each epoch, stop when the pruner says so
    if judge is not None:
        from trainforge.engine.stopping import PruneHook

        hooks.append(PruneHook(ck.monitor, judge))
    ema_won = ema is not None and (validate_with == "ema" or ck.monitor.startswith("val_ema_"))
    manager = CheckpointManager(record, ck.save_freq, ck.keep_last_n, ck.top_k, ck.monitor, ck.mode,
                                weights_kind="ema" if ema_won else "raw")
    overrides, sources = composed
    checkpointer = CheckpointHook(manager, OmegaConf.to_yaml(cfg, resolve=True), ck.save_optimizer,
                                  ck.every_n_steps, overrides, sources, ema.weights if ema_won else None)
    hooks += [checkpointer, PreemptionHook(checkpointer)]
    if cfg.log.mlflow and record.writes:  # after the checkpoints: an epoch goes out once it is saved
        hooks.append(tracking_hook(cfg, record, logs))
    if cfg.trainer.compile:
        hooks.append(CompileReport())
    return hooks


def tracking_hook(cfg, record, logs):
    """``log.mlflow=true``: the run's MLflow run (engine/tracking.py), fed from LoggingHook."""

    from trainforge.engine import tracking

    logger = next(h for h in logs if isinstance(h, LoggingHook))
    where = tracking.where_for(cfg.log, record.run_dir)
    params = tracking.flat_params(OmegaConf.to_container(cfg, resolve=True))
    run_dir = record.run_dir
    name = f"{run_dir.parent.name}/{run_dir.name}" if os.environ.get(tracking.PARENT_ENV) else run_dir.name
    return tracking.MlflowHook(record, where, params, logger, cfg.log, name)


def build_ema(node, model):
    """The EMA of the weights (``trainer.ema.decay`` set), or None."""
    if node.decay is None:
        return None
    from trainforge.engine.ema import EMAHook

    return EMAHook(model, node.decay, node.warmup, node.every)


def build_callbacks(cfg) -> list:
    """The ``callbacks`` node's objects as hooks (after logging: they see the epoch record;
    before the checkpoint: their state is saved with the epoch)."""
    from trainforge.engine.components import UserCallback

    return [UserCallback(name, instantiate(node, f"callbacks.{name}")) for name, node in cfg.callbacks.items()]


def vae_monitoring(cfg, record, loss_fn, metrics) -> tuple:
    """(metrics, hooks): a step-counted loss schedule (loss=elbo: beta) and the collapse
    monitor, whose latent statistics ride on EvalHook's pass (no second one)."""
    hooks = []
    if hasattr(loss_fn, "set_step"):
        from trainforge.engine.collapse import LossStepHook

        hooks.append(LossStepHook())
    if cfg.collapse.enabled:
        from trainforge.engine.collapse import CollapseHook
        from trainforge.engine.components import MetricSet
        from trainforge.metrics.latent import LatentStats

        c = cfg.collapse
        stats = LatentStats(c.threshold)
        metrics = MetricSet({**metrics.metrics, "collapse": stats}, metrics.device)
        hooks.append(CollapseHook(stats, record, c.min_active_fraction, c.min_kl, c.patience, c.action))
    return metrics, hooks

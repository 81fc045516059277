"""The schemas of the training groups: optimizer, scheduler, log, trainer, checkpoint,
collapse, and the top-level ``TrainConf``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, ClassVar

from omegaconf import MISSING

from trainforge.config.rules import (Rule, ascending, at_least, betas, fraction, int_or, interval, matches, one_of,
                                     opt, positive, resume_target)


# ---- optimizer (partial: the parameters come at build time) ---------------------------
@dataclass
class AdamWConf:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = opt(3e-3, positive)
    weight_decay: float = opt(1e-4, interval(0))
    betas: List[float] = opt([0.9, 0.999], betas)
    eps: float = opt(1e-8, positive)


@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = opt(3e-3, positive)
    weight_decay: float = opt(0.0, interval(0))
    betas: List[float] = opt([0.9, 0.999], betas)
    eps: float = opt(1e-8, positive)


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = opt(0.05, positive)
    momentum: float = opt(0.9, interval(0, 1, high_open=True))
    weight_decay: float = opt(0.0, interval(0))
    nesterov: bool = False
    RULES: ClassVar[tuple] = (
        Rule("momentum", lambda n, cfg: not n.nesterov or n.momentum > 0,
             "optimizer.nesterov=true needs a momentum > 0"),
    )


# ---- scheduler (partial: optimizer and step counts come at build time) ------------------
def _below_lr(n, cfg) -> bool:
    lr = cfg.optimizer.get("lr")
    return lr is None or n.min_lr < lr


@dataclass
class NoSchedConf:
    _target_: str = "trainforge.engine.schedules.constant"
    _partial_: bool = True


@dataclass
class CosineConf:
    _target_: str = "trainforge.engine.schedules.cosine"
    _partial_: bool = True
    warmup_epochs: float = opt(0.0, interval(0))
    min_lr: float = opt(0.0, interval(0))
    RULES: ClassVar[tuple] = (
        Rule("warmup_epochs", lambda n, cfg: n.warmup_epochs < cfg.trainer.epochs,
             "must be less than trainer.epochs={cfg.trainer.epochs} (the warmup must end before the run)"),
        Rule("min_lr", _below_lr, "must be less than optimizer.lr={cfg.optimizer.lr}"),
    )


@dataclass
class StepConf:
    _target_: str = "trainforge.engine.schedules.step"
    _partial_: bool = True
    step_size: float = opt(10.0, positive)  # epochs
    gamma: float = opt(0.1, positive)


@dataclass
class MultiStepConf:
    _target_: str = "trainforge.engine.schedules.multistep"
    _partial_: bool = True
    milestones: List[float] = opt([30.0, 60.0], ascending)  # epochs
    gamma: float = opt(0.1, positive)


@dataclass
class PlateauConf:
    _target_: str = "trainforge.engine.schedules.plateau"
    _partial_: bool = True
    monitor: str = "val_loss"  # checked against the experiment's metrics at build time
    mode: str = opt("min", one_of("min", "max"))
    factor: float = opt(0.1, interval(0, 1, low_open=True, high_open=True))
    patience: int = opt(5, at_least(0))
    min_lr: float = opt(0.0, interval(0))
    RULES: ClassVar[tuple] = (Rule("min_lr", _below_lr, "must be less than optimizer.lr={cfg.optimizer.lr}"),)


# ---- single-option groups -------------------------------------------------------------
NO_CREDENTIALS = matches(r"[^@]*", "a URI without user:secret@ (they would be recorded): set MLFLOW_TRACKING_USERNAME "
                         "and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")


@dataclass
class LogConf:
    interval: int = opt(1, at_least(1))  # stdout batch line every `interval` batches; training.log gets every batch
    batch_metrics: bool = False  # true: batch_metrics.csv with one row per batch
    tensorboard: bool = False  # true: scalars in <run_dir>/tensorboard/ (needs the tensorboard extra)
    progress: str = "auto"  # auto | bar | lines | false (true = auto); training.log is the same either way
    mlflow: bool = False  # true: one MLflow run per run (needs the mlflow extra; docs/tracking.md)
    mlflow_uri: Optional[str] = opt(None, NO_CREDENTIALS)  # null: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    mlflow_experiment: Optional[str] = None  # null: the experiment option (else "trainforge")
    mlflow_log_model: bool = False  # true: best_model_weights.pt as an artifact at the end
    mlflow_wait_s: float = opt(30.0, at_least(0, integer=False))  # at the end, seconds queued MLflow calls get to finish
    mlflow_spool: str = opt("auto", one_of("auto", "true", "false"))  # auto: a SLURM job on sqlite keeps <run_dir>/mlflow/


@dataclass
class EarlyStopConf:
    patience: Optional[int] = opt(None, at_least(1))  # validations in a row without improvement that end the run; null: off
    min_delta: float = opt(0.0, interval(0))  # an improvement of checkpoint.monitor must beat the best by more than this
    check_finite: bool = True  # a monitor value that is NaN or infinite ends the run at once


@dataclass
class EmaConf:
    decay: Optional[float] = opt(None, interval(0, 1, low_open=True, high_open=True))  # EMA of the weights; null: off
    warmup: bool = True  # decay min(decay, (1 + t) / (10 + t)) at update t, so early updates follow the weights
    every: int = opt(1, at_least(1))  # update the EMA every this many optimizer steps
    validate_with: str = opt("ema", one_of("raw", "ema", "both"))  # both: the EMA's values in val_ema_* columns


@dataclass
class TrainerConf:
    epochs: int = opt(10, at_least(1))
    # auto | cpu | cuda | cuda:N | mps
    device: str = opt("auto", matches(r"auto|cpu|cuda(:\d+)?|mps", "allowed values are auto, cpu, cuda, cuda:N, mps"))
    devices: Any = opt(1, int_or("auto"))  # processes (DDP ranks): N >= 1 or auto = every GPU visible to the job
    ddp_timeout: float = opt(300.0, positive)  # seconds a rank waits in a collective before the run fails
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (DDP, GPUs only)
    # auto (see README: bf16 only where it pays off, else fp32) | fp32 | bf16 | fp16
    precision: str = opt("auto", one_of("auto", "fp32", "bf16", "fp16"))
    grad_accum: int = opt(1, at_least(1))  # micro-batches per optimizer step
    clip_grad: Optional[float] = opt(None, positive)  # null: no clipping
    on_nonfinite: str = opt("stop", one_of("stop", "skip"))  # stop | skip
    max_nonfinite: int = opt(10, at_least(1))  # with skip: stop after this many consecutive non-finite steps
    deterministic: bool = False
    threads: Optional[int] = opt(None, at_least(1))  # torch intra-op threads, null: torch's default
    compile: bool = False  # torch.compile the model (checkpoints keep the plain state_dict)
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: no code generation, for debugging)
    dry_batch: bool = True  # check data, model, loss and metrics on one batch before the run opens (changes nothing)
    test_after_fit: bool = False  # when training completes: the best checkpoint on the test split (status.json's test)
    early_stop: EarlyStopConf = field(default_factory=EarlyStopConf)  # on checkpoint.monitor and checkpoint.mode
    ema: EmaConf = field(default_factory=EmaConf)  # an exponential moving average of the weights


@dataclass
class CheckpointConf:
    save_freq: int = opt(1, at_least(0))  # epochs between checkpoints/checkpoint_epoch_NNN.pth (0: never)
    every_n_steps: int = opt(0, at_least(0))  # mid-epoch latest_checkpoint.pth every K optimizer steps (0: never)
    keep_last_n: int = opt(3, at_least(0))  # epoch checkpoints kept (besides top_k and best)
    top_k: int = opt(0, at_least(0))  # also keep the k best epoch checkpoints by monitor (0: off)
    monitor: str = "val_loss"  # checked against the experiment's metrics at build time
    mode: str = opt("min", one_of("min", "max"))
    save_optimizer: bool = True


@dataclass
class CollapseConf:
    enabled: bool = False  # needs a model whose output has mu and logvar (model=seqsetvae)
    threshold: float = opt(0.01, interval(0))  # a unit is active when Var over the val set of E[z|x] exceeds this
    min_active_fraction: float = opt(0.1, fraction())  # low: fewer active units than this fraction of the latent dims
    min_kl: float = opt(0.1, interval(0))  # ...or a raw KL (nats per set, summed over dims) below this
    patience: int = opt(2, at_least(1))  # warn after this many low validations in a row
    action: str = opt("warn", one_of("warn", "stop"))  # warn | stop


@dataclass
class TrainConf:
    model: Any = MISSING
    data: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    log: LogConf = field(default_factory=LogConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    collapse: CollapseConf = field(default_factory=CollapseConf)
    # validation metrics of your own: name -> {_target_: ...} (a list is named after the classes)
    metrics: Any = field(default_factory=dict)
    # callbacks of your own: name -> {_target_: ...}, objects with the hook methods of trainforge.Callback
    callbacks: Any = field(default_factory=dict)
    seed: int = opt(0, interval(0, 2 ** 32 - 1, integer=True))
    name: str = "train"
    resume: Optional[str] = opt(None, resume_target)
    resume_force: Optional[bool] = None  # resume despite a structural config change

"""Structured-config schemas for every config group.

Each YAML option in ``conf/<group>/`` starts its defaults list with ``<name>_schema`` so
that Hydra types and checks every key at composition time: a wrong key or a value of the
wrong type fails before any training with a line naming the full key. The schemas are
stored in Hydra's ConfigStore when this module is imported (``trainforge`` imports it).

Checks a type cannot express (ranges, choices) live in :func:`validate`, which ``run``
calls before it builds anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from trainforge.errors import ConfigError


# ---- model -------------------------------------------------------------------------
@dataclass
class ModelConf:
    _target_: str = MISSING
    init_weights: Optional[str] = None  # warm start: a weights file or checkpoint (not used on resume)


@dataclass
class UNetConf(ModelConf):
    _target_: str = "trainforge.models.UNet"
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 8
    depth: int = 2
    groups: int = 4


@dataclass
class CNNConf(ModelConf):
    _target_: str = "trainforge.models.CNN"
    in_channels: int = 1
    num_classes: int = 10
    channels: int = 32
    dropout: float = 0.1


@dataclass
class SeqEncoderConf(ModelConf):
    _target_: str = "trainforge.models.SeqEncoder"
    num_variables: int = 16
    dim: int = 32
    layers: int = 1
    heads: int = 4
    dropout: float = 0.0


# ---- data --------------------------------------------------------------------------
@dataclass
class DataConf:
    """Keys every data set has: where it is and how it is loaded."""

    _target_: str = MISSING
    path: Optional[str] = None  # null: the embedded set, made into cache_dir on first use
    cache_dir: str = "${oc.env:TRAINFORGE_DATA_DIR,'~/.cache/trainforge'}"
    batch_size: int = 16
    num_workers: int = 0
    pin_memory: bool = False
    preload: bool = True
    shared_memory: bool = False  # one copy in /dev/shm for every process using the same data
    shuffle: bool = True
    val_fraction: float = 0.2
    on_device: bool = False  # keep the preloaded set on the training device (one index op per batch)


@dataclass
class GlintConf(DataConf):
    _target_: str = "trainforge.data.GlintData"
    num_samples: int = 1280
    image_size: int = 64
    threshold: float = 0.5
    image_key: str = "images"  # HDF5 dataset of images, (N, 1, S, S)
    mask_key: str = "masks"  # HDF5 dataset of masks, same shape


@dataclass
class DigitsConf(DataConf):
    _target_: str = "trainforge.data.DigitsData"
    batch_size: int = 64
    split_seed: int = 0


@dataclass
class SeqSetConf(DataConf):
    _target_: str = "trainforge.data.SeqSetData"
    batch_size: int = 32
    num_patients: int = 2000
    num_variables: int = 16
    min_length: int = 8
    max_length: int = 128
    max_sequence_length: Optional[int] = None  # truncate, keeping the most recent events
    bucket: bool = False  # group similar lengths into batches (less padding)


# ---- loss --------------------------------------------------------------------------
@dataclass
class FocalConf:
    _target_: str = "trainforge.losses.FocalLoss"
    alpha: float = 0.5
    gamma: float = 2.0


@dataclass
class BCEConf:
    _target_: str = "trainforge.losses.BCELoss"
    pos_weight: Optional[float] = None


@dataclass
class DiceConf:
    _target_: str = "trainforge.losses.DiceLoss"
    smooth: float = 1.0


@dataclass
class HybridConf:
    _target_: str = "trainforge.losses.HybridLoss"
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    bce_weight: float = 0.5
    alpha: float = 0.5
    gamma: float = 2.0
    smooth: float = 1.0


@dataclass
class CEConf:
    _target_: str = "trainforge.losses.CELoss"
    label_smoothing: float = 0.0


# ---- optimizer (partial: the parameters come at build time) ---------------------------
@dataclass
class AdamWConf:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 3e-3
    weight_decay: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


# ---- scheduler (partial: optimizer and step counts come at build time) ------------------
@dataclass
class NoSchedConf:
    _target_: str = "trainforge.engine.schedules.constant"
    _partial_: bool = True


@dataclass
class CosineConf:
    _target_: str = "trainforge.engine.schedules.cosine"
    _partial_: bool = True
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class StepConf:
    _target_: str = "trainforge.engine.schedules.step"
    _partial_: bool = True
    step_size: float = 10.0  # epochs
    gamma: float = 0.1


@dataclass
class MultiStepConf:
    _target_: str = "trainforge.engine.schedules.multistep"
    _partial_: bool = True
    milestones: List[float] = field(default_factory=lambda: [30.0, 60.0])  # epochs
    gamma: float = 0.1


@dataclass
class PlateauConf:
    _target_: str = "trainforge.engine.schedules.plateau"
    _partial_: bool = True
    monitor: str = "val_loss"
    mode: str = "min"
    factor: float = 0.1
    patience: int = 5
    min_lr: float = 0.0


# ---- single-option groups -------------------------------------------------------------
@dataclass
class LogConf:
    interval: int = 1  # stdout batch line every `interval` batches; training.log gets every batch
    batch_metrics: bool = False
    tensorboard: bool = False
    progress: bool = True  # false: no batch lines on stdout at all (training.log keeps them)


@dataclass
class TrainerConf:
    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    on_nonfinite: str = "stop"  # stop | skip
    max_nonfinite: int = 10
    deterministic: bool = False
    threads: Optional[int] = None
    compile: bool = False  # torch.compile the model (checkpoints keep the plain state_dict)
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: no code generation, for debugging)


@dataclass
class CheckpointConf:
    save_freq: int = 1  # epochs between checkpoints/checkpoint_epoch_NNN.pth (0: never)
    every_n_steps: int = 0  # mid-epoch latest_checkpoint.pth every K optimizer steps (0: never)
    keep_last_n: int = 3
    top_k: int = 0  # also keep the k best epoch checkpoints by monitor (0: off)
    monitor: str = "val_loss"
    mode: str = "min"
    save_optimizer: bool = True


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
    seed: int = 0
    name: str = "train"
    resume: Optional[str] = None
    resume_force: Optional[bool] = None  # resume despite a structural config change


SCHEMAS = {
    "model": {"unet": UNetConf, "cnn": CNNConf, "seqencoder": SeqEncoderConf},
    "data": {"glint": GlintConf, "digits": DigitsConf, "seqset": SeqSetConf},
    "loss": {"focal": FocalConf, "bce": BCEConf, "dice": DiceConf, "hybrid": HybridConf, "ce": CEConf},
    "optimizer": {"adamw": AdamWConf, "adam": AdamConf, "sgd": SGDConf},
    "scheduler": {"none": NoSchedConf, "cosine": CosineConf, "step": StepConf,
                  "multistep": MultiStepConf, "plateau": PlateauConf},
    "log": {"default": LogConf},
    "trainer": {"default": TrainerConf},
    "checkpoint": {"default": CheckpointConf},
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConf)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=group, name=f"{name}_schema", node=node)


register()

_CHOICES = {
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "trainer.on_nonfinite": ("stop", "skip"),
    "checkpoint.mode": ("min", "max"),
}
_MIN = {
    "trainer.epochs": 1, "trainer.grad_accum": 1, "trainer.devices": 1, "trainer.max_nonfinite": 1,
    "log.interval": 1, "checkpoint.save_freq": 0, "checkpoint.every_n_steps": 0,
    "checkpoint.keep_last_n": 0, "checkpoint.top_k": 0, "data.batch_size": 1, "data.num_workers": 0,
}


def validate(cfg) -> None:
    """Raise ConfigError naming the first key whose value is out of range or not allowed."""
    from omegaconf import OmegaConf

    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value}: allowed values are {', '.join(allowed)}")
    for key, low in _MIN.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{key}={value}: must be an integer >= {low}")
    clip = cfg.trainer.clip_grad
    if clip is not None and clip <= 0:
        raise ConfigError(f"trainer.clip_grad={clip}: must be > 0 (or null for no clipping)")
    if cfg.log.tensorboard:
        raise ConfigError("log.tensorboard=true: TensorBoard logging is not available yet; "
                          "epoch_metrics.csv and metrics.json hold every metric")
    if cfg.trainer.devices != 1:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: multi-process DDP is not "
                          "available yet; use torchrun or trainer.devices=1")

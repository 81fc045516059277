"""Structured-config schemas for every config group, with their rules.

Each YAML option in ``conf/<group>/`` starts its defaults list with ``/<group>_<name>_schema``
so that Hydra types and checks every key at composition time: a wrong key or a value of
the wrong type fails before any training with a line naming the full key. The schemas
are stored in Hydra's ConfigStore at the top level (not in the groups, so ``--help`` and
shell completion do not offer them as options) when this module is imported.

Checks a type cannot express (ranges, choices, relations between keys) are declared next
to each field (``opt(default, check...)``) and in a schema's ``RULES``; see
``trainforge.rules``. :func:`validate` runs them all before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from trainforge.errors import ConfigError
from trainforge.rules import (Rule, ascending, at_least, betas, check_config, checkpoint_file, existing_file,
                              fraction, int_or, interval, matches, one_of, opt, positive, resume_target)


def _chans_fit_groups(n, cfg) -> bool:
    chans = [n.base_channels * 2 ** i for i in range(n.depth + 1)]
    return all(c % min(n.groups, c) == 0 for c in chans)


def _data_fact(cfg, name):
    """A fact a data schema declares about its samples (``IN_CHANNELS``, ...), or None."""
    from trainforge.rules import schema_of

    return getattr(schema_of(cfg.data, BY_TARGET), name, None)


# ---- model -------------------------------------------------------------------------
WEIGHTS_FILE = checkpoint_file("a weights file or checkpoint (.pt/.pth)")  # build checks it again when it loads


@dataclass
class ModelConf:
    _target_: str = MISSING
    # warm start: a weights file or checkpoint (not used on resume: a resume needs no such file)
    init_weights: Optional[str] = None
    RULES: ClassVar[tuple] = (
        Rule("init_weights", lambda n, cfg: not n.get("init_weights") or cfg.get("resume") is not None or
             WEIGHTS_FILE(n.init_weights) is None, lambda n, cfg: WEIGHTS_FILE(n.init_weights)),
        Rule("in_channels", lambda n, cfg: "in_channels" not in n or _data_fact(cfg, "IN_CHANNELS") in
             (None, n.in_channels),
             lambda n, cfg: f"must be {_data_fact(cfg, 'IN_CHANNELS')}: the data's samples have that many channels"),
    )


@dataclass
class UNetConf(ModelConf):
    READS: ClassVar[str] = "masks"
    GIVES: ClassVar[str] = "binary"
    _target_: str = "trainforge.models.UNet"
    in_channels: int = opt(1, at_least(1))
    out_channels: int = opt(1, at_least(1))
    base_channels: int = opt(8, at_least(1))
    depth: int = opt(2, at_least(1))
    groups: int = opt(4, at_least(1))
    RULES: ClassVar[tuple] = (
        Rule("groups", _chans_fit_groups, "GroupNorm groups must divide model.base_channels * 2**i at every level"),
        Rule("/data.image_size", lambda n, cfg: cfg.data.get("image_size") is None or
             cfg.data.image_size % 2 ** n.depth == 0,
             "must be divisible by 2**model.depth (model.depth={node.depth}: the UNet halves it that often)"),
    )


@dataclass
class CNNConf(ModelConf):
    READS: ClassVar[str] = "classes"
    GIVES: ClassVar[str] = "classes"
    _target_: str = "trainforge.models.CNN"
    in_channels: int = opt(1, at_least(1))
    num_classes: int = opt(10, at_least(2))
    channels: int = opt(32, at_least(1))
    dropout: float = opt(0.1, fraction())
    RULES: ClassVar[tuple] = (
        Rule("num_classes", lambda n, cfg: _data_fact(cfg, "NUM_CLASSES") in (None, n.num_classes),
             lambda n, cfg: f"must be {_data_fact(cfg, 'NUM_CLASSES')}: the data has that many classes"),
    )


@dataclass
class SeqEncoderConf(ModelConf):
    READS: ClassVar[str] = "events"
    GIVES: ClassVar[str] = "binary"
    _target_: str = "trainforge.models.SeqEncoder"
    num_variables: int = opt(16, at_least(1))
    dim: int = opt(32, at_least(1))
    layers: int = opt(1, at_least(1))
    heads: int = opt(4, at_least(1))
    dropout: float = opt(0.0, fraction())
    RULES: ClassVar[tuple] = (
        Rule("dim", lambda n, cfg: n.dim % n.heads == 0, "must be divisible by model.heads={node.heads}"),
        Rule("num_variables", lambda n, cfg: n.num_variables >= cfg.data.get("num_variables", 0),
             "must be >= data.num_variables={cfg.data.num_variables} (one embedding per variable)"),
    )


@dataclass
class SeqSetVAEConf(ModelConf):
    READS: ClassVar[str] = "sets"
    GIVES: ClassVar[str] = "vae"
    _target_: str = "trainforge.models.SeqSetVAE"
    embed_dim: int = opt(32, at_least(1))  # width of the data's variable-embedding table
    dim: int = opt(32, at_least(1))
    latent_dim: int = opt(16, at_least(1))
    levels: int = opt(1, at_least(1))  # ISAB blocks in the set encoder
    inducing: int = opt(4, at_least(1))
    heads: int = opt(2, at_least(1))
    seq_layers: int = opt(1, at_least(1))
    seq_heads: int = opt(2, at_least(1))
    time_bands: int = opt(8, at_least(1))
    slots: int = opt(8, at_least(1))  # events the decoder predicts per set
    dropout: float = opt(0.0, fraction())
    freeze_encoder: bool = False  # fine-tuning: event tokens, set encoder and latent heads frozen
    head_lr_scale: float = opt(1.0, positive)  # the classification head's LR = optimizer.lr * head_lr_scale
    RULES: ClassVar[tuple] = (
        Rule("heads", lambda n, cfg: n.dim % n.heads == 0, "must divide model.dim={node.dim}"),
        Rule("seq_heads", lambda n, cfg: n.dim % n.seq_heads == 0, "must divide model.dim={node.dim}"),
        Rule("embed_dim", lambda n, cfg: n.embed_dim == cfg.data.get("embed_dim", n.embed_dim),
             "must equal data.embed_dim={cfg.data.embed_dim} (the width of the data's variable embeddings)"),
    )


# ---- data --------------------------------------------------------------------------
@dataclass
class DataConf:
    """Keys every data set has: where it is and how it is loaded."""

    _target_: str = MISSING
    # null: the embedded set, made into cache_dir on first use
    path: Optional[str] = opt(None, existing_file("an HDF5 file (.h5)"))
    cache_dir: str = "${oc.env:TRAINFORGE_DATA_DIR,'~/.cache/trainforge'}"
    batch_size: int = opt(16, at_least(1))
    num_workers: int = opt(0, at_least(0))
    pin_memory: bool = False
    preload: bool = True
    shared_memory: bool = False  # one copy in /dev/shm for every process using the same data
    shuffle: bool = True
    val_fraction: float = opt(0.2, fraction(open_ends=True))
    on_device: bool = False  # keep the preloaded set on the training device (one index op per batch)


@dataclass
class GlintConf(DataConf):
    KIND: ClassVar[str] = "masks"
    IN_CHANNELS: ClassVar[int] = 1
    _target_: str = "trainforge.data.GlintData"
    num_samples: int = opt(1280, at_least(2))
    image_size: int = opt(64, at_least(1))
    threshold: float = opt(0.5, fraction())  # on predicted probabilities, for Dice/IoU
    image_key: str = "images"  # HDF5 dataset of images, (N, 1, S, S)
    mask_key: str = "masks"  # HDF5 dataset of masks, same shape


@dataclass
class DigitsConf(DataConf):
    KIND: ClassVar[str] = "classes"
    IN_CHANNELS: ClassVar[int] = 1
    NUM_CLASSES: ClassVar[int] = 10
    _target_: str = "trainforge.data.DigitsData"
    batch_size: int = opt(64, at_least(1))
    split_seed: int = 0


@dataclass
class SeqSetConf(DataConf):
    _target_: str = "trainforge.data.SeqSetData"
    batch_size: int = opt(32, at_least(1))
    num_patients: int = opt(2000, at_least(2))
    num_variables: int = opt(16, at_least(1))
    min_length: int = opt(8, at_least(1))
    max_length: int = opt(128, at_least(1))
    max_sequence_length: Optional[int] = opt(None, at_least(1))  # truncate, keeping the most recent events
    bucket: bool = False  # group similar lengths into batches (less padding)
    KIND: ClassVar[str] = "layout"  # what its batches are: data.layout says
    layout: str = opt("events", one_of("events", "sets"))  # events: flat padded batches | sets: [batch, sets, events]
    max_sets: Optional[int] = opt(None, at_least(1))  # layout=sets: keep each patient's most recent sets
    mean_set_size: float = opt(4.0, positive)  # generator: average events per set
    embed_dim: int = opt(32, at_least(1))  # generator: width of the fixed variable-embedding table
    RULES: ClassVar[tuple] = (
        Rule("max_length", lambda n, cfg: n.max_length >= n.min_length, "must be >= data.min_length={node.min_length}"),
    )


# ---- loss --------------------------------------------------------------------------
@dataclass
class FocalConf:
    TAKES: ClassVar[str] = "binary"
    _target_: str = "trainforge.losses.FocalLoss"
    alpha: float = opt(0.5, fraction())
    gamma: float = opt(2.0, interval(0))


@dataclass
class BCEConf:
    TAKES: ClassVar[str] = "binary"
    _target_: str = "trainforge.losses.BCELoss"
    pos_weight: Optional[float] = opt(None, positive)


@dataclass
class DiceConf:
    TAKES: ClassVar[str] = "binary"
    _target_: str = "trainforge.losses.DiceLoss"
    smooth: float = opt(1.0, interval(0))


@dataclass
class HybridConf:
    TAKES: ClassVar[str] = "binary"
    _target_: str = "trainforge.losses.HybridLoss"
    focal_weight: float = opt(1.0, interval(0))
    dice_weight: float = opt(1.0, interval(0))
    bce_weight: float = opt(0.5, interval(0))
    alpha: float = opt(0.5, fraction())
    gamma: float = opt(2.0, interval(0))
    smooth: float = opt(1.0, interval(0))
    RULES: ClassVar[tuple] = (
        Rule("focal_weight", lambda n, cfg: n.focal_weight + n.dice_weight + n.bce_weight > 0,
             "at least one of loss.focal_weight, loss.dice_weight, loss.bce_weight must be > 0"),
    )


@dataclass
class CEConf:
    TAKES: ClassVar[str] = "classes"
    _target_: str = "trainforge.losses.CELoss"
    label_smoothing: float = opt(0.0, interval(0, 1, high_open=True))


@dataclass
class ELBOConf:
    TAKES: ClassVar[str] = "vae"
    _target_: str = "trainforge.losses.ELBOLoss"
    beta: float = 0.1  # the KL weight after warm-up (the peak of a cycle)
    schedule: str = "linear"  # constant | linear | cyclical, counted in optimizer steps
    warmup_steps: int = 0
    cycle_steps: int = 1000
    cycle_ratio: float = 0.5  # cyclical: fraction of a cycle spent rising
    free_bits: float = 0.0  # nats per latent dimension (batch mean) below which KL is not pushed down
    recon_weight: float = 1.0
    cls_weight: float = 1.0
    pos_weight: Optional[float] = opt(None, positive)


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
@dataclass
class LogConf:
    interval: int = opt(1, at_least(1))  # stdout batch line every `interval` batches; training.log gets every batch
    batch_metrics: bool = False
    tensorboard: bool = False  # true: scalars in <run_dir>/tensorboard/ (needs the tensorboard extra)
    progress: str = "auto"  # auto | bar | lines | false (true = auto); training.log is the same either way


@dataclass
class TrainerConf:
    epochs: int = opt(10, at_least(1))
    device: str = opt("auto", matches(r"auto|cpu|cuda(:\d+)?|mps", "allowed values are auto, cpu, cuda, cuda:N, mps"))
    devices: Any = opt(1, int_or("auto"))  # processes (DDP ranks): N >= 1 or auto = every GPU visible to the job
    ddp_timeout: float = opt(300.0, positive)  # seconds a rank waits in a collective before the run fails
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (DDP, GPUs only)
    precision: str = opt("auto", one_of("auto", "fp32", "bf16", "fp16"))
    grad_accum: int = opt(1, at_least(1))
    clip_grad: Optional[float] = opt(None, positive)  # null: no clipping
    on_nonfinite: str = opt("stop", one_of("stop", "skip"))
    max_nonfinite: int = opt(10, at_least(1))
    deterministic: bool = False
    threads: Optional[int] = opt(None, at_least(1))
    compile: bool = False  # torch.compile the model (checkpoints keep the plain state_dict)
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: no code generation, for debugging)


@dataclass
class CheckpointConf:
    save_freq: int = opt(1, at_least(0))  # epochs between checkpoints/checkpoint_epoch_NNN.pth (0: never)
    every_n_steps: int = opt(0, at_least(0))  # mid-epoch latest_checkpoint.pth every K optimizer steps (0: never)
    keep_last_n: int = opt(3, at_least(0))
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
    action: str = opt("warn", one_of("warn", "stop"))


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
    seed: int = opt(0, interval(0, 2 ** 32 - 1, integer=True))
    name: str = "train"
    resume: Optional[str] = opt(None, resume_target)
    resume_force: Optional[bool] = None  # resume despite a structural config change


SCHEMAS = {
    "model": {"unet": UNetConf, "cnn": CNNConf, "seqencoder": SeqEncoderConf, "seqsetvae": SeqSetVAEConf},
    "data": {"glint": GlintConf, "digits": DigitsConf, "seqset": SeqSetConf},
    "loss": {"focal": FocalConf, "bce": BCEConf, "dice": DiceConf, "hybrid": HybridConf, "ce": CEConf,
             "elbo": ELBOConf},
    "optimizer": {"adamw": AdamWConf, "adam": AdamConf, "sgd": SGDConf},
    "scheduler": {"none": NoSchedConf, "cosine": CosineConf, "step": StepConf,
                  "multistep": MultiStepConf, "plateau": PlateauConf},
    "log": {"default": LogConf},
    "trainer": {"default": TrainerConf},
    "checkpoint": {"default": CheckpointConf},
    "collapse": {"default": CollapseConf},
}


BY_TARGET = {node._target_: node for options in SCHEMAS.values() for node in options.values()
             if isinstance(getattr(node, "_target_", None), str)}
# top-level keys trainforge reads besides TrainConf's fields (none today: add a field to TrainConf instead)
EXTRA_TOP_LEVEL = ()


def schema_name(group: str, name: str) -> str:
    """The ConfigStore name of an option's schema: top level, so no group lists it."""
    return f"{group}_{name}_schema"


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent). Options reference theirs
    as ``- /<group>_<name>_schema`` first in their defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConf)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(name=schema_name(group, name), node=node)


register()



PROGRESS = ("auto", "bar", "lines", "false")


def progress_mode(value) -> str:
    """``log.progress`` as one of PROGRESS; the boolean spellings of the old schema still
    work (true = auto, false = no batch display on stdout)."""
    mode = {"true": "auto"}.get(str(value).lower(), str(value).lower())
    if mode not in PROGRESS:
        raise ConfigError(f"log.progress={value}: allowed values are {', '.join(PROGRESS)} (true = auto)")
    return mode


def validate(cfg) -> None:
    """Raise ConfigError naming the first key whose value is not allowed (one line,
    ``key=value: what is allowed``): unknown keys, then each schema's declared checks."""
    check_config(cfg, TrainConf, BY_TARGET, EXTRA_TOP_LEVEL)
    _not_built_yet(cfg)



# what the batches of each data kind are, and what a model's output is for a loss
KINDS = {"masks": "images with binary masks", "classes": "images with class labels",
         "events": "event sequences with a label (data.layout=events)",
         "sets": "sequences of event sets with a label (data.layout=sets)"}
OUTPUTS = {"binary": "binary logits", "classes": "class logits", "vae": "a VAE's outputs"}


def _option(group: str, node) -> str:
    return next((name for name, s in SCHEMAS[group].items() if s._target_ == node.get("_target_")),
                str(node.get("_target_")))


def _check_combination(cfg) -> None:
    """The model reads what the data gives and the loss takes what the model gives (any
    other pairing crashes in its first step). A model or loss of the user's own (a
    ``_target_`` without a schema here) is not checked."""
    from trainforge.rules import schema_of

    kind = getattr(schema_of(cfg.data, BY_TARGET), "KIND", None)
    kind = cfg.data.get(kind) if kind == "layout" else kind
    model = schema_of(cfg.model, BY_TARGET)
    reads, gives = getattr(model, "READS", None), getattr(model, "GIVES", None)
    data, name = _option("data", cfg.data), _option("model", cfg.model)
    if kind and reads and reads != kind:
        fits = [n for n, s in SCHEMAS["model"].items() if getattr(s, "READS", None) == kind]
        layout = ", or data.layout=sets" if kind == "events" and reads == "sets" else \
            ", or data.layout=events" if kind == "sets" and reads == "events" else ""
        raise ConfigError(f"model={name}: reads {KINDS[reads]}, but data={data} gives {KINDS[kind]}; "
                          f"use model={' or model='.join(fits)}{layout}")
    takes = getattr(schema_of(cfg.loss, BY_TARGET), "TAKES", None)
    if gives and takes and takes != gives:
        fits = [n for n, s in SCHEMAS["loss"].items() if getattr(s, "TAKES", None) == gives]
        raise ConfigError(f"loss={_option('loss', cfg.loss)}: takes {OUTPUTS[takes]}, but model={name} gives "
                          f"{OUTPUTS[gives]}; use loss={', '.join(fits)}")


def _not_built_yet(cfg) -> None:
    """Relations across groups that no single schema holds, and values this build cannot run."""
    progress_mode(cfg.log.progress)
    if cfg.get("resume_force") and cfg.get("resume") is None:
        raise ConfigError("resume_force=true: means nothing without resume=PATH (it lets a resume change the "
                          "experiment)")
    _check_combination(cfg)
    if cfg.model.get("freeze_encoder") and not cfg.model.get("init_weights"):
        raise ConfigError("model.init_weights: not set, but model.freeze_encoder=true would freeze an untrained "
                          "encoder; pass model.init_weights=PRETRAIN_RUN/best_model_weights.pt")
    from trainforge.launch import check_devices

    check_devices(cfg.trainer.devices, cfg.trainer.device, cfg.trainer.sync_batchnorm)

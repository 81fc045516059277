"""The schemas of the component groups: model, data and loss options.

Each YAML option in ``conf/<group>/`` starts its defaults list with ``/<group>_<name>_schema``
so that Hydra types and checks every key at composition time (see ``config/schemas.py``).
A default is written here once; an option's YAML says only what differs from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from trainforge.config.rules import (Rule, at_least, checkpoint_file, existing_file, fraction, interval, one_of, opt,
                                     positive, schema_of)


def _chans_fit_groups(n, cfg) -> bool:
    chans = [n.base_channels * 2 ** i for i in range(n.depth + 1)]
    return all(c % min(n.groups, c) == 0 for c in chans)


def _data_fact(cfg, name):
    """A fact a data schema declares about its samples (``IN_CHANNELS``, ...), or None."""
    return getattr(schema_of(cfg.data, DATA_BY_TARGET), name, None)


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
    # the test split: an HDF5 file in this option's own format (trainforge eval split=test); null: the option's own
    test_path: Optional[str] = opt(None, existing_file("an HDF5 file (.h5)"))


@dataclass
class GlintConf(DataConf):
    MONITOR: ClassVar[tuple] = ("val_dice", "max")  # checkpoint.monitor and .mode unless set
    KIND: ClassVar[str] = "masks"
    IN_CHANNELS: ClassVar[int] = 1
    _target_: str = "trainforge.data.GlintData"
    num_samples: int = opt(1280, at_least(2))
    image_size: int = opt(64, at_least(1))
    threshold: float = opt(0.5, fraction())  # on predicted probabilities, for Dice/IoU
    image_key: str = "images"  # HDF5 dataset of images, (N, 1, S, S)
    mask_key: str = "masks"  # HDF5 dataset of masks, same shape
    test_samples: int = opt(256, at_least(1))  # the embedded set's test split: generated apart (another seed)


@dataclass
class DigitsConf(DataConf):
    MONITOR: ClassVar[tuple] = ("val_accuracy", "max")
    KIND: ClassVar[str] = "classes"
    IN_CHANNELS: ClassVar[int] = 1
    NUM_CLASSES: ClassVar[int] = 10
    _target_: str = "trainforge.data.DigitsData"
    batch_size: int = opt(64, at_least(1))
    split_seed: int = 0
    test_fraction: float = opt(0.0, interval(0, 1, high_open=True))  # > 0: a stratified test split (another file)


@dataclass
class SeqSetConf(DataConf):
    MONITOR: ClassVar[tuple] = ("val_auroc", "max")
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
    mean_set_size: float = opt(4.0, interval(1))  # generator: average events per set
    embed_dim: int = opt(32, at_least(1))  # generator: width of the fixed variable-embedding table
    test_patients: int = opt(400, at_least(1))  # the embedded set's test split: generated apart (another seed)
    RULES: ClassVar[tuple] = (
        Rule("max_length", lambda n, cfg: n.max_length >= n.min_length, "must be >= data.min_length={node.min_length}"),
    )


def _is_dataset(node) -> bool:
    from omegaconf import DictConfig

    return isinstance(node, DictConfig) and "_target_" in node


@dataclass
class DatasetsConf:
    """Plain PyTorch datasets (any ``torch.utils.data.Dataset``): ``train`` and ``val`` (and
    ``test``) are ``_target_`` nodes; the rest are the loaders' settings. A ``data`` node with
    ``train`` and no ``_target_`` is this one (``config/targets.py``)."""

    _target_: str = "trainforge.data.Datasets"
    train: Any = MISSING
    val: Any = MISSING
    test: Any = None
    batch_size: int = opt(32, at_least(1))
    num_workers: int = opt(0, at_least(0))
    pin_memory: bool = False
    shuffle: bool = True
    collate_fn: Optional[str] = None  # import path of a function that makes a batch of a list of items
    RULES: ClassVar[tuple] = (
        Rule("train", lambda n, cfg: _is_dataset(n.train), "must be a dataset: {{_target_: my_pkg.MyDataset, ...}}"),
        Rule("val", lambda n, cfg: _is_dataset(n.val), "must be a dataset: {{_target_: my_pkg.MyDataset, ...}}"),
        Rule("test", lambda n, cfg: n.test is None or _is_dataset(n.test),
             "must be null or a dataset: {{_target_: my_pkg.MyDataset, ...}}"),
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
    beta: float = opt(0.1, interval(0))  # the KL weight after warm-up (the peak of a cycle)
    schedule: str = opt("linear", one_of("constant", "linear", "cyclical"))  # counted in optimizer steps
    warmup_steps: int = opt(0, at_least(0))
    cycle_steps: int = opt(1000, at_least(1))  # cyclical: steps per cycle
    cycle_ratio: float = opt(0.5, interval(0, 1, low_open=True))  # cyclical: fraction of a cycle spent rising
    free_bits: float = opt(0.0, interval(0))  # nats per latent dimension (batch mean) below which KL is not pushed down
    recon_weight: float = opt(1.0, interval(0))
    cls_weight: float = opt(1.0, interval(0))
    pos_weight: Optional[float] = opt(None, positive)


DATA_BY_TARGET = {c._target_: c for c in (GlintConf, DigitsConf, SeqSetConf)}
DEFAULT_MONITOR = ("val_loss", "min")  # any other data (plain datasets, a data option of the user's)


def monitor_of(data_target) -> str:
    """``${tf_monitor:DATA_TARGET}``: checkpoint.monitor's default, the data option's own."""
    return getattr(DATA_BY_TARGET.get(data_target), "MONITOR", DEFAULT_MONITOR)[0]


def mode_of(data_target, monitor) -> str:
    """``${tf_mode:DATA_TARGET,MONITOR}``: checkpoint.mode's default: the data option's mode for
    its own monitor; for another monitor, min for a loss (a name holding "loss"), else max."""
    default, mode = getattr(DATA_BY_TARGET.get(data_target), "MONITOR", DEFAULT_MONITOR)
    if monitor == default:
        return mode
    return "min" if "loss" in str(monitor) else "max"

"""``validate(cfg)``: every check of a composed config, once per run, before anything is written.

Each schema's field checks and ``RULES`` (``config/rules.py``), then the relations across
groups that no single schema holds.
"""
from __future__ import annotations

from trainforge.config.rules import check_config, schema_of
from trainforge.config.targets import check_targets
from trainforge.config.schemas import BY_TARGET, EXTRA_TOP_LEVEL, SCHEMAS, TrainConf
from trainforge.errors import ConfigError

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
    check_targets(cfg, BY_TARGET)  # the user's own classes: against their signatures



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
    check_devices(cfg.trainer.devices, cfg.trainer.device, cfg.trainer.sync_batchnorm)


def check_devices(devices, device: str = "auto", sync_batchnorm: bool = False) -> None:
    """``trainer.devices`` is N >= 1 or auto; SyncBatchNorm needs GPUs (it has no CPU kernel)."""
    if str(devices) != "auto":
        try:
            ok = int(devices) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"trainer.devices={devices}: must be an integer >= 1 or auto")
    if sync_batchnorm and str(devices) not in ("1", "auto") and not str(device).startswith("cuda"):
        import torch

        if device == "cpu" or not torch.cuda.is_available():
            raise ConfigError("trainer.sync_batchnorm=true: SyncBatchNorm runs on GPUs only; "
                              "set it to false for ranks on the CPU")

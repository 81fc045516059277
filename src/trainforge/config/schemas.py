"""The registry of schemas: group -> option -> dataclass, stored in Hydra's ConfigStore.

The schemas are stored at the top level (not in the groups, so ``--help`` and shell
completion do not offer them as options); each option's YAML names its schema first in
its defaults list (``- /<group>_<name>_schema``).
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from trainforge.config.components import *  # noqa: F401,F403  (the schema classes)
from trainforge.config.components import (BCEConf, CEConf, CNNConf, DatasetsConf, DiceConf, DigitsConf, ELBOConf, FocalConf,
                                          GlintConf, HybridConf, SeqEncoderConf, SeqSetConf, SeqSetVAEConf, UNetConf)
from trainforge.config.training import *  # noqa: F401,F403
from trainforge.config.training import (AdamConf, AdamWConf, CheckpointConf, CollapseConf, CosineConf, LogConf,
                                        MultiStepConf, NoSchedConf, PlateauConf, SGDConf, StepConf, TrainConf,
                                        TrainerConf)

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
BY_TARGET[DatasetsConf._target_] = DatasetsConf  # plain datasets: a data node with train (no option file)
# top-level keys trainforge reads besides TrainConf's fields (none today: add a field to TrainConf instead)
EXTRA_TOP_LEVEL = ()


def schema_name(group: str, name: str) -> str:
    """The ConfigStore name of an option's schema: top level, so no group lists it."""
    return f"{group}_{name}_schema"


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent). Options reference theirs
    as ``- /<group>_<name>_schema`` first in their defaults list. Also the resolvers of the
    defaults that follow the data option (``conf/checkpoint/default.yaml``)."""
    from omegaconf import OmegaConf

    from trainforge.config.components import mode_of, monitor_of

    OmegaConf.register_new_resolver("tf_monitor", monitor_of, replace=True)
    OmegaConf.register_new_resolver("tf_mode", mode_of, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConf)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(name=schema_name(group, name), node=node)

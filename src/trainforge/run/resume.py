"""Resume: find the checkpoint, rebuild the run's config, refuse structural drift.

``resume`` is a checkpoint file, a run directory (its newest valid checkpoint) or
``auto`` (the newest valid checkpoint of the current run directory; a fresh start if it
has none). A resumed run continues in the directory that holds the checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from trainforge.engine.checkpoint import BEST, EPOCH_DIR, LATEST, load_checkpoint
from trainforge.engine.logging import LOGGER

from trainforge.config.sources import compose_config
from trainforge.config.rules import schema_default
from trainforge.config.schemas import BY_TARGET, TrainConf
from trainforge.errors import CheckpointError, ConfigError

log = logging.getLogger(LOGGER)

# keys whose change makes the checkpoint describe a different experiment
STRUCTURAL = ("model.", "data.", "loss.", "optimizer._target_", "trainer.grad_accum",
              "checkpoint.monitor", "checkpoint.mode")  # the best-so-far and top_k tables are kept in these terms
# ...except these, which only say where the data is and how it is loaded
LOADING = ("data.path", "data.cache_dir", "data.num_workers", "data.pin_memory", "data.preload",
           "data.shared_memory", "data.on_device", "model.init_weights")
OWN_KEYS = ("resume", "resume_force")


def candidates(run_dir: Path) -> list:
    """A run directory's checkpoints, newest first: latest, epoch files, best."""
    epochs = sorted((run_dir / EPOCH_DIR).glob("checkpoint_epoch_*.pth"), reverse=True)
    return [p for p in [run_dir / LATEST, *epochs, run_dir / BEST] if p.is_file()]


def find_checkpoint(resume: str, run_dir: Path):
    """The checkpoint to resume from and its loaded contents, or (None, None) for ``auto``
    in a directory without one. Invalid candidates are skipped with a warning."""
    if resume == "auto":
        folder, required = run_dir, False
    else:
        path = Path(resume).expanduser()
        if path.is_file():
            return path, load_checkpoint(path)
        if not path.is_dir():
            raise CheckpointError(f"resume={resume}: no such checkpoint file or run directory")
        folder, required = path, True
    found = candidates(folder)
    for path in found:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log.warning("Skipping %s (falling back to the previous checkpoint)", e)
    if required and not found:
        raise CheckpointError(f"resume={resume}: no checkpoint in this run directory (it stopped before its first "
                              f"save); to start it over there: hydra.run.dir={folder} resume=auto")
    if required:
        raise CheckpointError(f"resume={resume}: no valid checkpoint in this run directory")
    log.info("resume=auto: no checkpoint in %s, starting from scratch", run_dir)
    return None, None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merged_overrides(saved: list, current: list) -> list:
    """The saved run's overrides with the current command's on top (resume keys dropped)."""
    merged = {}
    for override in [*saved, *current]:
        key = _key(override)
        if key not in OWN_KEYS and not key.startswith("hydra"):
            merged[key] = override
    return list(merged.values())


def _ranks_of(ckpt: dict) -> list:
    """``trainer.devices=N`` for a run of N ranks resumed by a plain process: a run started
    by torchrun or SLURM set ``trainer.devices`` from its ranks (no override says it), and
    its resume starts as many (under torchrun or SLURM again, the ranks there decide)."""
    from trainforge.distributed.ranks import env_ranks

    world = int(ckpt.get("world_size") or 1)
    return [f"trainer.devices={world}"] if world > 1 and env_ranks() is None else []


def recompose(cfg, ckpt: dict, current: list):
    """The config the resumed run continues with: the checkpoint's overrides, then this
    command's, composed afresh with the run's own config sources (its primary config and
    config folders, from any working directory). A checkpoint from before the sources were
    recorded composes the packaged ``train`` inside the running Hydra app, as then."""
    from hydra.core.global_hydra import GlobalHydra

    from trainforge.distributed.ranks import launched_by_parent

    if launched_by_parent():  # a rank of trainer.devices=N: the parent recomposed
        return cfg
    overrides = merged_overrides([*ckpt.get("overrides", []), *_ranks_of(ckpt)], current)
    overrides += [f"++{k}={v}" for k in OWN_KEYS if (v := cfg.get(k)) is not None]
    sources = ckpt.get("config_sources")
    if sources is not None:
        return compose_config(sources, overrides, why="resume")
    if not GlobalHydra.instance().is_initialized():
        return cfg
    from hydra import compose

    return compose(config_name="train", overrides=overrides)


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(cfg, "")
    return out


def rescale_batch(cfg, ckpt: dict, world: int) -> str | None:
    """A resume on another number of ranks keeps the run's global batch: ``data.batch_size``
    per rank becomes the global batch over the new ranks (the sampler then continues at the
    exact global sample), or the resume is refused in one line when that does not divide.
    Returns the change to report, or None (same ranks, or ``resume_force``: the user's own
    batch size stands)."""
    saved = int(ckpt.get("world_size", 1))
    if saved == world or cfg.get("resume_force"):
        return None
    per_rank = int(OmegaConf.create(ckpt["config"]).data.batch_size)
    total = per_rank * saved
    if total % world:
        raise ConfigError(f"trainer.devices={world}: the run's global batch is {total} ({per_rank} per rank x "
                          f"{saved} ranks), which {world} ranks cannot share evenly; resume on a number of ranks that "
                          f"divides {total} (or pass +resume_force=true and a data.batch_size of your own)")
    cfg.data.batch_size = total // world
    return f"ranks {saved} -> {world}: data.batch_size {per_rank} -> {total // world} per rank (global batch {total} kept)"


def check_drift(saved_yaml: str, cfg, force: bool, world=None, rescaled: bool = False) -> list:
    """Refuse a resume whose config changes the experiment (model, data, batch size, loss,
    optimizer type, world size, accumulation) unless ``force``; return the other changes.
    ``world`` is (the checkpoint's world size, this run's): the number of ranks, however
    started (``trainer.devices``, torchrun, SLURM), is what must match; without it the
    configs' ``trainer.devices`` stands for it."""
    old = _flat(OmegaConf.to_container(OmegaConf.create(saved_yaml), resolve=False))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    mine = ("data.batch_size", "trainer.devices") if rescaled else ()  # rescale_batch's, reported by it
    newer = {k for k in set(new) - set(old) if new[k] == schema_default(cfg, k, TrainConf, BY_TARGET)}  # at default
    changes = [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(OWN_KEYS) and k not in mine and k not in newer]
    structural = [c for c in changes if c[0].startswith(STRUCTURAL) and not c[0].startswith(LOADING)]
    if world is None:  # the configs alone: trainer.devices stands for the number of ranks
        structural += [c for c in changes if c[0] == "trainer.devices"]
    elif world[0] != world[1] and not rescaled:
        structural.append(("world size (trainer.devices)", world[0], world[1]))
        changes.append(structural[-1])
    if structural and not force:
        diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in structural)
        raise ConfigError(f"resume refused: the config differs from the checkpoint's in {diff}; "
                          "pass +resume_force=true to resume anyway")
    return [f"{k} {a!r} -> {b!r}" for k, a, b in changes]

"""Config sources: how a run's config was composed (its primary config and the user's config
folders), recomposing from them anywhere, and making those folders importable.

A run records ``current_sources()`` (status.json, every checkpoint); a resume, a requeued
job and a sweep re-run recompose with ``compose_config`` from any working directory. The
folder holding a config folder is importable in the run and the processes it starts, so
``_target_: my_nets.TinyNet`` needs no PYTHONPATH. Torch-free.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from trainforge.errors import ConfigError

# where the packaged configs and Hydra's own are: the search path of a plain run
DEFAULT_PATH = (("hydra", "pkg://hydra.conf"), ("main", "pkg://trainforge.conf"), ("schema", "structured://"))


def current_sources() -> dict:
    """How this process's config was composed: the primary config's name and Hydra's whole
    config search path, in order, as ``[provider, "schema://path"]`` pairs (``--config-dir``
    and ``hydra.searchpath`` entries among them)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return sources_with([])
    hydra = HydraConfig.get()
    path = [[s.provider, f"{s.schema}://{s.path}"] for s in hydra.runtime.config_sources]
    return {"config_name": hydra.job.config_name, "search_path": path}


def sources_with(config_dirs, config_name: str = "train") -> dict:
    """The sources of a run composed with ``config_dirs`` (as ``--config-dir`` puts them: after
    the packaged configs, before the schemas)."""
    user = [["command-line", f"file://{Path(d).expanduser().resolve()}"] for d in config_dirs]
    return {"config_name": config_name, "search_path": [*map(list, DEFAULT_PATH[:2]), *user, list(DEFAULT_PATH[2])]}


def user_folders(sources: dict) -> list:
    """The config folders of ``sources`` on disk (``file://`` entries)."""
    return list(dict.fromkeys(path[len("file://"):] for _, path in sources["search_path"]
                              if path.startswith("file://")))


def compose_config(sources: dict, overrides: list, why: str = "compose"):
    """Compose ``sources``' primary config with ``overrides`` over exactly its search path,
    outside or inside a running Hydra app (which is not touched). A config folder that is
    gone is one line; the folders holding the config folders become importable."""
    # Hydra's config loader over a search path of our making (its compose API can only add
    # to the search path after finding the primary config in its own)
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins
    from hydra.types import RunMode
    from omegaconf import open_dict


    folders = user_folders(sources)
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"{why}: the config folder {folder} is gone (the run was composed with it); put it "
                              "back, or resume from a copy that has it")
    importable([str(Path(f).parent) for f in folders])
    from trainforge.config.targets import install

    install()
    Plugins.instance()  # registers the config source kinds (pkg://, file://, structured://)
    search_path = ConfigSearchPathImpl()
    for provider, path in sources["search_path"]:
        search_path.append(provider, path)
    cfg = ConfigLoaderImpl(config_search_path=search_path).load_configuration(
        config_name=sources["config_name"], overrides=list(overrides), run_mode=RunMode.RUN, from_shell=False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg

def importable(folders) -> list:
    """Put ``folders`` first on ``sys.path`` and on ``PYTHONPATH`` (which the processes a run
    starts inherit: DDP ranks, sweep jobs, SLURM tasks), so a user's classes import there
    without PYTHONPATH. Returns the folders added."""
    added = [f for f in dict.fromkeys(str(f) for f in folders) if f not in sys.path]
    sys.path[:0] = added
    if added:
        os.environ["PYTHONPATH"] = os.pathsep.join([*added, *filter(None, [os.environ.get("PYTHONPATH")])])
    return added


def shadowed(sources: dict, choices: dict) -> list:
    """One line for each chosen option that a config folder of the user also has under the
    same name: the packaged one comes first in the search path, so the user's is not used."""
    packaged = Path(__file__).resolve().parents[1] / "conf"
    lines = []
    for group, option in choices.items():
        if not option or group.startswith("hydra") or not (packaged / group / f"{option}.yaml").is_file():
            continue
        mine = [Path(f) / group / f"{option}.yaml" for f in user_folders(sources)]
        for path in (p for p in mine if p.is_file()):
            lines.append(f"{group}={option}: {path} is not used: the built-in option of that name comes first in "
                         "the config search path; give yours another name")
    return lines

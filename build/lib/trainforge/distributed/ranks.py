"""Which rank this process is, from the environment alone (no torch import: the CLI
asks before anything heavy is loaded).

In this order: torchrun's (and trainforge's own launcher's) ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``, then a SLURM job step of several tasks
(``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS``, ``SLURM_LOCALID``, the
node list's first host as the master address, a port from the job id unless
``MASTER_PORT`` is set).
"""
from __future__ import annotations

import os
import re

LAUNCHED = "TRAINFORGE_LAUNCHED"  # set in the ranks of trainforge's own launcher: the parent opened the run
NOW = "TRAINFORGE_NOW"  # the start time every rank of one run resolves its run directory from


def launched_by_parent() -> bool:
    """Whether this process is a rank of ``trainer.devices=N`` (the parent composed the
    config, holds the run lock and opened the run)."""
    return bool(os.environ.get(LAUNCHED))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,9],cpu1`` -> ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def env_ranks() -> dict | None:
    """{rank, world_size, local_rank, master_addr, master_port} when this process is one
    rank of several started by torchrun, trainforge's launcher or a SLURM step; else None.
    A SLURM step exports the torchrun variables from its own (so later code reads one set)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])  # torchrun --nproc_per_node=1 too: a process group of one
        return None if world < 1 else {
            "rank": int(env["RANK"]), "world_size": world, "local_rank": int(env.get("LOCAL_RANK", 0)),
            "master_addr": env.get("MASTER_ADDR", "127.0.0.1"), "master_port": int(env.get("MASTER_PORT", 29500))}
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1)
    if tasks <= 1 or "SLURM_PROCID" not in env:
        return None
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    job = int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0)
    ranks = {"rank": int(env["SLURM_PROCID"]), "world_size": tasks, "local_rank": int(env.get("SLURM_LOCALID", 0)),
             "master_addr": env.get("MASTER_ADDR") or first_host(nodes),
             "master_port": int(env.get("MASTER_PORT") or 20000 + job % 20000)}
    env.update(RANK=str(ranks["rank"]), WORLD_SIZE=str(tasks), LOCAL_RANK=str(ranks["local_rank"]),
               MASTER_ADDR=ranks["master_addr"], MASTER_PORT=str(ranks["master_port"]))
    return ranks


def env_rank() -> int:
    """This process's rank as the environment says, before any process group exists."""
    ranks = env_ranks()
    return ranks["rank"] if ranks else 0



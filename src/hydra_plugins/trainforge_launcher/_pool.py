"""Where jobs may run: the GPU pool, its slots, and the threads each job gets.

A slot is one GPU group (``gpus_per_job`` ids) times ``jobs_per_gpu``. Jobs take the
least loaded group, so two jobs spread over two GPUs before they share one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from trainforge.errors import ConfigError

CPU_MAX_PARALLEL = 4  # see cpu_parallel


def cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def visible_gpus(environ=os.environ) -> List[str]:
    """The parent's GPUs as the ids a child's ``CUDA_VISIBLE_DEVICES`` takes.

    ``CUDA_VISIBLE_DEVICES`` when set (its entries as given: indices, UUIDs or MIG ids);
    else one index per GPU that ``nvidia-smi -L`` lists. CUDA is never initialised in the
    parent (a process that initialised it keeps its view; the jobs must choose theirs).
    """
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i in range(sum(line.startswith("GPU ") for line in out.splitlines()))]


def cpu_parallel(n_cores: int) -> int:
    """Jobs at once on a machine without GPUs: one per core, at most CPU_MAX_PARALLEL.

    Small models use a second intra-op thread poorly, so separate jobs on separate cores
    give more throughput (benchmarks/bench_sweep.py); the cap keeps the memory of many
    job processes (each holds its data and model) bounded on big machines.
    """
    return max(1, min(n_cores, CPU_MAX_PARALLEL))


class Pool:
    """GPU groups and their load; ``take`` hands out the least loaded group's ids."""

    def __init__(self, gpus: Sequence[str], gpus_per_job: int, jobs_per_gpu: int,
                 max_parallel: Optional[int], n_cores: int):
        if gpus_per_job < 0 or jobs_per_gpu < 1:
            raise ConfigError(f"hydra.launcher.gpus_per_job={gpus_per_job}, jobs_per_gpu={jobs_per_gpu}: "
                              "gpus_per_job must be >= 0 (0: CPU jobs) and jobs_per_gpu >= 1")
        if max_parallel is not None and max_parallel < 1:
            raise ConfigError(f"hydra.launcher.max_parallel={max_parallel}: must be >= 1 (or null: every slot)")
        self.gpus = list(gpus) if gpus_per_job else []
        if gpus_per_job > len(self.gpus) > 0:
            raise ConfigError(f"hydra.launcher.gpus_per_job={gpus_per_job}: the pool has only "
                              f"{len(self.gpus)} GPU(s) ({','.join(self.gpus)}; CUDA_VISIBLE_DEVICES sets it)")
        k = max(gpus_per_job, 1)
        self.groups = [tuple(self.gpus[i:i + k]) for i in range(0, len(self.gpus) - k + 1, k)]
        self.jobs_per_gpu, self.gpus_per_job = jobs_per_gpu, gpus_per_job
        slots = len(self.groups) * jobs_per_gpu if self.groups else cpu_parallel(n_cores)
        if self.groups and max_parallel is not None and max_parallel > slots:
            raise ConfigError(f"hydra.launcher.max_parallel={max_parallel}: the pool has {slots} slot(s) "
                              f"({len(self.groups)} GPU group(s) x jobs_per_gpu={jobs_per_gpu}); "
                              "raise jobs_per_gpu to pack more jobs on each GPU")
        self.max_parallel = max_parallel or slots
        self.load = {g: 0 for g in self.groups}
        self.running = 0

    def free(self) -> bool:
        return self.running < self.max_parallel

    def take(self) -> Optional[tuple]:
        """A free slot's GPU ids (None on a CPU pool); call only when ``free()``."""
        self.running += 1
        if not self.groups:
            return None
        group = min(self.groups, key=lambda g: self.load[g])  # first least-loaded: spread before packing
        self.load[group] += 1
        return group

    def give_back(self, group: Optional[tuple]) -> None:
        self.running -= 1
        if group is not None:
            self.load[group] -= 1

    def describe(self, threads: int) -> str:
        if not self.groups:
            return f"no GPUs: {self.max_parallel} job(s) at a time, {threads} torch thread(s) each"
        return (f"GPUs {','.join(self.gpus)}: {self.gpus_per_job} per job, {self.jobs_per_gpu} job(s) per GPU, "
                f"{self.max_parallel} at a time, {threads} torch thread(s) each")


def threads_per_job(n_cores: int, running: int, gpus_per_job: int) -> int:
    """Torch threads for each job so that the running jobs (and their DDP ranks) share the cores."""
    return max(1, n_cores // max(1, running * max(1, gpus_per_job)))


def ids_as_ints(group: Optional[tuple]) -> Optional[tuple]:
    """The ids as ints when they are indices (what submitit's ``visible_gpus`` takes), else None."""
    if group is None or not all(g.isdigit() for g in group):
        return None
    return tuple(int(g) for g in group)


def status_of(run_dir: Path) -> Optional[dict]:
    from trainforge.files import read_status

    return read_status(run_dir) or None


def killed(run_dir: Path, record: dict, why: str) -> dict:
    """status.json of a job killed while RUNNING: FAILED with ``why``."""
    from trainforge.files import write_failed_over

    write_failed_over(run_dir, record, why)
    return {"status": "FAILED", "error": why}


def best_line(run_dir: Path) -> str:
    """``: best val_dice=0.83 (epoch 4), 5 epoch(s)`` from the job's status.json, or ""."""
    record = status_of(run_dir) or {}
    best = record.get("best") or {}
    if best.get("value") is None:
        return ""
    return f": best {best['monitor']}={best['value']:.6g} (epoch {best['epoch']}), {record.get('epoch')} epoch(s)"

"""Launcher schemas, registered as ``hydra/launcher=local_gpus`` and ``hydra/launcher=slurm``."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

PACKAGE = "hydra_plugins.trainforge_launcher.launcher"


@dataclass
class LocalGpusConf:
    """One machine: a queue of jobs over a pool of GPU slots (or CPU slots without GPUs)."""

    _target_: str = f"{PACKAGE}.LocalGpusLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    gpus_per_job: int = 1  # k > 1: the job gets k GPUs and trains DDP on them (trainer.devices=k)
    jobs_per_gpu: int = 1  # k > 1: k small jobs share each GPU
    max_parallel: Optional[int] = None  # null: every slot (GPUs), or one job per core up to 4 (CPU)
    threads_per_job: Optional[int] = None  # trainer.threads for each job; null: cores / running jobs
    timeout_min: float = 10080  # a job is signalled, saved and requeued (resuming) after 7 days
    signal_delay_s: int = 120
    max_num_timeout: int = 5  # requeues after a timeout (submitit's local controller restarts a job 5 times at most)
    stop_grace_s: int = 120  # after Ctrl-C / SIGTERM: seconds jobs get to save before they are killed


@dataclass
class SlurmConf:
    """A SLURM cluster: one array job per sweep, ``nodes`` x ``tasks_per_node`` ranks per job."""

    _target_: str = f"{PACKAGE}.SlurmLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    partition: Optional[str] = None
    qos: Optional[str] = None
    account: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    comment: Optional[str] = None
    nodes: int = 1
    tasks_per_node: int = 1  # ranks per node; the job trains DDP over nodes x tasks_per_node ranks
    gpus_per_task: int = 1
    gres: Optional[str] = None  # e.g. gpu:a100:4, for clusters that want --gres instead of --gpus-per-node
    cpus_per_task: Optional[int] = 8
    mem_gb: Optional[int] = None
    timeout_min: int = 1440  # the job's time limit; it is signalled before, saves and is requeued
    signal_delay_s: int = 120
    max_num_timeout: int = 20  # requeues after a timeout (preemptions are not counted)
    array_parallelism: int = 256  # jobs of the sweep running at once
    name: str = "${hydra.job.name}"
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (module load ...)
    srun_args: List[str] = field(default_factory=list)
    # any other #SBATCH option; --requeue: a preempted or failed node's job is requeued and resumes
    additional_parameters: Dict[str, Any] = field(default_factory=lambda: {"requeue": True})
    poll_s: float = 15.0  # how often the parent asks SLURM about its jobs


def check_params(params: dict) -> None:
    """The numbers of either launcher's config, before any job starts (a zero timeout
    failed every job with a cut-off submitit error, a zero thread count crashed each job)."""
    from trainforge.config.rules import at_least, fail, interval, positive

    checks = {"timeout_min": positive, "poll_s": positive, "signal_delay_s": at_least(0),
              "max_num_timeout": at_least(0), "stop_grace_s": interval(0), "threads_per_job": at_least(1),
              "nodes": at_least(1), "tasks_per_node": at_least(1), "gpus_per_task": at_least(0),
              "cpus_per_task": at_least(1), "mem_gb": at_least(1), "array_parallelism": at_least(1)}
    for key, check in checks.items():
        value = params.get(key)
        problem = check(value) if value is not None else None
        if problem:
            raise fail(f"hydra.launcher.{key}", value, problem)


@dataclass
class SearchConf:
    """``hydra/sweeper=search``: asynchronous Optuna over the local_gpus pool (docs/search.md)."""

    _target_: str = "hydra_plugins.trainforge_launcher.search.SearchSweeper"
    n_trials: int = 20
    timeout: Optional[float] = None  # seconds: no new trial starts after it (running ones finish)
    sampler: str = "tpe"  # tpe | random | grid
    seed: Optional[int] = None
    tpe_startup_trials: int = 10  # random trials before TPE models the space
    pruner: str = "median"  # median | halving | none
    warmup_epochs: int = 2  # epochs every trial runs before it may be pruned
    startup_trials: int = 4  # trials that end before the median pruner prunes any
    reduction_factor: int = 3  # halving: 1/reduction_factor of the trials go on at each rung
    max_failure_rate: float = 0.5  # of n_trials: more failed trials stop the search
    study_name: str = "search"
    params: Dict[str, str] = field(default_factory=dict)  # key: choice(...) | range(...) | interval(...)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="local_gpus", node=LocalGpusConf, provider="trainforge")
    cs.store(group="hydra/launcher", name="slurm", node=SlurmConf, provider="trainforge")
    cs.store(group="hydra/sweeper", name="search", node=SearchConf, provider="trainforge")


register()

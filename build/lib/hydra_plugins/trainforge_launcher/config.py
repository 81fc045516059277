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


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="local_gpus", node=LocalGpusConf, provider="trainforge")
    cs.store(group="hydra/launcher", name="slurm", node=SlurmConf, provider="trainforge")


register()

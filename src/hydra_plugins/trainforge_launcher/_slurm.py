"""The ``hydra/launcher=slurm`` config as submitit ``SlurmExecutor`` parameters."""
from __future__ import annotations

from typing import Any, Dict

from omegaconf import OmegaConf

# launcher keys that are not SlurmExecutor parameters
PARENT_ONLY = ("_target_", "submitit_folder", "max_num_timeout", "poll_s", "gpus_per_task", "mem_gb",
               "timeout_min", "tasks_per_node", "name")


def slurm_parameters(params) -> Dict[str, Any]:
    """``update_parameters`` keywords: one GPU per task (all the node's job GPUs visible to
    each of its tasks, rank r on local device r), the tasks as ranks, the job signalled
    ``signal_delay_s`` before its time limit (it saves; submitit requeues it, it resumes),
    ``array_parallelism`` jobs at once, stdout and stderr in one log. Unset (null) keys are
    left to the cluster's defaults."""
    p = {k: (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v) for k, v in dict(params).items()}
    out = {k: v for k, v in p.items() if k not in PARENT_ONLY and v not in (None, [], {})}
    out.update(time=p["timeout_min"], job_name=p["name"], ntasks_per_node=p["tasks_per_node"],
               stderr_to_stdout=True)
    if not p.get("gres") and p["gpus_per_task"]:
        out["gpus_per_node"] = p["tasks_per_node"] * p["gpus_per_task"]
    if p.get("mem_gb"):
        out["mem"] = f"{p['mem_gb']}GB"
    return out


class LeaveNow(BaseException):
    """A second stop signal while SLURM still reports jobs running: the parent leaves them.
    A BaseException, as KeyboardInterrupt: submitit passes over an Exception in its sacct call."""


def leave_message(waiting) -> str:
    """Which SLURM jobs may still be running, and how to see and cancel them."""
    ids = [e.job.job_id for e in waiting]
    arrays = sorted({i.split("_")[0] for i in ids})
    return (f"{len(ids)} SLURM job(s) may still be running ({', '.join(ids)}): `scancel {' '.join(arrays)}` "
            f"cancels them, `sacct -j {','.join(arrays)}` shows their state")

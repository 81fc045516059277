"""The callable submitit runs for one sweep job, in the job's own process (every task)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, filter_overrides, run_job, setup_globals
from omegaconf import open_dict


class SweepJob:
    """Compose the job's config from the sweep's, run the task function in its run dir.

    Picklable (Hydra's context, the task function and the sweep config travel with it).
    Every task of a multi-task SLURM job runs this same object: rank 0 writes ``.hydra/``,
    all ranks call the task with the same config (ranks come from the SLURM environment).
    ``checkpoint`` makes a timed-out or preempted job requeue as itself; the task resumes
    from its run directory (``trainforge.run.train.run`` uses ``resume=auto`` under submitit).
    """

    def __init__(self, hydra_context, task_function, config, overrides: List[str], num: int,
                 gpus: Optional[tuple], singleton_state: Dict[Any, Any], env: Optional[dict] = None):
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.overrides, self.num, self.gpus, self.singleton_state = list(overrides), num, gpus, singleton_state
        self.env = dict(env or {})

    def __call__(self) -> dict:
        import submitit

        if self.gpus is not None:  # before anything can initialise CUDA in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        os.environ.update(self.env)
        Singleton.set_state(self.singleton_state)
        setup_globals()
        env = submitit.JobEnvironment()
        if is_trainforge(self.config):  # composed by trainforge's rules, as in the process that started the sweep
            from trainforge.config.targets import install

            install()
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, self.overrides)
        with open_dict(cfg.hydra):
            cfg.hydra.job.id = env.job_id
            cfg.hydra.job.num = self.num
            if env.global_rank > 0:
                cfg.hydra.output_subdir = None  # one record of the composition, by rank 0
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        if not is_trainforge(cfg):  # another app: its JobReturn as it is (the task's value, its config)
            return {**outcome(ret), "ret": ret}
        return outcome(ret)

    def checkpoint(self, *args, **kwargs):
        """Requeue as the same job; its task resumes from its own latest checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def sweep_provenance(config, say) -> dict:
    """``provenance.json`` in the sweep root (a sweep run again: its record appended, what
    changed said); the jobs' environment naming the sweep root."""
    from pathlib import Path

    from trainforge.config.sources import current_sources
    from trainforge.files import RunRecord
    from trainforge.run import provenance

    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    try:
        for line in provenance.write(RunRecord(sweep_dir), config, current_sources()):
            say(f"sweep record: {line}")
    except Exception as e:  # noqa: BLE001 - a record that cannot be made stops no sweep
        say(f"provenance: the sweep's record not written ({type(e).__name__}: {e})")
        return {}
    return {provenance.SWEEP_ENV: str(sweep_dir)}


def launcher_overrides(config, overrides: List[str], threads: Optional[int], devices: int) -> List[str]:
    """``trainer.threads`` and ``trainer.devices`` for a job, unless the user set them
    (a job given ``trainer.threads=null`` gets the launcher's share, as one not given it)."""
    given = {key_of(o): o.split("=", 1)[1] if "=" in o else None for o in overrides}
    trainer = config.get("trainer") or {}
    extra = []
    unset = given.get("trainer.threads", "null") in ("null", "None", "~", "")
    if threads and "threads" in trainer and trainer.get("threads") is None and unset:
        extra.append(f"trainer.threads={threads}")
    if devices > 1 and "devices" in trainer and "trainer.devices" not in given:
        extra.append(f"trainer.devices={devices}")
    return extra


def key_of(override: str) -> str:
    """An override's key: ``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def is_trainforge(config) -> bool:
    """Whether the sweep's app is trainforge's (its config has trainforge's groups)."""
    return all(k in config for k in ("model", "data", "loss", "optimizer", "trainer", "checkpoint", "log"))


def outcome(ret) -> dict:
    """What the parent needs of a Hydra JobReturn, in plain types (any exception pickles)."""
    if ret.status == JobStatus.COMPLETED:
        value = ret._return_value
        return {"status": "COMPLETED", "value": value if isinstance(value, (int, float)) else None}
    from trainforge.cli import USER_ERRORS, one_line

    exc = ret._return_value
    code = getattr(exc, "exit_code", None)
    error = one_line(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {one_line(exc)}"
    return {"status": "PREEMPTED" if code == 75 else "FAILED", "error": error, "exit_code": code}


def varying(overrides: List[List[str]]) -> List[str]:
    """Each job's overrides minus those every job shares (all of them for a single job)."""
    lists = [filter_overrides(o) for o in overrides]
    common = set.intersection(*map(set, lists)) if len(lists) > 1 else set()
    return [" ".join(o for o in lst if o not in common) or "(defaults)" for lst in lists]

"""A training job submitit can run, preempt and requeue (local or SLURM executors).

    job = executor.submit(TrainJob("conf", ["loss=hybrid"], "runs/a"))

On SIGUSR2 (submitit's preemption/timeout signal) the run finishes its step, saves
``latest_checkpoint.pth``, marks ``status.json`` PREEMPTED and hands the signal to
submitit, which calls ``checkpoint()``: the job is requeued with ``resume=auto`` and
continues exactly where it stopped, in the same run directory.
"""
from __future__ import annotations

from pathlib import Path

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    """Compose ``conf/`` with ``overrides`` and train into ``run_dir`` (picklable)."""

    def __init__(self, config_dir, overrides, run_dir):
        self.config_dir, self.overrides, self.run_dir = str(Path(config_dir).resolve()), list(overrides), str(run_dir)

    def __call__(self):
        from hydra import compose, initialize_config_dir

        from trainforge.run.train import run

        with initialize_config_dir(config_dir=self.config_dir, version_base="1.3"):
            cfg = compose(config_name="train", overrides=self.overrides)
            return run(cfg, self.run_dir, overrides=[o for o in self.overrides if "resume" not in o])

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue as the same job resuming from its own run directory."""
        keep = [o for o in self.overrides if not o.lstrip("+").startswith("resume=")]
        return submitit.helpers.DelayedSubmission(TrainJob(self.config_dir, [*keep, "resume=auto"], self.run_dir))

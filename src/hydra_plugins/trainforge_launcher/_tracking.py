"""A sweep's MLflow parent run (its jobs have ``log.mlflow=true``): made, with the tracking
database, before the first job starts (jobs sharing a new sqlite database would race to
create its tables); each job's run is nested under it (``mlflow.parentRunId``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from omegaconf import OmegaConf


class SweepRun:
    def __init__(self, launcher, overrides: List[str]):
        self.tracker, self.env, self.failed = None, {}, False
        if not launcher.ours:
            return
        try:
            cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        except Exception:  # noqa: BLE001 - the job reports what is wrong with its config
            return
        if not OmegaConf.select(cfg, "log.mlflow"):
            return
        from trainforge.engine import tracking

        sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
        where = tracking.settings(cfg.log, OmegaConf.select(cfg, "hydra.runtime.choices.experiment"), os.getcwd())
        self.wait_s = float(cfg.log.mlflow_wait_s)
        self.tracker = tracking.Tracker(where["uri"])
        self.tracker.put(tracking.create_run, where, sweep_dir.name, {"trainforge.sweep_dir": str(sweep_dir)})
        if self.tracker.made.wait(self.wait_s) and self.tracker.run_id:
            self.env = {tracking.PARENT_ENV: self.tracker.run_id}
            launcher.say(f"MLflow: sweep run {self.tracker.run_id} at {tracking.shown(where['uri'])}")

    def ended(self, e) -> None:
        """A job's end (the sweep's run is FAILED if any job did not complete)."""
        self.failed = self.failed or e.status not in ("COMPLETED", "PREEMPTED", "CANCELLED", "NOT_STARTED")

    def end(self, stopped: bool) -> None:
        if self.tracker is None:
            return
        if self.tracker.run_id:
            status = "KILLED" if stopped else "FAILED" if self.failed else "FINISHED"
            self.tracker.put(lambda t: t.client.set_terminated(t.run_id, status))
        self.tracker.close(self.wait_s)

"""A sweep's MLflow parent run (its jobs have ``log.mlflow=true``): made, with the tracking
database, before the first job starts (jobs sharing a new sqlite database would race to
create its tables); each job's run is nested under it (``mlflow.parentRunId``). Its id is in
the sweep root's ``mlflow.json``: the same sweep run again (to finish it) continues it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from omegaconf import OmegaConf


class SweepRun:
    def __init__(self, launcher, overrides: List[str]):
        self.tracker, self.env, self.failed, self.say = None, {}, False, launcher.say
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
        before = tracking.recorded(sweep_dir)  # a sweep run again: its MLflow run goes on
        again = before.get("run_id") if before.get("uri") == tracking.shown(where["uri"]) else None
        self.tracker = tracking.Tracker(where["uri"])
        self.tracker.put(_open, where, sweep_dir, again)
        if self.tracker.made.wait(self.wait_s) and self.tracker.run_id:
            self.env = {tracking.PARENT_ENV: self.tracker.run_id}
            from trainforge.files import RunRecord

            RunRecord(sweep_dir).json(tracking.MLFLOW, {"uri": tracking.shown(where["uri"]),
                                                        "experiment": where["experiment"], "run_id": self.tracker.run_id})
            launcher.say(f"MLflow: sweep run {self.tracker.run_id}{' (continued)' if again == self.tracker.run_id else ''}"
                         f" at {tracking.shown(where['uri'])}")

    def ended(self, e) -> None:
        """A job's end (the sweep's run is FAILED if any job did not complete). A job that kept
        its MLflow run in its directory (a SLURM job on an sqlite store) is forwarded now: the
        parent alone writes the store."""
        from trainforge.engine import tracking

        self.failed = self.failed or e.status not in ("COMPLETED", "PREEMPTED", "CANCELLED", "NOT_STARTED")
        if self.tracker is not None and tracking.recorded(e.run_dir).get("forward_to"):
            from trainforge.analysis.forward import sync

            sync(e.run_dir, out=lambda line: self.say(f"MLflow: {line}"))

    def end(self, stopped: bool) -> None:
        if self.tracker is None:
            return
        if self.tracker.run_id:
            status = "KILLED" if stopped else "FAILED" if self.failed else "FINISHED"
            self.tracker.put(lambda t: t.client.set_terminated(t.run_id, status))
        self.tracker.close(self.wait_s)


def _open(tracker, where: dict, sweep_dir: Path, again) -> None:
    """The sweep's MLflow run: ``again`` (the run of this sweep's earlier start) if the store has it, else a new one."""
    from trainforge.engine import tracking

    try:
        if again and tracking.exists(tracker.client, again):
            tracking.patient(tracker.client.update_run, again, status="RUNNING")
            tracker.run_id = again
        else:
            tracking.create_run(tracker, where, sweep_dir.name, {"trainforge.sweep_dir": str(sweep_dir)})
    finally:
        tracker.made.set()  # (the sweep waits for it)

"""MLflow runs kept in run directories (``log.mlflow_spool``: a SLURM job with an sqlite store)
forwarded to the tracking store they were meant for: by the SLURM sweep's parent as each job
ends, or by ``trainforge analyze --sync DIR`` (a run or a sweep directory).

A forward copies what the store lacks: params it does not have, every tag, each metric's
steps past the last one it has (so forwarding again, or after a resume, sends each epoch
once), the artifacts and the status. The store's run is made at the first forward (nested
under the sweep's run, whose id the job's tags carry) and named in ``mlflow.json``
(``forwarded``); later forwards continue it. One process writes the store: the parent, or
whoever syncs.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from trainforge.engine import tracking
from trainforge.files import MLFLOW, RunRecord

SKIPPED_TAGS = ("mlflow.runName", "mlflow.user")  # set by create_run


def spooled_runs(path: Path) -> list:
    """``path`` itself if it is a spooling run, else the spooling runs under it (a sweep)."""
    path = Path(path)
    if tracking.recorded(path).get("forward_to"):
        return [path]
    return sorted((p.parent for p in path.rglob(MLFLOW) if tracking.recorded(p.parent).get("forward_to")), key=str)


def forward(run_dir: Path) -> str:
    """Forward one run's spooled MLflow run; what was done, in one line."""
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir).resolve()
    mine = tracking.recorded(run_dir)
    local = MlflowClient(f"sqlite:///{run_dir / tracking.SPOOL / 'mlflow.db'}")
    run = local.get_run(mine["run_id"])
    uri = mine["forward_to"]
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and tracking.shown(env) == uri:  # (its credentials were never recorded)
        uri = env
    store = MlflowClient(uri)
    target = (mine.get("forwarded") or {}).get("run_id")
    if not (target and tracking.exists(store, target)):
        target = _create(store, run, mine)
    sent = _copy(local, store, run, target)
    RunRecord(run_dir).json(MLFLOW, {**mine, "forwarded": {"uri": tracking.shown(uri), "run_id": target,
                                                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}})
    return f"{run_dir}: MLflow run {target} at {tracking.shown(uri)} ({run.info.status}, {sent} new metric value(s))"


def _create(store, run, mine: dict) -> str:
    exp = tracking.experiment_id(store, mine["experiment"], mine.get("forward_artifacts"))
    tags = {k: v for k, v in run.data.tags.items() if k not in SKIPPED_TAGS}
    made = tracking.patient(store.create_run, exp, start_time=run.info.start_time, tags=tags,
                            run_name=run.info.run_name)
    return made.info.run_id


def _copy(local, store, run, target: str) -> int:
    from mlflow.entities import RunTag

    have = tracking.patient(store.get_run, target).data.params
    tracking.log_params(store, target, {k: v for k, v in run.data.params.items() if k not in have})
    tags = [RunTag(k, v) for k, v in run.data.tags.items() if k not in SKIPPED_TAGS]
    tracking.patient(store.log_batch, target, tags=tags)
    sent = 0
    for key in run.data.metrics:
        last = tracking.last_step(store, target, key)
        new = [m for m in local.get_metric_history(run.info.run_id, key) if m.step > last]
        tracking.log_metrics(store, target, new)
        sent += len(new)
    artifacts = _local_path(run.info.artifact_uri)
    if artifacts is not None and artifacts.is_dir() and any(artifacts.iterdir()):
        tracking.patient(store.log_artifacts, target, str(artifacts))
    if run.info.status == "RUNNING":
        tracking.patient(store.update_run, target, status="RUNNING")
    else:
        tracking.patient(store.set_terminated, target, run.info.status, run.info.end_time)
    return sent


def _local_path(uri: str):
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


def sync(path, out=print) -> int:
    """``trainforge analyze --sync PATH``: forward every spooling run under ``path``; how many failed."""
    runs = spooled_runs(Path(path))
    if not runs:
        out(f"{path}: no run that keeps its MLflow run in its directory (log.mlflow_spool): nothing to forward")
    failed = 0
    for run_dir in runs:
        try:
            out(forward(run_dir))
        except Exception as e:  # noqa: BLE001 - one run's store stops no other
            failed += 1
            out(f"{run_dir}: not forwarded: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
    return failed

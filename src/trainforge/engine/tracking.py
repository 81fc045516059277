"""MLflow (``log.mlflow=true``): one MLflow run per trainforge run, fed by a background thread.

Every call to MLflow goes through a queue that one daemon thread (``Tracker``) drains in
order, so a slow or dead tracking server costs the training step nothing and stops
nothing: the first call that fails is one warning, the calls after it are dropped, and
the run's own files hold everything. At the run's end the queue gets ``log.mlflow_wait_s``
seconds to drain. Only the process that writes the run's record (rank 0) has a
``MlflowHook``.

The MLflow run id is in ``mlflow.json`` as soon as the run exists and in every checkpoint:
``resume=`` continues the same MLflow run. Epoch metrics are sent once the epoch's
checkpoint is written, and a resume first sends the epochs of the checkpoint's history that
MLflow lacks (a run killed between the two): each epoch reaches MLflow once. Batch metrics
(``log.batch_metrics``, every ``log.interval``-th batch) replayed after a kill are not sent
again either. MLflow is imported on the tracker's thread only.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import queue
import re
import threading
import time
from pathlib import Path

from trainforge.engine.logging import LOGGER, flatten
from trainforge.engine.trainer import HookBase
from trainforge.errors import ConfigError
from trainforge.files import BEST_WEIGHTS, CONFIG, MLFLOW, MLFLOW_SPOOL as SPOOL, PLOTS, PROVENANCE, read_json

log = logging.getLogger(LOGGER)
PARENT_ENV = "TRAINFORGE_MLFLOW_PARENT"  # a sweep job's parent run (set by the local_gpus launcher)
ENDS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "PREEMPTED": "KILLED"}
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
FLUSH_S = 1.0  # batch metrics go to the tracker about once a second (a call per batch would cost both ends)
PARAMS = 100  # params per log_batch call (MLflow's limit)
PARAM_LEN = 6000  # characters of a param value MLflow keeps


def settings(log_cfg, experiment_option, cwd, resumed_uri=None) -> dict:
    """Where a run's MLflow run goes: ``uri`` (``log.mlflow_uri``, else ``MLFLOW_TRACKING_URI``,
    else the URI a resumed run was tracked at, else one sqlite database per project:
    ``sqlite:///<cwd>/mlflow.db``, artifacts in ``<cwd>/mlartifacts``) and ``experiment``
    (``log.mlflow_experiment``, else the experiment option, else trainforge)."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("log.mlflow=true: the mlflow package is not installed; "
                          "pip install 'trainforge[mlflow]' (or mlflow)")
    where = {"uri": log_cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"), "artifacts": None,
             "experiment": log_cfg.mlflow_experiment or experiment_option or "trainforge"}
    if not where["uri"] and resumed_uri:  # a resume from elsewhere: the database the run began in
        where["uri"] = resumed_uri
    if not where["uri"]:
        root = Path(cwd).resolve()
        where.update(uri=f"sqlite:///{root / 'mlflow.db'}", artifacts=(root / "mlartifacts").as_uri())
    return where


def spooled(where: dict, log_cfg, run_dir) -> dict:
    """``log.mlflow_spool``: the run's MLflow run kept in a store of its own, ``<run_dir>/mlflow/``,
    and forwarded to ``where`` later (by its sweep, or ``trainforge analyze --sync``). ``auto``:
    a SLURM job (``SLURM_JOB_ID``) whose store is sqlite (one database written by jobs on many
    nodes over a shared filesystem is unsafe), or a run that spooled before."""
    mode, before = str(log_cfg.mlflow_spool).lower(), recorded(run_dir)
    slurm_sqlite = bool(os.environ.get("SLURM_JOB_ID")) and where["uri"].startswith("sqlite:")
    if mode == "false" or (mode == "auto" and not (slurm_sqlite or before.get("forward_to"))):
        return where
    own = Path(run_dir).resolve() / SPOOL
    return {"uri": f"sqlite:///{own / 'mlflow.db'}", "artifacts": (own / "artifacts").as_uri(),
            "experiment": where["experiment"], "forward_to": shown(where["uri"]), "forward_artifacts": where["artifacts"]}


def where_for(log_cfg, run_dir) -> dict:
    """Where the MLflow run of the run in ``run_dir`` goes (``settings``, then ``spooled``);
    a resume: the store it began in."""
    before = recorded(run_dir)
    where = settings(log_cfg, experiment_option(run_dir), os.getcwd(), before.get("forward_to") or before.get("uri"))
    return spooled(where, log_cfg, run_dir)


def experiment_option(run_dir):
    """The experiment option the run was composed with (Hydra's record), or None."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get("experiment")
    saved = Path(run_dir) / ".hydra" / "hydra.yaml"  # a rank process, or the Python API on a Hydra run
    return OmegaConf.select(OmegaConf.load(saved), "hydra.runtime.choices.experiment") if saved.exists() else None


def recorded(run_dir) -> dict:
    """``mlflow.json`` of a run directory ({} if none)."""
    return read_json(Path(run_dir) / MLFLOW)


def shown(uri: str) -> str:
    """A URI without ``user:secret@`` (the door refuses them in log.mlflow_uri; MLFLOW_TRACKING_URI may hold them)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1", uri)


def patient(fn, *args, **kwargs):
    """``fn(...)``, again while sqlite says the database is locked (jobs of a sweep share it)."""
    for attempt in range(12):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only a locked database is retried
            if "locked" not in str(e).lower() or attempt == 11:
                raise
            time.sleep(min(2.0, 0.05 * 2 ** attempt))


class Tracker:
    """MLflow calls, in order, on one daemon thread. ``put(fn, *args)`` queues
    ``fn(tracker, *args)`` (``tracker.client`` is the MlflowClient); ``metrics(items)`` queues
    (key, value, step) triples (MlflowHook hands them over about once a second), sent in
    calls of up to 1000.
    The first failure is one warning; later calls are dropped."""

    END = ("end",)

    def __init__(self, uri: str):
        self.uri, self.client, self.broken = uri, None, False
        self.run_id, self.floor, self.made = None, {}, threading.Event()  # floor: key -> last step MLflow has
        self.ready = threading.Event()  # MLflow imported (seconds of Python): wait for it before training
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="trainforge-mlflow", daemon=True)
        self.thread.start()

    def put(self, fn, *args) -> None:
        self.jobs.put((fn, args))

    def metrics(self, items: list) -> None:
        if items:
            self.jobs.put(("metrics", items))

    def close(self, wait_s: float) -> bool:
        """Let the queue drain for up to ``wait_s`` seconds; whether all of it was sent."""
        self.jobs.put(self.END)
        self.thread.join(wait_s)
        if self.thread.is_alive() and not self.broken:
            self.broken = True
            log.warning("MLflow (%s) did not take the run's last calls within log.mlflow_wait_s=%g s: they are not "
                        "sent; the run's own files are complete", shown(self.uri), wait_s)
        return not self.broken

    def _work(self) -> None:
        self._call(_connect, ())
        self.ready.set()
        after = None  # a job taken from the queue while joining metrics
        while True:
            job, after = (after or self.jobs.get()), None
            if job is self.END:
                return
            if job[0] == "metrics":  # the metrics queued behind it go in the same call
                items = list(job[1])
                while len(items) < BATCH and after is None:
                    try:
                        nxt = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is not self.END and nxt[0] == "metrics":
                        items += nxt[1]
                    else:
                        after = nxt  # (a call of another kind, or the end: sent in order, now)
                job = (_send_metrics, (items,))
            self._call(*job)

    def _call(self, fn, args) -> None:
        if self.broken:
            return
        try:
            fn(self, *args)
        except Exception as e:  # noqa: BLE001 - a tracker never stops the run
            self.broken = True
            first = (str(e).strip().splitlines() or [""])[0][:300]
            log.warning("MLflow (%s): %s: %s; nothing more is sent to it, the run's own files are complete",
                        shown(self.uri), type(e).__name__, first)


def _connect(tracker: Tracker) -> None:
    from mlflow.tracking import MlflowClient

    tracker.client = MlflowClient(tracking_uri=tracker.uri)


def _send_metrics(tracker: Tracker, items: list) -> None:
    from mlflow.entities import Metric

    now, floor = int(time.time() * 1000), tracker.floor  # steps MLflow had when the run resumed
    metrics = [Metric(k, v, now, s) for k, v, s in items
               if s > floor.get("batch" if k.startswith("batch_") else "epoch", -1)]
    log_metrics(tracker.client, tracker.run_id, metrics)


def log_metrics(client, run_id: str, metrics: list) -> None:
    """``metrics`` (MLflow ``Metric``s) in calls of up to MLflow's 1000."""
    for i in range(0, len(metrics), BATCH):
        patient(client.log_batch, run_id, metrics=metrics[i:i + BATCH])


def experiment_id(client, name: str, artifacts) -> str:
    found = patient(client.get_experiment_by_name, name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # noqa: BLE001 - another job made it first
        found = patient(client.get_experiment_by_name, name)
        if found is None:
            raise
        return found.experiment_id


def create_run(tracker: Tracker, where: dict, name: str, tags: dict) -> None:
    """A new MLflow run (its id in ``tracker.run_id``); ``tracker.made`` is set either way."""
    try:
        client = tracker.client
        exp = experiment_id(client, where["experiment"], where["artifacts"])
        tracker.run_id = patient(client.create_run, exp, tags=tags, run_name=name).info.run_id
    finally:
        tracker.made.set()


def flat_params(container: dict, prefix: str = "") -> dict:
    """A config as MLflow params: dotted keys, text values (cut at MLflow's 6000 characters)."""
    out = {}
    for key, value in container.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:PARAM_LEN]
    return out


def _numbers(row: dict, step: int, prefix: str = "") -> list:
    return [(f"{prefix}{k}", float(v), step) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def last_step(client, run_id: str, key: str) -> int:
    return max((m.step for m in patient(client.get_metric_history, run_id, key)), default=-1)


class MlflowHook(HookBase):
    """One MLflow run for this run (``log.mlflow=true``), on the process that writes the
    run's record. Install after CheckpointHook: an epoch's metrics go out once its
    checkpoint is written. The run's status record ends the MLflow run (FINISHED, FAILED,
    KILLED for PREEMPTED) on every path, signals included."""

    state_key = "mlflow"

    def __init__(self, record, where: dict, params: dict, logging_hook, log_cfg, name: str):
        self.record, self.where, self.params, self.name = record, where, params, name
        self.interval, self.log_model, self.wait_s = log_cfg.interval, log_cfg.mlflow_log_model, log_cfg.mlflow_wait_s
        self.run_id, self.opened, self.ended = None, False, False
        self.pending, self.handed = [], 0.0  # batch metrics not yet handed to the tracker, and when it last got some
        self.tracker = Tracker(where["uri"])  # MLflow imports while the rest is built
        record.watchers.append(self.on_status)
        if log_cfg.batch_metrics:
            logging_hook.sinks.append(self.add_batches)

    def state_dict(self) -> dict:
        return {"run_id": self.tracker.run_id or self.run_id, "uri": shown(self.where["uri"])}

    def load_state_dict(self, state: dict) -> None:
        if state.get("uri") == shown(self.where["uri"]):
            self.run_id = state.get("run_id")

    def before_train(self) -> None:
        t = self.trainer
        mine = recorded(self.record.run_dir)
        if self.run_id is None and mine.get("uri") == shown(self.where["uri"]):
            self.run_id = mine.get("run_id")  # killed before its first checkpoint
        self.tracker.run_id = self.run_id
        self.tracker.put(_open, self, [flatten(r) for r in t.history])
        self.opened = True
        self.tracker.ready.wait(60)  # the import holds the GIL for seconds: not during the steps

    def after_epoch(self) -> None:
        row = flatten(self.trainer.history[-1])
        self.pending += _numbers(row, row["epoch"])
        self._hand_over()

    def add_batches(self, records: list) -> None:
        t = self.trainer
        for rec in records:
            if rec["batch"] % self.interval == 0:
                step = rec["epoch"] * t.batches_per_epoch + rec["batch"]
                values = {n: v for n, v in zip(t.value_names, rec["values"]) if not (n == "grad_norm" and math.isnan(v))}
                self.pending += _numbers({**values, "lr": rec["lr"]}, step, "batch_")
        if time.monotonic() - self.handed > FLUSH_S:  # the tracker's thread wakes once a second, not every step
            self._hand_over()

    def _hand_over(self) -> None:
        self.tracker.metrics(self.pending)
        self.pending, self.handed = [], time.monotonic()

    def on_status(self, status: str, fields: dict) -> None:
        if status in ENDS and self.opened and not self.ended:
            self.ended = True
            self._hand_over()
            self.tracker.put(_close, self, status)
            self.tracker.close(self.wait_s)


def end_left_running(log_cfg, run_dir, status: str) -> None:
    """The MLflow run of a run whose rank 0 died before it could end it (the launching parent
    of ``trainer.devices=N`` records the run's end, ``status``): ended too, if still RUNNING."""
    mine = recorded(run_dir)
    if not (log_cfg.mlflow and mine.get("run_id")) or status not in ENDS:
        return
    where = where_for(log_cfg, run_dir)
    if shown(where["uri"]) != mine.get("uri"):
        return
    tracker = Tracker(where["uri"])
    tracker.put(_end_if_running, mine["run_id"], status)
    tracker.close(log_cfg.mlflow_wait_s)


def _end_if_running(tracker: Tracker, run_id: str, status: str) -> None:
    client = tracker.client
    if patient(client.get_run, run_id).info.status == "RUNNING":
        patient(client.set_tag, run_id, "trainforge.status", status)
        patient(client.set_terminated, run_id, ENDS[status])


def _open(tracker: Tracker, hook: MlflowHook, rows: list) -> None:
    """Continue the run's MLflow run (a resume) or make it; then its record, the artifacts
    of the start and the epochs MLflow lacks."""
    client, run_dir = tracker.client, hook.record.run_dir
    if tracker.run_id and exists(client, tracker.run_id):
        patient(client.update_run, tracker.run_id, status="RUNNING")
        _params_again(tracker, hook.params)
        tracker.floor = {"epoch": last_step(client, tracker.run_id, "epoch"),
                         "batch": last_step(client, tracker.run_id, "batch_loss")}
    else:
        provenance = read_json(run_dir / PROVENANCE).get("code") or {}
        commit = ((provenance.get("project") or provenance.get("trainforge") or {}).get("commit"))
        tags = {"trainforge.run_dir": str(run_dir), "trainforge.status": "RUNNING",
                **({"mlflow.source.git.commit": commit} if commit else {}),
                **({"mlflow.parentRunId": os.environ[PARENT_ENV]} if os.environ.get(PARENT_ENV) else {})}
        create_run(tracker, hook.where, hook.name, tags)
        log_params(client, tracker.run_id, hook.params)
    hook.run_id = tracker.run_id
    before = recorded(run_dir) if recorded(run_dir).get("run_id") == tracker.run_id else {}  # (what was forwarded)
    hook.record.json(MLFLOW, {**before, "uri": shown(tracker.uri), "experiment": hook.where["experiment"],
                              "run_id": tracker.run_id,
                              **{k: hook.where[k] for k in ("forward_to", "forward_artifacts") if hook.where.get(k)}})
    for name in (CONFIG, PROVENANCE):
        if (run_dir / name).exists():
            patient(client.log_artifact, tracker.run_id, str(run_dir / name))
    _send_metrics(tracker, [item for row in rows for item in _numbers(row, row["epoch"])])


def _close(tracker: Tracker, hook: MlflowHook, status: str) -> None:
    client, run_dir, run_id = tracker.client, hook.record.run_dir, tracker.run_id
    patient(client.set_tag, run_id, "trainforge.status", status)
    if (run_dir / PLOTS).is_dir():
        patient(client.log_artifacts, run_id, str(run_dir / PLOTS), PLOTS)
    if hook.log_model and status == "COMPLETED" and (run_dir / BEST_WEIGHTS).exists():
        patient(client.log_artifact, run_id, str(run_dir / BEST_WEIGHTS))
    patient(client.set_terminated, run_id, ENDS[status])


def exists(client, run_id: str) -> bool:
    try:
        patient(client.get_run, run_id)
        return True
    except Exception as e:  # noqa: BLE001 - only "no such run" is an answer
        if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("MLflow: run %s is not in this tracking store: the run goes on in a new MLflow run", run_id)
        return False


def log_params(client, run_id: str, params: dict) -> None:
    """``params`` (name -> text) in calls of up to MLflow's 100."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), PARAMS):
        patient(client.log_batch, run_id, params=items[i:i + PARAMS])


def _params_again(tracker: Tracker, params: dict) -> None:
    """A resume: new keys become params; a changed value (MLflow params cannot change) a
    ``changed_on_resume.<key>`` tag, ``old -> new``."""
    from mlflow.entities import RunTag

    before = patient(tracker.client.get_run, tracker.run_id).data.params
    log_params(tracker.client, tracker.run_id, {k: v for k, v in params.items() if k not in before})
    tags = [RunTag(f"changed_on_resume.{k}", f"{before[k]} -> {v}"[:PARAM_LEN]) for k, v in params.items()
            if k in before and before[k] != v]
    if tags:
        patient(tracker.client.log_batch, tracker.run_id, tags=tags)

"""A sweep's report: one row per job from the launcher's view and the job's status.json,
printed as a table and written to ``summary.csv`` at the sweep's root."""
from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from trainforge.files import COLLAPSE_CSV, MLFLOW, TRAINING_LOG, read_json, read_status


SUMMARY = "summary.csv"


def job_row(job, overrides: str, run_dir, status=None, error="", log="", gpus="") -> dict:
    """A summary row: job, overrides, status, epochs run, best monitored value, GPUs, run
    dir, error line and log of a failed job, final metrics. ``status`` and ``error`` (the
    launcher's view) win over the job's status.json, which a killed job never finished."""
    record = read_status(run_dir)
    row = {"job": job, "overrides": overrides, "status": status or record.get("status") or "UNKNOWN",
           "epochs": record.get("epoch")}
    best = record.get("best") or {}
    if best.get("monitor"):
        row[f"best_{best['monitor']}"] = best.get("value")
        row["best_epoch"] = best.get("epoch")
    if record.get("stop_reason"):  # COMPLETED early on purpose: early_stop, pruned, collapse
        row["stop_reason"] = record["stop_reason"]
    if (Path(run_dir) / COLLAPSE_CSV).exists():  # SeqSetVAE's check ran: say whether it fired
        from trainforge.analysis.runs import collapse_suspected

        row["collapse"] = collapse_suspected(Path(run_dir))
    row.update(gpus=gpus, run_dir=str(run_dir), error=error or record.get("error", ""),
               log=log if row["status"] not in ("COMPLETED", "SKIPPED") else "")
    tracked = read_json(Path(run_dir) / MLFLOW)  # log.mlflow=true: the job's MLflow run
    if tracked.get("run_id"):  # (a spooling job's: its run in the sweep's store, once forwarded)
        row["mlflow_run_id"] = (tracked.get("forwarded") or tracked)["run_id"]
    final = record.get("final") or {}
    row.update({f"train_{k}": v for k, v in final.get("train", {}).items()})
    row.update({f"val_{k}": v for k, v in final.get("val", {}).items()})
    row.update({f"test_{k}": v for k, v in (record.get("test") or {}).get("metrics", {}).items()})
    return row


def write_summary(sweep_dir, rows: list) -> Path:
    path = Path(sweep_dir) / SUMMARY
    tmp = path.with_suffix(".tmp")
    from trainforge.engine.logging import table_csv  # imports torch: not at start-up (Hydra loads this callback)

    tmp.write_text(table_csv(rows))
    tmp.replace(path)
    return path


def table(rows: list, shown: dict) -> str:
    """The end-of-sweep table (pandas): job, overrides ``shown[job]``, status, best
    monitored value(s), epochs, run dir; then one line per failed job: error and log."""
    import pandas as pd

    best = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("best_") and k != "best_epoch"]
    flags = [k for k in ("stop_reason", "collapse", "mlflow_run_id") if any(k in r for r in rows)]
    frame = pd.DataFrame([{"job": r["job"], "overrides": shown.get(r["job"], r["overrides"]), "status": r["status"],
                           **{k: r.get(k) for k in best}, "epochs": r.get("epochs"), **{k: r.get(k) for k in flags},
                           "run_dir": relative(r["run_dir"])} for r in rows])
    text = frame.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.6g}")
    errors = [f"  job {r['job']} {r['status']}: {r['error']}" + (f"\n    log: {r['log']}" if r["log"] else "")
              for r in rows if r["status"] not in ("COMPLETED", "SKIPPED") and (r["error"] or r["log"])]
    return "\n".join([text, *errors])


def relative(path) -> str:
    """``path`` relative to the working directory when it is under it (for printing)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def summarize(sweep_dir) -> Path:
    """``summary.csv`` from the job directories alone (sweeps run by other launchers)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for status_file in sorted(sweep_dir.glob("*/status.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = status_file.parent
        overrides = job / ".hydra" / "overrides.yaml"
        rows.append(job_row(job.name, " ".join(OmegaConf.load(overrides)) if overrides.exists() else "", job,
                            log=job / TRAINING_LOG))
    return write_summary(sweep_dir, rows)


class SweepSummary(Callback):
    """Hydra callback: summary.csv when a multirun ends, unless trainforge's launchers
    (which also report failed and unstarted jobs) already wrote it."""

    def on_multirun_end(self, config, **kwargs) -> None:
        if not str(config.hydra.launcher.get("_target_", "")).startswith("hydra_plugins.trainforge_launcher"):
            summarize(config.hydra.sweep.dir)

"""Reading run and sweep directories for analysis: a ``Run`` per directory (epoch and
batch tables, config, status, warnings), the best epoch, a summary, a ranked comparison.

Reads only the files of the run-directory contract (``docs/run-directory.md``), with pandas.
"""
from __future__ import annotations

import json
import math
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from trainforge.files import (BATCH_CSV, COLLAPSE_CSV, COLLAPSE_WARNING, CONFIG, EPOCH_CSV, METRICS_JSON, MLFLOW,
                              STATUS, TRAINING_LOG, process_ended, read_json)

RUN_FILES = (EPOCH_CSV, METRICS_JSON, BATCH_CSV, STATUS, TRAINING_LOG)
BATCH_LINE = re.compile(r"Epoch \[(\d+)/(\d+)\] - Progress [\d.]+% \((\d+)/(\d+)\)")
RISE = 0.10  # a loss this far (relative) above its minimum at the last epoch is "going up"
GAP = 1.5  # val_loss this many times train_loss at the last epoch is a gap worth a warning


class AnalysisError(Exception):
    """A directory that cannot be analysed; the message is one line."""


@dataclass
class Run:
    """What one run directory holds. ``epochs``: one row per finished epoch, columns as in
    ``epoch_metrics.csv``; ``batches``: ``batch_metrics.csv`` (None if absent or not asked for)."""

    path: Path
    epochs: object  # pandas.DataFrame
    batches: object = None
    status: dict = field(default_factory=dict)
    monitor: str = "val_loss"
    mode: str = "min"
    planned: int | None = None  # trainer.epochs of the config
    overrides: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    damage: list = field(default_factory=list)  # files read in part or not at all: warnings

    @property
    def name(self) -> str:
        return self.path.name


def is_run(path: Path) -> bool:
    return any((path / f).exists() for f in RUN_FILES)


def _numeric(frame):
    import pandas as pd

    return frame.apply(pd.to_numeric, errors="coerce")


def read_table(path: Path, damage: list | None = None, live: bool = False):
    """A metrics CSV as numbers. A last line cut short by a crash (its last column,
    ``lr`` or ``epoch_time``, empty) is dropped; unreadable lines are skipped; each is said
    in ``damage`` (a list of warning lines) when given, the last line not for a ``live``
    run (one that is writing it)."""
    import pandas as pd

    frame = _numeric(pd.read_csv(path, on_bad_lines="skip"))
    lines = sum(1 for line in path.read_bytes().splitlines() if line.strip()) - 1  # the header aside
    skipped = lines - len(frame)
    if len(frame.columns):
        whole = frame[frame.columns[-1]].notna() & frame[frame.columns[0]].notna()
        if damage is not None and len(frame) and not whole.iloc[-1] and not live:
            damage.append(f"{path.name}: its last line is cut short (a write interrupted?): left out")
        if damage is not None and (~whole.iloc[:-1]).any():
            damage.append(f"{path.name}: {int((~whole.iloc[:-1]).sum())} incomplete line(s) left out")
        frame = frame[whole]
    if damage is not None and skipped:
        damage.append(f"{path.name}: {skipped} unreadable line(s) left out (wrong number of fields)")
    return frame.reset_index(drop=True)


def _json(path: Path, damage: list | None = None):
    """The JSON in ``path``; None if absent or unreadable (said in ``damage`` when given)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if damage is not None:
            damage.append(f"{path.name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:80]}): ignored")
        return None


def _epochs(path: Path, run_notes: list, damage: list, live: bool):
    """Epoch rows from epoch_metrics.csv, else metrics.json; one row per epoch (the last)."""
    import pandas as pd

    records = _json(path / METRICS_JSON, damage)
    if records is not None and not isinstance(records, list):
        damage.append(f"{METRICS_JSON} holds no list of epochs: ignored")
    if (path / EPOCH_CSV).exists():
        frame = read_table(path / EPOCH_CSV, damage, live)
    elif isinstance(records, list) and records:
        frame = _numeric(pd.json_normalize(records, sep="_"))
        run_notes.append("epoch rows read from metrics.json (no epoch_metrics.csv)")
    else:
        return pd.DataFrame({"epoch": []})
    if "epoch" in frame and frame["epoch"].duplicated().any():
        run_notes.append("epoch_metrics.csv repeats epochs: the last row of each is used")
        frame = frame.drop_duplicates("epoch", keep="last")
    return frame.sort_values("epoch").reset_index(drop=True) if "epoch" in frame else frame


def _config(path: Path) -> dict:
    if not (path / CONFIG).exists():
        return {}
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path / CONFIG))
    except Exception:  # noqa: BLE001 - a damaged config only costs the monitor's name
        return {}


def load_run(path, batch_metrics: bool = True) -> Run:
    """Everything the plots and the summary need from one run directory."""
    path = Path(path)
    notes, damage = [], []
    status = _json(path / STATUS, damage) or {}
    live = status.get("status") == "RUNNING" and _alive(status) is not False
    run = Run(path, _epochs(path, notes, damage, live), status=status, notes=notes, damage=damage)
    cfg = _config(path)
    best = run.status.get("best") or {}
    ck = cfg.get("checkpoint", {})
    run.monitor = ck.get("monitor") or best.get("monitor") or "val_loss"
    run.mode = ck.get("mode") or best.get("mode") or "min"
    run.planned = cfg.get("trainer", {}).get("epochs")
    overrides = path / ".hydra" / "overrides.yaml"
    if overrides.exists():
        from omegaconf import OmegaConf

        run.overrides = [str(o) for o in OmegaConf.load(overrides)]
    for name in (EPOCH_CSV, METRICS_JSON, STATUS, TRAINING_LOG, CONFIG):
        if not (path / name).exists():
            run.missing.append(name)
    if batch_metrics:
        if (path / BATCH_CSV).exists():
            run.batches = read_table(path / BATCH_CSV, damage, live)
        else:
            run.missing.append("batch_metrics.csv (train with log.batch_metrics=true for the batch plots)")
    return run


def best_epoch(run: Run):
    """(epoch, value) of the best finite value of the monitored metric, or None."""
    if run.monitor not in run.epochs or not len(run.epochs):
        return None
    values = run.epochs[run.monitor].where(run.epochs[run.monitor].map(math.isfinite))
    if values.notna().sum() == 0:
        return None
    i = values.idxmax() if run.mode == "max" else values.idxmin()
    return int(run.epochs["epoch"][i]), float(values[i])


def _log_facts(path: Path) -> tuple:
    """(times resumed, the last batch line's (epoch, epochs, batch, batches) or None)."""
    try:
        data = (path / TRAINING_LOG).read_bytes()
    except OSError:
        return 0, None
    lines = BATCH_LINE.findall(data[-65536:].decode(errors="replace"))
    return data.count(b"Resumed from "), lines[-1] if lines else None


def _alive(status: dict) -> bool | None:
    """Whether the run's process still exists (None: it ran on another host)."""
    if status.get("host") != socket.gethostname() or not status.get("pid"):
        return None
    return not process_ended(int(status["pid"]))


def collapse_suspected(path: Path) -> bool:
    """Whether the run's log says posterior collapse was suspected (SeqSetVAE's check, which
    writes collapse.csv: without it the log is not read)."""
    if not (path / COLLAPSE_CSV).exists():
        return False
    try:
        return COLLAPSE_WARNING.encode() in (path / TRAINING_LOG).read_bytes()
    except OSError:
        return False


def warnings_for(run: Run) -> list:
    """What a researcher wants pointed out: files read in part, rising losses, non-finite
    steps, a train/val gap, collapse, a run that died without saying so."""
    out, e = list(run.damage), run.epochs
    if collapse_suspected(run.path):
        out.append(f"posterior collapse suspected (see {TRAINING_LOG} and {COLLAPSE_CSV})")
    for col in ("train_loss", "val_loss"):
        if col in e and len(e) >= 2 and e[col].map(math.isfinite).all():
            low = e[col].min()
            last = e[col].iloc[-1]
            if low > 0 and last > low * (1 + RISE):
                at = int(e["epoch"][e[col].idxmin()])
                out.append(f"{col} going up: {last:.4g} at the last epoch, {(last / low - 1):.0%} above "
                           f"its minimum {low:.4g} at epoch {at}")
    bad = int(e["train_nonfinite"].sum()) if "train_nonfinite" in e else 0
    if bad:
        epochs = ", ".join(str(int(x)) for x in e["epoch"][e["train_nonfinite"] > 0])
        out.append(f"{bad} non-finite batch loss(es) (epochs {epochs})")
    elif run.batches is not None and "loss" in run.batches:
        n = int((~run.batches["loss"].map(math.isfinite)).sum())
        if n:
            out.append(f"{n} non-finite batch loss(es) in batch_metrics.csv")
    for col in ("train_loss", "val_loss"):
        if col in e and len(e) and not e[col].map(math.isfinite).all():
            out.append(f"{col} is not finite at epoch(s) "
                       + ", ".join(str(int(x)) for x in e["epoch"][~e[col].map(math.isfinite)]))
    if {"train_loss", "val_loss"} <= set(e) and len(e):
        train, val = e["train_loss"].iloc[-1], e["val_loss"].iloc[-1]
        if train > 0 and val > GAP * train:
            out.append(f"val_loss is {val / train:.1f}x train_loss at the last epoch ({val:.4g} vs {train:.4g}): "
                       "overfitting, or a train/val mismatch")
    if run.status.get("status") == "RUNNING" and _alive(run.status) is False:
        out.append(f"status.json says RUNNING but process {run.status['pid']} on {run.status['host']} is gone "
                   "(killed without a chance to record it?)")
    if "epoch" in e and len(e) and list(e["epoch"]) != list(range(1, len(e) + 1)):
        out.append("epochs are not 1..N: " + ", ".join(str(int(x)) for x in e["epoch"]))
    return out


def summary(run: Run) -> dict:
    """The facts the printed summary shows (also for tests and scripts)."""
    e, st = run.epochs, run.status
    facts = {"run": str(run.path), "status": st.get("status", "unknown (no status.json)"),
             "epochs_done": len(e), "epochs_planned": run.planned, "monitor": run.monitor, "mode": run.mode,
             "best": best_epoch(run), "error": st.get("error"), "warnings": warnings_for(run),
             "missing": list(run.missing), "notes": list(run.notes)}
    if len(e):
        last = e.iloc[-1]
        keys = ["train_loss", *[c for c in e.columns if c.startswith("val_")], "lr"]
        facts["final"] = {"epoch": int(last["epoch"]), **{k: float(last[k]) for k in keys if k in e}}
    if "epoch_time" in e and len(e):
        t = e["epoch_time"]
        facts["time"] = {"total_s": float(t.sum()), "mean_s": float(t.mean()), "min_s": float(t.min()),
                         "max_s": float(t.max())}
    if "gpu_mem_peak_gib" in e:
        facts["gpu_mem_peak_gib"] = float(e["gpu_mem_peak_gib"].max())
    facts["resumes"], last = _log_facts(run.path)
    facts["mlflow"] = read_json(run.path / MLFLOW)  # log.mlflow=true: its MLflow run
    if facts["status"] == "RUNNING" and last:
        facts["position"] = "epoch {}/{}, batch {}/{}".format(*last)
    return facts


def format_summary(f: dict) -> str:
    done = f"{f['epochs_done']}/{f['epochs_planned']}" if f["epochs_planned"] else str(f["epochs_done"])
    lines = [f"Run: {f['run']}", f"Status: {f['status']} - epochs done: {done}"
             + (f" - now at {f['position']}" if f.get("position") else "")
             + (f" - resumed {f['resumes']}x" if f.get("resumes") else "")]
    if f.get("error"):
        lines.append(f"Error: {f['error']}")
    if f["best"]:
        lines.append(f"Best {f['monitor']} ({f['mode']}): {f['best'][1]:.6g} at epoch {f['best'][0]}")
    else:
        lines.append(f"Best {f['monitor']} ({f['mode']}): no finite value yet")
    if f.get("final"):
        fin = dict(f["final"])
        lines.append(f"Final (epoch {fin.pop('epoch')}): " + " - ".join(f"{k} {v:.6g}" for k, v in fin.items()))
    if f.get("time"):
        t = f["time"]
        lines.append(f"Time: {t['total_s']:.1f} s in epochs, {t['mean_s']:.2f} s per epoch "
                     f"(min {t['min_s']:.2f}, max {t['max_s']:.2f})")
    if f.get("gpu_mem_peak_gib") is not None:
        lines.append(f"Peak GPU memory: {f['gpu_mem_peak_gib']:.2f} GiB")
    if (f.get("mlflow") or {}).get("run_id"):
        m = f["mlflow"]
        if m.get("forward_to") and not m.get("forwarded"):
            lines.append(f"MLflow: run {m['run_id']} kept in the run directory (log.mlflow_spool), not yet forwarded "
                         f"to {m['forward_to']}: trainforge analyze --sync {f['run']}")
        else:
            m = {**m, **(m.get("forwarded") or {})}
            lines.append(f"MLflow: run {m['run_id']} in experiment {m.get('experiment')} at {m.get('uri')}")
    lines += [f"Note: {n}" for n in f["notes"]]
    lines += [f"Missing: {m}" for m in f["missing"]]
    lines += [f"Warning: {w}" for w in f["warnings"]]
    return "\n".join(lines)


# ---- sweeps -----------------------------------------------------------------------------
def job_dirs(path: Path) -> list:
    """The run directories directly under ``path``, in job order (numbers numerically)."""
    jobs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run(p)]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def sweep_runs(path: Path, batch_metrics: bool = False) -> list:
    """The sweep's jobs: every run directory, plus the jobs ``summary.csv`` lists whose
    directory holds no run (a job refused at the door writes nothing but ``.hydra/``)."""
    runs = [load_run(p, batch_metrics) for p in job_dirs(path)]
    seen, summary = {r.name for r in runs}, path / "summary.csv"
    if not summary.exists():
        return runs
    import pandas as pd

    for row in pd.read_csv(summary, dtype=str, keep_default_na=False).to_dict("records"):
        job = str(row.get("job"))
        if job in seen or not (path / job).is_dir():
            continue
        run = load_run(path / job, batch_metrics)
        error = row.get("error")
        run.status = {"status": row.get("status") or "unknown", "error": error if isinstance(error, str) else ""}
        if runs:  # no config.yaml: rank it by the sweep's monitor
            run.monitor, run.mode = runs[0].monitor, runs[0].mode
        runs.append(run)
    return sorted(runs, key=lambda r: (not r.name.isdigit(), int(r.name) if r.name.isdigit() else 0, r.name))


def planned_jobs(path: Path) -> int | None:
    """How many jobs the sweep in ``path`` was started with, from its ``multirun.yaml``
    (Hydra's basic sweeper: the product of the swept values; a search: ``n_trials``); None
    when unknown."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra = OmegaConf.load(path / "multirun.yaml").hydra
        if str(hydra.sweeper.get("_target_", "")).endswith("SearchSweeper"):
            return int(hydra.sweeper.n_trials)  # trainforge's search: its number of trials
        if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None  # another search (Optuna, ...) decides its trials as it goes
        params = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]
        parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides([*params, *hydra.overrides.task])}
        return math.prod(len(list(o.sweep_string_iterator())) for o in parsed.values() if o.is_sweep_override())
    except Exception:  # noqa: BLE001 - no file, or one we cannot read: the count is unknown
        return None


def labels(runs: list) -> dict:
    """Job name -> the overrides that differ between jobs (those shared by all say nothing)."""
    shared = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    return {r.name: " ".join(o for o in r.overrides if o not in shared) or f"job {r.name}" for r in runs}


def wall_time(status: dict) -> float:
    """Seconds from the start of the run's last process to its end (a resumed run: its last
    part), or NaN for a run not ended."""
    try:
        return float(status["finished"]) - float(status["started"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def comparison(runs: list):
    """The jobs as a table ranked by the monitored metric (most common across the jobs);
    jobs without a finite value come last, unranked."""
    import pandas as pd

    monitor = pd.Series([r.monitor for r in runs]).mode()[0]
    mode = next(r.mode for r in runs if r.monitor == monitor)
    names = labels(runs)
    rows, collapse_column = [], any((r.path / COLLAPSE_CSV).exists() for r in runs)
    for r in runs:
        r.monitor, r.mode = monitor, mode
        best, e = best_epoch(r), r.epochs
        row = {"job": r.name, "overrides": names[r.name], "status": r.status.get("status", "unknown"),
               "epochs": len(e), f"best_{monitor}": best[1] if best else math.nan,
               "best_epoch": best[0] if best else math.nan}
        if len(e):
            row.update({f"final_{c}": e[c].iloc[-1] for c in e.columns if c == "train_loss" or c.startswith("val_")})
        row["stop_reason"] = r.status.get("stop_reason") or ""
        row["epoch_time_s"] = float(e["epoch_time"].sum()) if "epoch_time" in e else math.nan
        row["wall_s"] = wall_time(r.status)
        if collapse_column:
            row["collapse"] = collapse_suspected(r.path)
        row["error"] = r.status.get("error") or ""
        rows.append(row)
    table = pd.DataFrame(rows)
    key = f"best_{monitor}"
    done = (table["status"] == "COMPLETED") & table[key].notna()  # running, stopped or failed jobs: unranked
    table = pd.concat([table[done].sort_values(key, ascending=mode == "min", kind="stable"), table[~done]])
    table.insert(0, "rank", pd.Series(range(1, len(table) + 1), index=table.index).where(done).astype("Int64"))
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table.reset_index(drop=True), monitor, mode

"""What a researcher opens after a run or a sweep: plots, a summary, a ranked comparison.

``python -m trainforge.analysis.analyze DIR [--batch_metrics]`` (also ``scripts/analyze_training.py``):

- DIR a run directory: PNGs in ``DIR/plots/`` and a printed summary (status, best epoch of
  the monitored metric, final values, time, warnings). Works on a run in progress, a
  resumed run and a directory with only some of its files (it says which are missing).
- DIR a sweep directory (``multirun/DATE/TIME/``): one overlay figure per metric in
  ``DIR/plots/`` and ``DIR/comparison.csv``, the jobs ranked by the monitored metric,
  jobs without a value (failed, not started) listed last.

Reads the run directory with ``analysis/runs.py``; figures are matplotlib ``Figure`` objects rendered by Agg (no display, no pyplot state).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainforge.analysis import plots
from trainforge.files import PLOTS
from trainforge.analysis.runs import (RUN_FILES, AnalysisError, comparison, format_summary, is_run, job_dirs,
                                      labels, load_run, planned_jobs, summary, sweep_runs)
from trainforge.analysis.runs import *  # noqa: F401,F403  (the names this module had)


def analyze_sweep(path: Path, batch_metrics: bool, window: int | None, out=print) -> dict:
    runs = sweep_runs(path, batch_metrics)
    table, monitor, mode = comparison(runs)
    table.to_csv(path / "comparison.csv", index=False)
    figures = plots.sweep_figures(runs, labels(runs), batch_metrics, window)
    files = plots.save(figures, path / PLOTS)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 12, "display.max_colwidth", 40):
        shown = table.drop(columns=["error"])
        planned = planned_jobs(path)
        jobs = f"{len(runs)} of {planned} job(s)" if planned and planned > len(runs) else f"{len(runs)} job(s)"
        out(f"Sweep: {path} - {jobs}, ranked by {monitor} ({mode})")
        out(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    for line in search_lines(path):
        out(line)
    for _, row in table[table["status"].isin(["FAILED", "PREEMPTED", "RUNNING", "unknown"])].iterrows():
        out(f"Job {row['job']} ({row['overrides']}): {row['status']}" + (f" - {row['error']}" if row["error"] else ""))
    for run in runs:
        for line in run.damage:
            out(f"Warning: job {run.name}: {line}")
    if planned and planned > len(runs):
        out(f"Warning: {planned - len(runs)} of the {planned} jobs have not started (the sweep is still running, "
            "or stopped before them): the table shows the started ones")
    if (path / "multirun.yaml").exists() and not (path / "summary.csv").exists():
        out("Note: no summary.csv (the sweep did not finish, or a job failed): jobs read from their directories")
    out(f"Wrote {path / 'comparison.csv'} and {len(files)} plot(s) in {path / 'plots'}")
    return {"table": table, "figures": figures, "files": files}


def search_lines(path: Path) -> list:
    """A search directory (``hydra/sweeper=search``): its study's trials and best params."""
    journal = path / "optuna.journal"
    if not journal.exists():
        return []
    try:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError:
        return [f"Search: {journal} holds an Optuna study (pip install 'trainforge[search]' to read it)"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    lines = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        counts = ", ".join(f"{states.count(s)} {w}" for s, w in
                           (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"), ("RUNNING", "stopped")))
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        best = f"; best trial #{study.best_trial.number}: {study.best_trial.params}" if complete else ""
        lines.append(f"Search '{name}' ({study.direction.name.lower()}): {len(states)} trial(s), {counts}{best}")
    return lines


def analyze_run(path: Path, batch_metrics: bool, window: int | None, out=print) -> dict:
    run = load_run(path, batch_metrics)
    facts = summary(run)
    figures = plots.run_figures(run, window)
    files = plots.save(figures, path / PLOTS)
    out(format_summary(facts))
    out(f"Plots ({len(files)}) in {path / 'plots'}: " + ", ".join(f.name for f in files) if files
        else "Plots: none (no epoch or batch rows yet)")
    return {"summary": facts, "figures": figures, "files": files}


def analyze(path, batch_metrics: bool = False, window: int | None = None, out=print) -> dict:
    """Analyse a run or a sweep directory; raises AnalysisError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise AnalysisError(f"{path}: {'a file, not a' if path.exists() else 'no such'} directory "
                            "(give a run directory, a sweep directory or a folder of runs)")
    if is_run(path):
        return analyze_run(path, batch_metrics, window, out)
    if job_dirs(path):
        return analyze_sweep(path, batch_metrics, window, out)
    sweeps = [p.name for p in sorted(path.iterdir()) if p.is_dir() and job_dirs(p)][:5]
    hint = f"; it holds sweeps: {', '.join(sweeps)} (pass one of them)" if sweeps else ""
    raise AnalysisError(f"{path}: holds no run (none of {', '.join(RUN_FILES)}) and no job directories{hint}")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want an integer >= 1")
    return int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="analyze_training.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="a run directory or a sweep directory (multirun/DATE/TIME)")
    parser.add_argument("--batch_metrics", "--batch-metrics", action="store_true",
                        help="also plot batch_metrics.csv: batch loss with a rolling mean and the per-epoch spread")
    parser.add_argument("--window", type=_positive, default=None,
                        help="rolling-mean window in batches (default: a tenth of an epoch, at least 3)")
    parser.add_argument("--sync", action="store_true",
                        help="only forward the MLflow runs kept in the run directories (log.mlflow_spool) to their store")
    args = parser.parse_args(argv)
    if args.sync:
        from trainforge.analysis.forward import sync

        return 1 if sync(args.dir) else 0
    try:
        analyze(args.dir, args.batch_metrics, args.window)
    except AnalysisError as e:
        print(f"analyze: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head` stopped reading: the files are written, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())

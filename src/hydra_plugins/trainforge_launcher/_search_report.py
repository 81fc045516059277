"""A search's report: every trial of the study ranked by the objective with its params,
``summary.csv``, the best trial as one command line, and Optuna's plots (optimisation
history, parameter importances) in ``SWEEP/plots/``."""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

from trainforge.analysis.summary import job_row, table, write_summary
from trainforge.files import PLOTS, TRAINING_LOG, read_status

from ._session import say
from ._space import as_override
from .launcher import _rel

STATUS = {"COMPLETE": "COMPLETED", "PRUNED": "COMPLETED", "FAIL": "FAILED"}
PLOT_FILES = {"search_history.png": "plot_optimization_history", "search_importances.png": "plot_param_importances"}


def report(search):
    """Print the table and the best trial, write summary.csv and the plots; the best trial or None."""
    study = search.study
    trials = study.get_trials(deepcopy=False)
    rows = [_row(search, t) for t in trials]
    rows.sort(key=lambda r: _rank(r, search))
    shown = {t.number: " ".join(as_override(k, v) for k, v in t.params.items()) or "-" for t in trials}
    path = write_summary(search.sweep_dir, rows)
    states = Counter(t.state.name for t in trials)
    lines = ["", table(rows, shown), f"summary: {_rel(path)}",
             f"search: {len(trials)} of {search.n_trials} trial(s): {states['COMPLETE']} complete, "
             f"{states['PRUNED']} pruned, {states['FAIL']} failed"
             + (f", {states['RUNNING']} stopped (the same command resumes them)" if states["RUNNING"] else "")]
    best = _best(study)
    if best is not None:
        lines += [f"best: trial #{best.number} {search.monitor}={best.value:.6g} -> "
                  f"{_rel(search.sweep_dir / str(best.number))}", f"  as one run: {command(search.fixed, best.params)}"]
    lines += plots(study, search.sweep_dir)
    say("\n".join(lines))
    return best


def _row(search, trial) -> dict:
    run_dir = search.sweep_dir / str(trial.number)
    status = STATUS.get(trial.state.name) or read_status(run_dir).get("status") or "NOT_STARTED"
    if status == "RUNNING":  # the search stopped: a trial that did not record its end
        status = "PREEMPTED"
    error, log = search.errors.get(trial.number, ("", ""))
    if status == "FAILED" and not log and (run_dir / TRAINING_LOG).exists():
        log = str(run_dir / TRAINING_LOG)
    overrides = " ".join([*search.fixed, *(as_override(k, v) for k, v in trial.params.items())])
    row = job_row(trial.number, overrides, run_dir, status, error, log)
    row.update(trial.params)
    return row


def _rank(row: dict, search) -> tuple:
    """Completed trials by the objective, then pruned ones by theirs, then the rest in order."""
    value = row.get(f"best_{search.monitor}")
    pruned = row.get("stop_reason") == "pruned"
    if row["status"] != "COMPLETED" or not isinstance(value, (int, float)) or value != value:
        return (2, 0.0, row["job"])
    return (int(pruned), -value if search.direction == "maximize" else value, row["job"])


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def command(fixed, params: dict) -> str:
    """The best trial as one run: this command without ``-m`` and the search, with its values."""
    argv, kept, skip_next = sys.argv[1:], [], False
    takes_value = {"-cd", "-cn", "-cp", "--config-dir", "--config-name", "--config-path"}
    for arg in argv:
        if skip_next:
            kept.append(arg)
            skip_next = False
        elif arg.startswith("-") and arg not in ("-m", "--multirun"):
            kept.append(arg)
            skip_next = arg in takes_value
    prog = sys.argv[0]
    prog = f"python {prog}" if prog.endswith(".py") else "trainforge" if Path(prog).name == "trainforge" else \
        "python -m trainforge"
    return " ".join([prog, *kept, *fixed, *(as_override(k, v) for k, v in params.items())])


def plots(study, sweep_dir: Path) -> list:
    """Optuna's optimisation history and parameter importances as PNGs (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as views
    except ImportError:
        return ["plots: none (matplotlib is not installed: pip install 'trainforge[plots]')"]
    out, folder = [], sweep_dir / PLOTS
    folder.mkdir(exist_ok=True)
    for name, view in PLOT_FILES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(views, view)(study)
            figure = axes.figure
            figure.savefig(folder / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            out.append(_rel(folder / name))
        except Exception as exc:  # noqa: BLE001 - too few trials, one value: a note, not a failed search
            out.append(f"{name}: not drawn ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return [f"plots: {', '.join(out)}"]

"""One trial of a search (``hydra/sweeper=search``), as the study and the trial's run see it.

The study lives in the sweep directory, in Optuna's journal file (``optuna.journal``: safe
for several processes, also on a shared filesystem). The sweeper asks and tells in the
sweep's process; each trial's run reports its epoch metric to the same journal and asks
the pruner whether to stop (``judge_from_env``), on rank 0 only. The sweeper tells the run
which trial it is through ``TRAINFORGE_TRIAL`` (JSON: journal, study, trial number, pruner).
Optuna loads only when a search runs.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

TRIAL_ENV = "TRAINFORGE_TRIAL"
JOURNAL = "optuna.journal"
PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "random", "grid")


def make_pruner(spec: dict):
    """The pruner a spec names: ``median`` (a trial worse than the median of earlier trials at
    the same epoch), ``halving`` (successive halving), ``none``. The sweeper and every trial
    build the same one (Optuna keeps no pruner in its storage)."""
    import optuna

    kind, first = spec.get("pruner", "median"), spec.get("warmup_epochs", 2) + 1  # the first epoch it may prune
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.get("startup_trials", 4), n_warmup_steps=first)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=spec.get("reduction_factor", 3))
    return optuna.pruners.NopPruner()


def storage(sweep_dir):
    """Optuna's journal storage in ``sweep_dir`` (created when missing)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(sweep_dir) / JOURNAL)))


def open_study(sweep_dir, name: str, spec: dict, sampler=None, direction: str | None = None):
    """The study ``name`` in ``sweep_dir``: created with ``direction`` when the sweeper opens
    it the first time, loaded otherwise (a trial's run, a re-run search)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if direction is None:
        return optuna.load_study(study_name=name, storage=storage(sweep_dir), pruner=make_pruner(spec))
    return optuna.create_study(study_name=name, storage=storage(sweep_dir), sampler=sampler,
                               pruner=make_pruner(spec), direction=direction, load_if_exists=True)


def trial_env(sweep_dir, name: str, number: int, spec: dict) -> dict:
    """What a trial's job gets in its environment so its run can report and be pruned."""
    return {TRIAL_ENV: json.dumps({"sweep_dir": str(sweep_dir), "study": name, "trial": number, **spec})}


class Judge:
    """``judge(value, epoch)``: report the trial's epoch value, say whether to prune it.
    Opens the study at its first call (rank 0 only calls it)."""

    def __init__(self, spec: dict):
        self.spec, self.trial = spec, None

    def __call__(self, value: float, epoch: int) -> bool:
        if self.trial is None:
            import optuna

            study = open_study(self.spec["sweep_dir"], self.spec["study"], self.spec)
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == self.spec["trial"])
            self.trial = optuna.trial.Trial(study, frozen._trial_id)
        if not math.isfinite(value):
            return False  # a NaN epoch is the run's to handle (check_finite); the trial then fails
        with warnings.catch_warnings():  # a resumed run reports its last epoch again: Optuna keeps the first
            warnings.simplefilter("ignore")
            self.trial.report(float(value), int(epoch))
        return self.trial.should_prune()

    def __repr__(self) -> str:
        return f"trial {self.spec['trial']} of {self.spec['sweep_dir']}"


def judge_from_env(environ=os.environ) -> Judge | None:
    """The trial this run is (a search's job), else None."""
    raw = environ.get(TRIAL_ENV)
    return Judge(json.loads(raw)) if raw else None

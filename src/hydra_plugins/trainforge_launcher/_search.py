"""The search itself (``hydra/sweeper=search``, see search.py): ask, run on the pool, tell."""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import List, Optional

from trainforge.errors import ConfigError, SweepFailed, SweepStopped
from trainforge.files import read_status
from trainforge.run.trial import PRUNERS, SAMPLERS, open_study, trial_env

from ._session import drop_empty
from ._space import as_override, grid, split
from .launcher import Entry, LocalGpusLauncher, _rel


def check(params: dict) -> None:
    from trainforge.config.rules import at_least, fail, interval, one_of, positive

    checks = {"n_trials": at_least(1), "timeout": positive, "sampler": one_of(*SAMPLERS), "pruner": one_of(*PRUNERS),
              "warmup_epochs": at_least(0), "startup_trials": at_least(0), "reduction_factor": at_least(2),
              "max_failure_rate": interval(0, 1), "tpe_startup_trials": at_least(0)}
    for key, rule in checks.items():
        value = params.get(key)
        problem = rule(value) if value is not None else None
        if problem:
            raise fail(f"hydra.sweeper.{key}", value, problem)


class Search:
    """One invocation of a search: the study's trials so far, and the ones it starts."""

    def __init__(self, launcher: LocalGpusLauncher, params: dict, arguments: List[str], sweep_dir: Path, t0: float):
        check(params)
        self.launcher, self.params, self.sweep_dir, self.t0 = launcher, params, sweep_dir, t0
        self.space, self.fixed = split(arguments, params.get("params") or {})
        self.spec = {k: params[k] for k in ("pruner", "warmup_epochs", "startup_trials", "reduction_factor")}
        self.monitor, mode = self._objective()
        self.direction = "maximize" if mode == "max" else "minimize"
        self.n_trials = params["n_trials"]
        if params["sampler"] == "grid":
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid(self.space).values()))
        self.study = open_study(sweep_dir, params["study_name"], self.spec, self._sampler(), self.direction)
        if self.study.direction.name.lower() != self.direction:
            raise ConfigError(f"hydra.sweep.dir={sweep_dir}: its study was made to "
                              f"{self.study.direction.name.lower()}, this search would {self.direction} "
                              f"{self.monitor} (checkpoint.mode={mode}); use a new hydra.sweep.dir")
        self.again = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        self.failed = sum(t.state.name == "FAIL" for t in self.study.get_trials(deepcopy=False))
        self.errors: dict = {}
        self.why_stop: Optional[str] = None

    def _objective(self) -> tuple:
        """(checkpoint.monitor, checkpoint.mode) of the trials' config (nothing to set twice)."""
        launcher = self.launcher
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(self.fixed))
        ck = cfg.checkpoint
        for key in ("checkpoint.monitor", "checkpoint.mode"):
            if key in self.space:
                raise ConfigError(f"{key}: the search's objective is the trials' own best {key.split('.')[1]}; "
                                  "it cannot be searched over")
        return str(ck.monitor), str(ck.mode)

    def _sampler(self):
        import optuna

        seed, kind = self.params.get("seed"), self.params["sampler"]
        if kind == "grid":
            return _Grid(grid(self.space), seed=seed)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.params["tpe_startup_trials"])

    # ---- the loop ---------------------------------------------------------------------
    def run(self):
        launcher = self.launcher
        launcher.check_environment()
        previous = launcher._catch_signals()
        done = len(self.study.trials) - len(self.again)
        what = (f"search of {self.n_trials} trial(s), {self.direction} {self.monitor}"
                + (f" ({done} done before, {len(self.again)} to resume)" if done or self.again else ""))
        try:
            launcher.run_queue(self.next_entry, what, self.tell)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            drop_empty(Path(str(launcher.params["submitit_folder"])))
        from ._search_report import report

        best = report(self)
        return self._end(best)

    def _may_ask(self) -> bool:
        if self.why_stop:
            return False
        timeout = self.params.get("timeout")
        if timeout and time.time() - self.t0 > timeout:
            self.why_stop = self.why_stop or f"hydra.sweeper.timeout={timeout} s passed"
            return False
        return len(self.study.trials) < self.n_trials

    def next_entry(self) -> Optional[Entry]:
        """The next trial to run: an interrupted one first, else a new one; None at the end."""
        while True:
            if self.again:
                trial = self.again.pop(0)
                number, params = trial.number, trial.params
            elif self._may_ask():
                trial = self.study.ask(self.space)
                number, params = trial.number, trial.params
            else:
                return None
            overrides = [*self.fixed, *(as_override(k, v) for k, v in params.items())]
            e = self._entry(number, overrides, params)
            if e is not None:
                return e

    def _entry(self, number: int, overrides: List[str], params: dict) -> Optional[Entry]:
        launcher = self.launcher
        launcher.shown[number] = " ".join(as_override(k, v) for k, v in params.items())
        try:
            e = Entry(number, overrides, launcher._run_dir(overrides, number))
        except ConfigError as err:  # a sampled value the door refuses: a failed trial
            e = Entry(number, overrides, self.sweep_dir / str(number), status="FAILED", error=str(err))
            launcher.say(f"trial #{number} {launcher.shown[number]}: refused: {err}")
            self.tell(e)
            return None
        e.env = trial_env(self.sweep_dir, self.params["study_name"], number, self.spec)
        if launcher._done_before(e):  # it ended before the search last stopped, unreported
            self.tell(e)
            return None
        return e

    def tell(self, e: Entry) -> None:
        """The study learns the trial's end: its value, pruned, or failed. A trial stopped by
        the search's signal stays running in the study: the same command resumes it."""
        from optuna.trial import TrialState

        record = read_status(e.run_dir)
        value = e.value if e.value is not None else (record.get("best") or {}).get("value")
        if e.status == "COMPLETED" and record.get("stop_reason") == "pruned":
            self.study.tell(e.num, state=TrialState.PRUNED)
        elif e.status == "COMPLETED" and finite(value):
            self.study.tell(e.num, float(value))
        elif e.status in ("PREEMPTED", "CANCELLED", "NOT_STARTED"):
            return
        else:
            self.failed += 1
            self.errors[e.num] = (e.error or (f"{self.monitor} has no finite value ({value})"), e.log)
            if e.status == "COMPLETED":
                self.launcher.say(f"trial #{e.num} FAILED: {self.errors[e.num][0]}")
            self.study.tell(e.num, state=TrialState.FAIL)
            rate = self.params["max_failure_rate"]
            if self.failed > rate * self.n_trials and not self.why_stop:
                self.why_stop = (f"{self.failed} of {self.n_trials} trials failed, more than "
                                 f"hydra.sweeper.max_failure_rate={rate}")
                self.launcher.say(f"search: {self.why_stop}: no new trial starts")

    def _end(self, best):
        launcher = self.launcher
        if launcher.stop_signal:
            left = sum(t.state.name == "RUNNING" for t in self.study.get_trials(deepcopy=False))
            raise SweepStopped(f"search stopped by {launcher.stop_signal}: {left} trial(s) saved and stopped; the same "
                               f"command with hydra.sweep.dir={self.sweep_dir} continues it (finished trials kept, "
                               "stopped ones resume)")
        if self.why_stop and "failed" in self.why_stop:
            raise SweepFailed(f"search stopped: {self.why_stop}; summary: {_rel(self.sweep_dir / 'summary.csv')}")
        if best is None:
            raise SweepFailed(f"search: no trial completed; summary: {_rel(self.sweep_dir / 'summary.csv')}")
        return best.value


def _Grid(values: dict, seed):  # noqa: N802 - a class made when Optuna is imported
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            """Nothing: the search asks no more than the grid holds (Optuna's own stop() works only inside optimize())."""

    return Grid(values, seed=seed)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

"""Sweep launchers on submitit: ``local_gpus`` (a queue over this machine's GPU slots) and ``slurm``
(one SLURM array). Both print a line per job start and end, skip jobs a previous run of the same
sweep completed, write ``summary.csv`` and a table at the end, and raise SweepFailed (exit 1) when a
job did not complete, SweepStopped (exit 75) when Ctrl-C or SIGTERM stopped the sweep. Hydra imports
this module at every start: submitit and the job machinery load only when a sweep launches."""

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from ._job import is_trainforge, key_of as _key, launcher_overrides, sweep_provenance, varying
from .config import check_params
from ._session import drop_empty, kill_group, rel as _rel, say, session_executor, terminate
from ._slurm import LeaveNow, leave_message

# keys the launcher sets for a job unless the user did; they do not tell jobs apart
OWN_KEYS = ("trainer.threads", "trainer.devices")


@dataclass
class Entry:
    """One job of the sweep, as the parent sees it."""

    num: int
    overrides: List[str]
    run_dir: Path
    gpus: Optional[tuple] = None
    job: Any = None
    started: float = 0.0
    status: str = "NOT_STARTED"
    error: str = ""
    log: str = ""
    value: Any = None
    skipped: bool = False
    ret: Any = None  # a foreign app's JobReturn, as its job made it
    env: Optional[dict] = None  # set in the job's process (a search's trial: which one it is)


class _SubmititLauncher(Launcher):
    """What both launchers share: job bookkeeping, resumable sweeps, report, signals."""

    LOCAL_RESULTS = False  # a job's result file is there once it is done (no shared-filesystem delay)
    tracked = None  # the sweep's MLflow run (_tracking.SweepRun), once the first job is known

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config = self.hydra_context = self.task_function = None
        self.rows: dict = {}  # job num -> summary row, over every launch() of the sweep
        self.shown: dict = {}
        self.stop_signal: Optional[str] = None
        self.hard_stop = False
        self._sweep_env: Optional[dict] = None  # the jobs' environment naming the sweep root (its provenance)

    def setup(self, *, hydra_context, task_function, config) -> None:
        from trainforge.cli import keep_sweep_record

        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.ours = is_trainforge(config)  # another Hydra app gets the pool and the queue, not our checks
        keep_sweep_record(str(config.hydra.sweep.dir))  # before the sweeper rewrites its multirun.yaml

    # ---- the sweep ------------------------------------------------------------------
    def launch(self, job_overrides, initial_job_idx: int) -> List[JobReturn]:
        check_params(self.params)
        self.check_environment()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        entries = [Entry(initial_job_idx + i, list(o), self._run_dir(list(o), initial_job_idx + i))
                   for i, o in enumerate(job_overrides)]
        self.shown.update(zip((e.num for e in entries), varying([e.overrides for e in entries])))
        todo = [e for e in entries if not self._done_before(e)]
        previous = self._catch_signals()
        try:
            if todo:
                self._run(todo)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            drop_empty(Path(str(self.params["submitit_folder"])))  # submitit makes the literal ".../%j"
        return self._report(sweep_dir, entries)

    def _run(self, todo: List[Entry]) -> None:
        raise NotImplementedError

    def check_environment(self) -> None:
        """What this launcher needs of the machine, before any job or directory."""

    def _run_dir(self, overrides: List[str], num: int) -> Path:
        """The job's output dir, composed as the job will (sweep.dir / sweep.subdir). Its
        config passes the door here, before any job starts: a value no run can train with
        (in any combination) refuses the sweep in one line."""
        from trainforge.config import validate
        from trainforge.errors import ConfigError

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num, cfg.hydra.job.id = num, f"job_id_for_{num}"
            run_dir = sweep_dir / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        except Exception:  # noqa: BLE001 - the job itself will report what is wrong with its config
            return sweep_dir / str(num)
        try:
            if self.ours:
                validate(job)
        except ConfigError as e:
            raise ConfigError(f"job {num} ({' '.join(filter_overrides(overrides)) or 'defaults'}): {e}") from None
        return run_dir

    def _done_before(self, e: Entry) -> bool:
        """A re-run sweep (same hydra.sweep.dir) skips COMPLETED jobs; a job dir that ran
        other overrides is refused, so two sweeps never mix in one directory (one that holds
        no run, a job refused while building, takes the new overrides)."""
        from trainforge.errors import ConfigError
        from trainforge.files import holds_run

        from ._pool import status_of

        saved = e.run_dir / ".hydra" / "overrides.yaml"
        if saved.exists() and holds_run(e.run_dir):  # (a job refused while building holds no run: redo it)
            before = [o for o in OmegaConf.load(saved) if _key(o) not in OWN_KEYS]
            now = [o for o in e.overrides if _key(o) not in OWN_KEYS]
            if sorted(before) != sorted(now):
                raise ConfigError(f"hydra.sweep.dir={self.config.hydra.sweep.dir}: job {e.num} there ran "
                                  f"'{' '.join(before)}', this sweep gives it '{' '.join(now)}'; "
                                  "use a new hydra.sweep.dir, or the same command to finish that sweep")
        status = status_of(e.run_dir) or {}
        if status.get("status") != "COMPLETED":
            return False
        e.status, e.skipped = "COMPLETED", True
        best = status.get("best") or {}
        e.value = best.get("value")
        self.say(f"skip  #{e.num} {self.shown[e.num]}: COMPLETED before -> {_rel(e.run_dir)}")
        return True

    def extra_overrides(self, e: Entry, threads: Optional[int], devices: int) -> List[str]:
        return launcher_overrides(self.config, e.overrides, threads, devices)

    def job_for(self, e: Entry, extra: List[str]):
        from hydra.core.singleton import Singleton

        from ._job import SweepJob

        env = {**getattr(self.tracked, "env", {}), **(e.env or {}), **self._sweep_record()}
        return SweepJob(self.hydra_context, self.task_function, self.config, [*e.overrides, *extra], e.num,
                        e.gpus, Singleton.get_state(), env)

    def _sweep_record(self) -> dict:
        """The sweep root's provenance, written before its first job (its jobs compare their code with it)."""
        if self.ours and self._sweep_env is None:
            self._sweep_env = sweep_provenance(self.config, self.say)
        return self._sweep_env or {}

    # ---- job start and end ----------------------------------------------------------
    def started(self, e: Entry, where: str) -> None:
        e.started = e.started or time.time()
        self.say(f"start #{e.num} {self.shown[e.num]} {where} -> {_rel(e.run_dir)}")

    def finish(self, e: Entry) -> None:
        """Read the job's outcome (or why it has none) and print its end line."""
        from ._pool import best_line, killed, status_of

        try:
            if self.LOCAL_RESULTS and not e.job.paths.result_pickle.exists():  # (submitit waits 15 s for it)
                raise _NoResult("the job ended without a result")
            out = e.job.result()
            e.status, e.value, e.error = out["status"], out.get("value"), out.get("error", "")
            e.ret = out.get("ret")
        except Exception as exc:  # noqa: BLE001 - the job died outside the task: report, don't raise
            record = status_of(e.run_dir) or {}
            e.status = "PREEMPTED" if record.get("status") == "PREEMPTED" else \
                "CANCELLED" if self.stop_signal else "FAILED"
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
            died = isinstance(exc, _NoResult) or type(exc).__name__ == "UncompletedJobError"  # the task was killed
            if died and record.get("status") == "RUNNING":  # it could not record its end: say what happened
                record = killed(e.run_dir, record, "killed by the sweep (stop_grace_s passed, or a second signal)"
                                 if self.stop_signal else "its process was killed before it recorded its end "
                                 "(SIGKILL, or out of memory?)")
            e.error = record.get("error") or (lines[0] if died else lines[-1])
        training_log = e.run_dir / "training.log"
        e.log = str(training_log if training_log.exists() and e.status == "FAILED" else e.job.paths.stdout)
        took = f" in {time.time() - e.started:.1f} s" if e.started else ""
        detail = f": {e.error}" if e.error and e.status != "COMPLETED" else best_line(e.run_dir)
        self.say(f"end   #{e.num} {e.status}{took}{detail}")
        if self.tracked:  # MLflow's sweep run (a job's run kept in its directory: forwarded now)
            self.tracked.ended(e)

    # ---- signals ----------------------------------------------------------------------
    def _catch_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        # SIGHUP (the terminal closed, ssh dropped) too: the jobs save and stop, none is left unsupervised
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal:
            self.hard_stop = True
            self.say(f"{name} again: killing the running jobs now")
        else:
            self.stop_signal = name
            self.say(f"{name}: stopping the sweep; running jobs save and stop (again: kill them now)")

    # ---- the end ----------------------------------------------------------------------
    def _report(self, sweep_dir: Path, entries: List[Entry]) -> List[JobReturn]:
        from trainforge.errors import SweepFailed, SweepStopped
        from trainforge.analysis.summary import job_row, table, write_summary

        if not self.ours:  # another app's jobs: their own returns, as Hydra's launchers give them
            return [e.ret if e.ret is not None else JobReturn(overrides=e.overrides, status=JobStatus.FAILED,
                                                              _return_value=RuntimeError(e.error or e.status))
                    for e in entries]
        for e in entries:
            self.rows[e.num] = job_row(e.num, " ".join(filter_overrides(e.overrides)), e.run_dir, e.status,
                                       e.error, e.log, ",".join(e.gpus or ()))
        rows = [self.rows[n] for n in sorted(self.rows)]
        path = write_summary(sweep_dir, rows)
        say("\n" + table(rows, self.shown) + f"\nsummary: {_rel(path)}")
        if self.stop_signal:
            stopped = sum(e.status == "PREEMPTED" for e in entries)
            waiting = sum(e.status in ("NOT_STARTED", "CANCELLED") for e in entries)
            left = [e for e in entries if e.status == "UNKNOWN"]
            raise SweepStopped(f"sweep stopped by {self.stop_signal}: {stopped} job(s) saved and stopped, "
                               f"{waiting} not run" + (f", {leave_message(left)}" if left else "")
                               + f"; the same command with hydra.sweep.dir={sweep_dir} finishes it (completed "
                               "jobs are skipped)")
        bad = [e for e in entries if e.status != "COMPLETED"]
        if bad:
            raise SweepFailed(f"{len(bad)} of {len(entries)} job(s) did not complete "
                              f"({', '.join(f'#{e.num} {e.status}' for e in bad)}); summary: {path}")
        returns = []
        for e in entries:
            ret = JobReturn(overrides=e.overrides, status=JobStatus.COMPLETED, working_dir=os.getcwd())
            ret.return_value = e.value
            returns.append(ret)
        return returns

    @staticmethod
    def say(message: str) -> None:
        say(f"[{time.strftime('%H:%M:%S')}] {message}")


class LocalGpusLauncher(_SubmititLauncher):
    """A true queue over the GPU pool: a job starts as soon as a slot frees. Each job
    sees only its own GPUs (``CUDA_VISIBLE_DEVICES``) and trains on ``cuda:0`` of them."""

    POLL_S = 0.1
    LOCAL_RESULTS = True
    NUDGE_S = 2.0  # a job still starting up may miss the first SIGTERM: repeat it

    def _run(self, todo: List[Entry]) -> None:
        from collections import deque

        queue = deque(todo)
        self.run_queue(lambda: queue.popleft() if queue else None, f"{len(todo)} job(s)")

    def run_queue(self, next_entry: Callable[[], Optional[Entry]], what: str,
                  on_end: Callable[[Entry], None] = lambda e: None) -> None:
        """Start ``next_entry()`` in each free slot (None: no more) until none is left or a
        signal stops the sweep; ``on_end(e)`` after each job's end line (a search tells its study)."""
        from ._pool import Pool, cores, threads_per_job, visible_gpus

        p, n_cores = self.params, cores()
        pool = Pool(visible_gpus(), p["gpus_per_job"], p["jobs_per_gpu"], p["max_parallel"], n_cores)
        threads = p["threads_per_job"] or threads_per_job(n_cores, pool.max_parallel, p["gpus_per_job"])
        executor = session_executor(p["submitit_folder"], p["max_num_timeout"])
        self.say(f"sweep: {what} -> {_rel(Path(str(self.config.hydra.sweep.dir)))}; {pool.describe(threads)}")
        running, self.tracked = [], None
        try:
            self._queue(next_entry, on_end, pool, executor, threads, running)
        finally:
            if self.tracked:  # MLflow's sweep run, if the jobs log to MLflow
                self.tracked.end(stopped=bool(self.stop_signal or running))

    def _queue(self, next_entry, on_end, pool, executor, threads, running) -> None:
        from ._pool import ids_as_ints
        from ._tracking import SweepRun

        p, more = self.params, True
        while running or (more and not self.stop_signal):
            while more and pool.free() and not self.stop_signal:
                e = next_entry()
                if e is None:
                    more = False
                    break
                self.tracked = self.tracked or SweepRun(self, e.overrides)  # MLflow's sweep run, if asked for
                e.gpus = pool.take()
                ints = ids_as_ints(e.gpus) or ()
                executor.update_parameters(timeout_min=p["timeout_min"], signal_delay_s=p["signal_delay_s"],
                                           stderr_to_stdout=True, gpus_per_node=len(ints), visible_gpus=ints)
                e.job = executor.submit(self.job_for(e, self.extra_overrides(e, threads, p["gpus_per_job"])))
                self.started(e, f"gpus={','.join(e.gpus)}" if e.gpus else "cpu")
                running.append(e)
            for e in [r for r in running if r.job.done()]:
                running.remove(e)
                pool.give_back(e.gpus)
                self.finish(e)
                on_end(e)
            if self.stop_signal and running:
                self._stop(running)
            time.sleep(self.POLL_S)

    def _stop(self, running: List[Entry]) -> None:
        """SIGTERM every running job (again every NUDGE_S: one still starting up may
        miss it); after ``stop_grace_s`` or a second signal, kill what is left."""
        now = time.time()
        self._stopping_since = getattr(self, "_stopping_since", None) or now
        if self.hard_stop or now - self._stopping_since > self.params["stop_grace_s"]:
            for e in running:
                kill_group(e.job)
        elif now - getattr(self, "_nudged", 0.0) > self.NUDGE_S:
            self._nudged = now
            for e in running:
                terminate(e.job)


class SlurmLauncher(_SubmititLauncher):
    """One SLURM array for the sweep; ``nodes`` x ``tasks_per_node`` tasks per job all run
    the same pickled job (one DDP run; ranks from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID)."""

    waiting: List[Entry] = []  # the jobs SLURM has not yet reported ended, while the parent waits

    def check_environment(self) -> None:
        import shutil

        from trainforge.errors import ConfigError

        if shutil.which("srun") is None:
            raise ConfigError("hydra/launcher=slurm: no SLURM on this machine (srun not found); run the sweep on "
                              "the cluster's login node, or use hydra/launcher=local_gpus")

    def _run(self, todo: List[Entry]) -> None:
        import submitit

        from ._slurm import slurm_parameters
        from ._tracking import SweepRun

        p, self.tracked = self.params, SweepRun(self, todo[0].overrides)
        executor = submitit.SlurmExecutor(folder=p["submitit_folder"], max_num_timeout=p["max_num_timeout"])
        executor.update_parameters(**slurm_parameters(p))
        ranks = p["nodes"] * p["tasks_per_node"]
        with executor.batch():
            for e in todo:
                e.job = executor.submit(self.job_for(e, self.extra_overrides(e, p["cpus_per_task"], ranks)))
        self.say(f"sweep: {len(todo)} job(s) submitted as SLURM array {todo[0].job.job_id.split('_')[0]} "
                 f"({ranks} rank(s) per job) -> {_rel(Path(str(self.config.hydra.sweep.dir)))}")
        self.waiting = list(todo)
        try:
            self._wait(self.waiting, p["poll_s"])
        except LeaveNow as left:  # a second signal: the parent ends now, the jobs may go on
            waiting, self.waiting = self.waiting, []  # a third signal is not raised in here
            for e in waiting:
                e.status, e.error = "UNKNOWN", f"slurm job {e.job.job_id} may still be running (left by the sweep)"
            self.say(f"{left} again: leaving now; " + leave_message(waiting))
        finally:
            self.tracked.end(stopped=bool(self.stop_signal))

    def _on_signal(self, signum, frame) -> None:
        """A second signal while jobs are still reported running ends the wait at once,
        also from inside a slow ``sacct`` or ``scancel`` (their processes are killed)."""
        if self.stop_signal and self.waiting:
            self.hard_stop = True
            raise LeaveNow(signal.Signals(signum).name)
        super()._on_signal(signum, frame)

    def _wait(self, waiting: List[Entry], poll_s: float) -> None:
        cancelled = False
        while waiting:
            if self.stop_signal and not cancelled:
                cancelled = True
                for e in waiting:
                    e.job.cancel(check=False)  # SLURM sends SIGTERM: the tasks save and stop
            for e in list(waiting):
                if not e.started and e.job.state not in ("PENDING", "UNKNOWN", "REQUEUED"):
                    self.started(e, f"slurm job {e.job.job_id}")
                if e.job.done():
                    self.finish(e)
                    waiting.remove(e)
            time.sleep(poll_s)


class _NoResult(Exception):
    pass

"""``run(cfg)``: validate, prepare, build, fit, record how the run ended. Importable by tests.

A run reads as its stages (``_Run``): claim the directory, prepare (resume, drift), open
the run (status RUNNING, config.yaml), then either hand it to N rank processes or build
and fit here, and record the end (COMPLETED, PREEMPTED or FAILED) in ``status.json``.
Every process writes through its own ``RunRecord``, which writes nothing off rank 0.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from trainforge.config import validate
from trainforge.distributed import group as dist
from trainforge.distributed import launch, signals
from trainforge.distributed.ranks import launched_by_parent
from trainforge.engine.logging import LOGGER, release_held_records, setup_logging
from trainforge.errors import ConfigError, Preempted, RankFailed, TrainforgeError, WriteError
from trainforge.config.sources import current_sources, shadowed
from trainforge.files import CONFIG, LATEST, STATUS, TRAINING_LOG, RunLock, RunRecord, holds_run, read_status, \
    resume_home, write_failed_over, write_final_status, write_status  # noqa: F401  (old names of this module)


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def check_fresh(run_dir: Path, resume) -> None:
    """Never train over another run: a directory that already holds one needs resume, and
    a resume continues in its own run's directory, never in another run's."""
    if not holds_run(run_dir):
        return
    if resume is None:
        raise ConfigError(f"hydra.run.dir={run_dir}: already holds a run; pass resume={run_dir} "
                          "to continue it, or choose another directory")
    home = resume_home(resume) if resume != "auto" else run_dir
    if home is None or home.resolve() != run_dir.resolve():
        where = f"in its own run directory {home}" if home else "in a new directory"
        raise ConfigError(f"hydra.run.dir={run_dir}: already holds another run; resume={resume} continues {where}: "
                          "leave hydra.run.dir out")


def task_overrides() -> list:
    """The command line's overrides of this job (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg, run_dir=None, overrides=None, *, validated: bool = False, sources=None):
    """Train ``cfg`` in ``run_dir`` (default: Hydra's output dir). ``overrides`` are the
    command line's (default: Hydra's), kept in checkpoints so a resume can recompose the
    same config. Returns the best value of ``checkpoint.monitor`` (for sweepers).

    A config the schemas refuse raises before anything is written; the run directory is
    held by one process at a time (RunLock) for the whole run. With several ranks
    (torchrun, a SLURM step, or ``trainer.devices=N``, which starts them here after the
    config is final) rank 0 alone holds it, writes files and prints. ``validated=True``:
    the caller ran ``validate(cfg)`` already (the command line does, before torch is
    imported), so it runs once per run. ``sources``: how the config was composed (its
    primary config and config folders; default: what Hydra recorded), kept with the run so
    that a resume recomposes it from any working directory."""
    if not validated:
        validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else output_dir()
    ranks = dist.env_ranks()
    if ranks is not None and not launched_by_parent():
        _devices_are_the_ranks(cfg, ranks["world_size"])
    if ranks is not None:
        dist.init("nccl" if launch.on_gpu(cfg.trainer.device) else "gloo", cfg.trainer.ddp_timeout)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume is None and _requeued() and (run_dir / STATUS).exists():
        cfg.resume = "auto"  # a requeued submitit job (any launcher) continues its own run
    holder = dist.is_main() and not launched_by_parent()  # our launcher's parent holds it already
    with contextlib.ExitStack() as stack:
        def claim():
            lock = stack.enter_context(RunLock(run_dir, "resume" if cfg.resume else "hydra.run.dir"))
            check_fresh(run_dir, cfg.resume)
            lock.stamp()

        _agreed(claim if holder else lambda: None)  # no rank waits for one that was refused
        return _Run(run_dir, ranks).main(cfg, overrides, sources)


def _choices() -> dict:
    """The option chosen in each config group (Hydra's record; none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _requeued() -> bool:
    import os

    return bool(os.environ.get("SUBMITIT_FOLDER"))


class _Run:
    """One process's part of a run, stage by stage. Until ``open`` (status RUNNING,
    config.yaml) a user error changes nothing in the directory: a refused resume leaves
    the run it names as it was, and a new directory only Hydra's record and the lock
    (the CLI removes it); training.log gets its lines held back until then."""

    def __init__(self, run_dir: Path, ranks):
        self.run_dir, self.ranks = run_dir, ranks
        self.record = RunRecord(run_dir, writes=dist.is_main())
        self.launched = launched_by_parent()  # a rank of our launcher: the parent opened the run
        self.log = setup_logging(run_dir, dist.is_main(), hold=not self.launched)
        self.started = time.time()
        self.opened = self.delegated = False  # delegated: rank processes own the run's outcome
        self.trainer = self.sources = self.cfg = self.test = None
        self.warnings = None  # provenance's warning lines for this start (None: written by the launching parent)

    def main(self, cfg, overrides, sources):
        self.resume = cfg.resume
        try:
            cfg, ckpt_path, ckpt, overrides, changes = _agreed(_prepare, cfg, self.run_dir, overrides)
            self.sources = (ckpt or {}).get("config_sources") or sources or current_sources()
            for line in shadowed(self.sources, _choices()):
                self.log.warning("%s", line)
            if self.launched:
                self.open(cfg)
            else:  # (the launcher's parent said it)
                self.log.info("Run directory: %s", self.run_dir)
            if self.ranks is None and launch.process_count(cfg.trainer.devices, cfg.trainer.device) > 1:
                return self.delegate(cfg, overrides, ckpt_path)
            self.build(cfg, overrides, ckpt_path, ckpt, changes)
            self.fit()
        except Preempted as e:
            self.preempted(e)
            raise
        except SystemExit:  # submitit requeueing the job: the next attempt writes the status
            raise
        except BaseException as e:
            self.failed(e)
        finally:
            for handler in logging.getLogger(LOGGER).handlers:
                handler.flush()
            if self.ranks is not None and self.trainer is None:
                dist.cleanup()
        return self.completed()

    def open(self, cfg) -> None:
        """The run starts: its held log lines, status RUNNING and config.yaml."""
        release_held_records()
        self.record.status("RUNNING", started=self.started, config_sources=self.sources)
        self.record.text(CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        if not self.launched:  # (our launcher's parent recorded it)
            self.provenance(cfg)
        self.opened = True

    def provenance(self, cfg) -> None:
        """provenance.json (a resume: its record appended); what changed since the run's last start,
        or since its sweep started its jobs, one warning line each (and in the first epoch block)."""
        from trainforge.run import provenance

        try:
            self.warnings = provenance.write(self.record, cfg, self.sources)
        except Exception as e:  # noqa: BLE001 - a record that cannot be made stops no run
            self.log.warning("provenance: not recorded (%s: %s)", type(e).__name__, e)
            self.warnings = []
            return
        for line in self.warnings:
            self.log.warning("%s", line)

    def _provenance_warnings(self) -> list:
        """This start's provenance warnings (a rank process: as its launching parent recorded them)."""
        from trainforge.run import provenance

        if self.warnings is None and self.record.writes:
            self.warnings = (provenance.latest(self.run_dir) or {}).get("warnings", [])
        return self.warnings or []

    def _opened_data(self, paths: list) -> list:
        """The files the data option opened, into this start's provenance (a change: one warning line)."""
        from trainforge.run import provenance

        try:
            lines = provenance.add_opened(self.record, paths)
        except Exception as e:  # noqa: BLE001 - a record that cannot be made stops no run
            self.log.warning("provenance: data files not recorded (%s: %s)", type(e).__name__, e)
            return []
        for line in lines:
            self.log.warning("%s", line)
        return lines

    def delegate(self, cfg, overrides, ckpt_path):
        """``trainer.devices=N``: open the run here and train it in N rank processes."""
        n, on_gpu = launch.process_count(cfg.trainer.devices, cfg.trainer.device), launch.on_gpu(cfg.trainer.device)
        self.cfg = cfg
        with signals.deferred():  # from RUNNING on, a stop signal reaches the ranks (launch.spawn)
            self.open(cfg)
            self.log.info("DDP on %d processes (%s): per-rank batch %d, global batch %d", n,
                          "nccl" if on_gpu else "gloo", cfg.data.batch_size, cfg.data.batch_size * n)
            self.delegated = True  # the ranks load the checkpoint themselves
            launch.spawn(OmegaConf.to_yaml(cfg, resolve=True), self.run_dir, overrides, ckpt_path, n, on_gpu, self.log,
                         sources=self.sources)
        return read_status(self.run_dir).get("best", {}).get("value")

    def build(self, cfg, overrides, ckpt_path, ckpt, changes) -> None:
        from trainforge.data import h5
        from trainforge.engine.hooks import LoggingHook
        from trainforge.run.build import build

        self.cfg, opened = cfg, len(h5.OPENED)  # the data files this run opens come after these
        self.trainer = trainer = build(cfg, self.run_dir, overrides, resuming=ckpt is not None, record=self.record,
                                       sources=self.sources)
        if ckpt is not None:
            missing = _checkpointer(trainer).restore(ckpt)
            self.log.info("Resumed from %s at epoch %d, batch %d, step %d%s", ckpt_path, trainer.epoch + 1,
                          trainer.batch_in_epoch, trainer.step, f"; changed: {', '.join(changes)}" if changes else "")
            if missing:
                self.log.warning("The checkpoint holds no %s state: starting it fresh", ", ".join(missing))
        if not self.opened:
            _preemption(trainer).arm()  # a signal from RUNNING on saves a checkpoint
            self.open(cfg)
        logging_hook = next(h for h in trainer.hooks if isinstance(h, LoggingHook))  # (every run has one)
        logging_hook.note = "\n  ".join(self._provenance_warnings() + self._opened_data(h5.OPENED[opened:]))
        self.log.info("Device: %s - precision: %s - parameters: %d - train batches/epoch: %d",
                      trainer.device, trainer.precision.mode, sum(p.numel() for p in trainer.params),
                      trainer.batches_per_epoch)
        _log_ranks(self.log, cfg, trainer)

    def fit(self) -> None:
        trainer = self.trainer
        trainer.fit()
        trainer.raise_if_nonfinite(_checkpointer(trainer).last_good)
        if trainer.preempted_by:
            raise Preempted(f"{trainer.stop_reason}: saved {_checkpointer(trainer).last_good}; continue with "
                            f"resume={self.run_dir}")
        if self.cfg.trainer.get("test_after_fit"):
            from trainforge.run.evaluate import test_best

            self.test = test_best(self.cfg, self.run_dir, self.log)

    def preempted(self, e: Preempted) -> None:
        if self.delegated:
            return
        self.log.warning("%s", e, extra={"console": False})
        self.record.status("PREEMPTED", error=str(e), started=self.started, exit_code=e.exit_code,
                           config_sources=self.sources, **_final(self.trainer))
        if self.trainer is not None:
            _preemption(self.trainer).hand_on()

    def failed(self, e: BaseException):
        """Record a failure (FAILED, unless it happened before the run opened and was the
        user's) and raise it: a user error as itself, a crash with its traceback in training.log."""
        if self.delegated:  # the ranks recorded the outcome (launch.spawn filled in a rank that died)
            self.end_tracking()
            raise e
        error = _as_user_error(e, self.run_dir, self.trainer)
        if self.opened or error is None:  # a user error before the run opened writes nothing
            release_held_records()  # a crash while preparing: training.log gets what led to it
            if error is None:  # a crash: its traceback goes to training.log, stderr says where
                self.log.exception("training failed: %s", e, extra={"console": False})
                e.training_log = str(self.run_dir / TRAINING_LOG)
                error = e
            else:
                self.log.error("%s", error, extra={"console": False})  # the CLI prints it once, on stderr
            if self.opened or self.resume is None:  # a crash while resuming does not relabel the run
                text = str(error) if error is not e or isinstance(e, TrainforgeError) else f"{type(e).__name__}: {e}"
                self.record.final_status("FAILED", error=text, started=self.started, config_sources=self.sources,
                                         **_final(self.trainer))
        if error is e:
            raise e
        raise error from None

    def end_tracking(self) -> None:
        """A tracker's run left open by a rank 0 that died: ended with the run's status."""
        if self.cfg is not None and self.cfg.log.mlflow:
            from trainforge.engine import tracking

            tracking.end_left_running(self.cfg.log, self.run_dir, read_status(self.run_dir).get("status"))

    def completed(self):
        trainer = self.trainer
        best = _checkpointer(trainer).manager.best
        tested = {"test": self.test} if self.test else {}
        self.record.status("COMPLETED", started=self.started, finished=time.time(), world_size=dist.world_size(),
                           config_sources=self.sources, **_final(trainer), **tested)
        self.log.info("Done in %.1fs. Best %s: %s (epoch %s)", time.time() - self.started, best["monitor"],
                      best["value"], best["epoch"])
        dist.cleanup()
        return best["value"]


def _agreed(fn, *args):
    """``fn(*args)`` on every rank; if it raised a user error on any rank, every rank raises
    (so no rank is left waiting in a collective for one that gave up)."""
    failed, result = None, None
    try:
        result = fn(*args)
    except TrainforgeError as e:
        failed = e
    if dist.any_rank(failed is not None):
        raise failed or RankFailed("another rank failed while preparing the run")
    return result


def _prepare(cfg, run_dir: Path, overrides):
    """Find the checkpoint to resume from and recompose the config from it (validated once
    more only when it changed). Returns (cfg, checkpoint path, checkpoint, overrides, changes)."""
    from trainforge.run import resume  # torch-heavy imports stay out of config errors

    ckpt_path, ckpt = resume.find_checkpoint(cfg.resume, run_dir) if cfg.resume else (None, None)
    overrides = task_overrides() if overrides is None else list(overrides)
    changes = []
    if ckpt is not None:
        cfg = resume.recompose(cfg, ckpt, overrides)
        validate(cfg)
        reached = ckpt["epoch"] + (1 if ckpt.get("batch_in_epoch") else 0)  # epochs done, or begun
        if cfg.trainer.epochs < reached:
            raise ConfigError(f"trainer.epochs={cfg.trainer.epochs}: the checkpoint {ckpt_path} is already in or "
                              f"past epoch {reached}; resume with trainer.epochs >= {reached}")
        world = dist.world_size() if dist.is_dist() else launch.process_count(cfg.trainer.devices,
                                                                                cfg.trainer.device)
        rescaled = resume.rescale_batch(cfg, ckpt, world)
        changes = resume.check_drift(ckpt["config"], cfg, force=bool(cfg.resume_force),
                                     world=(ckpt.get("world_size", 1), world), rescaled=rescaled is not None)
        changes += [rescaled] if rescaled else []
        overrides = resume.merged_overrides(ckpt.get("overrides", []), overrides)
    return cfg, ckpt_path, ckpt, overrides, changes


def _log_ranks(log, cfg, trainer) -> None:
    """Under DDP: the batch per rank and globally, and a warning when the set does not divide."""
    world = dist.world_size()
    if world == 1:
        return
    log.info("DDP: rank 0 of %d - per-rank batch %d - global batch %d", world, cfg.data.batch_size,
             cfg.data.batch_size * world)
    extra = -trainer.sampler.length % world
    if extra:
        log.warning("DDP: %d training samples do not divide by %d ranks: each epoch's last global batch "
                    "repeats %d sample(s) so that every rank gets as many (a one-process run differs "
                    "there)", trainer.sampler.length, world, extra)


def _devices_are_the_ranks(cfg, world: int) -> None:
    """Under torchrun or a SLURM step the ranks exist already: ``trainer.devices`` (1, the
    default, or auto) becomes their number in the run's record (config.yaml, checkpoints),
    so a later ``resume=`` without torchrun starts as many; another number is refused."""
    if str(cfg.trainer.devices) not in ("1", "auto", str(world)):
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: this process is one of {world} ranks started "
                          f"by torchrun or SLURM; leave trainer.devices at 1 (or auto), or set it to {world}")
    cfg.trainer.devices = world




def _as_user_error(e: BaseException, run_dir: Path, trainer):
    """``e`` as the user error to report (a write fault gets the last good checkpoint),
    or None for a crash."""
    if isinstance(e, OSError) and e.filename:  # a write outside atomic_write (retention, mkdir)
        e = WriteError(e.filename, e)
    if isinstance(e, WriteError):
        e.last_good, e.run_dir = _last_good(trainer, run_dir), run_dir
    return e if isinstance(e, TrainforgeError) else None


def _last_good(trainer, run_dir: Path) -> str:
    from trainforge.engine.checkpoint import load_checkpoint

    path = run_dir / LATEST
    try:
        load_checkpoint(path)
    except TrainforgeError:
        return "none"
    return str(path)


def _checkpointer(trainer):
    from trainforge.engine.hooks import CheckpointHook

    return next(h for h in trainer.hooks if isinstance(h, CheckpointHook))


def _preemption(trainer):
    from trainforge.engine.hooks import PreemptionHook

    return next(h for h in trainer.hooks if isinstance(h, PreemptionHook))


def _final(trainer) -> dict:
    if trainer is None:
        return {}
    last = trainer.history[-1] if trainer.history else None
    out = {"epoch": trainer.epoch, "step": trainer.step, "final": last, "best": _checkpointer(trainer).manager.best}
    if trainer.stop_kind:  # ended early on purpose (docs/run-directory.md)
        out.update(stop_reason=trainer.stop_kind, stop_detail=trainer.stop_reason)
    peaks = [r["gpu_mem_peak_gib"] for r in trainer.history if "gpu_mem_peak_gib" in r]
    if peaks:  # on a GPU only: the run's peak, besides each epoch's in final / epoch_metrics.csv
        out["gpu_mem_peak_gib"] = max(peaks)
    return out

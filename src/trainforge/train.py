"""``run(cfg)``: validate, build, fit, write the run's status. Importable by tests."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from omegaconf import OmegaConf

from trainforge.config import validate
from trainforge.engine import distributed as dist
from trainforge.engine.checkpoint import atomic_json, atomic_write
from trainforge.engine.logging import LOGGER, release_held_records, setup_logging
from trainforge.errors import ConfigError, Preempted, RankFailed, TrainforgeError, WriteError
from trainforge.rundir import RunLock, holds_run, resume_home

STATUS = "status.json"


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def write_status(run_dir: Path, status: str, **fields) -> None:
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
              "pid": os.getpid(), "run_dir": str(run_dir),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}
    atomic_json(record, run_dir / STATUS)


def write_final_status(run_dir: Path, status: str, **fields) -> None:
    """The failure record, also on a full disk: if the atomic write finds no room, the
    old status.json is overwritten in place (its own blocks suffice); if that fails too,
    the one-line error on stderr is all there is."""
    try:
        write_status(run_dir, status, **fields)
    except WriteError:
        try:
            with open(run_dir / STATUS, "r+b") as f:
                f.truncate(0)
                f.write(json.dumps({"status": status, **fields}, default=str).encode())
        except OSError:
            pass


def write_failed_over(run_dir: Path, record: dict, error: str, **fields) -> None:
    """FAILED with ``error`` in place of a record that a killed process could not finish
    (what it held of the run is kept)."""
    kept = {k: record[k] for k in ("started", "epoch", "step", "final", "best") if k in record}
    write_status(run_dir, "FAILED", error=error, **kept, **fields)


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


def run(cfg, run_dir=None, overrides=None):
    """Train ``cfg`` in ``run_dir`` (default: Hydra's output dir). ``overrides`` are the
    command line's (default: Hydra's), kept in checkpoints so a resume can recompose the
    same config. Returns the best value of ``checkpoint.monitor`` (for sweepers).

    A config the schemas refuse raises before anything is written; the run directory is
    held by one process at a time (RunLock) for the whole run. With several ranks
    (torchrun, a SLURM step, or ``trainer.devices=N``, which starts them here after the
    config is final) rank 0 alone holds it, writes files and prints."""
    from trainforge import launch

    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else output_dir()
    ranks = dist.env_ranks()
    if ranks is not None and not os.environ.get(launch.LAUNCHED):
        _devices_are_the_ranks(cfg, ranks["world_size"])
    if ranks is not None:
        dist.init("nccl" if _on_gpu(cfg) else "gloo", cfg.trainer.ddp_timeout)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume is None and os.environ.get("SUBMITIT_FOLDER") and (run_dir / STATUS).exists():
        cfg.resume = "auto"  # a requeued submitit job (any launcher) continues its own run
    holder = dist.is_main() and not os.environ.get(launch.LAUNCHED)  # our launcher's parent holds it already
    with contextlib.ExitStack() as stack:
        def claim():
            lock = stack.enter_context(RunLock(run_dir, "resume" if cfg.resume else "hydra.run.dir"))
            check_fresh(run_dir, cfg.resume)
            lock.stamp()

        _agreed(claim if holder else lambda: None)  # no rank waits for one that was refused
        return _run(cfg, run_dir, overrides, ranks)


def _run(cfg, run_dir: Path, overrides, ranks):
    """Prepare (resume, drift), build, then open the run: only then does it write
    status.json and config.yaml, and training.log get its lines (held back until then).
    A user error before that point changes nothing in the directory: a refused resume
    leaves the run it names as it was, and a new directory only Hydra's record and the
    lock (the CLI removes it)."""
    from trainforge import launch, signals

    main = dist.is_main()
    launched = bool(os.environ.get(launch.LAUNCHED))  # a rank of our launcher: the parent opened the run
    log = setup_logging(run_dir, main, hold=not launched)
    started = time.time()
    opened = False
    delegated = False  # true once rank processes own the run's outcome
    trainer = None

    def open_run(cfg):
        nonlocal opened
        release_held_records()
        if main:
            write_status(run_dir, "RUNNING", started=started)
            atomic_write(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True).encode()))
        opened = True

    try:
        cfg, ckpt_path, ckpt, overrides, changes = _agreed(_prepare, cfg, run_dir, overrides)
        if launched:
            open_run(cfg)
        else:  # (the launcher's parent said it)
            log.info("Run directory: %s", run_dir)
        n = launch.process_count(cfg.trainer.devices, cfg.trainer.device)
        if ranks is None and n > 1:
            with signals.deferred():  # from RUNNING on, a stop signal reaches the ranks (launch.spawn)
                open_run(cfg)
                log.info("DDP on %d processes (%s): per-rank batch %d, global batch %d", n,
                         "nccl" if _on_gpu(cfg) else "gloo", cfg.data.batch_size, cfg.data.batch_size * n)
                delegated, ckpt = True, None  # the ranks load the checkpoint themselves
                launch.spawn(OmegaConf.to_yaml(cfg, resolve=True), run_dir, overrides, ckpt_path, n, _on_gpu(cfg),
                             log)
            return json.loads((run_dir / STATUS).read_text()).get("best", {}).get("value")
        from trainforge.build import build

        trainer = build(cfg, run_dir, overrides, resuming=ckpt is not None)
        if ckpt is not None:
            missing = _checkpointer(trainer).restore(ckpt)
            log.info("Resumed from %s at epoch %d, batch %d, step %d%s", ckpt_path, trainer.epoch + 1,
                     trainer.batch_in_epoch, trainer.step, f"; changed: {', '.join(changes)}" if changes else "")
            if missing:
                log.warning("The checkpoint holds no %s state: starting it fresh", ", ".join(missing))
        if not opened:
            _preemption(trainer).arm()  # a signal from RUNNING on saves a checkpoint
            open_run(cfg)
        log.info("Device: %s - precision: %s - parameters: %d - train batches/epoch: %d",
                 trainer.device, trainer.precision.mode, sum(p.numel() for p in trainer.params),
                 trainer.batches_per_epoch)
        if dist.world_size() > 1:
            log.info("DDP: rank 0 of %d - per-rank batch %d - global batch %d", dist.world_size(),
                     cfg.data.batch_size, cfg.data.batch_size * dist.world_size())
            extra = -trainer.sampler.length % dist.world_size()
            if extra:
                log.warning("DDP: %d training samples do not divide by %d ranks: each epoch's last global batch "
                            "repeats %d sample(s) so that every rank gets as many (a one-process run differs "
                            "there)", trainer.sampler.length, dist.world_size(), extra)
        trainer.fit()
        trainer.raise_if_nonfinite(_checkpointer(trainer).last_good)
        if trainer.preempted_by:
            raise Preempted(f"{trainer.stop_reason}: saved {_checkpointer(trainer).last_good}; continue with "
                            f"resume={run_dir}")
    except Preempted as e:
        if not delegated:
            log.warning("%s", e, extra={"console": False})
            if main:
                write_status(run_dir, "PREEMPTED", error=str(e), started=started, exit_code=e.exit_code,
                             **_final(trainer))
            if trainer is not None:
                _preemption(trainer).hand_on()
        raise
    except SystemExit:  # submitit requeueing the job: the next attempt writes the status
        raise
    except BaseException as e:
        if delegated:  # the ranks recorded the outcome (launch.spawn filled in a rank that died)
            raise
        error = _as_user_error(e, run_dir, trainer)
        if opened or error is None:  # a user error before the run opened writes nothing
            release_held_records()  # a crash while preparing: training.log gets what led to it
            if error is None:  # a crash: its traceback goes to training.log, stderr says where
                log.exception("training failed: %s", e, extra={"console": False})
                e.training_log = str(run_dir / "training.log")
                error = e
            else:
                log.error("%s", error, extra={"console": False})  # the CLI prints it once, on stderr
            if main and (opened or cfg.resume is None):  # a crash while resuming does not relabel the run
                text = str(error) if error is not e or isinstance(e, TrainforgeError) else f"{type(e).__name__}: {e}"
                write_final_status(run_dir, "FAILED", error=text, started=started, **_final(trainer))
        if error is e:
            raise
        raise error from None
    finally:
        for handler in logging.getLogger(LOGGER).handlers:
            handler.flush()
        if ranks is not None and trainer is None:
            dist.cleanup()
    best = _checkpointer(trainer).manager.best
    if main:
        write_status(run_dir, "COMPLETED", started=started, finished=time.time(), world_size=dist.world_size(),
                     **_final(trainer))
    log.info("Done in %.1fs. Best %s: %s (epoch %s)", time.time() - started, best["monitor"], best["value"], best["epoch"])
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
    """Validate, find the checkpoint to resume from and recompose the config from it.
    Returns (cfg, checkpoint path, checkpoint, overrides, changes)."""
    validate(cfg)
    from trainforge import resume  # torch-heavy imports stay out of config errors

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
        from trainforge import launch

        world = dist.world_size() if dist.is_dist() else launch.process_count(cfg.trainer.devices,
                                                                                cfg.trainer.device)
        changes = resume.check_drift(ckpt["config"], cfg, force=bool(cfg.resume_force),
                                     world=(ckpt.get("world_size", 1), world))
        overrides = resume.merged_overrides(ckpt.get("overrides", []), overrides)
    return cfg, ckpt_path, ckpt, overrides, changes


def _devices_are_the_ranks(cfg, world: int) -> None:
    """Under torchrun or a SLURM step the ranks exist already: ``trainer.devices`` (1, the
    default, or auto) becomes their number in the run's record (config.yaml, checkpoints),
    so a later ``resume=`` without torchrun starts as many; another number is refused."""
    if str(cfg.trainer.devices) not in ("1", "auto", str(world)):
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: this process is one of {world} ranks started "
                          f"by torchrun or SLURM; leave trainer.devices at 1 (or auto), or set it to {world}")
    cfg.trainer.devices = world


def _on_gpu(cfg) -> bool:
    """Whether the run's ranks train on GPUs (nccl) or CPUs (gloo)."""
    device = str(cfg.trainer.device)
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _as_user_error(e: BaseException, run_dir: Path, trainer):
    """``e`` as the user error to report (a write fault gets the last good checkpoint),
    or None for a crash."""
    if isinstance(e, OSError) and e.filename:  # a write outside atomic_write (retention, mkdir)
        e = WriteError(e.filename, e)
    if isinstance(e, WriteError):
        e.last_good, e.run_dir = _last_good(trainer, run_dir), run_dir
    return e if isinstance(e, TrainforgeError) else None


def _last_good(trainer, run_dir: Path) -> str:
    from trainforge.engine.checkpoint import LATEST, load_checkpoint

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
    peaks = [r["gpu_mem_peak_gib"] for r in trainer.history if "gpu_mem_peak_gib" in r]
    if peaks:  # on a GPU only: the run's peak, besides each epoch's in final / epoch_metrics.csv
        out["gpu_mem_peak_gib"] = max(peaks)
    return out


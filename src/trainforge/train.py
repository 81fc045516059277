"""``run(cfg)``: validate, build, fit, write the run's status. Importable by tests."""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from omegaconf import OmegaConf

from trainforge.config import validate
from trainforge.engine import distributed as dist
from trainforge.engine.checkpoint import atomic_json
from trainforge.engine.logging import LOGGER, setup_logging
from trainforge.errors import ConfigError, NonFiniteLossError, TrainforgeError

STATUS = "status.json"


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def write_status(run_dir: Path, status: str, **fields) -> None:
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
              "pid": os.getpid(), "run_dir": str(run_dir),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}
    atomic_json(record, run_dir / STATUS)


def check_fresh(run_dir: Path, resume) -> None:
    """Never train over another run: a directory that already holds one needs resume."""
    if resume is None and ((run_dir / STATUS).exists() or (run_dir / "training.log").exists()):
        raise ConfigError(f"hydra.run.dir={run_dir}: already holds a run; pass resume={run_dir} "
                          "to continue it, or choose another directory")


def run(cfg, run_dir=None):
    """Train ``cfg`` in ``run_dir`` (default: Hydra's output dir). Returns the best value of
    ``checkpoint.monitor`` (what a Hydra sweeper optimises)."""
    run_dir = Path(run_dir) if run_dir is not None else output_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_fresh(run_dir, cfg.resume)
    log = setup_logging(run_dir, dist.is_main())
    started = time.time()
    write_status(run_dir, "RUNNING", started=started)
    trainer = None
    try:
        validate(cfg)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("Run directory: %s", run_dir)
        from trainforge.build import build  # torch-heavy imports stay out of config errors

        trainer = build(cfg, run_dir)
        log.info("Device: %s - precision: %s - parameters: %d - train batches/epoch: %d",
                 trainer.device, trainer.precision.mode, sum(p.numel() for p in trainer.params),
                 trainer.batches_per_epoch)
        trainer.fit()
        trainer.raise_if_nonfinite(_checkpointer(trainer).last_good)
    except TrainforgeError as e:
        log.error("%s", e, extra={"console": False})  # the CLI prints it once, on stderr
        write_status(run_dir, "FAILED", error=str(e), started=started, **_final(trainer))
        raise
    except BaseException as e:
        log.exception("training failed: %s", e)
        write_status(run_dir, "FAILED", error=f"{type(e).__name__}: {e}", started=started, **_final(trainer))
        raise
    finally:
        for handler in logging.getLogger(LOGGER).handlers:
            handler.flush()
    best = _checkpointer(trainer).manager.best
    write_status(run_dir, "COMPLETED", started=started, finished=time.time(), **_final(trainer))
    log.info("Done in %.1fs. Best %s: %s (epoch %s)", time.time() - started, best["monitor"], best["value"], best["epoch"])
    return best["value"]


def _checkpointer(trainer):
    from trainforge.engine.hooks import CheckpointHook

    return next(h for h in trainer.hooks if isinstance(h, CheckpointHook))


def _final(trainer) -> dict:
    if trainer is None:
        return {}
    last = trainer.history[-1] if trainer.history else None
    return {"epoch": trainer.epoch, "step": trainer.step, "final": last, "best": _checkpointer(trainer).manager.best}


__all__ = ["run", "NonFiniteLossError"]

"""After training: a run's checkpoint evaluated on a split of its data.

    trainforge eval RUN [ckpt=best|latest|epoch:N|PATH] [split=val|test] [weights=raw|ema] [KEY=VALUE ...]
    trainforge.evaluate(RUN, ckpt="best", split="val")   # the same from Python: returns the record

The model, loss, metrics and data come from the run's own ``config.yaml`` (not today's
``conf/``): a run directory names code by import path, so evaluating someone else's run
runs their code. Only where and how the data is read may change (``ALLOWED``); anything
that changes what is evaluated is refused. The record goes to ``RUN/eval/`` (one JSON per
evaluation, one row each in ``evaluations.csv``); no training file is touched. On a sweep
directory every COMPLETED job is evaluated and ``summary.csv`` gets ``eval_<split>_*`` columns.
"""
from __future__ import annotations

import datetime
import json
import re
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from trainforge.errors import CheckpointError, ConfigError, TrainforgeError
from trainforge.files import BEST, CONFIG, EPOCH_DIR, EVAL_DIR, EVALUATIONS, LATEST, read_status

COUNTS = {"data.batch_size": 1, "data.num_workers": 0, "trainer.threads": 1}  # integer keys, their least value
OWN = ("ckpt", "split", "weights")
# what an evaluation may change: where and how the data is read, where the model runs
ALLOWED = ("data.path", "data.test_path", "data.cache_dir", "data.batch_size", "data.num_workers", "data.pin_memory", "data.preload",
           "data.shared_memory", "trainer.device", "trainer.devices", "trainer.precision", "trainer.threads")


def checkpoint_file(run_dir: Path, ckpt: str) -> Path:
    """The file ``ckpt`` names in the run's own index: ``best`` (by the run's monitor),
    ``latest``, ``epoch:N``, or a path. A missing one is an error, never another file."""
    if ckpt == "best":
        path = run_dir / BEST
        if not path.is_file():
            raise CheckpointError(f"ckpt=best: {path} does not exist (the run saved no best epoch); "
                                  "evaluate ckpt=latest, or ckpt=epoch:N")
        return path
    if ckpt == "latest":
        path = run_dir / LATEST
    elif ckpt.startswith("epoch:"):
        if not ckpt[6:].isdigit():
            raise ConfigError(f"ckpt={ckpt}: epoch:N takes a whole number (ckpt=epoch:5)")
        path = run_dir / EPOCH_DIR / f"checkpoint_epoch_{int(ckpt[6:]):03d}.pth"
        if not path.is_file():
            kept = sorted(int(m.group(1)) for p in (run_dir / EPOCH_DIR).glob("checkpoint_epoch_*.pth")
                          if (m := re.match(r"checkpoint_epoch_(\d+)\.pth", p.name)))
            raise CheckpointError(f"ckpt={ckpt}: no such epoch file in {run_dir / EPOCH_DIR} (kept: "
                                  f"{', '.join(map(str, kept)) or 'none'}; see checkpoint.keep_last_n)")
    else:
        path = Path(ckpt).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt={ckpt}: {path} does not exist")
    return path


def run_config(run_dir: Path, overrides) -> "OmegaConf":
    """The run's saved config with the allowed ``overrides`` (KEY=VALUE) on top."""
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG} there (give a run directory, or a sweep directory)")
    cfg = OmegaConf.load(run_dir / CONFIG)
    for key in ("metrics", "callbacks"):  # a run from before these nodes had none
        cfg.setdefault(key, {})
    for item in overrides:
        key, _, value = item.partition("=")
        if not _ or key not in ALLOWED:
            raise ConfigError(f"{item}: an evaluation may change only {', '.join(ALLOWED)} (what is evaluated "
                              "comes from the run's config.yaml)")
        parsed = OmegaConf.from_dotlist([item])
        value = OmegaConf.select(parsed, key)
        if key in COUNTS and not (isinstance(value, int) and not isinstance(value, bool) and value >= COUNTS[key]):
            raise ConfigError(f"{item}: must be an integer >= {COUNTS[key]}")
        if key == "trainer.devices" and value != "auto" and not (type(value) is int and value >= 1):
            raise ConfigError(f"{item}: allowed values are auto or an integer >= 1 (the ranks to evaluate on)")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def pick_weights(checkpoint: dict, ckpt: str, weights, path) -> tuple:
    """(state_dict, "raw" or "ema"): for ``best`` unset means the weights that won."""
    which = weights or ((checkpoint.get("best") or {}).get("weights", "raw") if ckpt == "best" else "raw")
    if which not in ("raw", "ema"):
        raise ConfigError(f"weights={which}: allowed values are raw, ema")
    if which == "ema":
        if "ema" not in checkpoint:
            raise CheckpointError(f"{path}: holds no EMA weights (its run had no trainer.ema.decay); use weights=raw")
        return checkpoint["ema"]["module"], which
    return checkpoint["model"], which


def evaluate(source, ckpt: str = "best", split: str = "val", weights=None, overrides=(), write: bool = True,
             out=print) -> dict:
    """Evaluate ``ckpt`` of the run in ``source`` on ``split``; returns the record (also
    written under ``RUN/eval/`` when ``write``). A sweep directory: every COMPLETED job."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ConfigError(f"{source}: no such directory (give a run or a sweep directory)")
    if not (source / CONFIG).is_file() and (source / "multirun.yaml").is_file():
        return evaluate_sweep(source, ckpt, split, weights, overrides, out)
    start = time.perf_counter()
    cfg = run_config(source, overrides)
    path = checkpoint_file(source, ckpt)
    spawned, record = on_ranks(cfg, "trainforge.run.evaluate:evaluate", dict(
        source=str(source), ckpt=ckpt, split=split, weights=weights, overrides=list(overrides), write=write))
    if spawned:  # rank 0 printed the line
        return record
    from trainforge.distributed import group as dist
    from trainforge.engine.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    state, which = pick_weights(checkpoint, ckpt, weights, path)
    parts = Evaluation(cfg, split, state)
    values = parts.evaluate()
    record = {"run": str(source), "split": split, "checkpoint": ckpt, "file": str(path),
              "epoch": (checkpoint.get("best") or {}).get("epoch") if ckpt == "best" else checkpoint.get("epoch"),
              "weights": which, "samples": parts.samples, "ranks": dist.world_size(), "metrics": values,
              "seconds": round(time.perf_counter() - start, 3),
              "time": datetime.datetime.now().isoformat(timespec="seconds"), "overrides": list(overrides)}
    if dist.is_main():
        if write:
            record["written"] = str(write_record(source, record))
        shown = " - ".join(f"{k} {v:.6g}" for k, v in values.items())
        out(f"Evaluated {source} (ckpt={ckpt}: epoch {record['epoch']}, {which} weights) on {split} "
            f"({parts.samples} samples{on_how_many(record['ranks'])}) in {record['seconds']:.1f} s: {shown}")
    return record


def on_ranks(cfg, target: str, kwargs: dict) -> tuple:
    """(True, rank 0's result) after ``target(**kwargs)`` ran in the N rank processes
    ``trainer.devices`` asks for; (False, None) when this process goes on itself, having
    joined the process group of the ranks it is one of (torchrun, a SLURM step, ours)."""
    from trainforge.distributed import launch
    from trainforge.distributed.ranks import env_ranks

    gpu = launch.on_gpu(cfg.trainer.device)
    if env_ranks() is not None:
        from trainforge.distributed import group as dist

        dist.init("nccl" if gpu else "gloo", cfg.trainer.get("ddp_timeout", 1800))
        return False, None
    n = launch.process_count(cfg.trainer.get("devices", 1), cfg.trainer.device)
    return (True, launch.call_on_ranks(target, kwargs, n, gpu)) if n > 1 else (False, None)


def on_how_many(ranks: int) -> str:
    return f" on {ranks} ranks" if ranks > 1 else ""


class Evaluation:
    """What an evaluation runs, built from the run's config as training built it: the data
    option's ``split`` set in order (under DDP, this rank's part), the model with ``state``,
    the loss and the metrics (the data option's, the ``metrics`` node's, the collapse
    monitor's latent statistics). ``evaluate()`` is the validation of training."""

    def __init__(self, cfg, split: str, state: dict, input=None):
        from torch.utils.data import DataLoader

        from trainforge.engine.amp import Precision
        from trainforge.run import build as b
        from trainforge.run.dry import dry_batch

        t = cfg.trainer
        b.set_determinism(t.deterministic, t.threads)
        self.device = device = b.resolve_device(t.device)
        data = b.instantiate(cfg.data, "data")
        dataset = data.file_set(Path(input).expanduser()) if input is not None else split_set(data, split, cfg)
        self.samples = len(dataset)
        self.loader = DataLoader(dataset, sampler=b.shard(len(dataset)), batch_size=data.batch_size,
                                 num_workers=data.num_workers, pin_memory=data.pin_memory, collate_fn=data.collate_fn)
        self.model = b.build_model(cfg.model, warm_start=False)
        self.model.load_state_dict(state)
        self.model.to(device).eval()
        self.loss_fn = b.build_loss(cfg, device)
        self.metrics = b.build_metrics(cfg, data, device)
        if cfg.get("collapse", {}).get("enabled"):
            from trainforge.engine.components import MetricSet
            from trainforge.metrics.latent import LatentStats

            self.metrics = MetricSet({**self.metrics.metrics, "collapse": LatentStats(cfg.collapse.threshold)}, device)
        self.metrics.sharded = len(self.loader.sampler) < self.samples
        self.precision = Precision(t.precision, device, sum(p.numel() for p in self.model.parameters()))
        names = {"data": f"data ({split} split)", "model": f"model={cfg.model.get('_target_')}",
                 "loss": f"loss={cfg.loss.get('_target_')}"}
        self.call_style = dry_batch(self.model, self.loss_fn, self.metrics, self.loader, data.collate_fn, device,
                                    self.precision, names)

    def evaluate(self) -> dict:
        from trainforge.engine.hooks import validate

        return validate(self.model, self.loader, self.loss_fn, self.metrics, self.device, self.precision,
                        self.call_style, self.metrics.sharded)


def split_set(data, split: str, cfg):
    """The data option's ``split`` dataset; a split it has not is one line."""
    if split in ("val", "train"):
        return data.val_set() if split == "val" else data.train_set()
    if split == "test":
        test = data.test_set() if hasattr(data, "test_set") else None
        if test is None:
            where = "set data.test to a dataset _target_" if "train" in cfg.data else \
                f"data={cfg.data.get('_target_')} has no test split"
            raise ConfigError(f"split=test: the run's data has no test set ({where})")
        return test
    raise ConfigError(f"split={split}: allowed values are val, test, train")


def test_best(cfg, run_dir: Path, log) -> dict:
    """``trainer.test_after_fit``: the best checkpoint on the test split, once training
    completed, by every rank (each its part, as validation); rank 0 records it in
    ``RUN/eval/`` and the returned dict goes to ``status.json``'s ``test``."""
    from trainforge.distributed import group as dist
    from trainforge.engine.checkpoint import load_checkpoint

    dist.barrier()  # rank 0 wrote best_model.pth
    path = checkpoint_file(run_dir, "best")
    checkpoint = load_checkpoint(path)
    state, which = pick_weights(checkpoint, "best", None, path)
    start = time.perf_counter()
    parts = Evaluation(cfg, "test", state)
    values = parts.evaluate()
    epoch = (checkpoint.get("best") or {}).get("epoch")
    result = {"checkpoint": "best", "epoch": epoch, "weights": which, "samples": parts.samples, "metrics": values}
    if dist.is_main():
        write_record(run_dir, {"run": str(run_dir), "split": "test", **result, "file": str(path),
                               "seconds": round(time.perf_counter() - start, 3),
                               "time": datetime.datetime.now().isoformat(timespec="seconds"), "overrides": []})
    log.info("Test (best checkpoint, epoch %s, %s weights, %d samples): %s", epoch, which, parts.samples,
             " - ".join(f"{k} {v:.6f}" for k, v in values.items()))
    return result


def write_record(run_dir: Path, record: dict) -> Path:
    """``RUN/eval/<time>_<split>_<ckpt>.json`` and a row in ``RUN/eval/evaluations.csv``."""
    from trainforge.files import RunRecord

    folder = run_dir / EVAL_DIR
    folder.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S_%f")
    name = f"{stamp}_{record['split']}_{re.sub(r'[^A-Za-z0-9]+', '-', record['checkpoint']).strip('-')}.json"
    writer = RunRecord(folder)
    writer.text(name, json.dumps(record, indent=2, default=str) + "\n")
    row = {k: record[k] for k in ("time", "split", "checkpoint", "epoch", "weights", "samples", "seconds")}
    row.update({f"{record['split']}_{k}": v for k, v in record["metrics"].items()})
    writer.append_rows(EVALUATIONS, [list(row.values())], header=list(row))
    return folder / name


def evaluate_sweep(sweep: Path, ckpt, split, weights, overrides, out) -> dict:
    """Every COMPLETED job of the sweep; ``summary.csv`` gets ``eval_<split>_<metric>`` columns
    (beside the training's own ``val_*``, the last epoch's)."""
    from trainforge.analysis.runs import job_dirs

    records = {}
    for job in job_dirs(sweep):
        if read_status(job).get("status") == "COMPLETED":
            records[job.name] = evaluate(job, ckpt, split, weights, overrides, out=out)
    if not records:
        raise ConfigError(f"{sweep}: no COMPLETED job to evaluate")
    summary = sweep / "summary.csv"
    if summary.is_file():
        import pandas as pd

        table = pd.read_csv(summary, dtype={"job": str})
        for job, record in records.items():
            for k, v in record["metrics"].items():
                table.loc[table["job"] == job, f"eval_{split}_{k}"] = v
        tmp = summary.with_suffix(".tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(summary)
        out(f"Added the {split} columns to {summary}")
    return {"sweep": str(sweep), "jobs": records}


def command(argv, usage: str, own: tuple, act) -> int:
    """``trainforge eval|predict RUN [KEY=VALUE ...]``: the command's own keys (``own``) go to
    ``act(run, {key: value or None}, overrides)``, the others are overrides; an error is one line."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    given, overrides = dict.fromkeys(own), []
    for item in argv[1:]:
        key, _, value = item.partition("=")
        if key in given:
            given[key] = value
        else:
            overrides.append(item)
    try:
        act(argv[0], given, overrides)
    except TrainforgeError as e:
        print(f"trainforge: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


def main(argv) -> int:
    """``trainforge eval RUN [ckpt=..] [split=..] [weights=..] [KEY=VALUE ...]``."""
    return command(argv, __doc__.split("\n\n")[1], OWN, lambda run, k, overrides: evaluate(
        run, k["ckpt"] or "best", k["split"] or "val", k["weights"], overrides))

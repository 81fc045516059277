"""The run-directory contract (docs/run-directory.md), checked by the project's own code.

``shortfalls(run_dir, batch_metrics=False)`` returns one line per way ``run_dir`` falls
short of the contract (an empty list when it meets it): the files a finished run holds,
the batch line and epoch block in ``training.log``, the CSV/JSON columns and records,
``status.json``, ``checkpoints/index.json`` (every file it lists exists), and the
checkpoint format (``weights_only=True`` loading, the keys of section 5, a plain module's
state_dict). Tests call it on run directories they made; it needs nothing outside the
repository.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch
import yaml

BATCH_LINE = re.compile(r"Epoch \[(\d+)/(\d+)\] - Progress [\d.]+% \((\d+)/(\d+)\) - Batch Loss: \S+ - LR: \S+")
STATUSES = {"RUNNING", "COMPLETED", "FAILED", "PREEMPTED"}
FILES = ["config.yaml", "training.log", "epoch_metrics.csv", "metrics.json", "latest_checkpoint.pth",
         "best_model.pth", "best_model_weights.pt", "checkpoints/index.json", "status.json", ".hydra/config.yaml"]
EPOCH_COLUMNS = ["epoch", "train_loss", "train_loss_min", "train_loss_max", "lr", "epoch_time"]
BATCH_COLUMNS = ["epoch", "batch", "step", "loss", "lr"]
CKPT_KEYS = {"format_version", "epoch", "step", "batch_in_epoch", "model", "scheduler", "scaler", "rng",
             "sampler", "best", "history", "config", "time"}
RNG_KEYS = {"python", "numpy", "torch"}


def _rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _log(run: Path) -> list:
    text = (run / "training.log").read_text(errors="replace")
    bad = []
    if not BATCH_LINE.search(text):
        bad.append("training.log: no batch line 'Epoch [e/E] - Progress p% (i/N) - Batch Loss: x - LR: y'")
    if "=" * 80 not in text:
        bad.append("training.log: no epoch block framed by a line of 80 '='")
    if not re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text, re.M):
        bad.append("training.log: lines carry no timestamp")
    return bad


def _epoch_files(run: Path) -> list:
    bad = []
    rows = _rows(run / "epoch_metrics.csv")
    cols = set(rows[0]) if rows else set()
    bad += [f"epoch_metrics.csv: no column {c}" for c in EPOCH_COLUMNS if c not in cols]
    if not any(c.startswith("val_") for c in cols):
        bad.append("epoch_metrics.csv: no val_* column")
    epochs = [int(float(r["epoch"])) for r in rows if r.get("epoch")]
    if epochs != list(range(1, len(epochs) + 1)):
        bad.append(f"epoch_metrics.csv: epochs are {epochs}, want 1..N each once")
    records = json.loads((run / "metrics.json").read_text())
    want = {"epoch", "train", "val", "lr", "epoch_time"}
    if not isinstance(records, list) or not all(isinstance(r, dict) and want <= set(r) for r in records):
        bad.append(f"metrics.json: want a list of records with {sorted(want)}")
    elif [r["epoch"] for r in records] != epochs:
        bad.append("metrics.json: its epochs differ from epoch_metrics.csv's")
    return bad


def _status_and_index(run: Path) -> list:
    bad = []
    status = json.loads((run / "status.json").read_text()).get("status")
    if status not in STATUSES:
        bad.append(f"status.json: status {status!r} not in {sorted(STATUSES)}")
    index = json.loads((run / "checkpoints/index.json").read_text())
    for entry in index.get("checkpoints", []):
        if not (run / entry["file"]).is_file():
            bad.append(f"checkpoints/index.json lists {entry['file']}, which does not exist")
        if not entry.get("rule"):
            bad.append(f"checkpoints/index.json: no rule keeps {entry['file']}")
    return bad


def _checkpoint(path: Path) -> list:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (the contract: weights_only loading always works)
        return [f"{path.name}: does not load with weights_only=True ({type(e).__name__})"]
    bad = []
    missing = CKPT_KEYS - set(ckpt)
    if missing:
        return [f"{path.name}: lacks keys {sorted(missing)}"]
    config = yaml.safe_load(ckpt["config"]) if isinstance(ckpt["config"], str) else None
    if config is None:
        bad.append(f"{path.name}: config should be the resolved YAML as a string")
    elif config.get("checkpoint", {}).get("save_optimizer", True) and "optimizer" not in ckpt:
        bad.append(f"{path.name}: no optimizer state although checkpoint.save_optimizer is true")
    if any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"]):
        bad.append(f"{path.name}: model state_dict carries a wrapper prefix")
    if not RNG_KEYS <= set(ckpt["rng"]):
        bad.append(f"{path.name}: rng lacks {sorted(RNG_KEYS - set(ckpt['rng']))}")
    if not {"epoch", "position"} <= set(ckpt["sampler"]):
        bad.append(f"{path.name}: sampler wants epoch and position")
    if not {"monitor", "mode", "value", "epoch"} <= set(ckpt["best"]):
        bad.append(f"{path.name}: best wants monitor, mode, value, epoch")
    return bad


def shortfalls(run_dir, batch_metrics: bool = False) -> list:
    """Every way ``run_dir`` (a finished run) falls short of docs/run-directory.md."""
    run = Path(run_dir)
    need = FILES + (["batch_metrics.csv"] if batch_metrics else [])
    bad = [f"missing {name}" for name in need if not (run / name).exists()]
    if bad:
        return bad
    bad += _log(run) + _epoch_files(run) + _status_and_index(run)
    if batch_metrics:
        with open(run / "batch_metrics.csv", newline="") as f:
            cols = next(csv.reader(f), [])
        bad += [f"batch_metrics.csv: no column {c}" for c in BATCH_COLUMNS if c not in cols]
    for name in ("latest_checkpoint.pth", "best_model.pth"):
        bad += _checkpoint(run / name)
    weights = torch.load(run / "best_model_weights.pt", map_location="cpu", weights_only=True)
    if not (isinstance(weights, dict) and weights and all(torch.is_tensor(v) for v in weights.values())):
        bad.append("best_model_weights.pt: want a plain state_dict of tensors")
    return bad

"""Checkpoint files: atomic writes, retention, discovery and safe loading.

The manager knows nothing about what it saves: it gets a dict of objects with
``state_dict()`` plus a dict of primitives, and writes one ``torch.save`` file of tensors
and primitives that always loads with ``torch.load(weights_only=True)``.

Every write is temp file in the same folder -> flush + fsync -> ``os.replace`` -> fsync of
the folder, so a reader (or a crash at any instant) sees the old file or the new one,
never half of one. Copies under other names (best, epoch files) are hard links to the
committed file where the filesystem allows. Retention deletes only after the new file is
committed, and never touches ``latest_checkpoint.pth``.
"""
from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

import torch

from trainforge.errors import CheckpointError
from trainforge.files import (BEST, BEST_WEIGHTS, EPOCH_DIR, INDEX, LATEST, RunRecord, atomic_json,  # noqa: F401
                              atomic_write, publish, tmp_for, writer_gone)

FORMAT_VERSION = 1


def atomic_save(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))



def safe_load(path):
    """``torch.load(path, weights_only=True)`` with one-line CheckpointErrors naming the
    file: missing, empty, truncated or corrupt, or holding pickled objects (refused before
    anything in it runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = text[text.find("Unsupported global"):].split("\n")[0].rstrip(". ") \
            if "Unsupported global" in text else text.strip().split("\n")[-1]
        raise CheckpointError(f"{path}: refused: it holds pickled Python objects that safe "
                              f"(weights_only) loading does not allow ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first})") from None


def load_checkpoint(path) -> dict:
    """Load a trainforge checkpoint safely; a foreign file is a one-line CheckpointError."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a trainforge checkpoint (no format_version/model keys)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {ckpt['format_version']} is newer than this "
                              f"trainforge understands ({FORMAT_VERSION})")
    return upgrade(ckpt)


# format_version N -> a function turning a version-N checkpoint (dict) into version N + 1.
# The policy (docs/run-directory.md): a newer trainforge loads every older version; a key
# a later version renamed or restructured is migrated here, a component state an older
# checkpoint lacks starts fresh with a warning; a checkpoint newer than the code is refused.
MIGRATIONS: dict = {}


def upgrade(ckpt: dict) -> dict:
    """``ckpt`` migrated step by step to FORMAT_VERSION."""
    while ckpt["format_version"] < FORMAT_VERSION:
        ckpt = MIGRATIONS[ckpt["format_version"]](dict(ckpt))
        ckpt["format_version"] += 1
    return ckpt


def load_weights(model, path) -> tuple:
    """Warm start: load a weights file (``best_model_weights.pt``, any plain state_dict, or
    a checkpoint's ``model``) into ``model`` non-strictly. ``module.``/``_orig_mod.``
    prefixes are stripped. Returns (missing_keys, unexpected_keys); a shape mismatch is a
    CheckpointError naming the keys."""
    obj = safe_load(path)
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors (nor a checkpoint holding one)")
    state = {k.replace("module.", "", 1).replace("_orig_mod.", "", 1): v for k, v in state.items()}
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shapes differ from the model's: {'; '.join(bad[:5])}")
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


class CheckpointManager:
    """Writes a run directory's checkpoint files and keeps ``checkpoints/index.json``.

    ``save_latest`` rewrites ``latest_checkpoint.pth``; ``save_epoch`` also publishes the
    epoch file (every ``save_freq`` epochs) and ``best_model.pth`` when ``metric`` is the
    best so far, then applies retention: the last ``keep_last_n`` epoch files (0: all)
    plus the ``top_k`` best by metric are kept, and the index says which rule keeps each.
    """

    def __init__(self, record, save_freq=1, keep_last_n=3, top_k=0, monitor="val_loss", mode="min",
                 weights_kind="raw"):
        """``record``: the run's RunRecord (every rank keeps the tables; rank 0 alone writes),
        or a run directory (a writer). ``weights_kind``: which weights a best holds, ``raw`` or
        ``ema`` (the EMA's are what is validated or monitored: ``trainer.ema``)."""
        self.record = RunRecord.of(record)
        self.run_dir = self.record.run_dir
        self.save_freq, self.keep_last_n, self.top_k = save_freq, keep_last_n, top_k
        self.monitor, self.mode = monitor, mode
        self.best = {"monitor": monitor, "mode": mode, "value": None, "epoch": None}
        self.weights_kind = weights_kind
        self.entries: list[dict] = []  # epoch files: {"file", "epoch", "metric"}
        for tmp in [*self.run_dir.glob(".*.tmp"), *(self.run_dir / EPOCH_DIR).glob(".*.tmp")]:
            if writer_gone(tmp):
                tmp.unlink(missing_ok=True)  # left by a writer killed mid-save; never a committed file

    # ---- state (the retention table travels inside each checkpoint) ----
    def state_dict(self) -> dict:
        return {"best": dict(self.best), "entries": [dict(e) for e in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        self.best = dict(state["best"])
        self.entries = [e for e in state["entries"] if (self.run_dir / e["file"]).is_file()]

    def rebase(self, values: dict) -> None:
        """Another monitor than the one the tables were kept in: the epoch files take their
        epochs' ``values`` (epoch -> the new monitor's value) and the best starts over."""
        self.best = {"monitor": self.monitor, "mode": self.mode, "value": None, "epoch": None}
        for entry in self.entries:
            entry["metric"] = values.get(entry["epoch"])

    def is_better(self, value: float) -> bool:
        old = self.best["value"]
        if value != value:  # NaN is never better
            return False
        return old is None or (value < old if self.mode == "min" else value > old)

    # ---- writes ----
    def _payload(self, objects: dict, extra: dict) -> dict:
        payload = {"format_version": FORMAT_VERSION, "time": time.time()}
        payload.update({name: obj.state_dict() for name, obj in objects.items()})
        payload.update(extra)
        payload["best"], payload["retention"] = dict(self.best), self.state_dict()
        return payload

    def save_latest(self, objects: dict, extra: dict) -> Path:
        self.record.write(LATEST, lambda f: torch.save(self._payload(objects, extra), f))
        return self.run_dir / LATEST

    def save_epoch(self, epoch: int, metric, objects: dict, extra: dict, weights) -> bool:
        """Checkpoint the end of ``epoch`` (1-based). Returns True if it is the new best.
        ``weights`` (or ``weights()``, computed only where it is written) is the model's
        state_dict for best_model_weights.pt."""
        improved = metric is not None and self.is_better(metric)
        if improved:
            self.best.update(value=metric, epoch=epoch, weights=self.weights_kind)
        if self.save_freq and epoch % self.save_freq == 0:
            name = f"{EPOCH_DIR}/checkpoint_epoch_{epoch:03d}.pth"
            self.entries = [e for e in self.entries if e["epoch"] != epoch]
            self.entries.append({"file": name, "epoch": epoch, "metric": metric})
        self.save_latest(objects, extra)  # carries best + entries already updated
        if improved:
            self.record.write(BEST_WEIGHTS, lambda f: torch.save(weights() if callable(weights) else weights, f))
            self.record.publish(LATEST, BEST)
        if self.entries and self.entries[-1]["epoch"] == epoch:
            self.record.publish(LATEST, self.entries[-1]["file"])
        self._retain()
        return improved

    def _retain(self) -> None:
        """Delete epoch files no rule keeps (only ever after the new file is committed)."""
        rules = {e["file"]: [] for e in self.entries}
        by_epoch = sorted(self.entries, key=lambda e: e["epoch"])
        for e in by_epoch[-self.keep_last_n:] if self.keep_last_n else by_epoch:
            rules[e["file"]].append("last_n")
        if self.top_k:
            scored = [e for e in self.entries if e["metric"] is not None and e["metric"] == e["metric"]]
            scored.sort(key=lambda e: e["metric"], reverse=self.mode == "max")
            for e in scored[: self.top_k]:
                rules[e["file"]].append("top_k")
        kept = [e for e in self.entries if rules[e["file"]]]
        for e in self.entries:
            if not rules[e["file"]]:
                self.record.remove(e["file"])
        self.entries = kept
        index = [{"file": LATEST, "rule": ["latest"]}]
        if (self.run_dir / BEST).is_file():
            index.append({"file": BEST, "epoch": self.best["epoch"], "metric": self.best["value"], "rule": ["best"]})
        index += [{**e, "rule": rules[e["file"]]} for e in kept]
        self.record.json(INDEX, {"monitor": self.monitor, "mode": self.mode, "checkpoints": index})

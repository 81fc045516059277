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

import json
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import torch

from trainforge.errors import CheckpointError, WriteError
from trainforge.rundir import process_ended

FORMAT_VERSION = 1
LATEST = "latest_checkpoint.pth"
BEST = "best_model.pth"
BEST_WEIGHTS = "best_model_weights.pt"
EPOCH_DIR = "checkpoints"
INDEX = "checkpoints/index.json"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform lets a folder be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _writer_gone(tmp: Path) -> bool:
    """Whether the process that wrote temp file ``tmp`` (``_tmp_for``'s ``.<name>.<pid>.tmp``)
    has ended, so the file is a killed write's leftover. A live writer's is not: another
    rank's CheckpointManager must not delete the file rank 0 is writing, nor the launcher's."""
    try:
        pid = int(tmp.name.rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return True  # not ours to keep
    return pid == os.getpid() or process_ended(pid)  # this process writes nothing while it sweeps


def _os_fault(exc: BaseException) -> bool:
    """An OSError, or an error caused by one (torch.save wraps a full disk in a RuntimeError)."""
    while exc is not None and not isinstance(exc, WriteError):
        if isinstance(exc, OSError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_write(path, write) -> None:
    """Create or replace ``path`` atomically; ``write(file)`` fills a temp file first.
    A failed write (disk full, no permission) leaves the old file and raises WriteError
    naming ``path``."""
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _discard(tmp)
        if _os_fault(e):
            raise WriteError(path, e) from None
        raise
    _fsync_dir(path.parent)


def _discard(tmp: Path) -> None:
    """Remove a temp file of a failed write, if it can be (a full disk may refuse even that)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_save(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_json(obj, path) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def publish(src: Path, dst: Path) -> None:
    """Make ``dst`` an atomic copy of the committed file ``src`` (a hard link if possible)."""
    tmp = _tmp_for(dst)
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        _discard(tmp)
        raise WriteError(dst, e) from None
    _fsync_dir(dst.parent)


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

    def __init__(self, run_dir, save_freq=1, keep_last_n=3, top_k=0, monitor="val_loss", mode="min"):
        self.run_dir = Path(run_dir)
        self.save_freq, self.keep_last_n, self.top_k = save_freq, keep_last_n, top_k
        self.monitor, self.mode = monitor, mode
        self.best = {"monitor": monitor, "mode": mode, "value": None, "epoch": None}
        self.entries: list[dict] = []  # epoch files: {"file", "epoch", "metric"}
        for tmp in [*self.run_dir.glob(".*.tmp"), *(self.run_dir / EPOCH_DIR).glob(".*.tmp")]:
            if _writer_gone(tmp):
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
        path = self.run_dir / LATEST
        atomic_save(self._payload(objects, extra), path)
        return path

    def save_epoch(self, epoch: int, metric, objects: dict, extra: dict, weights: dict) -> bool:
        """Checkpoint the end of ``epoch`` (1-based). Returns True if it is the new best."""
        improved = metric is not None and self.is_better(metric)
        if improved:
            self.best.update(value=metric, epoch=epoch)
        if self.save_freq and epoch % self.save_freq == 0:
            name = f"{EPOCH_DIR}/checkpoint_epoch_{epoch:03d}.pth"
            self.entries = [e for e in self.entries if e["epoch"] != epoch]
            self.entries.append({"file": name, "epoch": epoch, "metric": metric})
        latest = self.save_latest(objects, extra)  # carries best + entries already updated
        if improved:
            atomic_save(weights, self.run_dir / BEST_WEIGHTS)
            publish(latest, self.run_dir / BEST)
        if self.entries and self.entries[-1]["epoch"] == epoch:
            (self.run_dir / EPOCH_DIR).mkdir(exist_ok=True)
            publish(latest, self.run_dir / self.entries[-1]["file"])
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
                (self.run_dir / e["file"]).unlink(missing_ok=True)
        self.entries = kept
        index = [{"file": LATEST, "rule": ["latest"]}]
        if (self.run_dir / BEST).is_file():
            index.append({"file": BEST, "epoch": self.best["epoch"], "metric": self.best["value"], "rule": ["best"]})
        index += [{**e, "rule": rules[e["file"]]} for e in kept]
        atomic_json({"monitor": self.monitor, "mode": self.mode, "checkpoints": index}, self.run_dir / INDEX)

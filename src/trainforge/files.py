"""The run directory and who writes it: its file names, the lock, the status record and
atomic writes. The one owner of the run directory's layout (torch-free: the command line
reads it before anything heavy is imported).

- ``RUN_DIR_FILES``: every file a run directory may hold, with what it is (the contract of
  ``docs/run-directory.md``, checked by tests).
- ``RunLock``: an exclusive ``fcntl.flock`` on ``<run_dir>/.trainforge.lock`` held for the
  whole run: two processes started on one directory at the same instant cannot both get
  it (the kernel decides, there is no check-then-write window), and a crashed or killed
  holder releases it with its file descriptors, so a stale lock file never blocks anyone.
- ``RunRecord``: the writer of the run's record (status.json, config.yaml, ...). Every
  process has one; off rank 0 it writes nothing, so callers need no rank checks.
- ``atomic_write``: temp file in the same folder -> flush + fsync -> ``os.replace`` -> fsync
  of the folder, so a reader (or a crash at any instant) sees the old file or the new one.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

from trainforge.errors import ConfigError, WriteError

# ---- names -----------------------------------------------------------------------------
LOCK = ".trainforge.lock"
STATUS = "status.json"
CONFIG = "config.yaml"
TRAINING_LOG = "training.log"
METRICS_JSON = "metrics.json"
EPOCH_CSV = "epoch_metrics.csv"
BATCH_CSV = "batch_metrics.csv"
COLLAPSE_CSV = "collapse.csv"
COLLAPSE_WARNING = "posterior collapse suspected"  # the start of its warning in training.log
LATEST = "latest_checkpoint.pth"
BEST = "best_model.pth"
BEST_WEIGHTS = "best_model_weights.pt"
EPOCH_DIR = "checkpoints"
INDEX = "checkpoints/index.json"
TENSORBOARD = "tensorboard"
MLFLOW, MLFLOW_SPOOL = "mlflow.json", "mlflow"  # (the run's own MLflow store: log.mlflow_spool)
HYDRA_DIR = ".hydra"
PLOTS = "plots"
PROVENANCE = "provenance.json"
PROVENANCE_RESUMES = "provenance_resumes.jsonl"
PROVENANCE_DIFFS = "provenance_*.diff"
EVAL_DIR = "eval"
EVALUATIONS = "evaluations.csv"  # in EVAL_DIR
PRED_DIR = "predictions"

# every file or folder a run directory may hold -> what it is (docs/run-directory.md)
RUN_DIR_FILES = {
    HYDRA_DIR: "Hydra's record of the composition: config.yaml, hydra.yaml, overrides.yaml (new runs only)",
    CONFIG: "the final config, resolved (a resume updates it)",
    STATUS: "the run's status record: RUNNING, COMPLETED, FAILED or PREEMPTED, and how it ended",
    TRAINING_LOG: "every log line of the run, every batch line included",
    METRICS_JSON: "one record per epoch: train and val metrics, lr, time",
    EPOCH_CSV: "one row per epoch (the columns of metrics.json, flattened)",
    BATCH_CSV: "one row per batch (log.batch_metrics=true)",
    COLLAPSE_CSV: "per-dimension latent statistics per validation (collapse.enabled=true)",
    LATEST: "the newest checkpoint (every epoch, every checkpoint.every_n_steps, on a stop signal)",
    BEST: "the checkpoint of the best epoch by checkpoint.monitor / checkpoint.mode",
    BEST_WEIGHTS: "the best epoch's model state_dict alone (for model.init_weights)",
    EPOCH_DIR: "checkpoint_epoch_NNN.pth every checkpoint.save_freq epochs, and index.json",
    TENSORBOARD: "TensorBoard event files (log.tensorboard=true)",
    MLFLOW: "the run's MLflow run: tracking URI, experiment, run id (log.mlflow=true)",
    MLFLOW_SPOOL: "the run's own MLflow store while it spools (log.mlflow_spool; a SLURM job), forwarded later",
    PLOTS: "figures written by python -m trainforge.analyze",
    LOCK: "the run lock: held by the process training in the directory",
    PROVENANCE: "where the run came from: command, code (git or version), versions, packages, host, data files",
    PROVENANCE_RESUMES: "one provenance record per resume",
    PROVENANCE_DIFFS: "the uncommitted diff of the project or trainforge at a start (a dirty checkout only)",
    EVAL_DIR: "trainforge eval's records: one JSON per evaluation and evaluations.csv",
    PRED_DIR: "trainforge predict's output files (unless out= says where)",
}
# files that only a run that got past the door writes
RUN_FILES = (LATEST, METRICS_JSON, EPOCH_CSV, BATCH_CSV, EPOCH_DIR)
STATUSES = ("RUNNING", "COMPLETED", "FAILED", "PREEMPTED")
# why a COMPLETED run ended before trainer.epochs (absent: it ran them all)
STOP_REASONS = ("early_stop", "pruned", "collapse")


class RunLock:
    """``with RunLock(run_dir, key):`` holds the directory for this process or raises the
    one-line "already holds a run" ConfigError naming ``key`` (how the user chose it)."""

    EARLY: dict = {}  # run dir -> the fd this process locked it with before Hydra wrote its record

    def __init__(self, run_dir, key: str = "hydra.run.dir"):
        self.path, self.key, self.fd = Path(run_dir) / LOCK, key, None

    @classmethod
    def take_early(cls, run_dir) -> bool:
        """Lock a new run directory for this process before anything is written there (Hydra's
        record of the composition): True if this process holds it now. The ``with RunLock``
        of the run then adopts the lock; a process that lost the race writes nothing."""
        key = str(Path(run_dir).resolve())
        if key in cls.EARLY:
            return True
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        cls.EARLY[key] = fd
        return True

    def __enter__(self) -> "RunLock":
        early = RunLock.EARLY.pop(str(self.path.parent.resolve()), None)
        if early is not None:  # taken before Hydra wrote the record: this process's already
            self.fd = early
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                # a killed run's DataLoader workers inherit the lock until they notice (a few
                # seconds): wait for them when the process that stamped the lock is gone
                if _gone(holder) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
            os.close(fd)
            raise ConfigError(f"{self.key}={self.path.parent}: already holds a run that {holder} is "
                              "training right now; wait for it, or choose another directory") from None
        self.fd = fd
        return self

    def stamp(self) -> None:
        """Write who holds the lock (for the other process's message); called once this
        process is sure to train, so a refused start changes nothing in the directory."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


ORPHAN_WAIT_S = 15.0


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` of this host has ended (one of another user's is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _gone(holder: str) -> bool:
    """Whether the stamp ``pid N on HOST`` names a process of this host that has ended."""
    parts = holder.split()
    if len(parts) != 4 or parts[0] != "pid" or parts[3] != socket.gethostname() or not parts[1].isdigit():
        return False
    return process_ended(int(parts[1]))


def holds_run(run_dir) -> bool:
    """Whether ``run_dir`` holds a run a fresh start must not train over: one that got
    past the door (a checkpoint or metrics exist) or whose status is not FAILED. A run
    refused at the door (FAILED before its first epoch finished) holds nothing to keep."""
    run_dir = Path(run_dir)
    if any((run_dir / name).exists() for name in RUN_FILES):
        return True
    status = run_dir / STATUS
    if status.exists():
        try:
            return json.loads(status.read_text()).get("status") != "FAILED"
        except (OSError, ValueError):
            return True
    return (run_dir / TRAINING_LOG).exists()  # a log without a status: unknown, keep it


def resume_home(resume) -> Path | None:
    """The run directory a ``resume=`` target continues in: a directory that holds a run,
    or the run holding a checkpoint file (its folder, or the parent of ``checkpoints/``);
    None for anything else (a checkpoint outside any run, a folder without one, no such
    path): such a resume gets a new directory, and nothing is written where it points."""
    path = Path(str(resume)).expanduser()
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif not path.is_dir():
        return None
    return path if holds_run(path) else None


# ---- atomic writes ----------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform lets a folder be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def writer_gone(tmp: Path) -> bool:
    """Whether the process that wrote temp file ``tmp`` (``tmp_for``'s ``.<name>.<pid>.tmp``)
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
    tmp = tmp_for(path)
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


def atomic_json(obj, path) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def publish(src: Path, dst: Path) -> None:
    """Make ``dst`` an atomic copy of the committed file ``src`` (a hard link if possible)."""
    tmp = tmp_for(dst)
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


# ---- the status record -------------------------------------------------------------------
def read_json(path) -> dict:
    """A JSON file as a dict ({} when it is missing or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_status(run_dir) -> dict:
    return read_json(Path(run_dir) / STATUS)


def write_status(run_dir: Path, status: str, **fields) -> None:
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
              "pid": os.getpid(), "run_dir": str(run_dir),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}
    atomic_json(record, Path(run_dir) / STATUS)


def write_final_status(run_dir: Path, status: str, **fields) -> None:
    """The failure record, also on a full disk: if the atomic write finds no room, the
    old status.json is overwritten in place (its own blocks suffice); if that fails too,
    the one-line error on stderr is all there is."""
    try:
        write_status(run_dir, status, **fields)
    except WriteError:
        try:
            with open(Path(run_dir) / STATUS, "r+b") as f:
                f.truncate(0)
                f.write(json.dumps({"status": status, **fields}, default=str).encode())
        except OSError:
            pass


def write_failed_over(run_dir: Path, record: dict, error: str, **fields) -> None:
    """FAILED with ``error`` in place of a record that a killed process could not finish
    (what it held of the run is kept)."""
    kept = {k: record[k] for k in ("started", "epoch", "step", "final", "best") if k in record}
    write_status(run_dir, "FAILED", error=error, **kept, **fields)


class RunRecord:
    """The writer of one run's record in ``run_dir``: status.json, config.yaml, the metric
    files, checkpoints. Every process of a run has one; only the writer (rank 0) writes,
    the others' calls do nothing (as their log handlers do), so no caller checks its rank.
    A ``fill`` callable is called only where it writes (a rank that writes nothing
    computes nothing for it)."""

    def __init__(self, run_dir, writes: bool = True):
        self.run_dir, self.writes = Path(run_dir), writes
        self.watchers: list = []  # watcher(status, fields) after each status written (a tracker)

    @classmethod
    def of(cls, where) -> "RunRecord":
        """``where`` itself if it is a RunRecord, else a writer for the run directory ``where``."""
        return where if isinstance(where, cls) else cls(where)

    def status(self, status: str, _write=write_status, **fields) -> None:
        if self.writes:
            _write(self.run_dir, status, **fields)
            for watcher in self.watchers:
                watcher(status, fields)

    def final_status(self, status: str, **fields) -> None:
        self.status(status, _write=write_final_status, **fields)

    def write(self, name: str, fill) -> None:
        """``name`` atomically, ``fill(file)`` writing its bytes."""
        if self.writes:
            atomic_write(self.run_dir / name, fill)

    def text(self, name: str, text: str) -> None:
        self.write(name, lambda f: f.write(text.encode()))

    def json(self, name: str, obj) -> None:
        if self.writes:
            atomic_json(obj, self.run_dir / name)

    def publish(self, src: str, dst: str) -> None:
        """``dst`` an atomic copy (a hard link where possible) of the committed ``src``."""
        if self.writes:
            (self.run_dir / dst).parent.mkdir(parents=True, exist_ok=True)
            publish(self.run_dir / src, self.run_dir / dst)

    def remove(self, name: str) -> None:
        if self.writes:
            (self.run_dir / name).unlink(missing_ok=True)

    def append_rows(self, name: str, rows: list, header=None) -> None:
        """CSV rows appended to ``name``; ``header`` first when the file is new."""
        if not self.writes or not (rows or header):
            return
        path = self.run_dir / name
        new = header is not None and not path.exists()
        try:
            with open(path, "a", newline="") as f:
                csv.writer(f).writerows(([header] if new else []) + rows)
        except OSError as e:
            raise WriteError(path, e) from None

    def keep_rows(self, name: str, keep) -> None:
        """Rewrite CSV ``name`` with its header and the rows ``keep(row)`` accepts (a resume
        drops the rows past its checkpoint)."""
        path = self.run_dir / name
        if not self.writes or not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        buf = io.StringIO()
        csv.writer(buf).writerows(rows[:1] + [r for r in rows[1:] if keep(r)])
        self.text(name, buf.getvalue())

"""Who may train into a run directory: one process at a time, and never over a run.

``RunLock`` is an exclusive ``fcntl.flock`` on ``<run_dir>/.trainforge.lock`` held for
the whole run: two processes started on one directory at the same instant cannot both
get it (the kernel decides, there is no check-then-write window), and a crashed or killed
holder releases it with its file descriptors, so a stale lock file never blocks anyone.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from trainforge.errors import ConfigError

LOCK = ".trainforge.lock"
# files that only a run that got past the door writes
RUN_FILES = ("latest_checkpoint.pth", "metrics.json", "epoch_metrics.csv", "batch_metrics.csv", "checkpoints")


class RunLock:
    """``with RunLock(run_dir, key):`` holds the directory for this process or raises the
    one-line "already holds a run" ConfigError naming ``key`` (how the user chose it)."""

    def __init__(self, run_dir, key: str = "hydra.run.dir"):
        self.path, self.key, self.fd = Path(run_dir) / LOCK, key, None

    def __enter__(self) -> "RunLock":
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
    status = run_dir / "status.json"
    if status.exists():
        try:
            return json.loads(status.read_text()).get("status") != "FAILED"
        except (OSError, ValueError):
            return True
    return (run_dir / "training.log").exists()  # a log without a status: unknown, keep it


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

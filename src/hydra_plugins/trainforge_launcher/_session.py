"""The local executor of the GPU-pool launcher: job controllers in their own session."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def session_executor(folder, max_num_timeout: int):
    """A submitit LocalExecutor whose job controllers start in their own session: a
    terminal's Ctrl-C then reaches only the sweep's parent, which stops each job gently
    (SIGTERM to the controller, which forwards it to the task; the task saves and stops)."""
    import subprocess

    import submitit
    from submitit.local import local

    class NewSession:  # what submitit's local module sees as `subprocess` while it starts a controller
        def __getattr__(self, name):
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args, **kwargs):  # noqa: N802 - the name submitit calls
            return subprocess.Popen(*args, start_new_session=True, **kwargs)

    class SessionLocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command):
            local.subprocess = NewSession()
            try:
                job = super()._submit_command(command)
            finally:
                local.subprocess = subprocess
            if os.getpgid(job._process.pid) != job._process.pid:
                print("trainforge: warning: this submitit starts job controllers in the sweep's "
                      "session; Ctrl-C reaches the jobs directly")
            return job

    return SessionLocalExecutor(folder=folder, max_num_timeout=max_num_timeout)


def drop_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only if empty
    except OSError:
        pass


def say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:  # a terminal that hung up: the sweep goes on (summary.csv has it all)
        pass


def terminate(job) -> None:
    """SIGTERM to the job's controller, which forwards it to the task (a job done meanwhile is fine)."""
    try:
        job._process.send_signal(signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def kill_group(job) -> None:
    """SIGKILL to the controller's whole process group: controller, task, its workers."""
    try:
        os.killpg(job._process.pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def rel(path: Path) -> str:
    """``path`` as the sweep's lines show it (relative to the working directory where it can be)."""
    from trainforge.analysis.summary import relative

    return relative(path)

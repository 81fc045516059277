"""User-facing errors: each carries one line that names the key, file or value at fault.

``trainforge.cli.main`` prints such an error as ``trainforge: error: <line>`` and exits 2
without a traceback (set ``HYDRA_FULL_ERROR=1`` to see one).
"""


class TrainforgeError(Exception):
    """An error caused by the user's input, not by a bug."""


class ConfigError(TrainforgeError):
    """A config key has a value that is not allowed."""


class DataError(TrainforgeError):
    """A data file is missing, unreadable or has the wrong keys or shapes."""


class CheckpointError(TrainforgeError):
    """A checkpoint is missing, truncated, foreign or unsafe to load."""


class NonFiniteLossError(TrainforgeError):
    """Training produced a NaN or Inf loss and the policy says stop."""


class Preempted(TrainforgeError):
    """A signal stopped the run after it saved ``latest_checkpoint.pth``.

    The process exits with ``EXIT_CODE`` (75, EX_TEMPFAIL: "try again"); rerunning with
    ``resume=auto`` (same run dir) or ``resume=RUN_DIR`` continues exactly.
    """

    EXIT_CODE = 75
    exit_code = EXIT_CODE


class RankFailed(TrainforgeError):
    """One rank of a multi-process run raised or died; the others were stopped."""

    exit_code = 1


class SweepFailed(TrainforgeError):
    """Some jobs of a sweep did not complete; the others did (see the sweep's summary.csv)."""

    exit_code = 1


class SweepStopped(TrainforgeError):
    """Ctrl-C or SIGTERM stopped a sweep: its running jobs saved and stopped (exit 75, as Preempted)."""

    exit_code = 75


class WriteError(TrainforgeError):
    """A file of the run could not be written (disk full, permission, read-only...).

    ``str()`` names the file and the operating system's reason; ``run`` adds the last
    good checkpoint to resume from (``last_good``).
    """

    def __init__(self, path, exc: BaseException):
        self.path, self.reason, self.last_good, self.run_dir = str(path), os_reason(exc), None, None
        super().__init__(self.path)

    def __str__(self) -> str:
        text = f"cannot write {self.path}: {self.reason}"
        if self.last_good is not None:
            text += f"; last good checkpoint: {self.last_good}"
            if self.last_good != "none":
                text += f" (resume={self.run_dir} continues from it)"
        return text


def os_reason(exc: BaseException) -> str:
    """The operating system's reason behind ``exc`` or an error it chains (torch.save
    reports a full disk as a RuntimeError whose context is the OSError)."""
    import errno

    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return f"{seen.strerror or 'error'} [{errno.errorcode.get(seen.errno, seen.errno)}]"
        seen = seen.__cause__ or seen.__context__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

"""The command line: ``trainforge`` / ``python train.py`` (Hydra's app over the packaged configs),
the run-directory resolvers, and one-line errors with their exit codes."""
from __future__ import annotations

import datetime
import dataclasses
import os
import re
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainforge.distributed.ranks import NOW
from trainforge.errors import Preempted, SweepFailed, SweepStopped, TrainforgeError
from trainforge.files import HYDRA_DIR, LOCK, RunLock, atomic_write, holds_run, resume_home

USER_ERRORS = (TrainforgeError, HydraException, OmegaConfBaseException)


def run_dir_for(resume, default: str) -> str:
    """The run directory for ``hydra.run.dir``: a resumed run continues in its own directory.

    ``resume`` may be a checkpoint file (its run directory is the folder holding it, or
    the parent of ``checkpoints/``), a run directory, ``auto`` or null (a new directory).
    Anything else (no such path, a folder holding no run, a file outside any run) gets a
    new directory, so nothing is written where it points; ``run`` then reports it, or
    continues a checkpoint kept outside any run in the new directory.
    """
    if resume in (None, "", "auto"):
        return _new_dir(default)
    home = resume_home(resume)
    return str(home) if home is not None else _new_dir(default)


_NEW_DIRS: list = []  # default run and sweep directories this process named before they existed
HYDRA_RECORD = {"config.yaml", "hydra.yaml", "overrides.yaml"}
SWEEP_RECORD = "multirun.yaml"  # what Hydra writes in a sweep directory before any job runs


_MADE_FROM: dict = {}  # new directory -> its highest ancestor that did not exist either (outputs/, say)


def _new_dir(path: str) -> str:
    if path not in _NEW_DIRS and not os.path.exists(path):
        _NEW_DIRS.append(path)
        top = Path(path)
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        _MADE_FROM[path] = top
    return path


_SWEEP_RECORDS: dict = {}  # sweep dir -> its multirun.yaml before this process's sweeper rewrote it
_GIVEN: set = set()  # new directories the user named (hydra.sweep.dir): their parent is not ours


def keep_sweep_record(path) -> None:
    """Before Hydra's sweeper writes ``multirun.yaml`` (the launcher's setup): a sweep refused
    before any job ran then leaves a given ``hydra.sweep.dir`` as it was (its earlier record
    back, or the new directory removed)."""
    record = Path(path) / SWEEP_RECORD
    if str(path) in _NEW_DIRS:  # a default one (multirun/DATE/TIME), named by tf_sweep_dir
        return
    if not os.path.exists(path):
        _NEW_DIRS.append(str(path))
        _GIVEN.add(str(path))
    elif record.is_file():
        _SWEEP_RECORDS[str(path)] = record.read_bytes()


def restore_sweep_records() -> None:
    for path, data in _SWEEP_RECORDS.items():
        try:
            atomic_write(Path(path) / SWEEP_RECORD, lambda f, data=data: f.write(data))
        except OSError:
            continue


def drop_refused_run_dirs() -> None:
    """After a run refused before it started (at the door, or while preparing and building:
    a run writes nothing of its own until then), or a sweep refused before any job ran:
    remove the new directory Hydra made for it (``outputs/DATE/TIME/``, ``multirun/DATE/TIME/``)
    when it holds nothing but Hydra's record of the refused composition (and the run lock),
    so typos leave no empty runs behind. Only a directory that did not exist before this
    process: a default one, or a new ``hydra.sweep.dir`` (never one given by ``hydra.run.dir``
    or ``resume``)."""
    for name in _NEW_DIRS:
        run_dir, record = Path(name), Path(name) / ".hydra"
        try:
            if {p.name for p in run_dir.iterdir()} - {".hydra", LOCK, SWEEP_RECORD}:
                continue
            if record.exists() and {p.name for p in record.iterdir()} - HYDRA_RECORD:
                continue
            for p in record.glob("*"):
                p.unlink()
            if record.exists():
                record.rmdir()
            (run_dir / LOCK).unlink(missing_ok=True)
            (run_dir / SWEEP_RECORD).unlink(missing_ok=True)
            run_dir.rmdir()
            if name not in _GIVEN:
                run_dir.parent.rmdir()  # outputs/DATE/ when this was its only run (not empty: stays)
            _drop_empty_parents(run_dir.parent, _MADE_FROM.get(name))
        except OSError:
            continue


def _drop_empty_parents(folder: Path, top) -> None:
    """The folders above a dropped run directory up to ``top`` (``outputs/``, when this process
    made it), where they are empty."""
    if top is None or folder == Path(top) or Path(top) not in folder.parents:
        return
    for parent in folder.parents:
        if parent == Path(top).parent:
            break
        try:
            parent.rmdir()
        except OSError:
            break


def start_time(pattern: str) -> str:
    """``${tf_now:PATTERN}``: the run's start time. Every rank of a torchrun or SLURM run
    resolves rank 0's (``TRAINFORGE_NOW``, agreed before Hydra starts), so all ranks name
    the same run directory; otherwise the clock, as Hydra's ``${now:}``."""
    agreed = os.environ.get(NOW)
    moment = datetime.datetime.fromtimestamp(float(agreed)) if agreed else datetime.datetime.now()
    return moment.strftime(pattern)


def hydra_record(output_dir: str):
    """``hydra.output_subdir``: where Hydra records the composition (config, hydra,
    overrides): ``.hydra`` in a new run directory; none in one that already holds a run, so
    a resume keeps the record of how the run was started (the resume's own overrides are in
    its checkpoint, its final config in ``config.yaml``) and a run refused there changes
    nothing. A new directory is locked first (``RunLock.take_early``): of two runs started
    at once on it, only the one that will train writes the record."""
    if holds_run(output_dir):
        return None
    return HYDRA_DIR if RunLock.take_early(output_dir) else None


OmegaConf.register_new_resolver("tf_run_dir", run_dir_for, replace=True)
OmegaConf.register_new_resolver("tf_sweep_dir", lambda path: _new_dir(str(path)), replace=True)
OmegaConf.register_new_resolver("tf_hydra_record", hydra_record, replace=True)
OmegaConf.register_new_resolver("tf_now", start_time, use_cache=True, replace=True)


def one_line(exc: BaseException) -> str:
    """Condense a config or user error (and its causes) into one readable line."""
    chain, seen = [], exc
    while seen is not None and seen not in chain:  # chains can loop (raise ... from None)
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, TrainforgeError):
            return str(err)
    for err in chain:  # OmegaConf errors know the full key: name it first
        key = getattr(err, "full_key", None)
        msg = getattr(err, "msg", None)
        if key and msg:
            return f"{key}: {msg.splitlines()[0]}{_did_you_mean(err, key)}"
    text = str(exc)
    missing = re.search(r"Could not find '([^']+)'", text)
    if missing:
        group, _, choice = missing.group(1).rpartition("/")
        options = [o.strip() for o in re.findall(r"^\t(\S+)$", text, re.M)]
        options = [o for o in options if not o.endswith("_schema")]
        if group:
            return f"{group}={choice}: no such option; available: {', '.join(options) or 'none'}"
        return f"config '{choice}' not found"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def _did_you_mean(err, full_key: str) -> str:
    """For an unknown key of a schema-typed node: the closest key a schema declares; of a
    node of the user's (a ``_target_`` without a schema): the closest argument of its callable."""
    from trainforge.config import SCHEMAS
    from trainforge.config.rules import closest

    kind = getattr(err, "object_type", None)
    if not str(getattr(err, "msg", "")).startswith("Key '"):
        return ""
    parent, _, _ = str(full_key).rpartition(".")
    if dataclasses.is_dataclass(kind):
        known = [f"{parent + '.' if parent else ''}{f.name}" for f in dataclasses.fields(kind)]
    else:
        known = [f"{parent}.{name}" for name in _arguments(getattr(err, "parent_node", None))]
    if not parent:  # the root: a key may have lost its group
        known += [f"{g}.{f.name}" for g, opts in SCHEMAS.items() for node in opts.values()
                  for f in dataclasses.fields(node)]
    close = closest(str(full_key), known)
    return f"; did you mean {close}?" if close else ""


def _arguments(node) -> list:
    """The argument names of the callable a config node's ``_target_`` names (none if it has none)."""
    from trainforge.config.targets import locate, parameters

    try:
        return list(parameters(locate("", node["_target_"]))[0]) if node is not None and "_target_" in node else []
    except Exception:  # noqa: BLE001 - only a hint: the error itself is reported anyway
        return []


def guarded(main) -> None:
    """Run a ``@hydra.main`` function; print user errors as one line and exit 2.

    Unexpected errors (crashes) print one line saying where their traceback is (the run's
    ``training.log``) and exit 1, unless the user set ``HYDRA_FULL_ERROR=1``, which shows
    every traceback as Hydra does.
    """
    from trainforge.distributed.ranks import env_rank
    from trainforge.distributed.launch import agree_start_time

    agree_start_time()  # torchrun / SLURM ranks: one run directory for all
    quiet = env_rank() != 0  # rank 0 alone prints
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    stderr = sys.stderr
    if not (full or multirun):  # a single run's failure needs no "Error executing job" preamble
        sys.stderr = _DropPreamble(stderr)
    try:
        no_credentials(sys.argv[1:])
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # trainforge --cfg job | head: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything at the door
        if full:
            raise
        if quiet:
            sys.exit(1 if not isinstance(exc, USER_ERRORS) else getattr(exc, "exit_code", 2))
        if isinstance(exc, USER_ERRORS):
            drop_refused_run_dirs()
            if not isinstance(exc, (SweepFailed, SweepStopped)):  # refused before any job ran
                restore_sweep_records()
        if isinstance(exc, ValueError) and str(exc).startswith("Only one of --run, --multirun"):
            print(f"trainforge: error: {exc}", file=stderr)  # Hydra's own usage error (-m with --cfg)
            sys.exit(2)
        if isinstance(exc, OSError) and exc.filename and not isinstance(exc, USER_ERRORS):
            # raised before the run (Hydra making hydra.run.dir where a file is, say): no bug of ours
            print(f"trainforge: error: {exc.filename}: {exc.strerror or exc}", file=stderr)
            sys.exit(2)
        broken = yaml_syntax_error(exc)
        if broken:  # a config file that is no YAML: bad input, not a crash
            print(f"trainforge: error: {broken}", file=stderr)
            sys.exit(2)
        if not isinstance(exc, USER_ERRORS):  # a crash: say what and where its traceback is
            where = getattr(exc, "training_log", None)
            hint = f"traceback in {where}" if where else "HYDRA_FULL_ERROR=1 shows the traceback"
            print(f"trainforge: crashed: {type(exc).__name__}: {one_line(exc)} ({hint})", file=stderr)
            sys.exit(1)
        kind = "stopped" if getattr(exc, "exit_code", None) == Preempted.EXIT_CODE else "error"
        print(f"trainforge: {kind}: {one_line(exc)}", file=stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    finally:
        sys.stderr = stderr


def no_credentials(argv) -> None:
    """A URI with ``user:secret@`` in an override is refused before Hydra records the
    overrides in ``.hydra/`` (the value shown without it)."""
    from trainforge.config.rules import fail

    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and re.search(r"://[^/@\s]+@", value):
            raise fail(key.lstrip("+~"), value, "no credentials on the command line (Hydra records every override): "
                       "set them in the environment (MLflow: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                       "or MLFLOW_TRACKING_TOKEN)")


def yaml_syntax_error(exc: BaseException):
    """``FILE:LINE:COLUMN: YAML syntax error: ...`` for a YAML error in ``exc``'s chain, else None."""
    import yaml

    seen, visited = exc, set()
    while seen is not None and id(seen) not in visited and not isinstance(seen, yaml.YAMLError):
        visited.add(id(seen))  # a chain may loop back on itself
        seen = seen.__cause__ or seen.__context__
    if not isinstance(seen, yaml.YAMLError):
        return None
    mark = getattr(seen, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "a config file"
    what = ", ".join(filter(None, [getattr(seen, "context", None), getattr(seen, "problem", None)])) or str(seen)
    context = getattr(seen, "context_mark", None)
    opened = f" (opened at {context.line + 1}:{context.column + 1})" if context is not None and mark is not None \
        and (context.line, context.column) != (mark.line, mark.column) else ""
    return f"{where}: YAML syntax error: {what}{opened}"


class _DropPreamble:
    """stderr minus Hydra's "Error executing job with overrides" line."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def task(cfg):
    """The Hydra task function of ``trainforge`` and ``train.py`` (a sweep pickles it by name)."""
    from trainforge.config import validate

    validate(cfg)  # a refused config fails in a second, before torch is imported
    from trainforge.run.train import run

    return run(cfg, validated=True)


def train_command() -> None:
    """``trainforge [overrides]``: Hydra's command line over the packaged configs (``-m``,
    ``--cfg``, ``--help``, ``--config-dir``, ...), user errors as one line."""
    import hydra

    from trainforge.config.targets import install

    user_folders_importable(sys.argv[1:])
    install()  # a node naming another _target_ replaces the one it lands on
    checked_show_cfg()
    guarded(hydra.main(config_path="pkg://trainforge.conf", config_name="train", version_base="1.3")(task))


def checked_show_cfg() -> None:
    """``--cfg job`` (or ``all``) prints the composed config as Hydra does, then puts it
    through the door: a config that would be refused says so, in one line after the print,
    and exits 2."""
    from hydra._internal.hydra import Hydra

    if getattr(Hydra.show_cfg, "trainforge", False):
        return
    show = Hydra.show_cfg

    def show_and_check(self, config_name, overrides, cfg_type, package, resolve=False):
        show(self, config_name, overrides, cfg_type, package, resolve)
        if cfg_type in ("job", "all"):
            from hydra.types import RunMode

            from trainforge.config import validate

            sys.stdout.flush()
            cfg = self.compose_config(config_name=config_name, overrides=overrides, run_mode=RunMode.RUN,
                                      with_log_configuration=False)
            validate(self.get_sanitized_cfg(cfg, "job"))

    show_and_check.trainforge = True
    Hydra.show_cfg = show_and_check


def user_folders_importable(argv) -> list:
    """Your classes import without PYTHONPATH: the working directory, and the folder that
    holds each ``--config-dir``, go first on ``sys.path`` and ``PYTHONPATH``. Returns them."""
    from trainforge.config.sources import importable

    folders = [os.getcwd()]
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg in ("--config-dir", "-cd") and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--config-dir=") else None
        if value:
            folders.append(str(Path(value).expanduser().resolve().parent))
    return importable(folders)

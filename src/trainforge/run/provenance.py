"""Where a run came from: ``provenance.json``, written when the run opens.

The command line and working directory, the code (for the user's project, the working
directory's git checkout, and for trainforge: commit, branch, a dirty flag and the
uncommitted diff of tracked files in ``provenance.diff``, size capped; else the installed
version), the versions of python, torch, CUDA, cuDNN, hydra and omegaconf, every installed
package, the host (CPU, GPUs), an allowlist of environment variables, and each data file
the config names (size, mtime, a partial hash). No credential is kept: ``user:pass@`` is
stripped from every URI. A resume appends its own record to ``provenance_resumes.jsonl``
and says in one warning line what changed since the last start (code, diff, a package
version, a data file); it refuses nothing (the config-drift rule is the resume's own).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path

from trainforge.files import PROVENANCE as FILE, PROVENANCE_RESUMES as RESUMES

DIFF_CAP = 1_000_000  # bytes of an uncommitted diff kept
HASHED = 1 << 20  # a data file's partial hash: its size, first and last MiB
ENV = ("CUDA_VISIBLE_DEVICES", "PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_JOB_ID",
       "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_NTASKS")
ENV_PREFIXES = ("TRAINFORGE_",)
CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
OPENED = "opened:"  # data_files keys of the files a data option opened (not named by a data.* key)
SWEEP_ENV = "TRAINFORGE_SWEEP_DIR"  # a sweep job's sweep root (its record: the code it was submitted with)
_hashes: dict = {}  # (path, size, mtime) -> partial hash, per process


def strip_credentials(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://host``."""
    return CREDENTIALS.sub(r"\1", text)


def git_state(folder: Path) -> dict | None:
    """commit, branch, dirty and the diff of tracked files of the checkout holding ``folder``."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    diff = git("diff", "HEAD").stdout
    return {"root": git("rev-parse", "--show-toplevel").stdout.strip(), "commit": head.stdout.strip(),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip(), "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None, "diff": diff}


def code() -> dict:
    """The project's (working directory) and trainforge's git state or installed version."""
    from importlib import metadata

    project = git_state(Path.cwd())
    checkout = Path(__file__).resolve().parents[3]  # src/trainforge/run/: an editable install's checkout
    own = git_state(checkout) if (checkout / "pyproject.toml").is_file() else None
    try:
        version = metadata.version("trainforge")
    except metadata.PackageNotFoundError:
        version = None
    return {"project": project, "trainforge": {"version": version, **(own or {})}}


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for name in ("hydra", "omegaconf"):
        out[name] = getattr(sys.modules.get(name) or __import__(name), "__version__", None)
    return out


def packages() -> list:
    from importlib import metadata

    return sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]},
                  key=str.lower)


def host() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    driver = Path("/proc/driver/nvidia/version")
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "gpus": gpus, "driver": driver.read_text().splitlines()[0] if driver.is_file() else None}


def environment() -> dict:
    return {k: strip_credentials(v) for k, v in sorted(os.environ.items())
            if k in ENV or k.startswith(ENV_PREFIXES)}


def data_files(cfg) -> dict:
    """Each existing file a ``data`` key names: size, mtime and a partial hash."""
    from omegaconf import OmegaConf

    found = {}
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, str) and value and Path(value).expanduser().is_file():
                found[f"{prefix}{key}"] = file_print(Path(value).expanduser())

    walk(OmegaConf.to_container(cfg.data, resolve=True), "data.")
    return found


def file_print(path: Path) -> dict:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _hashes:
        h = hashlib.sha256(str(stat.st_size).encode())
        with open(path, "rb") as f:
            h.update(f.read(HASHED))
            if stat.st_size > 2 * HASHED:
                f.seek(-HASHED, os.SEEK_END)
            h.update(f.read(HASHED))
        _hashes[key] = h.hexdigest()
    return {"path": key[0], "size": stat.st_size, "mtime": stat.st_mtime, "partial_sha256": _hashes[key]}


def collect(cfg, sources) -> dict:
    import datetime

    return {"time": datetime.datetime.now().isoformat(timespec="seconds"),
            "argv": [strip_credentials(a) for a in sys.argv], "cwd": os.getcwd(), "executable": sys.executable,
            "config_sources": sources, "code": code(), "versions": versions(), "host": host(),
            "environment": environment(), "data_files": data_files(cfg), "packages": packages()}


def changes(before: dict, now: dict) -> list:
    """What differs between two records: commits, diffs, package versions, data files."""
    out = []
    for who in ("project", "trainforge"):
        a, b = (r.get("code", {}).get(who) or {} for r in (before, now))
        for key, what in (("commit", "commit"), ("diff_sha256", "uncommitted diff"), ("version", "version")):
            if a.get(key) != b.get(key):
                out.append(f"{who} {what} {str(a.get(key))[:12]} -> {str(b.get(key))[:12]}")
    old = dict(p.split("==", 1) for p in before.get("packages", []) if "==" in p)
    new = dict(p.split("==", 1) for p in now.get("packages", []) if "==" in p)
    out += [f"{n} {old.get(n)} -> {new.get(n)}" for n in sorted(set(old) | set(new), key=str.lower)
            if old.get(n) != new.get(n)]
    a, b = before.get("data_files", {}), now.get("data_files", {})
    out += [f"{k} ({(b.get(k) or a.get(k))['path']})" for k in sorted(set(a) | set(b))
            if not k.startswith(OPENED) and (a.get(k) or {}).get("partial_sha256") != (b.get(k) or {}).get("partial_sha256")]
    return out


def add_opened(record, paths: list) -> list:
    """The files the data option opened that no ``data.*`` key names (an embedded set made in
    ``data.cache_dir``), hashed into this start's record once the data is built (on rank 0,
    also when a parent process wrote the record); a change since the last start's record, one
    warning line (also kept in the record's ``warnings``)."""
    history = records(record.run_dir) if record.writes else []
    if not history:
        return []
    now, before = history[-1], (history[-2] if len(history) > 1 else {})
    named = {v["path"] for v in now.get("data_files", {}).values()}
    found = {f"{OPENED}{p}": file_print(Path(p)) for p in dict.fromkeys(paths) if p not in named and Path(p).is_file()}
    if not found:
        return []
    now.setdefault("data_files", {}).update(found)
    had = {k: v for k, v in before.get("data_files", {}).items() if k.startswith(OPENED)}
    changed = [k[len(OPENED):] for k, v in found.items()
               if had and v["partial_sha256"] != (had.get(k) or {}).get("partial_sha256")]
    lines = [f"Changed since this run's last start: data file {', '.join(changed)} ({RESUMES})"] if changed else []
    now["warnings"] = now.get("warnings", []) + lines
    if len(history) == 1:
        record.text(FILE, json.dumps(now, indent=2, default=str) + "\n")
    else:
        record.text(RESUMES, "".join(json.dumps(r, default=str) + "\n" for r in history[1:]))
    return lines


def write(record, cfg, sources) -> list:
    """This start's record into the run directory (``record``: its RunRecord; nothing where
    it does not write, or a sweep root's writer), and the warning lines it gives (kept in the
    record as ``warnings``): a resume's changes since the last start (its record appended to
    ``provenance_resumes.jsonl``), and a sweep job's changes of code since the sweep started
    its jobs (``TRAINFORGE_SWEEP_DIR``: a SLURM job may start hours after its submission)."""
    if not record.writes:
        return []
    run_dir = record.run_dir
    now = collect(cfg, sources)
    diffs = {who: (now["code"].get(who) or {}).pop("diff", None) for who in ("project", "trainforge")}
    before = records(run_dir)
    last, starts = (before or [None])[-1], len(before)  # starts: the records before this one
    for who, diff in diffs.items():
        if diff:
            name = f"provenance_{who}{'' if not starts else f'_resume{starts}'}.diff"
            record.text(name, diff[:DIFF_CAP])
            now["code"][who]["diff_file"] = name
            now["code"][who]["diff_truncated"] = len(diff.encode()) > DIFF_CAP
    now["warnings"] = warnings(last, now, run_dir)
    if last is None:
        record.text(FILE, json.dumps(now, indent=2, default=str) + "\n")
    else:
        with open(run_dir / RESUMES, "a") as f:
            f.write(json.dumps(now, default=str) + "\n")
    return now["warnings"]


def warnings(last: dict | None, now: dict, run_dir: Path) -> list:
    out = []
    changed = changes(last, now) if last is not None else []
    if changed:
        out.append(f"Changed since this run's last start: {'; '.join(changed)} ({RESUMES})")
    sweep = os.environ.get(SWEEP_ENV)
    submitted = latest(Path(sweep)) if sweep and Path(sweep).resolve() != run_dir.resolve() else None
    if submitted is not None:
        code_only = {k: v for k, v in now.items() if k != "data_files"}  # a job's data may differ by design
        changed = changes({k: v for k, v in submitted.items() if k != "data_files"}, code_only)
        if changed:
            out.append(f"Changed since the sweep started its jobs ({submitted.get('time')}, {sweep}): "
                       f"{'; '.join(changed)}")
    return out


def records(run_dir: Path) -> list:
    """Every start's record, the first one's (``provenance.json``) first."""
    first = run_dir / FILE
    resumes = run_dir / RESUMES
    return ([json.loads(first.read_text())] if first.exists() else []) + \
        ([json.loads(line) for line in resumes.read_text().splitlines() if line] if resumes.exists() else [])


def latest(run_dir: Path) -> dict | None:
    """The last start's record (None for a run without one: new, or made before provenance)."""
    return (records(run_dir) or [None])[-1]

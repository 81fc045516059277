"""One run on N ranks.

Three ways in, one process group out (``engine/distributed.py``):

- ``trainer.devices=N``: the parent (``train.py`` after Hydra composed, validated and
  created the run directory) starts N rank processes of ``python -m trainforge.run.rank``
  with the final config; ranks never re-run the Hydra CLI. The parent forwards SIGTERM,
  SIGINT, SIGUSR1 and SIGUSR2 to every rank, and a rank that fails or dies makes the
  parent kill the others at once (each rank is its own process group, so its DataLoader
  workers go with it) and record that rank's error.
- ``torchrun --nproc_per_node=N train.py ...`` and a SLURM step of N tasks: every rank
  composes, but ``agree_start_time`` (called before Hydra) makes them agree on rank 0's
  clock, so they all resolve the same run directory; only rank 0 writes ``.hydra/``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainforge.distributed import signals
from trainforge.distributed.ranks import LAUNCHED, NOW, env_ranks, launched_by_parent
from trainforge.errors import Preempted, RankFailed, TrainforgeError
from trainforge.files import read_status, write_failed_over


def process_count(devices, device: str) -> int:
    """Ranks to start for ``trainer.devices``: N, or ``auto`` = every GPU visible to the job
    (1 when the run is on the CPU or no GPU is visible)."""
    if str(devices) != "auto":
        return int(devices)
    if device == "cpu" or not os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip():
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def on_gpu(device) -> bool:
    """Whether ranks on ``trainer.device`` run on GPUs (nccl) or CPUs (gloo)."""
    if str(device) == "auto":
        import torch

        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def agree_start_time() -> None:
    """Under torchrun or a SLURM step: rank 0's start time for every rank (``${tf_now:}``
    in conf/train.yaml), and no ``.hydra/`` writes on the other ranks. Call before Hydra."""
    ranks = env_ranks()
    if ranks is None or launched_by_parent() or os.environ.get(NOW):
        return
    from trainforge.distributed import group as dist

    store = dist.store()
    if ranks["rank"] == 0:
        store.set("trainforge/now", repr(time.time()))
    os.environ[NOW] = store.get("trainforge/now").decode()
    if ranks["rank"] != 0:
        sys.argv.append("hydra.output_subdir=null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cfg_yaml: str, run_dir: Path, overrides: list, ckpt_path, n: int, on_gpu: bool, log, sources=None) -> None:
    """Train in ``n`` rank processes and wait for them. Returns when every rank finished;
    raises ``Preempted`` when they stopped on a signal, the failing rank's error otherwise
    (after writing FAILED into status.json if no rank recorded the end)."""
    workdir = Path(tempfile.mkdtemp(prefix="trainforge-ranks-"))
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"config": cfg_yaml, "run_dir": str(run_dir), "overrides": overrides,
                                "resume": str(ckpt_path) if ckpt_path else None, "sources": sources}))
    port, visible = _free_port(), _visible_gpus() if on_gpu else None
    previous: dict = {}
    with signals.blocked():  # the ranks begin with stop signals held back, until they can defer them
        procs = [_start_rank(r, n, port, visible, spec, workdir) for r in range(n)]
        forward = _forwarder(procs, previous)
        previous.update(signals.take(forward))  # what arrived so far is delivered on leaving the block
    log.info("Launched %d ranks (pids %s)", n, ", ".join(str(p.pid) for p in procs))
    signals.replay(forward)  # what arrived before the ranks existed
    try:
        codes = _wait(procs, run_dir=run_dir)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        _conclude(codes, workdir, run_dir, previous, log)
    finally:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()


def call_on_ranks(target: str, kwargs: dict, n: int, on_gpu: bool):
    """``module:function(**kwargs)`` in ``n`` rank processes (one process group, which the
    function joins); returns rank 0's result (JSON). ``trainforge eval``/``predict`` with
    ``trainer.devices=N``. A rank that fails takes the others down and its one line is
    raised here; a stop signal to this process ends every rank (nothing to save)."""
    workdir = Path(tempfile.mkdtemp(prefix="trainforge-ranks-"))
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"call": target, "kwargs": kwargs}))
    port, visible = _free_port(), _visible_gpus() if on_gpu else None
    procs: list = []
    previous = signals.take(_interrupt)
    try:
        procs.extend(_start_rank(r, n, port, visible, spec, workdir) for r in range(n))
        codes = _wait(procs)
        if all(c == 0 for c in codes):
            return json.loads((workdir / "result.json").read_text())
        rank = next(r for r, c in enumerate(codes) if c != 0)
        text = workdir / f"rank{rank}.txt"
        why = text.read_text().strip().split("\n")[0] if text.exists() else f"exit code {codes[rank]}"
        raise (TrainforgeError if codes[rank] == 2 else RankFailed)(f"rank {rank}: {why}" if codes[rank] != 2 else why)
    finally:
        _kill_groups(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _visible_gpus() -> list:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _start_rank(r: int, n: int, port: int, visible, spec: Path, workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), **{LAUNCHED: "1"})
    for key in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        env.pop(key, None)  # our ranks, not the scheduler's
    if visible is not None:  # each rank sees the job's GPUs and takes cuda:<local rank>
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible)
    # rank 0 shows its output (log lines, progress bar); the others' go to a file the
    # parent copies into training.log if the run fails (their loader workers' noise included)
    err = None if r == 0 else open(workdir / f"rank{r}.stderr", "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "trainforge.run.rank", str(spec), str(workdir)], env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL if r else None, stderr=err)
    finally:
        if err is not None:
            err.close()


def _forwarder(procs, previous: dict):
    """Pass a stop signal on to every rank (they agree on the step, save once, exit 75).
    A second one of the same kind is not passed on: the handler from before gets it, as in
    a single process (a sweep job's submitit handler ignores it, so the sweep's repeated
    SIGTERM cannot kill a saving rank); where that is the default, the ranks are killed now."""
    sent = set()

    def forward(signum, frame):
        if signum not in sent:
            sent.add(signum)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)
            return
        handler = previous.get(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, frame)
            return
        _kill_groups(procs)

    return forward


def _kill_groups(procs) -> None:
    """SIGKILL every rank's process group: the rank and its DataLoader workers."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait(procs, grace_s: float = 10.0, run_dir=None) -> list:
    """Wait for every rank; the first one to fail (not 0, not 75) takes the others down.
    A user error (exit 2) is one every rank reaches at the same step: the others get
    ``grace_s`` to end on their own (rank 0 records the run's end); so does a failure
    once rank 0 has recorded the run COMPLETED (a rank crashing in its teardown)."""
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0, Preempted.EXIT_CODE)]
        if all(c is not None for c in codes) or (failed and failed[0] != 2 and not _completed(run_dir)):
            break
        if failed:
            deadline = deadline or time.time() + grace_s
            if time.time() > deadline:
                break
        time.sleep(0.05)
    _kill_groups(procs)  # ranks still running, and the loader workers of any rank
    for p in procs:
        p.wait()
    return codes


def _completed(run_dir) -> bool:
    """Whether rank 0 recorded the run COMPLETED in status.json."""
    return run_dir is not None and read_status(run_dir).get("status") == "COMPLETED"


def _conclude(codes, workdir: Path, run_dir: Path, previous: dict, log) -> None:
    if all(c == 0 for c in codes):
        return
    if codes[0] == 0 and _completed(run_dir):  # trained and recorded: a rank crashed in its teardown
        why = ", ".join(f"rank {r} ended with {signal.Signals(-c).name if c < 0 else f'exit code {c}'}"
                        for r, c in enumerate(codes) if c != 0)
        log.warning("%s after the run completed (in its teardown; the results are rank 0's and complete)", why,
                    extra={"console": False})
        return
    errors, tracebacks = {}, {}
    for r in range(len(codes)):
        if (workdir / f"rank{r}.txt").exists():
            errors[r], _, tracebacks[r] = (workdir / f"rank{r}.txt").read_text().strip().partition("\n")
    if all(c == Preempted.EXIT_CODE for c in codes):
        err = Preempted(errors.get(0, "preempted"))
        name = next((n for n in signals.NAMES if f"by {n}" in str(err)), None)
        handler = previous.get(getattr(signal, name or "", None))
        if callable(handler) and handler is not signal.default_int_handler:
            handler(getattr(signal, name), None)  # e.g. submitit's requeue, as PreemptionHook.hand_on
        raise err
    rank = next(r for r, c in enumerate(codes) if c not in (None, 0, Preempted.EXIT_CODE))
    code = codes[rank]
    why = errors.get(rank) or (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
    line = f"rank {rank}: {why}" if len(codes) > 1 else why
    if tracebacks.get(rank):
        log.error("rank %d failed: %s\n%s", rank, why, tracebacks[rank], extra={"console": False})
        line += " (traceback in training.log)"
    else:
        log.error("%s", line, extra={"console": False})
    for r in range(1, len(codes)):
        stderr = workdir / f"rank{r}.stderr"
        if stderr.exists() and stderr.stat().st_size:
            log.error("rank %d stderr:\n%s", r, stderr.read_text(errors="replace")[-20000:], extra={"console": False})
    status = read_status(run_dir)
    # a rank killed by a signal wrote nothing; rank 0 may have recorded what followed (its peer gone)
    if status.get("status") in (None, "RUNNING") or code < 0:
        write_failed_over(run_dir, status, line, failed_rank=rank, exit_codes=codes)
    if code == 2:
        raise TrainforgeError(errors.get(rank, line))
    raise RankFailed(line)

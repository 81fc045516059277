"""A rank process of ``trainer.devices=N``: ``python -m trainforge.run.rank SPEC WORKDIR``.

The parent (``distributed/launch.py``: ``spawn``) composed, validated and opened the run;
each rank trains the parent's final config and reports its one-line outcome in
``WORKDIR/rank<r>.txt``, which the parent alone prints. A spec with ``call``
(``launch.call_on_ranks``: ``trainforge eval``/``predict`` on N ranks) runs that function.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from trainforge.distributed import signals
from trainforge.distributed.ranks import env_rank
from trainforge.errors import TrainforgeError


def rank_main(spec_path: str, workdir: str) -> int:
    """A rank started by ``spawn`` (train the parent's config) or ``call_on_ranks`` (call a
    function); the one-line outcome goes to ``workdir/rank<r>.txt`` for the parent, which alone prints."""
    from trainforge.distributed import group as dist

    spec = json.loads(Path(spec_path).read_text())
    rank = env_rank()
    try:
        if "call" in spec:
            _call(spec, rank, workdir)
        else:
            _train(spec)
        return 0
    except BaseException as e:  # noqa: BLE001 - every outcome is reported to the parent
        return _report(e, rank, workdir)
    finally:
        dist.cleanup()


def _train(spec: dict) -> None:
    from omegaconf import OmegaConf

    from trainforge.run.train import run

    cfg = OmegaConf.create(spec["config"])
    if spec["resume"]:
        cfg.resume = spec["resume"]
    with signals.deferred():  # a stop signal while starting waits for PreemptionHook.arm
        signals.let_in()  # the parent started this rank with them held back
        run(cfg, run_dir=spec["run_dir"], overrides=spec["overrides"], validated=True, sources=spec.get("sources"))


def _call(spec: dict, rank: int, workdir: str) -> None:
    """``module:function(**kwargs)`` (launch.call_on_ranks); rank 0's result goes to ``result.json``."""
    import importlib

    module, _, name = spec["call"].partition(":")
    result = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    if rank == 0:
        Path(workdir, "result.json").write_text(json.dumps(result, default=str))


def _report(e: BaseException, rank: int, workdir: str) -> int:
    """The rank's one-line outcome (a user error) or its traceback, for the parent; the exit code."""
    if isinstance(e, TrainforgeError):
        Path(workdir, f"rank{rank}.txt").write_text(str(e))
        return getattr(e, "exit_code", 2)
    Path(workdir, f"rank{rank}.txt").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    return 1


if __name__ == "__main__":
    code = rank_main(sys.argv[1], sys.argv[2])
    import logging

    logging.shutdown()  # training.log written out; then no interpreter teardown, where C++ threads
    sys.stdout.flush()  # of torch (gloo) have aborted a finished rank ("terminate called without an
    sys.stderr.flush()  # active exception", SIGABRT), now and then, after the run had completed
    os._exit(code)

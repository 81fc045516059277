"""Stop signals other than SIGTERM save and exit 75; a second one of the same kind is not caught."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SMALL
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.errors import Preempted


# ---- signals ----
def start(env, tmp_path, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_text(path, text, proc, timeout=120):
    deadline = time.time() + timeout
    while not (path.exists() and text in path.read_text()):
        assert proc.poll() is None, "the run ended before the signal"
        assert time.time() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("name", ["SIGINT", "SIGUSR1"])
def test_sigint_and_sigusr1_save_and_exit_75(env, tmp_path, name):
    run = tmp_path / "run"
    proc = start(env, tmp_path, *SMALL, "trainer.epochs=50", f"hydra.run.dir={run}")
    wait_for_text(run / "training.log", "(3/8)", proc)
    proc.send_signal(getattr(signal, name))
    assert proc.wait(timeout=120) == Preempted.EXIT_CODE
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and name in err[0] and "latest_checkpoint.pth" in err[0]
    assert json.loads((run / "status.json").read_text())["status"] == "PREEMPTED"
    ckpt = load_checkpoint(run / "latest_checkpoint.pth")
    assert ckpt["epoch"] < 50 and "Traceback" not in (run / "training.log").read_text()


def test_a_second_signal_of_the_same_kind_is_not_caught(env, tmp_path):
    run = tmp_path / "run"
    # one accumulation window per epoch: after the first signal the run still has most of the window to go
    # (96 px: batch lines reach training.log up to a second late; the window must outlast that)
    proc = start(env, tmp_path, "data.num_samples=800", "data.image_size=96", "trainer.grad_accum=40",
                 "log.progress=false", f"hydra.run.dir={run}")
    wait_for_text(run / "training.log", "(2/40)", proc)
    proc.send_signal(signal.SIGUSR1)
    wait_for_text(run / "training.log", "SIGUSR1 received", proc)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == -signal.SIGUSR1  # the default action: the process is gone at once

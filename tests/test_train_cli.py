"""train.py as a user runs it: overrides on the command line, results read from the run dir."""
from __future__ import annotations

import csv
import datetime
import json
import math
import re
import subprocess
import sys

import pytest

import numpy as np

from conftest import ROOT, SMALL, contract, write_h5

BATCH_LINE = re.compile(r"Epoch \[\d+/\d+\] - Progress [\d.]+% \(\d+/\d+\) - Batch Loss: \S+ - LR: \S+")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # CI time: .ci/run runs it
def test_interval_stdout_every_batch_in_log_and_cosine_lr(train, tmp_path):
    run = tmp_path / "run"
    proc = train("scheduler=cosine", "log.interval=20", "trainer.epochs=3", "data.num_samples=800",
                 "data.image_size=32", "log.batch_metrics=true", f"hydra.run.dir={run}")
    batches, epochs = 40, 3  # 640 training samples / 16
    stdout_lines = [ln for ln in proc.stdout.splitlines() if BATCH_LINE.match(ln)]  # whole line
    assert len(stdout_lines) == epochs * (1 + batches // 20)  # the first batch of each epoch, then every 20th
    assert [re.search(r"\((\d+)/40\)", ln).group(1) for ln in stdout_lines] == ["1", "20", "40"] * epochs
    assert [re.search(r"Progress ([\d.]+)%", ln).group(1) for ln in stdout_lines] == ["2.5", "50.0", "100.0"] * epochs
    log_lines = [ln for ln in (run / "training.log").read_text().splitlines() if BATCH_LINE.search(ln)]
    assert len(log_lines) == epochs * batches
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", log_lines[0])  # timestamped

    base, total = 3e-3, epochs * batches
    cosine = lambda s: 0.5 * base * (1 + math.cos(math.pi * s / (total - 1)))  # noqa: E731
    per_step = rows(run / "batch_metrics.csv")
    assert len(per_step) == total
    for s, row in enumerate(per_step):
        assert math.isclose(float(row["lr"]), cosine(s), rel_tol=1e-9, abs_tol=1e-15)
    per_epoch = rows(run / "epoch_metrics.csv")
    assert [int(r["epoch"]) for r in per_epoch] == [1, 2, 3]
    for e, row in enumerate(per_epoch, start=1):  # the LR of the epoch's last update
        assert math.isclose(float(row["lr"]), cosine(e * batches - 1), rel_tol=1e-9, abs_tol=1e-15)
    # each epoch block's ETA: the mean epoch time so far times the epochs left (none after the last)
    times = [float(r["epoch_time"]) for r in per_epoch]
    etas = re.findall(r"ETA: (\S+)", (run / "training.log").read_text())
    assert etas == [str(datetime.timedelta(seconds=round(sum(times[:e]) / e * (epochs - e))))
                    for e in range(1, epochs + 1)]
    assert etas[-1] == "0:00:00"
    assert contract(run, batch_metrics=True) == []


@pytest.mark.slow  # CI time: test_door's refused-run test starts seven runs at once, each in its own directory
def test_two_runs_started_together_get_different_directories(env, tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), *SMALL, "trainer.epochs=1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    run_dirs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/status.json"))
    assert len(run_dirs) == 2
    assert [json.loads((r / "status.json").read_text())["status"] for r in run_dirs] == ["COMPLETED"] * 2
    assert [contract(r) for r in run_dirs] == [[], []]


@pytest.mark.slow  # CI time: the launcher tests check each job's run dir and summary.csv
def test_sweep_gives_one_full_run_dir_per_job_and_a_summary(train, tmp_path):
    train("-m", "loss=focal,hybrid", *SMALL, "trainer.epochs=1")
    sweeps = list(tmp_path.glob("multirun/*/*"))
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    hybrid = rows(jobs[1] / "epoch_metrics.csv")[0]
    for part in ("focal_loss", "dice_loss", "bce_loss"):
        assert f"train_{part}" in hybrid and f"val_{part}" in hybrid
    assert "train_focal_loss" not in rows(jobs[0] / "epoch_metrics.csv")[0]
    summary = rows(sweeps[0] / "summary.csv")
    assert [r["status"] for r in summary] == ["COMPLETED", "COMPLETED"]
    assert "loss=hybrid" in summary[1]["overrides"]
    assert [contract(job) for job in jobs] == [[], []]


def test_existing_run_directory_is_never_overwritten(train, train_here, tmp_path):
    run = tmp_path / "run"
    train(*SMALL, "trainer.epochs=1", "seed=1", f"hydra.run.dir={run}")

    def files():  # every file, Hydra's record in .hydra/ included
        return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}

    before = files()
    assert ".hydra/overrides.yaml" in before
    proc = train(*SMALL, "trainer.epochs=1", "seed=2", f"hydra.run.dir={run}", check=False)
    assert proc.returncode != 0
    assert "already holds a run" in proc.stderr and str(run) in proc.stderr
    assert files() == before
    other = tmp_path / "other"  # a resume of another run continues there, never here
    train_here(other, *SMALL, "trainer.epochs=1")
    proc = train(f"resume={other}", "trainer.epochs=2", f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 2 and "already holds another run" in proc.stderr and f"resume={other}" in proc.stderr
    assert files() == before
    # a resume refused while building (after the checkpoint loaded: here the data file it names
    # has no images) changes none of the run's files and keeps its status COMPLETED; only the
    # lock's holder stamp (.trainforge.lock) is rewritten
    write_h5(tmp_path / "nokeys.h5", pictures=np.zeros((4, 1, 8, 8), np.float32))
    proc = train(f"resume={run}", "trainer.epochs=2", f"data.path={tmp_path / 'nokeys.h5'}", check=False)
    assert proc.returncode == 2 and "nokeys.h5" in proc.stderr, proc.stderr
    after = files()
    after.pop(".trainforge.lock"), before.pop(".trainforge.lock")
    assert after == before


@pytest.mark.slow  # CI time: .ci/run runs it
def test_default_experiment_reaches_dice_0_8(train, tmp_path):
    """The README's `python train.py`, untouched but for its run dir: Dice >= 0.8."""
    run = tmp_path / "default"
    train(f"hydra.run.dir={run}", "log.progress=false", timeout=600)
    history = json.loads((run / "metrics.json").read_text())
    assert len(history) == 10
    assert max(r["val"]["dice"] for r in history) >= 0.8
    assert history[-1]["val"]["dice"] >= 0.8
    assert contract(run) == []

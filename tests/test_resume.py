"""Exact resume and fault tolerance (issue 3): straight == interrupted + resumed, bitwise."""
from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from trainforge.run.build import build_model
from trainforge.engine.checkpoint import CheckpointManager, load_checkpoint
from trainforge.engine.logging import BatchedFileHandler
from trainforge.errors import CheckpointError, ConfigError, Preempted

DET = ["data.image_size=32", "log.progress=false", "trainer.deterministic=true", "log.batch_metrics=true"]
QUICK = [*DET, "data.num_samples=160"]  # 8 batches an epoch
BATCH = re.compile(r"Epoch \[(\d+)/\d+\] - Progress [\d.]+% \((\d+)/\d+\)")
LONG = [*DET, "data.num_samples=800", "checkpoint.every_n_steps=5"]  # 40 batches an epoch


def final_state(run):
    ckpt = load_checkpoint(run / "latest_checkpoint.pth")
    return ckpt["model"], ckpt["optimizer"]


def assert_same_run(a, b):
    """Bitwise-equal weights and optimizer state; identical epoch and batch histories."""
    (wa, oa), (wb, ob) = final_state(a), final_state(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for sa, sb in zip(oa["state"].values(), ob["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ha, hb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_time"} for r in h]  # noqa: E731
    assert strip(ha) == strip(hb)
    ea, eb = ([{k: v for k, v in r.items() if k != "epoch_time"} for r in csv.DictReader(open(r / "epoch_metrics.csv"))]
              for r in (a, b))
    assert ea == eb and [int(r["epoch"]) for r in eb] == list(range(1, len(eb) + 1))
    ba, bb = ((r / "batch_metrics.csv").read_text() for r in (a, b))
    assert ba == bb  # every batch exactly once, same values


@pytest.mark.slow  # CI time: exact resume at an epoch boundary is test_resume_state's dropout test; workers: sigkill below
@pytest.mark.parametrize("workers", [0, 2])
def test_two_epochs_then_resume_equals_four_straight(train, tmp_path, workers):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*QUICK, f"data.num_workers={workers}"]
    train(*args, "trainer.epochs=4", f"hydra.run.dir={straight}")
    train(*args, "trainer.epochs=2", f"hydra.run.dir={split}")
    proc = train(f"+resume={split}/latest_checkpoint.pth", "trainer.epochs=4")
    assert "Resumed from" in proc.stdout and "trainer.epochs 2 -> 4" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # the resumed run continued in its own directory
    assert_same_run(straight, split)
    assert json.loads((split / "status.json").read_text())["status"] == "COMPLETED"


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.01)


def start(env, tmp_path, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # CI time: .ci/run runs both
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_at_any_moment_then_resume_auto_is_exact(train, train_here, env, tmp_path, workers):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*LONG, "trainer.epochs=2", f"data.num_workers={workers}"]
    train_here(straight, *args)  # the reference, in this process (as train.py runs it, less the start-up)
    proc = start(env, tmp_path, *args, f"hydra.run.dir={killed}")
    wait_for(killed / "latest_checkpoint.pth", proc)
    time.sleep(random.uniform(0.0, 1.0))  # an arbitrary moment after the first mid-epoch save
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    ckpt = load_checkpoint(killed / "latest_checkpoint.pth")
    print(f"killed after epoch {ckpt['epoch']} batch {ckpt['batch_in_epoch']}")
    train("resume=auto", f"hydra.run.dir={killed}")
    assert_same_run(straight, killed)


@pytest.mark.slow  # CI time: .ci/run runs it
def test_sigterm_mid_epoch_saves_marks_preempted_and_resumes_exactly(train, train_here, env, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*DET, "data.num_samples=800", "trainer.epochs=2"]
    train_here(straight, *args)
    # batch lines on stdout (flushed per line; training.log batches its writes), to signal mid-epoch
    shown = [a for a in args if not a.startswith("log.progress")]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *shown, f"hydra.run.dir={stopped}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "(3/40)" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == Preempted.EXIT_CODE
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "SIGTERM" in err[0] and "latest_checkpoint.pth" in err[0]
    status = json.loads((stopped / "status.json").read_text())
    assert status["status"] == "PREEMPTED" and status["exit_code"] == Preempted.EXIT_CODE
    ckpt = load_checkpoint(stopped / "latest_checkpoint.pth")
    assert ckpt["epoch"] == 0 and 3 <= ckpt["batch_in_epoch"] < 40  # mid-epoch, after the step in flight
    proc = train(f"resume={stopped}", "log.interval=20")
    assert_same_run(straight, stopped)
    shown = [tuple(map(int, m.groups())) for m in map(BATCH.search, proc.stdout.splitlines()) if m]
    first = ckpt["batch_in_epoch"] + 1  # the resumed epoch shows its first batch, then every 20th
    assert shown == [(1, b) for b in sorted({first, *range(20, 41, 20)}) if b >= first] + [(2, 1), (2, 20), (2, 40)]


@pytest.mark.slow  # CI time: .ci/run runs it
def test_sigterm_as_soon_as_the_run_is_marked_running_saves_and_resumes_exactly(train, train_here, env, tmp_path):
    """From the moment status.json says RUNNING, a stop signal ends in PREEMPTED with a checkpoint,
    even before the first step (TensorBoard's import widens the time before it)."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*QUICK, "trainer.epochs=1", "log.tensorboard=true"]
    train_here(straight, *args)
    proc = start(env, tmp_path, *args, f"hydra.run.dir={stopped}")
    wait_for(stopped / "status.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == Preempted.EXIT_CODE, stderr
    assert json.loads((stopped / "status.json").read_text())["status"] == "PREEMPTED"
    assert not list(stopped.glob(".*.tmp")) and (stopped / "config.yaml").exists()
    ckpt = load_checkpoint(stopped / "latest_checkpoint.pth")
    assert ckpt["epoch"] == 0 and ckpt["batch_in_epoch"] <= 1
    train(f"resume={stopped}")
    assert_same_run(straight, stopped)


def test_training_log_holds_every_batch_line_a_checkpoint_covers(train_here, tmp_path, monkeypatch):
    """A crash loses no training.log line that the last checkpoint covers: the file is
    flushed before every save (here with the once-a-second flush turned off)."""
    monkeypatch.setattr(BatchedFileHandler, "FLUSH_S", 1e9)
    real, seen = CheckpointManager.save_latest, []

    def save_latest(self, objects, extra):  # the real save, after reading what the file holds
        text = (self.run_dir / "training.log").read_text()
        seen.append((extra["step"], len([ln for ln in text.splitlines() if BATCH.search(ln)])))
        return real(self, objects, extra)

    monkeypatch.setattr(CheckpointManager, "save_latest", save_latest)
    train_here(tmp_path / "run", *QUICK, "checkpoint.every_n_steps=3", "trainer.epochs=2")
    assert [step for step, _ in seen] == [3, 6, 8, 9, 12, 15, 16]  # every 3 steps mid-epoch, and each epoch end
    assert all(lines == step for step, lines in seen), seen


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes)
def test_killed_while_saving_every_step_never_leaves_unloadable_latest(env, tmp_path):
    run = tmp_path / "run"
    args = [*DET, "data.num_samples=800", "checkpoint.every_n_steps=1", "trainer.epochs=1"]
    for attempt in range(4):
        proc = start(env, tmp_path, *args, f"hydra.run.dir={run}", *(["resume=auto"] if attempt else []))
        wait_for(run / "latest_checkpoint.pth", proc)
        time.sleep(random.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        load_checkpoint(run / "latest_checkpoint.pth")  # raises if unloadable
    proc = start(env, tmp_path, *args, f"hydra.run.dir={run}", "resume=auto")
    assert proc.wait(timeout=300) == 0
    assert list(run.rglob(".*.tmp")) == []  # temp files of killed writers are swept up


def test_resume_auto_falls_back_past_a_corrupt_latest(train_here, tmp_path):
    run = tmp_path / "run"
    train_here(run, *QUICK, "trainer.epochs=2")
    latest = run / "latest_checkpoint.pth"
    latest.unlink()  # it is a hard link of the epoch-2 file: cut the link before truncating
    latest.write_bytes(b"\x00" * 100)
    train_here(run, "resume=auto", "trainer.epochs=3")
    log = (run / "training.log").read_text()
    assert "Skipping" in log and "latest_checkpoint.pth" in log
    assert "checkpoint_epoch_002.pth at epoch 3" in log
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2, 3]


def test_a_run_killed_before_its_first_save_says_how_to_start_it_over(train_here, tmp_path):
    run = tmp_path / "run"  # killed while starting: a status, a log line, no checkpoint
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"status": "RUNNING", "pid": 2 ** 22 + 1}))
    (run / "training.log").write_text("Run directory: run\n")
    with pytest.raises(CheckpointError, match=rf"no checkpoint in this run directory .*hydra.run.dir={run} resume=auto"):
        train_here(run, f"resume={run}")
    train_here(run, *QUICK, "trainer.epochs=1", "resume=auto")
    assert json.loads((run / "status.json").read_text())["status"] == "COMPLETED"


def test_resume_from_truncated_file_is_one_line(train, train_here, tmp_path):
    run = tmp_path / "run"
    train_here(run, *QUICK, "trainer.epochs=1")
    bad = run / "checkpoints" / "cut.pth"
    data = (run / "latest_checkpoint.pth").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    proc = train(f"resume={bad}", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and str(bad) in err[0] and "truncated" in err[0]


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_config_drift_is_refused_unless_forced(train, train_here, tmp_path):
    run = tmp_path / "run"
    train_here(run, *QUICK, "trainer.epochs=1")
    proc = train(f"resume={run}", "data.batch_size=8", "loss=dice", "trainer.epochs=2", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1
    assert "data.batch_size 16 -> 8" in err[0] and "loss._target_" in err[0] and "resume_force" in err[0]
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1]
    assert json.loads((run / "status.json").read_text())["status"] == "COMPLETED"  # the run is not relabelled
    train(f"resume={run}", "data.batch_size=8", "trainer.epochs=2", "+resume_force=true")
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]
    with pytest.raises(ConfigError, match=r"trainer.epochs=1: the checkpoint .* resume with trainer.epochs >= 2"):
        train_here(run, f"resume={run}", "trainer.epochs=1")  # fewer epochs than it already ran
    assert "epochs: 2" in (run / "config.yaml").read_text()
    # a forced change of monitor: the best starts over in the new monitor's terms, never mixing the two
    train_here(run, f"resume={run}", "trainer.epochs=3", "checkpoint.monitor=val_loss", "checkpoint.mode=min",
               "checkpoint.top_k=2", "+resume_force=true")
    losses = {r["epoch"]: r["val"]["loss"] for r in json.loads((run / "metrics.json").read_text())}
    best = json.loads((run / "status.json").read_text())["best"]
    assert best == {"monitor": "val_loss", "mode": "min", "value": losses[3], "epoch": 3, "weights": "raw"}
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["monitor"] == "val_loss" and all(e["metric"] == losses[e["epoch"]] for e in index["checkpoints"]
                                                  if e["file"].startswith("checkpoints/"))


def test_warm_start_loads_weights_and_reports_keys(train_here, compose_cfg, tmp_path):
    run = tmp_path / "run"
    train_here(run, *QUICK, "trainer.epochs=1")
    weights = run / "best_model_weights.pt"
    cfg = compose_cfg(f"model.init_weights={weights}")
    model = build_model(cfg.model, warm_start=True)
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    train_here(tmp_path / "ft", *QUICK, "trainer.epochs=1", f"model.init_weights={weights}")
    log = (tmp_path / "ft" / "training.log").read_text()
    assert "Warm start from" in log and "0 missing keys" in log
    wider = compose_cfg(f"model.init_weights={weights}", "model.base_channels=16")
    with pytest.raises(CheckpointError, match="shapes differ"):
        build_model(wider.model, warm_start=True)
    # another model's weights load nothing: refused, also where a frozen encoder would stay untrained
    for args in (["experiment=digits"], ["experiment=seqsetvae_finetune"]):
        with pytest.raises(ConfigError, match=r"model.init_weights=.*none of its \d+ keys"):
            build_model(compose_cfg(*args, f"model.init_weights={weights}").model, warm_start=True)
    encoder = {k: v for k, v in build_model(compose_cfg("experiment=seqsetvae").model, False).state_dict().items()
               if not k.startswith("encoder.")}  # a SeqSetVAE file without its set encoder's weights
    torch.save(encoder, tmp_path / "part.pt")
    with pytest.raises(ConfigError, match=r"no weights for \d+ frozen parameters.*'encoder\."):
        build_model(compose_cfg("experiment=seqsetvae_finetune", f"model.init_weights={tmp_path / 'part.pt'}").model,
                    warm_start=True)


@pytest.mark.slow  # CI time: save-and-exit on a signal is covered above and in test_signals; this adds submitit's requeue
def test_submitit_preemption_requeues_and_continues_exactly(train, env, tmp_path, monkeypatch):
    import submitit

    from conftest import CONF
    from trainforge.run.submit import TrainJob

    straight, job_dir = tmp_path / "straight", tmp_path / "job"
    args = [*LONG, "trainer.epochs=3"]  # slack for the signal to land mid-run on fast machines
    train(*args, f"hydra.run.dir={straight}")
    monkeypatch.setenv("TRAINFORGE_DATA_DIR", env["TRAINFORGE_DATA_DIR"])
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(TrainJob(CONF, args, job_dir))
    deadline = time.time() + 120
    while not (job_dir / "latest_checkpoint.pth").exists():
        assert time.time() < deadline and not job.done(), job.stderr()
        time.sleep(0.01)
    pid = json.loads((job_dir / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGUSR2)  # what SLURM (or submitit at timeout) sends the task
    job.result()
    log = (job_dir / "training.log").read_text()
    assert "SIGUSR2 received" in log and "Resumed from" in log
    assert json.loads((job_dir / "status.json").read_text())["status"] == "COMPLETED"
    assert_same_run(straight, job_dir)


def test_signal_on_the_last_step_of_an_epoch_keeps_that_epoch(compose_cfg, tmp_path):
    """The step in flight finishes; so do that epoch's validation, history row and checkpoint."""
    from trainforge.run.build import build
    from trainforge.engine.trainer import HookBase

    class SignalOnLastStep(HookBase):
        def after_step(self):
            t = self.trainer
            if t.epoch == 0 and t.epoch_done():
                t.request_stop("preempted by SIGTERM", "SIGTERM")

    trainer = build(compose_cfg(*QUICK, "trainer.epochs=3"), tmp_path)
    trainer.hooks.insert(0, SignalOnLastStep())
    trainer.hooks[0].trainer = trainer
    trainer.fit()
    assert [r["epoch"] for r in trainer.history] == [1]
    ckpt = load_checkpoint(tmp_path / "latest_checkpoint.pth")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 0) and len(ckpt["history"]) == 1

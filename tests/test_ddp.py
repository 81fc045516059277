"""DDP (issue 8): one run on N gloo processes behaves like one process with the global batch.

Every test here runs real rank processes on the CPU: ``trainer.devices=2`` (ranks started
after composition), torchrun, and processes given a SLURM step's variables.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, write_h5
from trainforge.data.glint import make_glint
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.errors import ConfigError, Preempted
from trainforge.distributed.ranks import env_ranks, first_host

DET = ["data.image_size=32", "log.progress=false", "trainer.deterministic=true", "log.batch_metrics=true",
       "data.num_samples=160"]  # 128 training samples: 8 global batches of 16 an epoch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "latest_checkpoint.pth")["model"]


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and not any(k.startswith("module.") for k in wa)
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def column(path: Path, name: str) -> list:
    return [float(r[name]) for r in csv.DictReader(open(path))]


def batch_lines(run: Path) -> list:
    return [ln for ln in (run / "training.log").read_text().splitlines() if "Epoch [" in ln and "Progress" in ln]


def assert_matches(ref: Path, run: Path, tol: float = 1e-5) -> None:
    """Weights and every logged loss of ``run`` within ``tol`` of the one-process ``ref``."""
    assert max_weight_diff(ref, run) < tol
    for file, names in (("epoch_metrics.csv", ["train_loss", "train_loss_min", "train_loss_max", "val_loss",
                                                "val_dice"]),
                        ("batch_metrics.csv", ["loss", "grad_norm"])):
        for name in names:
            a, b = column(ref / file, name), column(run / file, name)
            assert len(a) == len(b) and np.allclose(a, b, rtol=0, atol=tol), (file, name)
    assert len(batch_lines(run)) == len(batch_lines(ref))  # one log, each batch once (rank 0 only)


@pytest.mark.slow  # CI time: .ci/run runs it
def test_two_ranks_equal_one_process_with_the_global_batch(train, train_here, env, tmp_path):
    one, spawned = tmp_path / "one", tmp_path / "spawned"
    # and the best checkpoint on the test split (each rank its part), an EMA of the weights validated beside them
    tested = ["trainer.test_after_fit=true", "trainer.ema.decay=0.9", "trainer.ema.validate_with=both"]
    train_here(one, *DET, "trainer.epochs=1", "data.batch_size=16", *tested)  # the one-process reference, in this process
    proc = train(*DET, "trainer.epochs=1", "data.batch_size=8", "trainer.devices=2", *tested, f"hydra.run.dir={spawned}")
    assert "per-rank batch 8, global batch 16" in proc.stdout
    assert_matches(one, spawned)
    status = json.loads((spawned / "status.json").read_text())
    assert status["status"] == "COMPLETED" and status["world_size"] == 2
    test_one, test_two = json.loads((one / "status.json").read_text())["test"], status["test"]
    assert test_one["samples"] == test_two["samples"] == 256
    assert all(abs(test_one["metrics"][k] - test_two["metrics"][k]) < 1e-5 for k in ("loss", "dice", "iou"))
    ema_one, ema_two = (load_checkpoint(r / "latest_checkpoint.pth")["ema"]["module"] for r in (one, spawned))
    assert max((ema_one[k].double() - ema_two[k].double()).abs().max().item() for k in ema_one) < 1e-5
    assert np.allclose(column(one / "epoch_metrics.csv", "val_ema_dice"),
                       column(spawned / "epoch_metrics.csv", "val_ema_dice"), rtol=0, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "spawned"]  # no directory per rank

    # the same under torchrun: every rank composes, all use rank 0's run directory; here with
    # 2 ranks x 2 micro-batches of 4 per update (gradients all-reduced once per window)
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port()}", str(ROOT / "train.py"), *DET, "trainer.epochs=1",
                               "data.batch_size=4", "trainer.grad_accum=2"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr[:3000]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    assert (runs[0] / ".hydra" / "config.yaml").exists()
    assert max_weight_diff(one, runs[0]) < 1e-5
    for name in ("train_loss", "val_loss", "val_dice"):
        assert np.allclose(column(one / "epoch_metrics.csv", name), column(runs[0] / "epoch_metrics.csv", name),
                           rtol=0, atol=1e-5), name
    assert len(batch_lines(runs[0])) == 2 * len(batch_lines(one))  # each micro-batch once (rank 0 only)
    assert torchrun.stdout.count("Epoch [1/1] done") == 1  # rank 0 alone prints


def start(env, cwd, *args, stdout=subprocess.DEVNULL):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def wait_for_line(log: Path, proc, text: str, timeout=240) -> str:
    deadline = time.time() + timeout
    while True:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.slow  # CI time: .ci/run runs it
def test_two_ranks_resume_exactly_also_after_sigterm_to_the_parent(train, env, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*DET, "data.num_samples=320", "data.batch_size=8", "trainer.devices=2"]  # 16 batches a rank
    train(*args, "trainer.epochs=2", f"hydra.run.dir={straight}")

    # training.log is written in blocks: watch rank 0's stdout lines to signal mid-epoch
    lines = [a for a in args if not a.startswith("log.progress")] + ["log.progress=lines"]
    proc = start(env, tmp_path, *lines, "trainer.epochs=2", f"hydra.run.dir={stopped}", stdout=subprocess.PIPE)
    for line in proc.stdout:
        if "Epoch [1/2] - Progress 18.8% (3/16)" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == Preempted.EXIT_CODE, err
    err = err.strip().splitlines()
    assert len(err) == 1 and "SIGTERM" in err[0], err
    assert json.loads((stopped / "status.json").read_text())["status"] == "PREEMPTED"
    log = (stopped / "training.log").read_text()
    assert log.count("Saved ") == 1  # saved once, by rank 0
    ckpt = load_checkpoint(stopped / "latest_checkpoint.pth")
    assert ckpt["epoch"] == 0 and 3 <= ckpt["batch_in_epoch"] < 16 and ckpt["world_size"] == 2
    assert len(ckpt["rng"]["ranks"]) == 2  # every rank's RNG
    train(f"resume={stopped}")
    assert max_weight_diff(straight, stopped) == 0.0
    for name in ("epoch_metrics.csv", "batch_metrics.csv"):  # every row, each batch once
        strip = lambda p: [{k: v for k, v in r.items() if k != "epoch_time"}  # noqa: E731
                           for r in csv.DictReader(open(p / name))]
        assert strip(straight) == strip(stopped)

    # a signal while the ranks are still starting (importing torch, building) waits for them to arm:
    # the run saves after its first step and resumes exactly (it failed with "rank 0: killed by SIGTERM")
    early = tmp_path / "early"
    proc = start(env, tmp_path, *args, "trainer.epochs=2", f"hydra.run.dir={early}")
    wait_for_line(early / "status.json", proc, "RUNNING")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == Preempted.EXIT_CODE, err
    assert json.loads((early / "status.json").read_text())["status"] == "PREEMPTED"
    assert load_checkpoint(early / "latest_checkpoint.pth")["batch_in_epoch"] <= 1
    train(f"resume={early}")
    assert max_weight_diff(straight, early) == 0.0

    # a number of ranks that cannot share the global batch (16) is refused in one line (one that can is
    # test_a_resume_on_another_number_of_ranks...); forced, another batch continues from the global position
    refused = train(f"resume={stopped}", "trainer.devices=3", "trainer.epochs=3", check=False)
    err = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(err) == 1 and "global batch is 16 (8 per rank x 2 ranks)" in err[0], err
    train(f"resume={stopped}/checkpoints/checkpoint_epoch_001.pth", "trainer.devices=1", "+resume_force=true",
          "data.batch_size=16", "trainer.epochs=3")
    assert [int(r["epoch"]) for r in csv.DictReader(open(stopped / "epoch_metrics.csv"))] == [1, 2, 3]


@pytest.mark.slow  # CI time (three 2-rank runs); tools/mutations/run.py runs it for its two patches
def test_seqsetvae_on_two_ranks_resumes_each_ranks_random_stream_and_rank_0_alone_writes(train, tmp_path):
    """SeqSetVAE samples z while training: an exact resume needs every rank's own RNG back.
    collapse.csv gets one row per latent dimension and validation (rank 0 writes)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["experiment=seqsetvae", "data.num_patients=120", "log.progress=false", "trainer.deterministic=true",
            "trainer.devices=2", "trainer.threads=1", "scheduler=none"]  # cosine would stretch when epochs grow
    train(*args, "trainer.epochs=2", f"hydra.run.dir={straight}")
    train(*args, "trainer.epochs=1", f"hydra.run.dir={split}")
    train(f"resume={split}", "trainer.epochs=2")
    assert max_weight_diff(straight, split) == 0.0
    dims = load_checkpoint(split / "latest_checkpoint.pth")["model"]["z_in.weight"].shape[1]  # latent_dim
    for run in (straight, split):
        assert [int(r["epoch"]) for r in csv.DictReader(open(run / "collapse.csv"))] == [1] * dims + [2] * dims
        assert [int(r["epoch"]) for r in csv.DictReader(open(run / "epoch_metrics.csv"))] == [1, 2]


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(train, tmp_path):
    images, masks = make_glint(160, 32)
    images[5, 0, 3, 3] = np.nan  # unshuffled, rank 1 alone draws sample 5 (ranks take every other sample)
    path = write_h5(tmp_path / "nan.h5", images=images, masks=masks)
    run = tmp_path / "run"
    started = time.time()
    proc = train(*DET, f"data.path={path}", "data.shuffle=false", "data.batch_size=8", "trainer.devices=2",
                 "trainer.epochs=2", "trainer.ddp_timeout=60", f"hydra.run.dir={run}", check=False)
    assert time.time() - started < 60  # no rank waited for the timeout
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(err) == 1 and "non-finite loss" in err[0] and "batch 1," in err[0], err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "FAILED" and "non-finite" in status["error"]
    assert not (run / "latest_checkpoint.pth").exists()


def rank_pids(log: Path) -> list:
    line = next(ln for ln in log.read_text().splitlines() if "Launched 2 ranks" in ln)
    return [int(p) for p in line.split("pids ")[1].rstrip(")").split(", ")]


def test_a_rank_killed_mid_epoch_fails_the_run_and_leaves_no_process(env, tmp_path):
    run = tmp_path / "run"
    proc = start(env, tmp_path, *DET, "data.num_samples=800", "data.batch_size=8", "trainer.devices=2",
                 "trainer.epochs=3", "data.num_workers=1", "trainer.ddp_timeout=30", f"hydra.run.dir={run}")
    wait_for_line(run / "training.log", proc, "(3/40)")
    pids = rank_pids(run / "training.log")
    os.kill(pids[1], signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and "rank 1: killed by SIGKILL" in err[0], err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "FAILED" and status["error"] == "rank 1: killed by SIGKILL", status
    assert "rank 1: killed by SIGKILL" in (run / "training.log").read_text()
    deadline = time.time() + 10  # SIGKILLed processes linger as zombies until they are reaped
    for pid in pids:  # each rank led its own process group, its loader workers included
        while True:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            assert time.time() < deadline, f"process group {pid} survived"
            time.sleep(0.1)


def test_a_rank_crashing_after_the_run_completed_does_not_fail_it(tmp_path, trainforge_log):
    """A rank aborted in its teardown (torch's gloo threads, now and then) after rank 0 recorded
    COMPLETED: the run stands, training.log says so; before that, the run fails."""
    import logging

    from trainforge.errors import RankFailed
    from trainforge.distributed.launch import _conclude
    from trainforge.run.train import write_status

    log = logging.getLogger("trainforge")
    write_status(tmp_path, "COMPLETED", epoch=2)
    _conclude([0, -signal.SIGABRT], tmp_path, tmp_path, {}, log)
    assert any("rank 1 ended with SIGABRT after the run completed" in m for m in trainforge_log)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "COMPLETED"
    write_status(tmp_path, "RUNNING")
    with pytest.raises(RankFailed, match="rank 1: killed by SIGABRT"):
        _conclude([None, -signal.SIGABRT], tmp_path, tmp_path, {}, log)
    assert json.loads((tmp_path / "status.json").read_text())["error"] == "rank 1: killed by SIGABRT"


def test_processes_with_slurm_variables_train_as_one_run(env, tmp_path):
    port, procs = free_port(), []
    for rank in (0, 1):
        slurm = dict(env, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                     SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), *DET, "trainer.epochs=1",
                                       "data.batch_size=8"], cwd=tmp_path, env=slurm, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1
    assert json.loads((runs[0] / "status.json").read_text())["world_size"] == 2
    assert len(batch_lines(runs[0])) == 8 and outs[1][0] == ""  # 8 global batches, logged by rank 0 alone
    # the record says how many ranks trained (a resume without SLURM starts as many)
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["trainer"]["devices"] == 2


def test_trainer_devices_under_torchrun_or_slurm_is_the_ranks_or_refused(compose_cfg):
    from trainforge.run.train import _devices_are_the_ranks

    for given in ("1", "auto", "2"):
        cfg = compose_cfg(f"trainer.devices={given}")
        _devices_are_the_ranks(cfg, 2)
        assert cfg.trainer.devices == 2
    with pytest.raises(ConfigError, match=r"trainer.devices=3: this process is one of 2 ranks .* set it to 2"):
        _devices_are_the_ranks(compose_cfg("trainer.devices=3"), 2)


def test_rank_environment(monkeypatch):
    assert first_host("gpu[03-05,9],cpu1") == "gpu03" and first_host("node7") == "node7"
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.setenv(key, "")  # recorded, so the variables env_ranks() exports are removed afterwards
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert env_ranks() is None  # a one-task job is no DDP run
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[12-15]")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    ranks = env_ranks()
    assert ranks == {"rank": 5, "world_size": 8, "local_rank": 1, "master_addr": "gpu12", "master_port": 20777}
    assert os.environ["RANK"] == "5" and os.environ["WORLD_SIZE"] == "8"
    assert torch.distributed.is_available()


@pytest.mark.parametrize("overrides, message", [
    (["trainer.devices=0"], "trainer.devices=0: must be an integer >= 1 or auto"),
    (["trainer.devices=two"], "trainer.devices=two: must be an integer >= 1 or auto"),
    (["trainer.devices=2", "trainer.device=cpu", "trainer.sync_batchnorm=true"], "trainer.sync_batchnorm=true"),
    (["trainer.ddp_timeout=0"], "trainer.ddp_timeout=0"),
])
def test_bad_ddp_settings_fail_at_the_door(compose_cfg, overrides, message):
    from trainforge.config import validate
    from trainforge.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(compose_cfg(*overrides))


@pytest.mark.slow  # CI time: torchrun with 2 ranks, a stop and a resume
def test_ctrl_c_under_torchrun_saves_the_run_records_75_and_torchrun_exits_1(env, tmp_path):
    """As docs/ddp.md says: Ctrl-C (SIGINT to the terminal's process group) under torchrun
    stops both ranks at one step and saves; torchrun exits with its own 1, the run's
    status.json holds the 75; the resume finishes the run."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", str(ROOT / "train.py"), "data.num_samples=320",
                             "data.image_size=32", "data.batch_size=8", "trainer.epochs=3", "log.progress=false",
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not ((run / "training.log").exists() and "Epoch [1/3]" in (run / "training.log").read_text()):
        assert proc.poll() is None and time.time() < deadline, "the run did not start training"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: torchrun and both ranks
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "PREEMPTED" and status["exit_code"] == 75, status
    assert f"continue with resume={run}" in out and (run / "latest_checkpoint.pth").exists()
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "COMPLETED" and status["world_size"] == 2 and status["epoch"] == 3


@pytest.mark.slow  # CI time: three runs of two ranks, three of one
def test_a_resume_on_another_number_of_ranks_keeps_the_global_batch_and_the_weights(env, tmp_path):
    """2 ranks -> 1 and 1 -> 2 (gloo), digits without dropout (no per-rank randomness, no
    batch statistics): the resumed run's weights are within 1e-4 of one process trained
    straight through with the same global batch (two ranks' averaged gradients round apart
    from one batch's: 2e-5 after 90 Adam steps on an AVX-512 Xeon; a lost global batch or
    optimizer state moves them by 1e-2); a number of ranks that cannot share the global
    batch is refused in one line."""
    base = ["experiment=digits", "model.dropout=0", "scheduler=none", "log.progress=false"]  # LR apart from trainer.epochs

    def train(run, *args, check=True):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *base, *args, f"hydra.run.dir={run}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0 or not check, proc.stderr[-3000:]
        return proc

    def weights(run):
        return load_checkpoint(run / "latest_checkpoint.pth")["model"]

    straight = tmp_path / "straight"
    train(straight, "data.batch_size=32", "trainer.epochs=3")
    for first, then, batch in (("2", "1", "16"), ("1", "2", "32")):
        run = tmp_path / f"from_{first}"
        train(run, f"trainer.devices={first}", f"data.batch_size={batch}", "trainer.epochs=1")
        if first == "2":
            refused = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run}", "trainer.devices=3"],
                                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert refused.returncode == 2 and refused.stderr.strip() == (
                "trainforge: error: trainer.devices=3: the run's global batch is 32 (16 per rank x 2 ranks), which 3 "
                "ranks cannot share evenly; resume on a number of ranks that divides 32 (or pass +resume_force=true "
                "and a data.batch_size of your own)"), refused.stderr
        resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run}", f"trainer.devices={then}",
                                  "trainer.epochs=3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        per_rank = 32 // int(then)
        assert f"ranks {first} -> {then}: data.batch_size {batch} -> {per_rank} per rank (global batch 32 kept)" in \
            (run / "training.log").read_text()
        assert json.loads((run / "status.json").read_text())["world_size"] == int(then)
        derived = "The checkpoint holds the random state of 1 rank(s): ranks 1-1 take streams derived from it"
        assert (derived in (run / "training.log").read_text()) == (then == "2")
        got, want = weights(run), weights(straight)
        worst = max((got[k] - want[k]).abs().max().item() for k in want)
        assert worst < 1e-4, (first, then, worst)

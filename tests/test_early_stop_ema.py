"""Early stopping and the EMA of the weights: their state is checkpoint state, exact across
kills; the EMA is the textbook one (torch.optim.swa_utils') with its warm-up; the best EMA
weights survive a resume."""
from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.engine.ema import EMAHook, decay_at

DIGITS = ["experiment=digits", "log.progress=false", "trainer.epochs=15", "trainer.early_stop.patience=2"]
LONG = ["data.image_size=32", "log.progress=false", "trainer.deterministic=true", "data.num_samples=800",
        "checkpoint.every_n_steps=5", "trainer.epochs=2", "trainer.ema.decay=0.9", "trainer.ema.validate_with=both"]


def rows(run) -> list:
    with open(run / "epoch_metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "epoch_time"} for r in csv.DictReader(f)]


def status(run) -> dict:
    return json.loads((run / "status.json").read_text())


def start(env, cwd, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # CI time: five starts of a run
def test_early_stop_ends_at_the_same_epoch_when_the_run_is_killed_every_epoch(train_here, env, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_here(straight, *DIGITS)
    record = status(straight)
    assert record["status"] == "COMPLETED" and record["stop_reason"] == "early_stop", record
    assert record["epoch"] < 15 and "trainer.early_stop.patience=2" in record["stop_detail"]
    epoch, starts = 1, 0
    while True:  # SIGKILL as soon as each epoch's row is written (its checkpoint may not be yet)
        starts += 1
        proc = start(env, tmp_path, *DIGITS, f"hydra.run.dir={killed}", *(["resume=auto"] if starts > 1 else []))
        while proc.poll() is None and not ((killed / "epoch_metrics.csv").exists() and len(rows(killed)) >= epoch):
            time.sleep(0.01)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        epoch += 1
    assert starts >= record["epoch"]  # killed in every epoch it ran
    assert rows(killed) == rows(straight)
    assert {k: status(killed)[k] for k in ("status", "stop_reason", "epoch", "best")} == \
        {k: record[k] for k in ("status", "stop_reason", "epoch", "best")}
    assert same_tensors(load_checkpoint(killed / "latest_checkpoint.pth")["model"],
                        load_checkpoint(straight / "latest_checkpoint.pth")["model"])
    before = rows(straight)  # its last checkpoint is of the epoch that ended it: a resume ends there again
    train_here(straight, *DIGITS, f"resume={straight}")
    assert rows(straight) == before and status(straight)["stop_reason"] == "early_stop"


@pytest.mark.slow  # CI time: .ci/run runs it
def test_ema_and_weights_after_a_sigkill_at_a_random_step_and_resume_are_bitwise(train, train_here, env, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_here(straight, *LONG)
    proc = start(env, tmp_path, *LONG, f"hydra.run.dir={killed}")
    deadline = time.time() + 120
    while not (killed / "latest_checkpoint.pth").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 1.0))  # an arbitrary moment after the first mid-epoch save
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    train("resume=auto", f"hydra.run.dir={killed}")
    a, b = (load_checkpoint(r / "latest_checkpoint.pth") for r in (straight, killed))
    assert same_tensors(a["model"], b["model"]) and same_tensors(a["ema"]["module"], b["ema"]["module"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == a["step"]
    assert not same_tensors(a["model"], a["ema"]["module"])  # the average is not the weights
    assert rows(straight) == rows(killed) and "val_ema_dice" in rows(killed)[0]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def _train_a_bit(model, steps, each):
    """Real updates (SGD on random data); ``each()`` after every one."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        each()


def test_ema_without_warmup_is_torch_swa_utils_ema_and_the_warmup_follows_its_formula():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = _model()
    ema = EMAHook(model, decay=0.95, warmup=False)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.95), use_buffers=True)
    reference.update_parameters(model)  # its first call copies: both start from the initial weights

    def both():
        ema.update()
        reference.update_parameters(model)

    _train_a_bit(model, 30, both)
    got, want = ema.module.state_dict(), reference.module.state_dict()
    for k in got:  # floats averaged alike (swa_utils also "averages" the integer batch counter; we copy it)
        if got[k].is_floating_point():
            assert torch.allclose(got[k], want[k], rtol=0, atol=1e-6), k
    assert got["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 30
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])

    model = _model()
    ema = EMAHook(model, decay=0.999, warmup=True)
    expected = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    decays = []

    def warm():
        d = (1 + ema.updates) / (10 + ema.updates)
        decays.append(decay_at(0.999, ema.updates, True))
        ema.update()
        for k, v in model.state_dict().items():
            if k in expected:
                expected[k] = d * expected[k] + (1 - d) * v
    _train_a_bit(model, 20, warm)
    assert decays[:3] == [0.1, 2 / 11, 3 / 12] and decay_at(0.999, 10 ** 6, True) == 0.999
    for k, v in expected.items():
        assert torch.allclose(ema.module.state_dict()[k], v, rtol=0, atol=1e-6), k
    assert ema.module.state_dict()["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"]


@pytest.mark.slow  # 19 s: the fast suite measured 268 s of its 300
def test_the_best_ema_weights_are_not_overwritten_by_the_first_validation_after_a_resume(train_here, tmp_path):
    """The best EMA value is checkpoint state: a resume whose next validations are not better
    leaves best_model_weights.pt (the EMA's weights, said by status.json) as it was."""
    run = tmp_path / "run"
    args = ["experiment=digits", "log.progress=false", "trainer.ema.decay=0.5"]
    train_here(run, *args, "trainer.epochs=2")
    best = status(run)["best"]
    assert best["weights"] == "ema" and best["epoch"] == 2, best
    saved = (run / "best_model_weights.pt").read_bytes()
    assert same_tensors(torch.load(run / "best_model_weights.pt"), load_checkpoint(run / "best_model.pth")["ema"]["module"])
    # an EMA that hardly moves from here on: its next values equal the best at most
    train_here(run, *args, "trainer.epochs=3", f"resume={run}", "trainer.ema.decay=0.999999", "trainer.ema.warmup=false")
    after = json.loads((run / "metrics.json").read_text())[2]["val"]["accuracy"]
    assert after <= best["value"]  # not better: the best must stay epoch 2's
    assert status(run)["best"] == best and (run / "best_model_weights.pt").read_bytes() == saved

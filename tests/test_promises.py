"""README promises that a deliberate breakage once left green (issue 14), each with the case
that exposes it: a model drawing from the global RNG, a NaN in the middle of an epoch with a
checkpoint every step, fp16 with clipping, autocast seen from inside the model, signals other
than SIGTERM, the checkpoint fallback chain, fractional epochs, the skip policy, precision=auto.
``tools/mutations/`` holds the breakages and which test here catches each."""
from __future__ import annotations

import copy
import csv
import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, SMALL, write_h5
from trainforge.run.build import build
from trainforge.data import EpochSampler
from trainforge.data.glint import make_glint
from trainforge.engine.checkpoint import CheckpointManager, load_checkpoint
from trainforge.errors import WriteError, ConfigError, Preempted

DET = ["log.progress=false", "trainer.deterministic=true"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- every RNG is restored on resume (the model must draw from the global RNG) ----
def test_resume_restores_the_global_rng_that_dropout_draws_from(train_here, tmp_path):
    run = tmp_path / "run"
    digits = ["experiment=digits", "model.channels=8", "model.dropout=0.5", "data.batch_size=256", "trainer.epochs=2",
              *DET]
    train_here(run, *digits)
    straight = load_checkpoint(run / "latest_checkpoint.pth")["model"]
    torch.manual_seed(1234)  # what the process drew before does not matter: the checkpoint's RNG state does
    train_here(run, f"resume={run}/checkpoints/checkpoint_epoch_001.pth")  # epoch 2 again, from the epoch-1 state
    resumed = load_checkpoint(run / "latest_checkpoint.pth")
    assert resumed["epoch"] == 2 and same_weights(straight, resumed["model"])


# ---- retention deletes old epoch files only after the new checkpoint is committed ----
def test_a_save_that_fails_deletes_no_older_checkpoint(tmp_path, monkeypatch):
    import os

    mgr = CheckpointManager(tmp_path, save_freq=1, keep_last_n=1, monitor="val_loss", mode="min")
    mgr.save_epoch(1, 0.5, {}, {"model": {}, "epoch": 1}, {"w": torch.zeros(1)})

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # nothing new can be committed
    with pytest.raises(WriteError, match="No space left"):
        mgr.save_epoch(2, 0.4, {}, {"model": {}, "epoch": 2}, {"w": torch.ones(1)})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints/checkpoint_epoch_001.pth")["epoch"] == 1
    index = json.loads((tmp_path / "checkpoints/index.json").read_text())
    assert "checkpoints/checkpoint_epoch_001.pth" in [e["file"] for e in index["checkpoints"]]


# ---- stop: no checkpoint from a step whose loss went non-finite ----
def test_nan_mid_epoch_with_a_checkpoint_every_step_keeps_the_last_good_one(train, tmp_path):
    images, masks = make_glint(160, 32)
    sampler = EpochSampler(128, seed=0)
    order = list(sampler)  # epoch 0's order: put the NaN in batch 5 of 8
    images[order[4 * 16 + 3], 0, 3, 3] = np.nan
    path = write_h5(tmp_path / "nan.h5", images=images, masks=masks)
    run = tmp_path / "run"
    proc = train(*SMALL, f"data.path={path}", "checkpoint.every_n_steps=1", f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 2
    latest = run / "latest_checkpoint.pth"
    assert f"last good checkpoint: {latest}" in proc.stderr and "batch 5" in proc.stderr
    ckpt = load_checkpoint(latest)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (0, 4, 4)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ---- precision: fp16 unscales before clipping; autocast is really on ----
@pytest.fixture
def one_batch(compose_cfg, tmp_path):
    """A trainer whose epoch is one batch (16 training samples), built as train.py builds it."""
    def _make(*overrides, device="cpu"):
        cfg = compose_cfg(*SMALL, "data.num_samples=20", "trainer.epochs=1", "log.batch_metrics=true",
                          f"trainer.device={device}", *overrides)
        (tmp_path / "run").mkdir(exist_ok=True)
        return build(cfg, tmp_path / "run")
    return _make


def test_fp16_gradients_are_unscaled_before_clipping(one_batch, tmp_path):
    trainer = one_batch("trainer.precision=fp16", "trainer.clip_grad=0.001", "optimizer=sgd", "optimizer.lr=1.0",
                        "optimizer.momentum=0.0")
    assert trainer.precision.scaler.get_scale() > 1  # the loss is scaled, so the gradients are too
    reference = copy.deepcopy(trainer.model)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    images, masks = next(iter(trainer.train_loader))
    loss, _ = trainer.loss_fn(reference(images), masks)
    loss.backward()
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()])).item()
    trainer.fit()
    logged = float(rows(tmp_path / "run" / "batch_metrics.csv")[0]["grad_norm"])
    assert math.isclose(logged, true_norm, rel_tol=0.02), (logged, true_norm)  # the unscaled norm
    after = trainer.model.state_dict()
    moved = torch.linalg.vector_norm(torch.stack([(after[k] - before[k]).float().norm() for k in before])).item()
    assert math.isclose(moved, 0.001, rel_tol=1e-2)  # sgd lr=1 moves by the clipped (unscaled) gradient


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, GPU])])
@pytest.mark.parametrize("mode,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_autocast_runs_the_model_in_the_chosen_dtype(one_batch, mode, dtype, device):
    trainer = one_batch(f"trainer.precision={mode}", device=device)
    seen = {"train": set(), "eval": set()}

    def record(module, inputs, output):
        seen["train" if module.training else "eval"].add(output.dtype)

    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(record) for m in convs]
    trainer.fit()
    for h in handles:
        h.remove()
    assert seen == {"train": {dtype}, "eval": {dtype}}


def test_precision_auto_picks_bf16_only_on_gpus_that_support_it():
    from trainforge.engine.amp import resolve_precision

    cuda, cpu, big = torch.device("cuda:0"), torch.device("cpu"), 10 ** 7  # a model large enough for bf16 to pay
    assert resolve_precision("auto", cuda, big, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda, big, compiled=True, bf16_supported=False) == "fp32"
    assert resolve_precision("auto", cpu, big, compiled=True, bf16_supported=True) == "fp32"
    assert resolve_precision("auto", cpu) == "fp32"
    for mode in ("fp32", "bf16", "fp16"):
        assert resolve_precision(mode, cuda, bf16_supported=False) == mode


@pytest.mark.gpu
@GPU
def test_precision_auto_on_this_gpu():
    from trainforge.engine.amp import Precision

    ampere = torch.cuda.get_device_capability()[0] >= 8  # bf16 tensor cores from compute capability 8.0
    assert Precision("auto", torch.device("cuda:0"), num_params=10 ** 7).mode == ("bf16" if ampere else "fp32")


# ---- skip: no update, but the schedule advances ----
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])  # both get fused=True under skip: the device-side skip
def test_skip_makes_no_update_and_the_schedule_still_advances(compose_cfg, tmp_path, optimizer):
    images, masks = make_glint(160, 32)
    images[5, 0, 3, 3] = np.nan
    path = write_h5(tmp_path / "nan.h5", images=images, masks=masks)
    cfg = compose_cfg(*SMALL, f"data.path={path}", "trainer.on_nonfinite=skip", "scheduler=cosine",
                      f"optimizer={optimizer}", "trainer.epochs=1")
    (tmp_path / "run").mkdir()
    trainer = build(cfg, tmp_path / "run")
    base, total = cfg.optimizer.lr, trainer.batches_per_epoch
    seen_bad = False
    for batch in trainer.train_loader:
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        step = trainer.step
        trainer.run_step(batch)
        assert trainer.step == step + 1  # the window consumed its slot either way
        lr = base * (1 + math.cos(math.pi * min(1, trainer.step / (total - 1)))) / 2
        assert math.isclose(trainer.optimizer.param_groups[0]["lr"], lr, rel_tol=1e-9)
        bad = bool(batch[0].isnan().any())
        seen_bad |= bad
        assert same_weights(before, trainer.model.state_dict()) == bad  # updated unless skipped
    assert seen_bad
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


# ---- resume: drift check, fallback chain, cosine stretching, fractional epochs ----
@pytest.mark.parametrize("override,key", [
    ("model.base_channels=16", "model.base_channels"),
    ("model=cnn", "model._target_"),
    ("optimizer=sgd", "optimizer._target_"),
    ("trainer.devices=2", "trainer.devices"),
    ("trainer.grad_accum=2", "trainer.grad_accum"),
    ("checkpoint.monitor=val_loss", "checkpoint.monitor"),  # the best and top_k tables are in its terms
])
def test_drift_in_model_optimizer_devices_or_accumulation_is_refused(compose_cfg, override, key):
    from trainforge.run.resume import check_drift

    saved = OmegaConf.to_yaml(compose_cfg(*SMALL), resolve=True)
    with pytest.raises(ConfigError) as err:
        check_drift(saved, compose_cfg(*SMALL, override), force=False)
    assert key in str(err.value) and "resume_force" in str(err.value) and "\n" not in str(err.value)
    assert any(c.startswith(key) for c in check_drift(saved, compose_cfg(*SMALL, override), force=True))


def test_drift_in_epochs_lr_logging_or_loading_is_allowed_and_reported(compose_cfg):
    from trainforge.run.resume import check_drift

    saved = OmegaConf.to_yaml(compose_cfg(*SMALL), resolve=True)
    allowed = ["trainer.epochs=7", "optimizer.lr=0.1", "log.interval=3", "data.num_workers=2", "data.preload=false"]
    changes = check_drift(saved, compose_cfg(*SMALL, *allowed), force=False)
    assert [c.split()[0] for c in changes] == sorted(a.split("=")[0] for a in allowed)


def test_resume_falls_back_to_best_model_when_the_others_are_invalid(train_here, tmp_path):
    run = tmp_path / "run"
    train_here(run, *SMALL, "trainer.epochs=1")
    for name in ("latest_checkpoint.pth", "checkpoints/checkpoint_epoch_001.pth"):
        (run / name).unlink()  # hard links of one file: cut each link before spoiling it
        (run / name).write_bytes(b"PK\x03\x04 not a checkpoint")
    train_here(run, "resume=auto", "trainer.epochs=2")
    log = (run / "training.log").read_text()
    assert log.count("Skipping") == 2 and "best_model.pth at epoch 2" in log
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]


def test_cosine_stretches_when_epochs_change_on_resume_and_warmup_rounds(train_here, tmp_path):
    """warmup_epochs=0.325 of 8 steps: round(2.6) = 3 warm-up steps (floor would give 2)."""
    run, spe, low, base = tmp_path / "run", 8, 1e-4, 3e-3
    cosine = ["scheduler=cosine", "scheduler.warmup_epochs=0.325", f"scheduler.min_lr={low}", "log.batch_metrics=true"]
    train_here(run, *SMALL, *cosine, "trainer.epochs=1")
    train_here(run, f"resume={run}", "trainer.epochs=2")

    def lr(s, total, warmup=3):
        if s < warmup:
            return base * (s + 1) / warmup
        return low + (base - low) * (1 + math.cos(math.pi * (s - warmup) / (total - 1 - warmup))) / 2

    per_step = [float(r["lr"]) for r in rows(run / "batch_metrics.csv")]
    assert len(per_step) == 2 * spe
    expected = [lr(s, spe) for s in range(spe)] + [lr(s, 2 * spe) for s in range(spe, 2 * spe)]
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(per_step, expected)), (per_step, expected)


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
    proc = start(env, tmp_path, "data.num_samples=800", "data.image_size=64", "trainer.grad_accum=40",
                 "log.progress=false", f"hydra.run.dir={run}")
    wait_for_text(run / "training.log", "(2/40)", proc)
    proc.send_signal(signal.SIGUSR1)
    wait_for_text(run / "training.log", "SIGUSR1 received", proc)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == -signal.SIGUSR1  # the default action: the process is gone at once

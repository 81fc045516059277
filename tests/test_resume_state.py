"""What a resume restores and refuses: every RNG (a model drawing from the global one), the
drift check, the checkpoint fallback chain, cosine stretching when epochs change."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SMALL
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.errors import ConfigError

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


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_a_resume_that_changes_the_lr_trains_on_with_the_new_one(train_here, tmp_path):
    """optimizer.lr is an allowed change on resume: the next updates use it (the
    checkpoint's optimizer and schedule had stored the old one), in every group's proportion,
    along the schedule's curve."""
    run = tmp_path / "run"
    train_here(run, *SMALL, "scheduler=none", "log.batch_metrics=true", "trainer.epochs=1")
    train_here(run, f"resume={run}", "trainer.epochs=2", "optimizer.lr=0.01")
    per_step = [float(r["lr"]) for r in rows(run / "batch_metrics.csv")]
    assert per_step == [3e-3] * 8 + [0.01] * 8
    assert "optimizer.lr 0.003 -> 0.01" in (run / "training.log").read_text()
    cosine = tmp_path / "cosine"
    train_here(cosine, *SMALL, "scheduler=cosine", "log.batch_metrics=true", "trainer.epochs=2")
    train_here(cosine, f"resume={cosine}/checkpoints/checkpoint_epoch_001.pth", "optimizer.lr=0.006")
    steps = [float(r["lr"]) for r in rows(cosine / "batch_metrics.csv")]
    expected = [0.006 * (1 + math.cos(math.pi * s / 15)) / 2 for s in range(8, 16)]  # the same curve, doubled
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(steps[8:], expected)), (steps, expected)


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

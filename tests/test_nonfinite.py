"""Non-finite losses: under stop no checkpoint comes from a step whose loss went non-finite;
under skip no update is made, but the schedule advances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import SMALL, write_h5
from trainforge.run.build import build
from trainforge.data import EpochSampler
from trainforge.data.glint import make_glint
from trainforge.engine.checkpoint import load_checkpoint


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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

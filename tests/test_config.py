"""Every option of every group composes from the real conf/ and instantiates; bad input
fails at the door with one line."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from trainforge.build import build_model

from conftest import CONF, SMALL

GROUPS = ["model", "data", "loss", "optimizer", "scheduler", "log", "trainer", "checkpoint"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}", *SMALL)
    model = build_model(cfg.model, warm_start=False)
    data = instantiate(cfg.data)
    x, y = data.train_set()[0]
    out = model(x[None])
    loss, parts = instantiate(cfg.loss)(out, y[None])
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(parts) == set(instantiate(cfg.loss).component_names)
    opt = instantiate(cfg.optimizer, _convert_="all")(model.parameters())
    sched = instantiate(cfg.scheduler, _convert_="all")(opt, steps_per_epoch=4, epochs=cfg.trainer.epochs)
    opt.step()
    sched.step()
    assert cfg.log.interval >= 1 and cfg.trainer.epochs >= 1 and cfg.checkpoint.mode in ("min", "max")


def test_hybrid_returns_weighted_total_and_components(compose_cfg):
    cfg = compose_cfg("loss=hybrid", "loss.focal_weight=2.0", "loss.dice_weight=0.5", "loss.bce_weight=1.5")
    loss_fn = instantiate(cfg.loss)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    total, parts = loss_fn(logits, target)
    assert set(parts) == {"focal_loss", "dice_loss", "bce_loss"}
    expected = 2.0 * parts["focal_loss"] + 0.5 * parts["dice_loss"] + 1.5 * parts["bce_loss"]
    assert torch.allclose(total, expected)
    assert torch.allclose(parts["bce_loss"], torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


BAD = [
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["trainer.epochs=-1"], "trainer.epochs"),
    (["model=nosuch"], "model=nosuch"),
    (["data.path=/missing.h5"], "/missing.h5"),
    (["optimizer.lrr=1"], "optimizer.lrr"),
    (["trainer.precision=fp8"], "trainer.precision"),
    (["checkpoint.monitor=val_acc"], "checkpoint.monitor"),
    (["scheduler=plateau", "scheduler.monitor=val_nope"], "scheduler.monitor"),
]


@pytest.mark.parametrize("args,named", BAD, ids=[b[0][-1] for b in BAD])
def test_bad_input_gives_one_line_naming_the_key(train, args, named):
    proc = train(*SMALL, *args, check=False)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("trainforge: error: ") and named in err[0]
    assert "Traceback" not in proc.stdout + proc.stderr

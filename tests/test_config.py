"""Every option of every group that ``train.py --help`` lists composes from the real conf/
and instantiates; bad input fails at the door with one line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from trainforge.build import build_model

from conftest import CONF, ROOT, SMALL

GROUPS = ["model", "data", "loss", "optimizer", "scheduler", "log", "trainer", "checkpoint"]


def help_text() -> str:
    env = dict(os.environ, TRAINFORGE_DATA_DIR=str(Path(tempfile.gettempdir()) / "trainforge-help"))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                          env=env, timeout=300, check=True).stdout


HELP = help_text()  # once per session: the options below are the ones --help lists


def listed(text: str) -> dict:
    """The ``group: a, b`` lines of --help's group section."""
    section = text.split("== Config groups", 1)[1].split("\n\n", 1)[0]
    return {m[1]: m[2].split(", ") for m in re.finditer(r"^(\w+): (.+)$", section, re.M)}


def options(group):
    return listed(HELP)[group]


def test_help_lists_every_option_no_schema_and_the_commands():
    groups = listed(HELP)
    assert "_schema" not in HELP and "powered by Hydra" not in HELP
    assert groups == {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in [*GROUPS, "experiment"]}
    for command in ("python train.py optimizer.lr=", "scheduler=cosine", "-m loss=focal,hybrid",
                    "resume=RUN_DIR", "trainer.devices=2", "scripts/analyze_training.py RUN_DIR", "--cfg job"):
        assert command in HELP, command


EXPERIMENTS = {"default": [], "digits": ["experiment=digits"], "seqset": ["experiment=seqset"]}


QUICK = {"default": SMALL, "digits": ["trainer.epochs=2"], "seqset": ["data.num_patients=100", "trainer.epochs=2"]}


def natural(option):
    """The experiment an option belongs to (models, data and losses need matching partners),
    with overrides that keep it small."""
    name = {"cnn": "digits", "digits": "digits", "ce": "digits", "seqencoder": "seqset", "seqset": "seqset"}.get(
        option, "default")
    return [*EXPERIMENTS[name], *QUICK[name]]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(compose_cfg, group, option):
    cfg = compose_cfg(*natural(option), f"{group}={option}")
    model = build_model(cfg.model, warm_start=False)
    data = instantiate(cfg.data)
    loss_fn = instantiate(cfg.loss)
    batch = data.collate_fn([data.train_set()[i] for i in range(2)]) if data.collate_fn.__name__ == "pad_collate" \
        else data.train_set().__getitems__([0, 1])
    out = model(batch[0])
    loss, parts = loss_fn(out, batch[1])
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(parts) == set(loss_fn.component_names)
    metrics = data.metrics()
    metrics.update(out, batch[1])
    assert set(metrics.compute()) == set(metrics.names)
    opt = instantiate(cfg.optimizer, _convert_="all")(model.parameters())
    sched = instantiate(cfg.scheduler, _convert_="all")(opt, steps_per_epoch=4, epochs=cfg.trainer.epochs)
    opt.step()
    sched.step()
    assert cfg.log.interval >= 1 and cfg.trainer.epochs >= 1 and cfg.checkpoint.mode in ("min", "max")


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_preset_composes_with_its_monitor(compose_cfg, name):
    from trainforge.build import available_metrics

    cfg = compose_cfg(f"experiment={name}", *QUICK[name])
    data, loss_fn = instantiate(cfg.data), instantiate(cfg.loss)
    assert cfg.checkpoint.monitor in available_metrics(loss_fn, data.metrics())


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


def test_completion_and_info_see_the_options_not_the_schemas(tmp_path):
    env = dict(os.environ, COMP_LINE="python train.py model=")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], env=e, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args, e in ((["-sc", "query=bash"], env), (["--info", "defaults-tree"], os.environ))]
    (completion, _), (info, _) = (p.communicate(timeout=300) for p in procs)
    assert completion.split() == ["model=cnn", "model=seqencoder", "model=unet"]
    assert "model: unet" in info and "model_unet_schema" in info  # the schema still types the option

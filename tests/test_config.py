"""Each option of each config group, composed from the real conf/ with non-default values,
does what makes it that option: a model's shape, a data set's samples, a loss's value on a
fixed input, an optimizer's hyper-parameters reaching torch, a schedule's LR after some
steps. Bad input fails at the door with one line."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF, ROOT, SMALL
from trainforge.run.build import available_metrics, build_model

LN2 = math.log(2.0)


GROUPS = ["model", "data", "loss", "optimizer", "scheduler", "log", "trainer", "checkpoint", "collapse"]


def help_text() -> str:
    env = dict(os.environ, TRAINFORGE_DATA_DIR=str(Path(tempfile.gettempdir()) / "trainforge-help"))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                          env=env, timeout=300, check=True).stdout


HELP = help_text()  # once per session: the options tested below are the ones --help lists


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
    for command in ("trainforge optimizer.lr=", "scheduler=cosine", "-m loss=focal,hybrid",
                    "resume=RUN_DIR", "trainer.devices=2", "trainforge analyze RUN_DIR", "--cfg job", "--config-dir"):
        assert command in HELP, command


def test_cfg_hydra_resolve_prints_the_run_directory_and_makes_none(tmp_path):
    """``--cfg hydra`` drops the job's keys before printing: the run directory's rule may not
    need them (it once read ``${resume}`` and failed with "Interpolation key 'resume' not found")."""
    env = dict(os.environ, TRAINFORGE_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "hydra", "--resolve"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^    dir: outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_\d{6}$", proc.stdout, re.M), proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_every_option_has_its_own_test_here():
    """A new option in conf/ fails this until a test below says what makes it that option.
    (log, trainer and checkpoint have one option each, ``default``: every run composes it.)"""
    tested = {"model": MODELS, "data": DATA, "loss": [*LOSSES, "elbo"], "optimizer": OPTIMIZERS,
              "scheduler": [*SCHEDULES, "plateau"], "experiment": EXPERIMENTS}
    for group, cases in tested.items():
        assert options(group) == sorted(cases), group
    for group in ("log", "trainer", "checkpoint", "collapse"):
        assert options(group) == ["default"], group


# ---- model: the keys reach the module ----
def _unet(model):
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 12 and max(c.out_channels for c in convs) == 12 * 2 ** 3  # depth 3
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def _cnn(model):
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.3]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def _seqencoder(model):
    assert model.var.num_embeddings == 5 and model.var.embedding_dim == 24 and len(model.encoder.layers) == 2
    batch = {"var_id": torch.zeros(3, 4, dtype=torch.long), "value": torch.zeros(3, 4), "minute": torch.zeros(3, 4),
             "padding_mask": torch.zeros(3, 4, dtype=torch.bool)}
    assert model(batch).shape == (3,)


def _seqsetvae(model):
    assert model.latent[-1].out_features == 2 * 6 and len(model.encoder) == 2  # (mu, logvar) of 6 dims, 2 ISABs
    assert model.encoder[0].inducing.shape[1] == 3
    groups = model.param_groups(0.1)
    assert sorted(g["lr"] for g in groups) == [0.1, pytest.approx(0.5)]  # the head at head_lr_scale x lr


MODELS = {
    "unet": (["model.base_channels=12", "model.depth=3"], _unet),
    "seqsetvae": (["model.latent_dim=6", "model.levels=2", "model.inducing=3", "model.head_lr_scale=5"], _seqsetvae),
    "cnn": (["model.num_classes=7", "model.dropout=0.3"], _cnn),
    "seqencoder": (["model.num_variables=5", "model.dim=24", "model.heads=3", "model.layers=2"], _seqencoder),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_option_builds_its_architecture(compose_cfg, name):
    overrides, check = MODELS[name]
    check(build_model(compose_cfg(f"model={name}", *overrides).model, warm_start=False))


# ---- data: the keys reach the samples ----
def _glint(data):
    train, val = data.train_set(), data.val_set()
    assert (len(train), len(val)) == (40, 10)
    images, masks = train.__getitems__([0, 1, 2])
    assert images.shape == masks.shape == (3, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert data.metrics().names == ("dice", "iou")


def _digits(data):
    train, val = data.train_set(), data.val_set()
    assert len(train) + len(val) == 1797 and abs(len(val) / 1797 - 0.3) < 0.01  # sklearn's digits, 30% held out
    images, labels = train.__getitems__([0, 1])
    assert images.shape == (2, 1, 8, 8) and int(labels.max()) < 10
    assert data.metrics().names == ("accuracy",)


def _seqset(data):
    train, val = data.train_set(), data.val_set()
    assert len(train) + len(val) == 100
    batch, labels = data.collate_fn([train[i] for i in range(4)])
    assert labels.shape == (4,) and batch["padding_mask"].shape == batch["var_id"].shape
    assert (~batch["padding_mask"]).sum(1).max() <= 5  # max_sequence_length
    assert data.metrics().names == ("accuracy",)


DATA = {
    "glint": (["data.num_samples=50", "data.image_size=32"], _glint),
    "digits": (["data.val_fraction=0.3"], _digits),
    "seqset": (["data.num_patients=100", "data.max_sequence_length=5"], _seqset),
}


@pytest.mark.parametrize("name", sorted(DATA))
def test_data_option_gives_its_samples(compose_cfg, name):
    overrides, check = DATA[name]
    check(instantiate(compose_cfg(f"data={name}", *overrides).data))


# ---- loss: the value on a fixed input, worked out by hand ----
ZEROS, ONE_POSITIVE = torch.zeros(1, 1, 2, 2), torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
FOCAL = (0.25 + 3 * 0.75) / 4 * 0.5 ** 2 * LN2  # p = 0.5: alpha_t (1 - p_t)^2 (-log p_t), alpha=0.25
DICE = 1 - (2 * 0.5 * 1 + 1) / (4 * 0.5 + 1 + 1)  # soft Dice, smooth=1
BCE_POS3 = (3 * LN2 + 3 * LN2) / 4  # pos_weight=3 on the one positive
CE_LOGITS, CE_TARGET = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
_p0 = math.exp(2) / (math.exp(2) + 2)
CE_SMOOTH = -(0.8 + 0.2 / 3) * math.log(_p0) - 2 * (0.2 / 3) * math.log((1 - _p0) / 2)  # label_smoothing=0.2

LOSSES = {
    "focal": (["loss.alpha=0.25", "loss.gamma=2.0"], ZEROS, ONE_POSITIVE, FOCAL),
    "dice": (["loss.smooth=1.0"], ZEROS, ONE_POSITIVE, DICE),
    "bce": (["loss.pos_weight=3.0"], ZEROS, ONE_POSITIVE, BCE_POS3),
    "hybrid": (["loss.focal_weight=2.0", "loss.dice_weight=0.5", "loss.bce_weight=1.5", "loss.alpha=0.25"],
               ZEROS, ONE_POSITIVE, 2.0 * FOCAL + 0.5 * DICE + 1.5 * LN2),
    "ce": (["loss.label_smoothing=0.2"], CE_LOGITS, CE_TARGET, CE_SMOOTH),
}


def test_elbo_option_weighs_its_terms_by_the_beta_schedule(compose_cfg):
    """elbo: the beta of its schedule at a step (linear warm-up counted in optimizer steps)."""
    from trainforge.losses.elbo import beta_at

    loss_fn = instantiate(compose_cfg("experiment=seqsetvae", "loss.beta=2.0", "loss.schedule=linear",
                                      "loss.warmup_steps=10", "loss.free_bits=0.5").loss)
    assert loss_fn.component_names == ("recon", "kl", "kl_term", "cls", "beta")
    assert [beta_at(s, 2.0, "linear", 10, 1000, 0.5) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 1.0, 2.0, 2.0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_option_gives_its_value_on_a_fixed_input(compose_cfg, name):
    overrides, output, target, expected = LOSSES[name]
    loss_fn = instantiate(compose_cfg(f"loss={name}", *overrides).loss)
    total, parts = loss_fn(output, target)
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    assert set(parts) == set(loss_fn.component_names)


# ---- optimizer: the hyper-parameters reach torch ----
OPTIMIZERS = {
    "adamw": (["optimizer.lr=0.01", "optimizer.weight_decay=0.05", "optimizer.betas=[0.8,0.95]", "optimizer.eps=1e-7"],
              torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.05, "betas": (0.8, 0.95), "eps": 1e-7}),
    "adam": (["optimizer.lr=0.02", "optimizer.weight_decay=0.001", "optimizer.betas=[0.7,0.9]"],
             torch.optim.Adam, {"lr": 0.02, "weight_decay": 0.001, "betas": (0.7, 0.9)}),
    "sgd": (["optimizer.lr=0.3", "optimizer.momentum=0.7", "optimizer.nesterov=true", "optimizer.weight_decay=0.01"],
            torch.optim.SGD, {"lr": 0.3, "momentum": 0.7, "nesterov": True, "weight_decay": 0.01}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_option_passes_its_hyper_parameters_to_torch(compose_cfg, name):
    overrides, cls, expected = OPTIMIZERS[name]
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = instantiate(compose_cfg(f"optimizer={name}", *overrides).optimizer, _convert_="all")(params)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert {k: tuple(group[k]) if k == "betas" else group[k] for k in expected} == expected


# ---- scheduler: the LR after some steps (8 steps an epoch, 4 epochs; fractional epochs round) ----
BASE, SPE = 0.01, 8


def _cosine(s):  # warmup round(0.325 * 8) = round(2.6) = 3 steps, then cosine to 1e-4 at step 31
    return BASE * (s + 1) / 3 if s < 3 else 1e-4 + (BASE - 1e-4) * (1 + math.cos(math.pi * (s - 3) / 28)) / 2


SCHEDULES = {
    "none": ([], lambda s: BASE),
    "cosine": (["scheduler.warmup_epochs=0.325", "scheduler.min_lr=1e-4"], _cosine),
    "step": (["scheduler.step_size=0.3", "scheduler.gamma=0.5"], lambda s: BASE * 0.5 ** (s // 2)),  # round(2.4)
    "multistep": (["scheduler.milestones=[0.3,0.825]", "scheduler.gamma=0.1"],  # round(2.4) = 2, round(6.6) = 7
                  lambda s: BASE * 0.1 ** ((s >= 2) + (s >= 7))),
}


def _scheduler(compose_cfg, name, *overrides):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    cfg = compose_cfg(f"scheduler={name}", *overrides)
    return opt, instantiate(cfg.scheduler, _convert_="all")(opt, steps_per_epoch=SPE, epochs=4)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_scheduler_option_gives_its_lr_at_each_step(compose_cfg, name):
    overrides, expected = SCHEDULES[name]
    opt, sched = _scheduler(compose_cfg, name, *overrides)
    for s in range(4 * SPE):
        assert math.isclose(opt.param_groups[0]["lr"], expected(s), rel_tol=1e-9), (s, opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_plateau_option_reduces_on_the_monitored_metric_not_on_steps(compose_cfg):
    opt, sched = _scheduler(compose_cfg, "plateau", "scheduler.monitor=val_dice", "scheduler.mode=max",
                            "scheduler.factor=0.5", "scheduler.patience=1")
    lrs = []
    for dice in (0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7):  # patience 1: the second validation without gain reduces
        for _ in range(SPE):
            sched.step()  # steps alone never change it
        sched.observe({"val_dice": dice, "val_loss": 1.0})
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [BASE, BASE, BASE, BASE / 2, BASE / 2, BASE / 2, BASE / 4]


# ---- experiment presets ----
EXPERIMENTS = {"digits": ["trainer.epochs=2"], "seqset": ["data.num_patients=100", "trainer.epochs=2"],
               "seqsetvae": ["data.num_patients=100"],
               "seqsetvae_finetune": ["data.num_patients=100", "model.init_weights=weights.pt"]}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_preset_composes_with_its_monitor(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}", *EXPERIMENTS[name])
    data, loss_fn = instantiate(cfg.data), instantiate(cfg.loss)
    assert cfg.checkpoint.monitor in available_metrics(loss_fn, data.metrics())
    model = build_model(cfg.model, warm_start=False)
    batch = next(iter(torch.utils.data.DataLoader(data.train_set(), batch_size=2, collate_fn=data.collate_fn)))
    loss, _ = loss_fn(model(batch[0]), batch[1])
    assert loss.ndim == 0 and torch.isfinite(loss)


# ---- bad input ----
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

"""Precision: fp16 gradients are unscaled before clipping, autocast really runs the model in the
chosen dtype (seen from inside the model), and precision=auto picks bf16 only where it pays."""
from __future__ import annotations

import copy
import csv
import math

import pytest
import torch

from conftest import SMALL
from trainforge.run.build import build


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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

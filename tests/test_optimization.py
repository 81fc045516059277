"""Schedules, precision, accumulation, clipping and the non-finite policy (issue 4)."""
from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import SMALL, write_h5
from trainforge.run.build import build
from trainforge.engine.checkpoint import load_checkpoint
from trainforge.engine.hooks import EvalHook
from trainforge.engine.trainer import GRAD_NORM_EVERY
from trainforge.data.glint import make_glint

BASE = 3e-3


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- schedules: the LR of every step against closed forms written out here ----
SPE, EPOCHS = 8, 4  # SMALL: 128 training samples / 16 per batch; 4 epochs = 32 steps


def cosine_warmup(s, warmup=SPE, total=SPE * EPOCHS, low=1e-4):
    if s < warmup:
        return BASE * (s + 1) / warmup
    p = (s - warmup) / (total - 1 - warmup)
    return low + (BASE - low) * (1 + math.cos(math.pi * p)) / 2


SCHEDULES = {
    "none": ([], lambda s: BASE),
    "cosine": (["scheduler.warmup_epochs=1", "scheduler.min_lr=1e-4"], cosine_warmup),
    "step": (["scheduler.step_size=1.5", "scheduler.gamma=0.5"], lambda s: BASE * 0.5 ** (s // 12)),
    "multistep": (["scheduler.milestones=[1,2.5]", "scheduler.gamma=0.1"],
                  lambda s: BASE * 0.1 ** ((s >= 8) + (s >= 20))),
}


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_per_step_matches_closed_form(train_here, tmp_path, name):
    extra, expected = SCHEDULES[name]
    run = tmp_path / name
    train_here(run, *SMALL, f"scheduler={name}", *extra, f"trainer.epochs={EPOCHS}", "log.batch_metrics=true")
    per_step = rows(run / "batch_metrics.csv")
    assert len(per_step) == SPE * EPOCHS
    for s, row in enumerate(per_step):
        assert math.isclose(float(row["lr"]), expected(s), rel_tol=1e-9), (s, row["lr"], expected(s))


def test_schedule_step_equals_torch_lambdalr_in_lr_and_state():
    """StepSchedule's lean per-update step() against torch's LambdaLR on the same factors:
    the same LR in every group at every step (bitwise) and the same state_dict."""
    from torch.optim.lr_scheduler import LambdaLR

    from trainforge.engine.schedules import StepSchedule

    factors = [lambda s: (s + 1) / 7 if s < 7 else 0.5 ** (s / 13), lambda s: 1.0 / (1 + s)]

    def make(cls):
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.AdamW([{"params": [model.weight], "lr": 3e-3}, {"params": [model.bias], "lr": 1e-2}])
        return opt, cls(opt, factors)

    (ours_opt, ours), (ref_opt, ref) = make(StepSchedule), make(LambdaLR)
    for s in range(300):
        for opt, sched in ((ours_opt, ours), (ref_opt, ref)):
            opt.step()
            sched.step()
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in ref_opt.param_groups], s
        assert ours.get_last_lr() == ref.get_last_lr()
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    assert {k: v for k, v in mine.items() if k != "lr_lambdas"} == {k: v for k, v in theirs.items() if k != "lr_lambdas"}


def test_schedule_counts_optimizer_steps_not_batches(train_here, tmp_path):
    """With grad_accum=2 the same cosine curve is spread over half as many steps."""
    run = tmp_path / "accum"
    train_here(run, *SMALL, "scheduler=cosine", "trainer.grad_accum=2", f"trainer.epochs={EPOCHS}",
               "log.batch_metrics=true")
    per_batch = rows(run / "batch_metrics.csv")
    total = SPE * EPOCHS // 2
    for i, row in enumerate(per_batch):
        s = i // 2  # the optimizer step this micro-batch belongs to
        assert math.isclose(float(row["lr"]), BASE * (1 + math.cos(math.pi * s / (total - 1))) / 2, rel_tol=1e-9)


@pytest.mark.slow  # CI time: .ci/run runs it
def test_plateau_reduces_after_patience_decided_after_validation_and_resumes_its_count(train_here, tmp_path):
    run, resumed = tmp_path / "plateau", tmp_path / "resumed"
    args = [*SMALL, "scheduler=plateau", "scheduler.patience=1", "scheduler.factor=0.5", "optimizer=sgd",
            "optimizer.lr=1e-7", "trainer.deterministic=true"]
    train_here(run, *args, "trainer.epochs=6")
    train_here(resumed, *args, "trainer.epochs=3")
    train_here(resumed, f"resume={resumed}", "trainer.epochs=6")  # the plateau's best and bad-epoch count travel
    assert [r["lr"] for r in rows(resumed / "epoch_metrics.csv")] == [r["lr"] for r in rows(run / "epoch_metrics.csv")]
    epochs = rows(run / "epoch_metrics.csv")
    lr, best, bad = 1e-7, math.inf, 0
    for row in epochs:  # ReduceLROnPlateau's rule (mode=min, rel threshold 1e-4), written out
        assert math.isclose(float(row["lr"]), lr, rel_tol=1e-9)
        value = float(row["val_loss"])
        if value < best * (1 - 1e-4):
            best, bad = value, 0
        else:
            bad += 1
        if bad > 1:
            lr, bad = lr * 0.5, 0
    assert float(epochs[-1]["lr"]) < 1e-7  # it did reduce


# ---- in-process trainers for the exact checks ----
@pytest.fixture
def make_trainer(compose_cfg, tmp_path):
    def _make(*overrides, name="run"):
        cfg = compose_cfg(*SMALL, *overrides)
        return build(cfg, tmp_path / name)
    return _make


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_grad_accum_equals_large_batch_with_partial_last_window(make_trainer):
    data = ["data.num_samples=250", "trainer.epochs=1"]  # 200 training samples
    small = make_trainer(*data, "data.batch_size=8", "trainer.grad_accum=4", name="a")
    large = make_trainer(*data, "data.batch_size=32", "trainer.grad_accum=1", name="b")
    assert small.batches_per_epoch == 25 and large.batches_per_epoch == 7  # 25 % 4 != 0: partial window
    small.fit()
    large.fit()
    assert small.step == large.step == 7
    diff = max((a - b).abs().max().item() for a, b in zip(weights(small).values(), weights(large).values()))
    print(f"max |w_accum - w_large| after one epoch: {diff:.3e}")
    assert diff <= 1e-5


def test_clipping_uses_global_norm_and_logs_norm_before_clipping(make_trainer):
    trainer = make_trainer("optimizer=sgd", "optimizer.lr=1.0", "optimizer.momentum=0.0",
                           "trainer.clip_grad=0.001", "trainer.epochs=1")
    batch = next(iter(trainer.train_loader))
    reference = copy.deepcopy(trainer.model)
    loss, _ = trainer.loss_fn(reference(batch[0]), batch[1])
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()])).item()
    before = weights(trainer)
    trainer.run_step(batch)
    record = trainer.collect(block=True)[0]
    assert math.isclose(record["values"][-1], norm, rel_tol=1e-4) and norm > 0.001
    moved = torch.linalg.vector_norm(torch.stack([(a - b).norm() for a, b in zip(weights(trainer).values(),
                                                                                 before.values())]))
    assert math.isclose(moved.item(), 0.001, rel_tol=1e-3)


def test_seed_sets_the_initial_weights_and_the_batch_order(make_trainer):
    a, b, c = make_trainer("seed=0", name="a"), make_trainer("seed=0", name="b"), make_trainer("seed=1", name="c")
    same = [torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values())]
    other = [torch.equal(x, y) for x, y in zip(weights(a).values(), weights(c).values())]
    assert all(same) and not all(other)  # the norms start at 1 and 0 under either seed
    assert list(a.sampler) == list(b.sampler) != list(c.sampler)


def test_validation_is_the_sample_weighted_mean_in_eval_mode(compose_cfg, tmp_path):
    """The digits CNN has dropout and 360 validation samples in batches of 64 (the last one
    holds 40): the validation loss and accuracy equal one eval-mode pass over the whole set."""
    trainer = build(compose_cfg("experiment=digits", "log.progress=false"), tmp_path / "run")
    evaluate = next(h for h in trainer.hooks if isinstance(h, EvalHook))
    assert len(evaluate.loader.dataset) % 64 != 0
    trainer.model.train()
    evaluate.after_epoch()
    assert trainer.model.training  # given back in training mode
    inputs, target = (torch.cat(parts) for parts in zip(*evaluate.loader))
    with torch.no_grad():
        output = copy.deepcopy(trainer.model).eval()(inputs)
    loss, _ = trainer.loss_fn(output, target)
    assert math.isclose(trainer.val_metrics["loss"], loss.item(), rel_tol=1e-5)
    assert trainer.val_metrics["accuracy"] == (output.argmax(1) == target).double().mean().item()


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_epoch_grad_norm_is_the_mean_of_its_measured_windows(train_here, tmp_path):
    """Without per-batch metrics the norm is measured on windows 0, 16, 32, ... of each epoch
    (the same training: measuring changes no gradient); save_optimizer=false leaves it out."""
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    args = [*SMALL, "data.num_samples=800", "trainer.epochs=1", "trainer.deterministic=true"]  # 40 batches
    train_here(every, *args, "log.batch_metrics=true")
    train_here(sparse, *args, "checkpoint.save_optimizer=false")
    norms = [float(r["grad_norm"]) for r in rows(every / "batch_metrics.csv")]
    measured = norms[::GRAD_NORM_EVERY]
    assert len(norms) == 40 and len(measured) == 3
    got = float(rows(sparse / "epoch_metrics.csv")[0]["train_grad_norm"])
    assert math.isclose(got, sum(measured) / len(measured), rel_tol=1e-6), (got, measured)
    assert "optimizer" in load_checkpoint(every / "latest_checkpoint.pth")
    assert "optimizer" not in load_checkpoint(sparse / "latest_checkpoint.pth")


def test_bf16_autocast_trains_on_cpu(make_trainer):
    trainer = make_trainer("trainer.precision=bf16", "trainer.epochs=1")
    assert trainer.precision.mode == "bf16"
    trainer.fit()
    assert math.isfinite(trainer.history[-1]["train"]["loss"]) and trainer.step == trainer.batches_per_epoch


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_fp16_overflow_skips_step_and_scheduler_then_recovers(make_trainer):
    trainer = make_trainer("trainer.precision=fp16", "scheduler=cosine", "data.batch_size=4", "trainer.device=cpu")
    scaler = trainer.precision.scaler
    scaler.load_state_dict({"scale": 2.0 ** 24, "growth_factor": 2.0, "backoff_factor": 0.5,
                            "growth_interval": 2000, "_growth_tracker": 0})  # forces fp16 gradient overflow
    first = weights(trainer)
    batches = iter(trainer.train_loader)
    trainer.run_step(next(batches))
    assert trainer.step == 0 and trainer.scheduler.last_epoch == 0  # skipped: no update, no LR step
    assert all(torch.equal(a, b) for a, b in zip(first.values(), weights(trainer).values()))
    assert scaler.get_scale() == 2.0 ** 23
    for batch in batches:  # the rest of the epoch: the scale backs off until updates go through
        trainer.run_step(batch)
    assert 0 < trainer.step < trainer.batches_per_epoch
    assert trainer.scheduler.last_epoch == trainer.step
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.scheduler.get_last_lr()[0]
    assert scaler.get_scale() < 2.0 ** 23
    assert all(torch.isfinite(w).all() for w in weights(trainer).values())
    assert any(not torch.equal(a, b) for a, b in zip(first.values(), weights(trainer).values()))
    assert trainer.precision.state_dict()["scale"] == scaler.get_scale()  # checkpointed with the run


# ---- non-finite losses, end to end ----
@pytest.fixture
def nan_data(tmp_path):
    """The SMALL glint set with one NaN pixel in one training image: one bad batch per epoch."""
    images, masks = make_glint(160, 32)
    images[5, 0, 3, 3] = np.nan
    return write_h5(tmp_path / "nan.h5", images=images, masks=masks)


def test_nonfinite_stop_names_epoch_step_and_last_good_checkpoint(train, tmp_path, nan_data):
    run = tmp_path / "stop"
    proc = train(*SMALL, f"data.path={nan_data}", f"hydra.run.dir={run}", check=False)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "non-finite loss" in err[0] and "epoch 1" in err[0] and "step" in err[0]
    assert "last good checkpoint: none" in err[0]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "FAILED" and "non-finite" in status["error"]
    assert not (run / "latest_checkpoint.pth").exists()


def test_nonfinite_skip_counts_and_goes_on(train_here, tmp_path, nan_data):
    run = tmp_path / "skip"
    train_here(run, *SMALL, f"data.path={nan_data}", "trainer.on_nonfinite=skip", "trainer.epochs=3")
    history = json.loads((run / "metrics.json").read_text())
    assert [r["train"]["nonfinite"] for r in history] == [1, 1, 1]
    assert all(math.isfinite(r["train"]["loss"]) and math.isfinite(r["val"]["loss"]) for r in history)
    assert "skipped update" in (run / "training.log").read_text()
    ckpt = torch.load(run / "latest_checkpoint.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert json.loads((run / "status.json").read_text())["status"] == "COMPLETED"


def test_nonfinite_skip_stops_after_max_consecutive(train, tmp_path):
    images, masks = make_glint(160, 32)
    images[:128] = np.nan  # every training batch is bad
    path = write_h5(tmp_path / "allnan.h5", images=images, masks=masks)
    run = tmp_path / "run"
    proc = train(*SMALL, f"data.path={path}", "trainer.on_nonfinite=skip", "trainer.max_nonfinite=3",
                 f"hydra.run.dir={run}", check=False)
    assert proc.returncode != 0 and "3 consecutive" in proc.stderr


def test_ddp_gradients_are_all_reduced_only_at_window_boundaries(compose_cfg, tmp_path):
    """A real DDP wrapper (gloo, world size 1) with a comm hook that records each all-reduce."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        trainer = build(compose_cfg(*SMALL, "trainer.grad_accum=3", "trainer.epochs=1"), tmp_path / "run")
        ddp = torch.nn.parallel.DistributedDataParallel(trainer.model)
        reduced_at = []

        def record(state, bucket):
            reduced_at.append(trainer.batch_in_epoch)
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        ddp.register_comm_hook(None, record)
        trainer.model = ddp
        for batch in trainer.train_loader:
            trainer.run_step(batch)
    finally:
        dist.destroy_process_group()
    assert trainer.batches_per_epoch == 8 and sorted(set(reduced_at)) == [3, 6, 8]  # the last window is partial

"""The door: bad input of every kind is refused with one line naming the key or file,
before anything is trained and without leaving a run directory that claims a run."""
from __future__ import annotations

import subprocess
import sys

import pytest

from trainforge.cli import USER_ERRORS, one_line
from trainforge.rundir import holds_run
from trainforge.train import run

from conftest import ROOT, SMALL, write_h5

QUICK = [*SMALL, "trainer.epochs=1"]
PRESET_QUICK = {"experiment=digits": ["trainer.epochs=1"],
                "experiment=seqset": ["data.num_patients=100", "trainer.epochs=1"]}


def quick(args):
    """Small settings that fit the case's experiment."""
    return next((PRESET_QUICK[a] for a in args if a in PRESET_QUICK), QUICK)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files of the wrong kind: text where HDF5 or a checkpoint is expected, HDF5 without
    the keys, and an experiment preset with a typo'd key."""
    import numpy as np

    root = tmp_path_factory.mktemp("files")
    (root / "notes.txt").write_text("not a model\n")
    write_h5(root / "nokeys.h5", pictures=np.zeros((4, 1, 8, 8), np.float32))
    (root / "experiment").mkdir()
    (root / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainer:\n  epoch: 3\n")
    (root / "experiment" / "typo_model.yaml").write_text("# @package _global_\nmodel:\n  dept: 3\n")
    return root


# (overrides, what the line must name); {f} is the folder of `files`
CASES = [
    # model
    (["model.depth=0"], "model.depth=0"),
    (["model.base_channels=0"], "model.base_channels"),
    (["model.groups=3"], "model.groups=3"),
    (["model.in_channels=3"], "model.in_channels=3"),
    (["data.image_size=30"], "data.image_size=30"),
    (["experiment=digits", "model.num_classes=5"], "model.num_classes=5"),
    (["experiment=digits", "model.dropout=1.5"], "model.dropout=1.5"),
    (["experiment=seqset", "model.heads=5"], "model.dim=32"),
    (["experiment=seqset", "model.num_variables=4"], "model.num_variables=4"),
    (["model.init_weights=/no/such/weights.pt"], "model.init_weights=/no/such/weights.pt"),
    (["model.init_weights={f}/notes.txt"], "notes.txt"),
    (["model=nosuch"], "model=nosuch"),
    (["model=unet_schema"], "model=unet_schema"),
    (["+model.dept=3"], "did you mean model.depth"),
    # data
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.num_workers=-1"], "data.num_workers=-1"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
    (["data.threshold=2"], "data.threshold=2"),
    (["data.num_samples=1"], "data.num_samples=1"),
    (["data.image_size=abc"], "data.image_size"),
    (["data.path=/no/such/file.h5"], "data.path=/no/such/file.h5"),
    (["data.path={f}"], "data.path="),
    (["data.path={f}/notes.txt"], "notes.txt"),
    (["data.path={f}/nokeys.h5"], "nokeys.h5"),
    (["experiment=seqset", "data.max_length=4"], "data.max_length=4"),
    (["experiment=seqset", "data.max_sequence_length=0"], "data.max_sequence_length=0"),
    # loss
    (["loss.alpha=1.5"], "loss.alpha=1.5"),
    (["loss.gamma=-1"], "loss.gamma=-1"),
    (["loss=bce", "loss.pos_weight=0"], "loss.pos_weight=0"),
    (["loss=hybrid", "loss.focal_weight=0", "loss.dice_weight=0", "loss.bce_weight=0"], "loss.focal_weight=0"),
    (["loss=dice", "loss.smooth=-1"], "loss.smooth=-1"),
    (["experiment=digits", "loss.label_smoothing=1"], "loss.label_smoothing=1"),
    (["loss=nosuch"], "loss=nosuch"),
    # optimizer
    (["optimizer.lr=-5"], "optimizer.lr=-5"),
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["optimizer.lrr=1"], "did you mean optimizer.lr"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1"),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9,1.5]"),
    (["optimizer.eps=0"], "optimizer.eps=0"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer.momentum=0"),
    # scheduler
    (["scheduler=cosine", "scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1"),
    (["scheduler=cosine", "scheduler.warmup_epochs=1"], "trainer.epochs=1"),
    (["scheduler=cosine", "scheduler.min_lr=1.0"], "scheduler.min_lr=1.0"),
    (["scheduler=multistep", "scheduler.milestones=[5,2]"], "scheduler.milestones=[5.0,2.0]"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0"),
    (["scheduler=plateau", "scheduler.factor=1.5"], "scheduler.factor=1.5"),
    (["scheduler=plateau", "scheduler.mode=up"], "scheduler.mode=up"),
    (["scheduler=plateau", "scheduler.monitor=val_nope"], "scheduler.monitor=val_nope"),
    # log, trainer, checkpoint
    (["log.interval=0"], "log.interval=0"),
    (["log.progress=maybe"], "log.progress=maybe"),
    (["trainer.epochs=0"], "trainer.epochs=0"),
    (["trainer.epochs="], "trainer.epochs"),
    (["+trainer.epoch=5"], "did you mean trainer.epochs"),
    (["trainer.grad_accum=0"], "trainer.grad_accum=0"),
    (["trainer.precision=fp8"], "trainer.precision=fp8"),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite=ignore"),
    (["trainer.clip_grad=0"], "trainer.clip_grad=0"),
    (["trainer.device=gpu"], "trainer.device=gpu"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["trainer.threads=0"], "trainer.threads=0"),
    (["checkpoint.mode=best"], "checkpoint.mode=best"),
    (["checkpoint.keep_last_n=-1"], "checkpoint.keep_last_n=-1"),
    (["checkpoint.save_freq=-1"], "checkpoint.save_freq=-1"),
    (["checkpoint.monitor=val_acc"], "checkpoint.monitor=val_acc"),
    # top level, presets, resume
    (["seed=-1"], "seed=-1"),
    (["+epochs=5"], "did you mean trainer.epochs"),
    (["+nothing_reads_this=1"], "nothing_reads_this=1"),
    (["experiment=nope"], "experiment=nope"),
    (["hydra.searchpath=[file://{f}]", "experiment=typo"], "did you mean trainer.epochs"),
    (["hydra.searchpath=[file://{f}]", "experiment=typo_model"], "did you mean model.depth"),
    (["resume=/no/such/run"], "resume=/no/such/run"),
    (["resume={f}/notes.txt"], "notes.txt"),
]


def refusal(compose_cfg, run_dir, args):
    """What train.py does, in-process: compose, then ``run`` (which validates, builds and
    would train); returns the one line the CLI prints for the user error raised."""
    try:
        cfg = compose_cfg(*quick(args), *args)
        run(cfg, run_dir, overrides=[])
    except USER_ERRORS as e:
        return one_line(e)
    pytest.fail(f"accepted: {args}")


def test_table_of_bad_inputs_each_refused_in_one_line(compose_cfg, files, tmp_path):
    assert len(CASES) >= 40
    problems = []
    for i, (args, named) in enumerate(CASES):
        args = [a.format(f=files) for a in args]
        run_dir = tmp_path / f"run{i}"
        line = refusal(compose_cfg, run_dir, args)
        if named.format(f=files) not in line or "\n" in line or "Traceback" in line:
            problems.append(f"{args}: {line!r} does not name {named!r} in one line")
        if run_dir.exists() and holds_run(run_dir):
            problems.append(f"{args}: left {run_dir} claiming a run")
    assert not problems, "\n".join(problems)


# the same door as a user meets it: real train.py processes, started together
CLI = [
    ["+trainer.epoch=5"],
    ["optimizer.lr=-5"],
    ["scheduler=multistep", "scheduler.milestones=[5,2]"],
    ["data.image_size=30"],
    ["data.path={f}/notes.txt"],
    ["model=unet_schema"],
    ["resume=/no/such/run"],
    ["optimizer.weight_decay=-1"],
]


def test_bad_inputs_on_the_command_line(env, files, tmp_path):
    procs = []
    for i, args in enumerate(CLI):
        args = [a.format(f=files) for a in args]
        cmd = [sys.executable, str(ROOT / "train.py"), *QUICK, *args, f"hydra.run.dir={tmp_path / f'run{i}'}"]
        procs.append((args, subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)))
    for i, (args, proc) in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("trainforge: error: "), (args, err)
        key = args[-1].split("=")[0].lstrip("+") if "notes" not in args[-1] else "notes.txt"
        assert key in lines[0], (args, lines[0])
        assert "Traceback" not in out + err
        assert not holds_run(tmp_path / f"run{i}"), args


def test_a_crash_says_where_its_traceback_is(train, tmp_path):
    """A bug, not a user error (here: a classifier's logits fed to a segmentation loss):
    exit 1, one stderr line naming training.log, which holds the traceback."""
    run_dir = tmp_path / "run"
    proc = train(*QUICK, "model=cnn", f"hydra.run.dir={run_dir}", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("trainforge: crashed: "), proc.stderr
    assert f"traceback in {run_dir / 'training.log'}" in lines[0]
    assert "Traceback (most recent call last)" in (run_dir / "training.log").read_text()
    assert "Traceback" not in proc.stdout + proc.stderr

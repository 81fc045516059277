"""The door: bad input of every kind is refused with one line naming the key or file,
before anything is trained and without leaving a run directory that claims a run."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from trainforge.cli import USER_ERRORS, one_line
from trainforge.engine.hooks import EvalHook
from trainforge.errors import ConfigError
from trainforge.files import holds_run
from trainforge.run.train import run

from conftest import ROOT, SMALL, write_h5

QUICK = [*SMALL, "trainer.epochs=1"]
PRESET_QUICK = {"experiment=digits": ["trainer.epochs=1"],
                "experiment=seqset": ["data.num_patients=100", "trainer.epochs=1"],
                "experiment=seqsetvae": ["data.num_patients=64", "trainer.epochs=1"]}


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
    (["model=cnn"], "model=cnn: reads images with class labels, but data=glint"),  # the pairings: see below
    (["loss=ce"], "loss=ce: takes class logits, but model=unet gives binary logits; use loss=focal"),
    (["experiment=seqsetvae", "model.latent_dim=0"], "model.latent_dim=0"),
    (["experiment=seqsetvae", "model.slots=0"], "model.slots=0"),
    (["experiment=seqsetvae", "model.heads=3"], "model.heads=3: must divide model.dim=32"),
    (["experiment=seqsetvae", "model.embed_dim=16"], "model.embed_dim=16: must equal data.embed_dim=32"),
    (["experiment=seqsetvae", "model.head_lr_scale=-1"], "model.head_lr_scale=-1"),
    (["experiment=seqsetvae", "loss.pos_weight=-1"], "loss.pos_weight=-1"),
    (["experiment=seqsetvae", "collapse.min_active_fraction=5"], "collapse.min_active_fraction=5"),
    (["experiment=seqsetvae", "collapse.threshold=-1"], "collapse.threshold=-1"),
    (["experiment=seqsetvae", "data.layout=events"], "model=seqsetvae: reads sequences of event sets"),
    (["experiment=seqset", "data.layout=grid"], "data.layout=grid: allowed values are events, sets"),
    (["model._target_=torch.nn.Linear"], "model.in_channels=1"),  # the constructor's own error, traced
    (["model._target_=nosuch.Module"], "model=nosuch.Module"),
    (["model=unet_schema"], "model=unet_schema"),
    (["+model.dept=3"], "did you mean model.depth"),
    # data
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
    (["data.threshold=2"], "data.threshold=2"),
    (["data.path=/no/such/file.h5"], "data.path=/no/such/file.h5"),
    (["data.path={f}"], "data.path="),
    (["data.path={f}/notes.txt"], "notes.txt"),
    (["data.path={f}/nokeys.h5"], "nokeys.h5"),
    (["data.cache_dir={f}/notes.txt"], "data.cache_dir={f}/notes.txt: cannot hold the embedded data set"),
    (["data.cache_dir=''"], "data.cache_dir='': names no directory"),
    (["experiment=seqset", "data.max_length=4"], "data.max_length=4"),
    # loss
    (["loss.alpha=1.5"], "loss.alpha=1.5"),
    (["loss.gamma=-1"], "loss.gamma=-1"),
    (["loss=bce", "loss.pos_weight=0"], "loss.pos_weight=0"),
    (["loss=hybrid", "loss.focal_weight=0", "loss.dice_weight=0", "loss.bce_weight=0"], "loss.focal_weight=0"),
    (["experiment=digits", "loss.label_smoothing=1"], "loss.label_smoothing=1"),
    # optimizer
    (["optimizer.lr=-5"], "optimizer.lr=-5"),
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["optimizer.lrr=1"], "did you mean optimizer.lr"),
    (["optimizer.lr=${{oc.env:TRAINFORGE_TEST_UNSET}}"], "optimizer.lr=${{oc.env:TRAINFORGE_TEST_UNSET}}: "),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1"),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9,1.5]"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5"),
    (["optimizer._target_=torch.optim.Adagrad"], "optimizer.betas=[0.9, 0.999]"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer.momentum=0"),
    # scheduler
    (["scheduler=cosine", "scheduler.warmup_epochs=1"], "trainer.epochs=1"),
    (["scheduler=cosine", "scheduler.min_lr=1.0"], "scheduler.min_lr=1.0"),
    (["scheduler=multistep", "scheduler.milestones=[5,2]"], "scheduler.milestones=[5.0,2.0]"),
    (["scheduler=plateau", "scheduler.factor=1.5"], "scheduler.factor=1.5"),
    (["scheduler=plateau", "scheduler.mode=up"], "scheduler.mode=up"),
    (["scheduler=plateau", "scheduler.monitor=val_nope"], "scheduler.monitor=val_nope"),
    # log, trainer, checkpoint
    (["log.interval=0"], "log.interval=0"),
    (["log.progress=maybe"], "log.progress=maybe"),
    (["trainer.epochs=0"], "trainer.epochs=0"),
    (["trainer.epochs="], "trainer.epochs"),
    (["+trainer.epoch=5"], "did you mean trainer.epochs"),
    (["trainer.precision=fp8"], "trainer.precision=fp8"),
    (["trainer.device=gpu"], "trainer.device=gpu"),
    (["trainer.device=mps"], "trainer.device=mps: no Apple MPS device"),  # accepted on a Mac that has one
    (["trainer.devices=0"], "trainer.devices=0"),
    (["trainer.clip_grad=0"], "trainer.clip_grad=0"),
    (["trainer.grad_accum=0"], "trainer.grad_accum=0"),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite=ignore"),
    (["trainer.max_nonfinite=0"], "trainer.max_nonfinite=0"),
    (["trainer.ddp_timeout=0"], "trainer.ddp_timeout=0"),
    (["trainer.threads=0"], "trainer.threads=0"),
    (["trainer.compile_backend=nope"], "trainer.compile_backend=nope"),  # named even with compile off
    (["data.num_workers=-1"], "data.num_workers=-1"),
    (["checkpoint.keep_last_n=-1"], "checkpoint.keep_last_n=-1"),
    (["checkpoint.top_k=-1"], "checkpoint.top_k=-1"),
    (["checkpoint.every_n_steps=-1"], "checkpoint.every_n_steps=-1"),
    (["checkpoint.mode=best"], "checkpoint.mode=best"),
    (["checkpoint.save_freq=-1"], "checkpoint.save_freq=-1"),
    (["checkpoint.monitor=val_acc"], "checkpoint.monitor=val_acc"),
    # top level, presets, resume
    (["seed=-1"], "seed=-1"),
    (["+epochs=5"], "did you mean trainer.epochs"),
    (["experiment=nope"], "experiment=nope"),
    (["hydra.searchpath=[file://{f}]", "experiment=typo"], "did you mean trainer.epochs"),
    (["hydra.searchpath=[file://{f}]", "experiment=typo_model"], "did you mean model.depth"),
    (["resume=/no/such/run"], "resume=/no/such/run"),
    (["resume={f}/notes.txt"], "notes.txt"),
    (["+resume_force=true"], "resume_force=true: means nothing without resume"),
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


DATA_KINDS = {"glint": ["data=glint", "data.num_samples=32", "data.image_size=32"], "digits": ["data=digits"],
              "events": ["data=seqset", "data.num_patients=32"],
              "sets": ["data=seqset", "data.num_patients=32", "data.layout=sets"]}
BINARY = ["focal", "bce", "dice", "hybrid"]
TRAINS = {("glint", "unet"): BINARY, ("digits", "cnn"): ["ce"], ("events", "seqencoder"): BINARY,
          ("sets", "seqsetvae"): ["elbo"]}


def test_every_data_model_loss_combination_trains_a_step_or_is_refused_at_the_door(compose_cfg, tmp_path):
    """96 pairings of data (and layout), model and loss: the ten that fit train a step and
    evaluate; every other one is refused by validate() naming model= or loss= and what fits
    (they used to crash in the first step with a shape error)."""
    import itertools

    from trainforge.run.build import build
    from trainforge.config import validate

    from omegaconf import OmegaConf, open_dict

    models, losses = ["unet", "cnn", "seqencoder", "seqsetvae"], ["focal", "bce", "dice", "hybrid", "ce", "elbo"]
    # one composition per option (a composition costs a quarter of a second), then combined
    base = {d: compose_cfg(*args, "log.progress=false", "checkpoint.monitor=val_loss", "checkpoint.mode=min")
            for d, args in DATA_KINDS.items()}
    model_nodes = {m: compose_cfg(f"model={m}").model for m in models}
    loss_nodes = {name: compose_cfg(f"loss={name}").loss for name in losses}
    problems = []
    for data, model, loss in itertools.product(DATA_KINDS, models, losses):
        cfg = OmegaConf.create(OmegaConf.to_container(base[data]))
        with open_dict(cfg):
            cfg.model, cfg.loss = model_nodes[model], loss_nodes[loss]
        fits = loss in TRAINS.get((data, model), [])
        try:
            validate(cfg)
        except ConfigError as e:
            expected = f"model={model}: reads" if (data, model) not in TRAINS else f"loss={loss}: takes"
            if fits or not str(e).startswith(expected) or "; use " not in str(e):
                problems.append(f"{data} {model} {loss}: {e}")
            continue
        if not fits:
            problems.append(f"{data} {model} {loss}: accepted")
            continue
        trainer = build(cfg, tmp_path / f"{data}_{model}_{loss}")
        trainer.run_step(next(iter(trainer.train_loader)))
        next(h for h in trainer.hooks if isinstance(h, EvalHook)).after_epoch()
        assert math.isfinite(trainer.val_metrics["loss"])
    assert not problems, "\n".join(problems)


def test_a_constructor_error_names_group_and_key():
    """torch's own check, for a value no rule caught, comes out as group.key=value."""
    import torch

    from trainforge.run.build import blame
    from trainforge.errors import ConfigError

    node = {"_target_": "torch.optim.SGD", "lr": -1.0, "momentum": 0.9}
    with pytest.raises(ConfigError, match=r"^optimizer\.lr=-1\.0: Invalid learning rate: -1\.0 \(raised by torch"):
        with blame("optimizer", node):
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=-1.0, momentum=0.9)


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


def test_a_refused_value_is_reported_before_torch_is_imported(env, tmp_path):
    """The door answers in about a second: torch (seconds to import) is never loaded."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train.py"), "trainer.epochs=-1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "trainer.epochs=-1" in proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "hydra" in imported and "torch" not in imported


def test_a_refused_run_leaves_no_empty_run_directory(env, tmp_path):
    """A typo costs no clutter: the new outputs/DATE/TIME/ that Hydra made for a refused
    run (it holds only Hydra's record) is removed; another run's directory and one named
    by hydra.run.dir stay."""
    other = tmp_path / "outputs" / "2000-01-01" / "00-00-00_000000"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    named = tmp_path / "named"
    (tmp_path / "plain.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "empty").mkdir()
    cases = (["trainer.epochs=-1"], ["resume=/no/such/run"], ["trainer.epochs=-1", f"hydra.run.dir={named}"],
             [*QUICK, "checkpoint.monitor=val_nope"],  # found while building, before the run starts
             ["resume=plain.pth"], ["resume=empty"],  # nothing lands next to the file, nor in the folder
             [f"hydra.run.dir={tmp_path / 'plain.pth'}"])  # a file where the run directory would go
    procs = [(args, subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
             for args in cases]  # at once: each names its own microsecond directory
    for args, proc in procs:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 2 and err.startswith("trainforge: error: "), (args, err)
    assert list((tmp_path / "outputs").glob("*/*")) == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "named", "outputs", "plain.pth"]
    assert list((tmp_path / "empty").iterdir()) == []
    assert (other / ".hydra" / "overrides.yaml").exists() and (named / ".hydra" / "overrides.yaml").exists()


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


def test_a_crash_says_where_its_traceback_is(env, tmp_path):
    """A bug, not a user error (here: a model of the user's own that fails in its third
    training step, after the dry batch passed): exit 1, one stderr line naming training.log,
    which holds the traceback."""
    (tmp_path / "own_model.py").write_text(
        "import torch\n\nclass Model(torch.nn.Module):\n    def __init__(self, **keys):\n"
        "        super().__init__()\n        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)\n        self.calls = 0\n\n"
        "    def forward(self, x):\n        self.calls += 1\n        if self.calls == 3:\n"
        "            raise RuntimeError('a bug in step 2')\n        return self.conv(x)\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *QUICK, "model._target_=own_model.Model",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("trainforge: crashed: "), proc.stderr
    assert f"traceback in {run_dir / 'training.log'}" in lines[0]
    assert "Traceback (most recent call last)" in (run_dir / "training.log").read_text()
    assert "Traceback" not in proc.stdout + proc.stderr


# Two processes forked from one parent that has composed the config, released together
# on one explicit run directory; each reports "trained" or its one-line refusal.
RACE = r"""
import json, multiprocessing as mp, sys
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: once here, not per child)
import trainforge.run.build, trainforge.run.resume  # noqa: F401  (and these: children only train)
from hydra import compose, initialize_config_dir
from trainforge.cli import USER_ERRORS, one_line
from trainforge.run.train import run

conf, base, rounds, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose(config_name="train", overrides=overrides)

def child(run_dir, go, out):
    go.wait()
    try:
        run(cfg.copy(), run_dir, overrides=[])
        out.put("trained")
    except USER_ERRORS as e:
        out.put(one_line(e))

ctx, results = mp.get_context("fork"), []
for i in range(rounds):
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=child, args=(f"{base}/run{i}", go, out)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    results.append(sorted([out.get(timeout=120), out.get(timeout=120)]))
    for p in procs:
        p.join()
print(json.dumps(results))
"""
TINY = ["data.num_samples=40", "data.image_size=16", "data.batch_size=16", "trainer.epochs=1", "trainer.threads=1",
        "log.progress=false"]


def test_two_runs_started_together_on_one_directory_never_both_train(env, tmp_path):
    import json

    from conftest import CONF

    rounds = 8
    proc = subprocess.run([sys.executable, "-c", RACE, str(CONF), str(tmp_path), str(rounds), *TINY], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for i, (refused, trained) in enumerate(results):
        assert trained == "trained", results
        assert "already holds a run" in refused and str(tmp_path / f"run{i}") in refused, results
        log = (tmp_path / f"run{i}" / "training.log").read_text()
        assert log.count("Run directory:") == 1
        assert len(json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())) == 1


@pytest.mark.slow  # the guard itself is tested above, many times; this is the same through Hydra's run_job
def test_two_train_py_on_one_run_dir_at_once(env, tmp_path):
    """The same through train.py (Hydra's run_job in between): one trains, one refuses."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "already holds a run" in outcomes[1][1] and len(outcomes[1][1].strip().splitlines()) == 1
    assert (run_dir / "training.log").read_text().count("Run directory:") == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk (root only; skipped where it cannot be mounted)."""
    import os

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow  # CI time: .ci/run runs it
def test_full_disk_mid_run_names_the_file_and_the_checkpoint_to_resume(env, small_disk, train):
    import json
    import os
    import time

    run_dir = small_disk / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *SMALL, "trainer.epochs=3", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=small_disk.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = run_dir / "checkpoints" / "checkpoint_epoch_001.pth"
    while not (first.exists() and (run_dir / "checkpoints" / "index.json").exists()) and proc.poll() is None:
        time.sleep(0.005)
    # fill the disk, leaving room for epoch 2's log lines and CSVs but not for its checkpoint
    disk = os.statvfs(small_disk)
    room = max(64 << 10, (run_dir / "latest_checkpoint.pth").stat().st_size // 2)
    with open(small_disk / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, disk.f_bavail * disk.f_frsize - room)
    err = proc.communicate(timeout=300)[1]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert f"cannot write {run_dir}/" in lines[0] and "No space left on device" in lines[0], lines[0]
    assert f"last good checkpoint: {run_dir / 'latest_checkpoint.pth'}" in lines[0], lines[0]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "FAILED"

    (small_disk / "filler").unlink()
    train(f"resume={run_dir}")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "COMPLETED"
    assert [r["epoch"] for r in json.loads((run_dir / "metrics.json").read_text())] == [1, 2, 3]


def test_full_disk_under_each_sink_names_its_file(small_disk):
    """training.log, the epoch CSV/JSON and batch_metrics.csv on a disk with no room left:
    a WriteError naming the file and the reason, never logging's own stderr report."""
    import logging
    import os

    from trainforge.engine.logging import LOGGER, BatchCSV, setup_logging, write_epoch_files
    from trainforge.errors import WriteError

    csv = BatchCSV(small_disk, ["epoch", "batch", "loss"])
    log = setup_logging(small_disk)
    with open(small_disk / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize)
    try:
        with pytest.raises(WriteError, match=r"training\.log: No space left on device"):
            for _ in range(1000):
                log.info("x" * 200)
        log.info("dropped, not raised: the file can take no more")
        with pytest.raises(WriteError, match=r"epoch_metrics\.csv: No space left on device"):
            write_epoch_files(small_disk, [{"epoch": 1, "train": {"loss": 1.0}, "lr": 0.1, "epoch_time": 1.0}])
        with pytest.raises(WriteError, match=r"batch_metrics\.csv: No space left on device"):
            for _ in range(1000):
                csv.add([1, 1, 0.5] * 50)
                csv.flush()
    finally:
        for handler in list(logging.getLogger(LOGGER).handlers):
            logging.getLogger(LOGGER).removeHandler(handler)
            handler.close()

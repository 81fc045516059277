"""Your own project (b): plain PyTorch parts (a Dataset pair, a loss returning a tensor,
torchmetrics and protocol-less metrics, a callback with a state), inline and as option
files, checked at the door and on a dry batch; their metrics under 2 DDP ranks.

The project is ``tests/fixtures/own_project`` (it imports nothing of trainforge), copied to
a scratch folder and trained there with the ``trainforge`` command, as a user would.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

PROJECT = ROOT / "tests" / "fixtures" / "own_project"


@pytest.fixture
def project(tmp_path):
    return Path(shutil.copytree(PROJECT, tmp_path / "proj"))


def trainforge(project, *args, check=True, cwd=None, env=None):
    proc = subprocess.run([sys.executable, "-m", "trainforge", *args], cwd=cwd or project, capture_output=True,
                          text=True, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, f"trainforge {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def rows(run: Path) -> list:
    return list(csv.DictReader(open(run / "epoch_metrics.csv")))


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_inline_plain_parts_train_with_their_metrics(project):
    run = project / "runs" / "inline"
    trainforge(project, "experiment=inline", f"hydra.run.dir={run}")
    history = rows(run)
    assert [r["epoch"] for r in history] == ["1", "2"]
    assert {"val_auroc", "val_count", "val_median"} <= set(history[0])
    assert all(0.0 <= float(r["val_auroc"]) <= 1.0 and float(r["val_count"]) == 31 for r in history)
    config = (run / "config.yaml").read_text()
    assert "trainforge.data.Datasets" in config and "base_channels" not in config  # UNet's keys replaced, not merged
    assert '"monitor": "val_auroc"' in (run / "status.json").read_text()


def test_option_files_plain_datasets_and_a_torch_loss(project):
    run = project / "runs" / "files"
    trainforge(project, "experiment=files", f"hydra.run.dir={run}")
    history = rows(run)
    assert len(history) == 1 and float(history[0]["val_count"]) == 17  # data/signals.yaml's val set
    config = (run / "config.yaml").read_text()
    assert "torch.nn.CrossEntropyLoss" in config and "channels: 4" in config
    # a CLI override of a key the option file leaves at the class's default
    run2 = project / "runs" / "files2"
    trainforge(project, "experiment=files", "model.dropout=0.0", f"hydra.run.dir={run2}")
    assert "dropout: 0.0" in (run2 / "config.yaml").read_text()


@pytest.mark.slow
def test_a_callback_and_metric_state_survive_a_resume(project):
    run, log = project / "runs" / "cb", project / "counter.log"
    cb = f"+callbacks.counter={{_target_:sigpkg.parts.Counter,log:{log}}}"
    trainforge(project, "experiment=inline", "trainer.epochs=1", cb, f"hydra.run.dir={run}")
    trainforge(project, "trainer.epochs=3", f"resume={run}", cwd=project.parent)  # recomposed from the run's record
    # the count goes on from the checkpoint's state (1), it does not restart at 0
    assert log.read_text().split("\n")[:3] == ["1 1", "2 2", "3 3"]
    ckpt = torch.load(run / "latest_checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["callback.counter"] == {"epochs": 3} and "metric.auroc" in ckpt
    assert [r["epoch"] for r in rows(run)] == ["1", "2", "3"]


BROKEN = [
    (["data.train._target_=sigpkg.parts.OnlyInputs"],
     "data.train=sigpkg.parts.OnlyInputs: an item (or what data.collate_fn makes of a list of items) must be a "
     "pair (inputs, target); it gave a tensor of shape (16, 1, 32)"),
    (["loss._target_=sigpkg.parts.per_sample"],
     "loss=sigpkg.parts.per_sample: must return a scalar tensor, or (total, {name: value}); it returned a tensor "
     "of shape (16,)"),
    (["loss._target_=sigpkg.parts.mse"],
     "loss=sigpkg.parts.mse: cannot take the model's output (a tensor of shape (16, 2)) and the target (a tensor "
     "of shape (16,)): RuntimeError:"),
    (["model.num_classes=3"],
     "metrics.auroc=MulticlassAUROC: update(output, target) failed on a batch (output: a tensor of shape (16, 3)"),
]


@pytest.mark.parametrize("overrides,line", BROKEN, ids=["item", "scalar", "shapes", "metric"])
def test_a_broken_contract_is_one_line_exit_2_and_no_run_dir(project, overrides, line):
    proc = trainforge(project, "experiment=inline", *overrides, check=False)  # the default run directory
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("trainforge:")]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(f"trainforge: error: {line}"), \
        proc.stderr[-2000:]
    assert not (project / "outputs").exists()  # the new run directory is gone again


@pytest.mark.parametrize("override,line", [
    ("model.chanels=8", "model.chanels=8: not a parameter of sigpkg.parts.Net (did you mean model.channels? "
                        "it takes: channels, num_classes, norm, dropout)"),
    ("+data.train.lenght=3", "data.train.lenght=3: not a parameter of sigpkg.parts.Signals (did you mean "
                             "data.train.length? it takes: n, length, seed)"),
    ("model.channels=abc", "model.channels=abc: must be an integer (the type of sigpkg.parts.Net's argument "
                           "channels)"),
    ("model.norm=3", "model.norm=3: must be true or false (the type of sigpkg.parts.Net's argument norm)"),
    ("model._target_=sigpkg.parts.Nett", "model._target_=sigpkg.parts.Nett: sigpkg.parts has no Nett; did you "
                                         "mean sigpkg.parts.Net?"),
    ("metrics.count._target_=nopkg.Count", "metrics.count._target_=nopkg.Count: no module nopkg can be imported"),
], ids=["typo", "nested-typo", "type", "bool", "target", "module"])
def test_user_keys_are_checked_against_the_signature(project, override, line):
    proc = trainforge(project, "experiment=inline", override, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(f"trainforge: error: {line}"), proc.stderr[-2000:]
    assert not (project / "outputs").exists()


def test_a_module_that_fails_to_import_is_named_with_its_line(project):
    (project / "sigpkg" / "broken.py").write_text("import torch\n\nclass Net(torch.nn.Module)\n    pass\n")
    proc = trainforge(project, "experiment=inline", "model._target_=sigpkg.broken.Net", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("trainforge: error: model._target_=sigpkg.broken.Net: importing it "
                                          "failed: SyntaxError:") and "broken.py:3)" in proc.stderr
    (project / "sigpkg" / "broken.py").write_text("import torch\nraise RuntimeError('no GPU here')\n")
    proc = trainforge(project, "experiment=inline", "model._target_=sigpkg.broken.Net", check=False)
    assert proc.returncode == 2 and "RuntimeError: no GPU here" in proc.stderr and "broken.py:2)" in proc.stderr


def test_a_required_argument_left_out_is_named(project):
    (project / "sigpkg" / "strict.py").write_text(
        "from torch import nn\n\nclass Net(nn.Linear):\n    def __init__(self, channels: int, width: int):\n"
        "        super().__init__(32, 2)\n")
    proc = trainforge(project, "experiment=inline", "model._target_=sigpkg.strict.Net", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "trainforge: error: model.width: required by sigpkg.strict.Net (it has no default); set it in the config "
        "or with +model.width=VALUE"), proc.stderr


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_the_dry_batch_changes_nothing(project):
    """BatchNorm buffers and dropout's draws: with and without the dry batch, the same weights, bitwise."""
    runs = {}
    for dry in ("true", "false"):
        runs[dry] = project / "runs" / f"dry_{dry}"
        trainforge(project, "experiment=inline", f"trainer.dry_batch={dry}", f"hydra.run.dir={runs[dry]}")
    a, b = (weights(runs[d] / "best_model_weights.pt") for d in ("true", "false"))
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_one_two_and_three_ranks_validate_evaluate_and_predict_every_sample_once(project):
    """A prime-sized validation set (31) split over 1, 2 and 3 gloo ranks (31; 15 + 16;
    10 + 10 + 11): training's validation, ``trainforge eval`` and ``trainforge predict`` give
    the same torchmetrics AUROC, summed count (sum_states), median of gathered scores
    (cat_states), protocol-less median (inputs replayed) and loss (1e-6), and the same
    predictions, each sample once in order. The weights barely move (lr 1e-9, no BatchNorm,
    no dropout), so every run's validation sees the same model."""
    common = ["experiment=inline", "optimizer=sgd", "optimizer.lr=1e-9", "model.norm=false", "model.dropout=0.0",
              "trainer.epochs=1"]
    runs = {n: project / "runs" / f"ranks{n}" for n in (1, 2, 3)}
    for n, run in runs.items():
        trainforge(project, *common, f"trainer.devices={n}", f"data.batch_size={(8, 4, 3)[n - 1]}",
                   f"hydra.run.dir={run}")
    names = ("val_auroc", "val_count", "val_median", "val_median_cat", "val_loss")
    recorded = rows(runs[1])[0]
    assert float(recorded["val_count"]) == 31 and recorded["val_median"] == recorded["val_median_cat"]
    assert 0.5 < float(recorded["val_auroc"]) < 1.0  # a value that depends on every score
    predictions = {}
    for n in (1, 2, 3):
        validated = rows(runs[n])[0]  # each sample once: a count of 31, not 62, 15 or 16
        assert all(abs(float(validated[k]) - float(recorded[k])) < 1e-6 for k in names), (n, validated, recorded)
        trainforge(project, "eval", str(runs[1]), f"trainer.devices={n}", "data.batch_size=4")
        record = json.loads(sorted((runs[1] / "eval").glob("*.json"))[-1].read_text())
        assert record["ranks"] == n and record["samples"] == 31
        assert all(abs(record["metrics"][k[4:]] - float(recorded[k])) < 1e-6 for k in names), (n, record)
        out = project / f"pred{n}.csv"
        trainforge(project, "predict", str(runs[1]), f"trainer.devices={n}", f"out={out}")
        predictions[n] = list(csv.DictReader(open(out)))
        assert not list(project.glob(f".pred{n}.csv.part*"))  # the parts were appended and removed
    assert [int(r["index"]) for r in predictions[3]] == list(range(31))
    for n in (2, 3):
        assert [r["label"] for r in predictions[n]] == [r["label"] for r in predictions[1]]
        assert all(abs(float(a[k]) - float(b[k])) < 1e-6 for a, b in zip(predictions[n], predictions[1])
                   for k in ("output_0", "output_1", "probability_1"))
    assert "DDP on 3 processes" in (runs[3] / "training.log").read_text()


def test_trainforge_new_writes_a_project_that_trains_at_once(tmp_path):
    proc = trainforge(tmp_path, "new", "demo")
    assert "trainforge experiment=demo" in proc.stdout
    files = sorted(str(p.relative_to(tmp_path / "demo")) for p in (tmp_path / "demo").rglob("*") if p.is_file())
    assert files == ["README.md", "conf/experiment/demo.yaml", "demo/__init__.py", "demo/data.py", "demo/loss.py",
                     "demo/metric.py", "demo/model.py", "tests/test_demo.py"]
    assert "demo.model.Net" in (tmp_path / "demo/conf/experiment/demo.yaml").read_text()
    run = tmp_path / "demo" / "run"
    trainforge(tmp_path / "demo", "experiment=demo", "trainer.epochs=1", "log.progress=false", f"hydra.run.dir={run}")
    assert '"status": "COMPLETED"' in (run / "status.json").read_text()
    assert "val_accuracy" in (run / "epoch_metrics.csv").read_text()


@pytest.mark.parametrize("name,line", [
    ("demo", "new demo: {where} already exists; nothing was written"),
    ("1st", "new 1st: NAME must be a Python identifier"),
    ("class", "new class: NAME must be a Python identifier"),
    ("torch", "new torch: a module torch can already be imported here"),
])
def test_trainforge_new_refuses_in_one_line_and_writes_nothing(tmp_path, name, line):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep")
    before = sorted(tmp_path.rglob("*"))
    proc = trainforge(tmp_path, "new", name, check=False)
    expected = "trainforge: error: " + line.format(where=tmp_path / "demo")
    assert proc.returncode == 2 and proc.stderr.strip().startswith(expected), proc.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no staging folder left


def walkthrough() -> list:
    """The commands of docs/own-project.md's first bash block, in order."""
    import re

    text = (ROOT / "docs" / "own-project.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_walkthrough_of_the_docs_page_runs(tmp_path):
    """docs/own-project.md's walkthrough as written (each training command with a smaller
    data set appended): a project, a run, overrides, a metric from the command line, a
    sweep, a resume, the project's own test."""
    import shlex

    where = tmp_path
    small = ["data.train.size=64", "data.val.size=32", "log.progress=false"]
    for line in walkthrough():
        argv = shlex.split(line)
        if argv[0] == "cd":
            where = where / argv[1]
            continue
        if argv[0] == "python":
            proc = subprocess.run([sys.executable, *argv[1:], "-q", "-p", "no:cacheprovider"], cwd=where,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, line + proc.stdout[-2000:]
            continue
        assert argv[0] == "trainforge", line
        trains = argv[1] not in ("new",) and not any(a.startswith("resume=") for a in argv)
        trainforge(where, *argv[1:], *(small if trains else []))
    runs = where / "runs" / "first"
    assert [int(r["epoch"]) for r in rows(runs)] == list(range(1, 9))  # 5 epochs, then resumed to 8
    sweep = sorted((where / "multirun").glob("*/*/summary.csv"))
    assert len(sweep) == 1 and len(list(csv.DictReader(open(sweep[0])))) == 2
    f1_runs = [p for p in (where / "outputs").glob("*/*") if "val_f1" in (p / "epoch_metrics.csv").read_text()]
    assert len(f1_runs) == 1


def test_the_model_is_called_as_its_forward_takes_the_inputs():
    """A tensor whole; a tuple spread when forward takes its parts; a dict as keywords when
    forward names its keys; a forward(self, batch) gets a tuple or dict whole."""
    from torch import nn

    from trainforge.engine.components import call_style
    from trainforge.engine.trainer import call

    class Pair(nn.Module):
        def forward(self, x, mask=None):
            return x * (1 if mask is None else mask)

    class Whole(nn.Module):
        def forward(self, batch):
            return batch["x"] if isinstance(batch, dict) else batch[0]

    x, mask = torch.ones(2, 3), torch.zeros(2, 3)
    cases = [(Pair(), x, "whole"), (Pair(), (x, mask), "spread"), (Pair(), {"x": x, "mask": mask}, "keywords"),
             (Whole(), (x, mask), "whole"), (Whole(), {"x": x, "mask": mask}, "whole"), (Pair(), (x,), "spread")]
    for model, inputs, style in cases:
        assert call_style(model, inputs) == style, (type(model).__name__, type(inputs).__name__)
    assert call(Pair(), (x, mask), "spread").sum() == 0 and call(Pair(), {"x": x, "mask": mask}, "keywords").sum() == 0


def test_checkpoint_monitor_follows_the_data_option(project):
    """Plain datasets monitor val_loss (min) unless told; glint keeps val_dice (max), so its
    runs resume without drift; a monitor set alone gets its mode from its name."""
    from trainforge.config.components import mode_of, monitor_of

    run = project / "runs" / "files"
    trainforge(project, "experiment=files", f"hydra.run.dir={run}")
    best = json.loads((run / "status.json").read_text())["best"]
    assert (best["monitor"], best["mode"]) == ("val_loss", "min")
    assert (monitor_of("trainforge.data.GlintData"), mode_of("trainforge.data.GlintData", "val_dice")) == \
        ("val_dice", "max")
    assert (monitor_of("trainforge.data.Datasets"), mode_of("trainforge.data.Datasets", "val_loss")) == \
        ("val_loss", "min")
    assert mode_of("trainforge.data.Datasets", "val_auroc") == "max"
    assert mode_of("trainforge.data.GlintData", "val_loss") == "min"

"""After training: ``trainforge eval`` and ``trainforge.evaluate`` rebuild a run from its own
config.yaml, load the checkpoint the run's index names, and reproduce the validation values
training recorded; they write only under RUN/eval/; a missing best or a change of what is
evaluated is one line; a run made by older code evaluates too."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys

import pytest

import trainforge
from conftest import ROOT, SMALL

FIXTURE = ROOT / "tests" / "fixtures" / "run_before_layout"


def rows(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def files(run) -> dict:
    """Every file of the run but RUN/eval/, with its content's hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.relative_to(run).parts[0] != "eval"}


def eval_cmd(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "trainforge", "eval", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """Three epochs of the default experiment (small), an epoch file each."""
    import os

    path = tmp_path_factory.mktemp("evaluate") / "run"
    env = dict(os.environ, TRAINFORGE_DATA_DIR=str(data_dir))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *SMALL, "trainer.epochs=3",
                           "checkpoint.keep_last_n=0", f"hydra.run.dir={path}"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


@pytest.mark.slow  # CI time: a 3-epoch run and three evaluations
def test_eval_of_best_latest_and_an_epoch_gives_the_values_training_recorded(run, env, tmp_path):
    before = files(run)
    recorded = {int(r["epoch"]): r for r in rows(run / "epoch_metrics.csv")}
    best = json.loads((run / "status.json").read_text())["best"]
    for ckpt, epoch in (("best", best["epoch"]), ("latest", 3), ("epoch:2", 2)):
        proc = eval_cmd(env, run, f"ckpt={ckpt}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"(ckpt={ckpt}: epoch {epoch}, raw weights) on val (32 samples)" in proc.stdout, proc.stdout
        record = json.loads(sorted((run / "eval").glob(f"*_val_{ckpt.replace(':', '-')}.json"))[-1].read_text())
        assert record["epoch"] == epoch and record["split"] == "val"
        for name, value in record["metrics"].items():
            assert abs(value - float(recorded[epoch][f"val_{name}"])) <= 1e-6, (ckpt, name)
    table = rows(run / "eval" / "evaluations.csv")
    assert [r["checkpoint"] for r in table] == ["best", "latest", "epoch:2"] and "val_dice" in table[0]
    assert files(run) == before  # only RUN/eval/ was written


@pytest.mark.slow  # CI time: seven starts of the command
def test_a_missing_best_or_a_change_of_what_is_evaluated_is_one_line(run, env, tmp_path):
    copy = shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("eval"))
    (copy / "best_model.pth").unlink()
    cases = [((copy,), f"ckpt=best: {copy / 'best_model.pth'} does not exist (the run saved no best epoch); "
                       "evaluate ckpt=latest, or ckpt=epoch:N"),
             ((copy, "ckpt=latest", "model.base_channels=8"), "model.base_channels=8: an evaluation may change only"),
             ((copy, "ckpt=epoch:9"), "ckpt=epoch:9: no such epoch file"),
             ((copy, "ckpt=latest", "data.batch_size=abc"), "data.batch_size=abc: must be an integer >= 1"),
             ((copy, "ckpt=latest", "split=all"), "split=all: allowed values are val, test, train"),
             ((copy, "ckpt=latest", "weights=ema"), "holds no EMA weights"),
             ((tmp_path / "nothing",), "nothing: no such directory")]
    for args, message in cases:
        proc = eval_cmd(env, *args, cwd=tmp_path)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    assert not (copy / "eval").exists()


def test_a_run_made_by_older_code_evaluates_from_python(data_dir, tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "old")
    record = trainforge.evaluate(run, overrides=[f"data.cache_dir={data_dir}"], out=lambda *a: None)
    recorded = rows(run / "epoch_metrics.csv")[0]
    assert record["epoch"] == 1 and record["samples"] == 32
    assert abs(record["metrics"]["dice"] - float(recorded["val_dice"])) <= 1e-6
    assert abs(record["metrics"]["loss"] - float(recorded["val_loss"])) <= 1e-6
    assert (run / "eval" / "evaluations.csv").is_file()


@pytest.mark.slow  # CI time: a sweep of two jobs
def test_eval_of_a_sweep_adds_the_columns_to_its_summary(train, env, tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", *SMALL, "trainer.epochs=1", "loss=focal,dice", f"hydra.sweep.dir={sweep}")
    proc = eval_cmd(env, sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = {r["job"]: r for r in rows(sweep / "summary.csv")}
    for job in ("0", "1"):
        record = json.loads(next((sweep / job / "eval").glob("*.json")).read_text())
        assert float(summary[job]["eval_val_dice"]) == pytest.approx(record["metrics"]["dice"], abs=1e-6)


@pytest.mark.slow  # CI time: a run of the own project and an evaluation
def test_plain_datasets_are_evaluated_on_their_test_set(tmp_path):
    """The own project's inline experiment with a data.test dataset: built only when
    evaluated (training never reads it), evaluated with the run's own metrics."""
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "own_project", tmp_path / "proj")
    run = project / "run"
    proc = subprocess.run([sys.executable, "-m", "trainforge", "experiment=inline", "trainer.epochs=1",
                           "+data.test={_target_: sigpkg.parts.Signals, n: 23, seed: 2}", f"hydra.run.dir={run}"],
                          cwd=project, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "trainforge", "eval", str(run), "split=test"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(next((run / "eval").glob("*_test_best.json")).read_text())
    assert record["samples"] == 23 and record["split"] == "test"
    assert {"loss", "auroc", "count", "median", "median_cat"} <= set(record["metrics"])
    assert record["metrics"]["count"] == 23  # a sum-state metric saw every test sample once


def test_every_data_option_has_a_test_split_apart_from_train_and_val(data_dir):
    """glint and the sequence sets generate theirs apart (another seed); digits carves one
    out only when asked (data.test_fraction), keeping the file and split of runs made
    before; no test sample is a train or val sample."""
    import numpy as np

    from trainforge.data.digits import stratified_split
    from trainforge.run.build import instantiate

    def raw(x) -> bytes:  # a sample's inputs (a tensor, or a tuple or dict of them) as bytes
        if isinstance(x, dict):
            return b"".join(raw(x[k]) for k in sorted(x))
        if isinstance(x, (tuple, list)):
            return b"".join(raw(v) for v in x)
        return np.asarray(x).tobytes()

    def keys(dataset) -> set:
        return {hashlib.sha256(raw(dataset[i][0])).hexdigest() for i in range(len(dataset))}

    for overrides in ([*SMALL], ["experiment=seqset", "data.num_patients=200", "data.test_patients=50"],
                      ["experiment=digits", "data.test_fraction=0.1"]):
        cfg = trainforge.compose([*overrides, f"data.cache_dir={data_dir}"])
        data = instantiate(cfg.data, "data")
        train, val, test = data.train_set(), data.val_set(), data.test_set()
        assert len(test) > 0 and not keys(test) & (keys(train) | keys(val)), overrides
    plain = instantiate(trainforge.compose(["experiment=digits", f"data.cache_dir={data_dir}"]).data, "data")
    assert plain.test_set() is None and plain.path.name == "digits_val0.2_seed0.h5"  # the file old runs read
    labels = np.repeat(np.arange(10), 50)
    before = stratified_split(labels, 0.2, 0)  # no test part: the split it always was
    train, val, test = stratified_split(labels, 0.2, 0, test_fraction=0.1)
    assert len(test) == 50 and len(val) == 100 and not (set(train) | set(val)) & set(test)
    assert sorted([*train, *val, *test]) == list(range(500)) and len(before[1]) == 100


@pytest.mark.slow  # CI time: .ci/run runs it
def test_test_after_fit_records_the_best_checkpoint_on_the_test_split(train, tmp_path):
    run = tmp_path / "run"
    proc = train(*SMALL, "trainer.epochs=2", "trainer.test_after_fit=true", f"hydra.run.dir={run}")
    record = json.loads((run / "status.json").read_text())
    test = record["test"]
    assert test["checkpoint"] == "best" and test["epoch"] == record["best"]["epoch"] and test["samples"] == 256
    assert set(test["metrics"]) == {"loss", "dice", "iou"}
    again = trainforge.evaluate(run, split="test", write=False, out=lambda *a: None)
    assert all(abs(again["metrics"][k] - v) <= 1e-6 for k, v in test["metrics"].items())
    assert "Test (best checkpoint, epoch" in proc.stdout + proc.stderr
    assert [r["split"] for r in rows(run / "eval" / "evaluations.csv")] == ["test"]
    refused = train("experiment=digits", "trainer.test_after_fit=true", f"hydra.run.dir={tmp_path / 'no'}",
                    check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "trainforge: error: trainer.test_after_fit=true: data=trainforge.data.DigitsData has no test split"), \
        refused.stderr
    assert not (tmp_path / "no" / "status.json").exists()


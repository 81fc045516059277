"""``trainforge predict``: every sample's output once, in input order; per-sample outputs in a
CSV (probabilities and label for classes), dense ones in HDF5; a split or a file in the
data option's format; nothing overwritten."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import trainforge
from conftest import SMALL
from trainforge.errors import ConfigError
from trainforge.run.build import instantiate


def predict_cmd(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "trainforge", "predict", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # CI time: a digits run and two starts of the command
def test_class_predictions_of_the_best_checkpoint_give_its_recorded_accuracy(train, env, data_dir, tmp_path):
    run = tmp_path / "digits"
    train("experiment=digits", "trainer.epochs=2", "log.progress=false", f"hydra.run.dir={run}")
    out = tmp_path / "val.csv"
    proc = predict_cmd(env, run, "split=val", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    cfg = trainforge.compose(["experiment=digits", f"data.cache_dir={data_dir}"])
    val = instantiate(cfg.data, "data").val_set()
    truth = [int(val[i][1]) for i in range(len(val))]
    assert [int(r["index"]) for r in table] == list(range(len(val)))  # every sample once, in order
    probs = np.array([[float(r[f"probability_{c}"]) for c in range(10)] for r in table])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = [int(r["label"]) for r in table]
    assert labels == probs.argmax(axis=1).tolist()
    best = json.loads((run / "status.json").read_text())["best"]
    assert abs(np.mean(np.array(labels) == np.array(truth)) - best["value"]) < 1e-9  # the best val_accuracy
    again = predict_cmd(env, run, "split=val", f"out={out}", cwd=tmp_path)
    assert again.returncode == 2 and f"out={out}: exists already" in again.stderr  # nothing overwritten


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_dense_predictions_go_to_hdf5_for_a_split_or_a_file(train, data_dir, tmp_path):
    run = tmp_path / "glint"
    train(*SMALL, "trainer.epochs=1", f"hydra.run.dir={run}")
    out = trainforge.predict(run, split="test", echo=lambda *a: None)
    assert out.parent == run / "predictions" and out.suffix == ".h5"
    model, cfg = trainforge.load(run)
    data = instantiate(cfg.data, "data")
    test = data.test_set()
    with h5py.File(out, "r") as f:
        assert f["index"][:].tolist() == list(range(len(test))) and f["output"].shape == (256, 1, 32, 32)
        first = torch.from_numpy(f["output"][0])
        assert ((torch.from_numpy(f["probability"][:5]) > 0.5).long() == torch.from_numpy(f["label"][:5])).all()
    with torch.no_grad():
        expected = model(test[0][0][None])[0]
    assert torch.allclose(first, expected, atol=1e-5)
    by_file = trainforge.predict(run, input=test.path, out=tmp_path / "file.h5", echo=lambda *a: None)
    with h5py.File(out, "r") as a, h5py.File(by_file, "r") as b:
        assert np.array_equal(a["output"][:], b["output"][:])
    with pytest.raises(ConfigError, match=r"out=.*x.csv: the outputs are dense \(\(1, 32, 32\) a sample\): give a .h5"):
        trainforge.predict(run, split="val", out=tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="give split=NAME or input=FILE, not both"):
        trainforge.predict(run, split="val", input=test.path)


def test_a_run_made_by_older_code_predicts(data_dir, tmp_path):
    import shutil

    from conftest import ROOT

    run = shutil.copytree(ROOT / "tests" / "fixtures" / "run_before_layout", tmp_path / "old")
    out = trainforge.predict(run, overrides=[f"data.cache_dir={data_dir}"], echo=lambda *a: None)
    with h5py.File(out, "r") as f:
        assert f["index"][:].tolist() == list(range(32)) and f["output"].shape == (32, 1, 32, 32)


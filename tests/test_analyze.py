"""scripts/analyze_training.py on real run and sweep directories: the plotted data are the
CSV's data (read back from the figures' lines), the summary names the best epoch, sweeps
get a ranked comparison.csv, partial and in-progress directories still work."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys

import pytest
from conftest import ROOT, SMALL, glint_pair

from trainforge import analyze, plots

SCRIPT = ROOT / "scripts" / "analyze_training.py"


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(table, name):
    return [float(r[name]) for r in table]


def lines(fig) -> dict:
    """label -> (x, y) of every line in the figure (labels are unique per figure)."""
    out = {}
    for ax in fig.axes:
        for line in ax.lines:
            out[line.get_label()] = ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
    return out


def close(a, b):
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15) for x, y in zip(a, b))


def run_script(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _train(env, cwd, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc


@pytest.fixture(scope="module")
def menv(data_dir):
    e = dict(os.environ, TRAINFORGE_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, menv):
    """python train.py trainer.epochs=3 log.batch_metrics=true (small data)."""
    tmp = tmp_path_factory.mktemp("analyze_run")
    proc = _train(menv, tmp, *SMALL, "trainer.epochs=3", "log.batch_metrics=true", f"hydra.run.dir={tmp / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, menv):
    """A 4-job sweep: two jobs train (focal, hybrid), two fail in their first step (NaN images)."""
    tmp = tmp_path_factory.mktemp("analyze_sweep")
    good, bad = glint_pair(tmp)
    proc = _train(menv, tmp, "-m", f"data.path={good},{bad}", "loss=focal,hybrid", *SMALL[:3], "trainer.epochs=2",
                  "log.progress=false", "log.batch_metrics=true", f"hydra.sweep.dir={tmp / 'sweep'}")
    assert proc.returncode != 0 and "2 of 4 job(s) did not complete" in proc.stderr  # the failed jobs fail the sweep
    return tmp / "sweep"


def test_run_plots_hold_the_csv_values_and_summary_names_best_epoch(run_dir, menv):
    proc = run_script(run_dir, "--batch_metrics", env=menv)
    assert proc.returncode == 0, proc.stderr
    for name in ("loss", "val_metrics", "lr", "grad_norm", "epoch_time", "batch_loss", "stability"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 5000, name
    epochs = rows(run_dir / "epoch_metrics.csv")
    dice = column(epochs, "val_dice")
    best = max(range(3), key=dice.__getitem__)
    assert f"Best val_dice (max): {dice[best]:.6g} at epoch {best + 1}" in proc.stdout
    assert "Status: COMPLETED - epochs done: 3/3" in proc.stdout

    figs = plots.run_figures(analyze.load_run(run_dir))
    x = [1.0, 2.0, 3.0]
    for fig, cols in ((figs["loss"], ["train_loss", "val_loss"]), (figs["val_metrics"], ["val_dice", "val_iou"]),
                      (figs["lr"], ["lr"]), (figs["epoch_time"], ["epoch_time"])):
        got = lines(fig)
        for col in cols:
            assert got[col][0] == x and close(got[col][1], column(epochs, col)), col
    band = figs["loss"].axes[0].collections[0].get_paths()[0].vertices[:, 1]  # fill_between: max, then min
    for value in column(epochs, "train_loss_max") + column(epochs, "train_loss_min"):
        assert any(math.isclose(value, v, rel_tol=1e-12) for v in band)

    batches = rows(run_dir / "batch_metrics.csv")
    loss = column(batches, "loss")
    n = max(int(r["batch"]) for r in batches)
    for row in epochs:  # the epoch's train loss: mean, min and max of its batch losses (equal batches here)
        own = [float(r["loss"]) for r in batches if r["epoch"] == row["epoch"]]
        assert len(own) == n and math.isclose(float(row["train_loss"]), statistics.fmean(own), rel_tol=1e-5)
        assert (float(row["train_loss_min"]), float(row["train_loss_max"])) == (min(own), max(own)), row
    got = lines(figs["batch_loss"])
    assert close(got["loss"][1], loss) and len(loss) == 3 * n
    assert close(got["loss"][0], [int(r["epoch"]) - 1 + int(r["batch"]) / n for r in batches])
    window = max(3, n // 10)
    rolling = [statistics.fmean(loss[max(0, i - window + 1):i + 1]) for i in range(len(loss))]
    assert close(got["rolling"][1], rolling)
    per_epoch = {e: [v for r, v in zip(batches, loss) if int(r["epoch"]) == e] for e in (1, 2, 3)}
    assert close(got["epoch_min"][1], [min(per_epoch[int(r["epoch"])]) for r in batches])
    assert close(got["epoch_max"][1], [max(per_epoch[int(r["epoch"])]) for r in batches])
    spread = lines(figs["stability"])
    assert close(spread["std"][1], [statistics.pstdev(per_epoch[e]) for e in (1, 2, 3)])
    assert close(spread["max - min"][1], [max(per_epoch[e]) - min(per_epoch[e]) for e in (1, 2, 3)])


def test_only_completed_jobs_are_ranked(sweep_dir, tmp_path, capsys):
    """A job still running (or stopped) has a best value so far, but no rank: it goes last."""
    live = tmp_path / "sweep"
    shutil.copytree(sweep_dir, live, ignore=shutil.ignore_patterns("plots", "*.pth", "*.pt"))
    for job, state in (("0", "RUNNING"), ("1", "COMPLETED")):
        record = json.loads((live / job / "status.json").read_text())
        record.update(status=state, pid=os.getpid(), host=socket.gethostname())
        (live / job / "status.json").write_text(json.dumps(record))
    assert analyze.main([str(live)]) == 0
    table = rows(live / "comparison.csv")
    assert [(r["job"], r["rank"], r["status"]) for r in table] == [
        ("1", "1", "COMPLETED"), ("0", "", "RUNNING"), ("2", "", "FAILED"), ("3", "", "FAILED")]
    assert table[1]["best_val_dice"] != ""  # its best so far is shown, unranked
    assert f"Job 0 (data.path={sweep_dir.parent}/good.h5 loss=focal): RUNNING" in capsys.readouterr().out


def test_sweep_overlays_and_ranked_comparison_with_failed_jobs(sweep_dir, capsys):
    assert analyze.main([str(sweep_dir)]) == 0  # in process: the script itself is run above
    proc = capsys.readouterr()
    table = rows(sweep_dir / "comparison.csv")
    assert [r["job"] for r in table[2:]] == ["2", "3"] and {r["status"] for r in table[2:]} == {"FAILED"}
    assert all(r["rank"] == "" and "non-finite loss" in r["error"] for r in table[2:])
    assert f"Job 2 (data.path={sweep_dir.parent}/nan.h5 loss=focal): FAILED" in proc.out
    ranked = table[:2]
    assert [r["rank"] for r in ranked] == ["1", "2"] and {r["status"] for r in ranked} == {"COMPLETED"}
    truth = {j: max(column(rows(sweep_dir / j / "epoch_metrics.csv"), "val_dice")) for j in ("0", "1")}
    assert [float(r["best_val_dice"]) for r in ranked] == sorted(truth.values(), reverse=True)
    assert {r["job"]: float(r["best_val_dice"]) for r in ranked} == truth

    good = sweep_dir.parent / "good.h5"
    label = {"0": f"data.path={good} loss=focal", "1": f"data.path={good} loss=hybrid"}
    runs = analyze.sweep_runs(sweep_dir)
    assert analyze.labels(runs)["1"] == label["1"]
    figs = plots.sweep_figures(runs, analyze.labels(runs))
    for metric in ("train_loss", "val_loss", "val_dice", "lr", "epoch_time"):
        assert (sweep_dir / "plots" / f"{metric}.png").exists()
        got = lines(figs[metric])
        assert set(got) == set(label.values())  # failed jobs have no curve
        for job, name in label.items():
            assert close(got[name][1], column(rows(sweep_dir / job / "epoch_metrics.csv"), metric))

    hybrid = plots.run_figures(runs[1])["components"]  # a job directory is a run directory too
    epochs = rows(sweep_dir / "1" / "epoch_metrics.csv")
    got = lines(hybrid)
    for part in ("focal_loss", "dice_loss", "bce_loss"):
        for split in ("train", "val"):
            assert close(got[f"{split}_{part}"][1], column(epochs, f"{split}_{part}"))


def test_partial_in_progress_and_empty_directories(run_dir, tmp_path, capsys):
    part = tmp_path / "partial"
    shutil.copytree(run_dir, part, ignore=shutil.ignore_patterns("plots", "*.pth", "*.pt"))
    (part / "epoch_metrics.csv").unlink()
    (part / "batch_metrics.csv").unlink()
    assert analyze.main([str(part), "--batch_metrics"]) == 0
    proc = capsys.readouterr()
    assert "Missing: epoch_metrics.csv" in proc.out and "Missing: batch_metrics.csv" in proc.out
    assert (part / "plots" / "loss.png").exists() and not (part / "plots" / "batch_loss.png").exists()
    records = json.loads((part / "metrics.json").read_text())
    got = lines(plots.run_figures(analyze.load_run(part))["loss"])
    assert close(got["train_loss"][1], [r["train"]["loss"] for r in records])

    live = tmp_path / "live"  # as a run still training looks: 2 epochs written, a batch row cut short
    shutil.copytree(run_dir, live, ignore=shutil.ignore_patterns("plots", "*.pth", "*.pt"))
    text = (live / "epoch_metrics.csv").read_text().splitlines()
    (live / "epoch_metrics.csv").write_text("\n".join(text[:3]) + "\n")
    with open(live / "batch_metrics.csv", "a") as f:
        f.write("3,9,99,0.5")
    status = json.loads((live / "status.json").read_text())
    status.update(status="RUNNING", pid=os.getpid(), host=socket.gethostname())
    (live / "status.json").write_text(json.dumps(status))
    result = analyze.analyze(live, batch_metrics=True, out=lambda *a: None)
    facts = result["summary"]
    assert facts["status"] == "RUNNING" and facts["epochs_done"] == 2 and facts["warnings"] == []
    assert facts["position"].startswith("epoch 3/3, batch ")
    assert len(lines(result["figures"]["batch_loss"])["loss"][1]) == len(rows(run_dir / "batch_metrics.csv"))
    status["pid"] = 2 ** 22 + 12345  # above the kernel's pid limit: no such process
    (live / "status.json").write_text(json.dumps(status))
    assert any("is gone" in w for w in analyze.summary(analyze.load_run(live))["warnings"])

    assert analyze.main([str(tmp_path / "empty_does_not_exist")]) == 2
    assert "empty_does_not_exist: no such directory" in capsys.readouterr().err
    assert analyze.main([str(run_dir / "status.json")]) == 2
    assert "status.json: a file, not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert analyze.main([str(tmp_path / "empty")]) == 2
    proc = capsys.readouterr()
    assert len(proc.err.strip().splitlines()) == 1 and proc.out == ""
    assert "holds no run" in proc.err and str(tmp_path / "empty") in proc.err


def test_warnings_name_rising_loss_nonfinite_steps_and_a_train_val_gap(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "epoch_metrics.csv").write_text(
        "epoch,train_loss,train_nonfinite,val_loss,lr,epoch_time\n"
        "1,1.0,0,1.0,0.1,1\n2,0.5,2,1.2,0.1,1\n3,0.6,0,1.5,0.1,1\n")
    warnings = analyze.summary(analyze.load_run(run))["warnings"]
    assert any(w.startswith("train_loss going up: 0.6 at the last epoch, 20% above its minimum 0.5 at epoch 2")
               for w in warnings), warnings
    assert any(w.startswith("val_loss going up") for w in warnings)
    assert "2 non-finite batch loss(es) (epochs 2)" in warnings
    assert any(w.startswith("val_loss is 2.5x train_loss") for w in warnings)
    assert "Missing: status.json" in analyze.format_summary(analyze.summary(analyze.load_run(run)))
    assert analyze.best_epoch(analyze.load_run(run)) == (1, 1.0)  # val_loss, min: the lowest, not the highest

    for val, warned in ((0.95, True), (0.85, False)):  # 1.58x and 1.42x train_loss 0.6: the threshold is 1.5x
        (run / "epoch_metrics.csv").write_text("epoch,train_loss,val_loss\n1,1.0,1.0\n2,0.5,0.7\n"
                                               f"3,0.6,{val}\n")
        warnings = analyze.summary(analyze.load_run(run))["warnings"]
        assert any(w.startswith("val_loss is 1.") for w in warnings) == warned, (val, warnings)


def test_damaged_files_unstarted_jobs_and_both_times_are_said(run_dir, sweep_dir, tmp_path, capsys):
    """Nothing is passed over in silence: a cut-short last CSV line, an unreadable CSV line,
    an unreadable metrics.json; a sweep with jobs not started says so; comparison.csv gives
    the summed epoch time and the job's wall time, each under its own name."""
    run = tmp_path / "damaged"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("plots", "*.pth", "*.pt"))
    text = (run / "epoch_metrics.csv").read_text()
    (run / "epoch_metrics.csv").write_text(text[:text.rstrip("\n").rfind(",")] + "\n")  # the last row cut mid-write
    batches = (run / "batch_metrics.csv").read_text().splitlines()
    (run / "batch_metrics.csv").write_text("\n".join([*batches[:3], ",".join(["1"] * 40), *batches[3:]]) + "\n")
    (run / "metrics.json").write_text('[{"epoch": 1, "train": {"loss"')
    assert analyze.main([str(run), "--batch_metrics"]) == 0
    out = capsys.readouterr().out
    assert "Status: COMPLETED - epochs done: 2/3" in out
    assert "Warning: epoch_metrics.csv: its last line is cut short (a write interrupted?): left out" in out
    assert "Warning: batch_metrics.csv: 1 unreadable line(s) left out (wrong number of fields)" in out
    assert "Warning: metrics.json is unreadable (JSONDecodeError: " in out
    assert analyze.main([str(run_dir)]) == 0 and "Warning" not in capsys.readouterr().out  # the intact run: none

    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep, ignore=shutil.ignore_patterns("plots", "*.pth", "*.pt", "3", "summary.csv"))
    assert analyze.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"Sweep: {sweep} - 3 of 4 job(s), ranked by val_dice (max)" in out
    assert "Warning: 1 of the 4 jobs have not started (the sweep is still running, or stopped before them)" in out
    table = {r["job"]: r for r in rows(sweep / "comparison.csv")}
    assert "time_s" not in table["0"] and "collapse" not in table["0"]  # no SeqSetVAE job: no collapse column
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        summed = sum(column(rows(sweep / job / "epoch_metrics.csv"), "epoch_time"))
        assert math.isclose(float(table[job]["epoch_time_s"]), summed, rel_tol=1e-9)
        assert math.isclose(float(table[job]["wall_s"]), status["finished"] - status["started"], rel_tol=1e-9)
        assert float(table[job]["wall_s"]) > summed  # start-up and checkpoints are in the wall time only

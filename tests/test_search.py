"""hydra/sweeper=search: an asynchronous Optuna search on the local_gpus pool. Each test
runs the search as a user does (``train.py -m hydra/sweeper=search ...``) and reads the
sweep directory: summary.csv, each trial's run directory and the study's journal."""
import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, SMALL

from hydra_plugins.trainforge_launcher._space import as_override, grid, split
from trainforge.errors import ConfigError
from trainforge.run.trial import JOURNAL

FAIL_LR = "1e9"  # Adam at this rate: a non-finite loss within a few steps


def search(env, tmp_path, *args, wait=True, sweep_dir="sweep", small=SMALL):
    one_thread = [] if "hydra/launcher=slurm" in args else ["hydra.launcher.threads_per_job=1"]
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=search", *one_thread, *small, *args,
           f"hydra.sweep.dir={tmp_path / sweep_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def summary(sweep: Path) -> list:
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def study(sweep: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(str(sweep / JOURNAL))))


def epochs_of(run_dir: Path) -> list:
    with open(run_dir / "epoch_metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


# ---- the space ------------------------------------------------------------------------
def test_the_space_is_hydras_sweep_syntax_and_the_rest_is_fixed():
    space, fixed = split(["optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model.width=choice(16,32)",
                          "trainer.epochs=range(2,8,2)", "data.batch_size=16", "loss=focal,hybrid"],
                         {"optimizer.weight_decay": "interval(0, 0.1)"})
    assert fixed == ["data.batch_size=16"]
    d = optuna.distributions
    assert space["optimizer.lr"] == d.FloatDistribution(1e-4, 1e-1, log=True)
    assert space["model.width"] == d.CategoricalDistribution([16, 32])
    assert space["trainer.epochs"] == d.IntDistribution(2, 6, step=2)  # range's end is not in it
    assert space["loss"] == d.CategoricalDistribution(["focal", "hybrid"])
    assert space["optimizer.weight_decay"] == d.FloatDistribution(0.0, 0.1)
    assert grid({k: space[k] for k in ("model.width", "trainer.epochs")}) == {"model.width": [16, 32],
                                                                              "trainer.epochs": [2, 4, 6]}
    with pytest.raises(ConfigError, match="optimizer.weight_decay is an interval; a grid needs choice"):
        grid(space)
    assert as_override("optimizer.lr", 0.1 + 0.2) == "optimizer.lr=0.30000000000000004"  # the same text each time
    assert as_override("trainer.compile", True) == "trainer.compile=true"


@pytest.mark.parametrize("args, line", [
    (["trainer.epochs=2"], "hydra/sweeper=search: nothing to search"),
    (["optimizer.lr=tag(log, interval(0, 1))"], "optimizer.lr: interval(0.0, 1.0) tagged log: the low end must be"),
    (["optimizer.lr=choice(1e-3,1e-2)", "hydra.sweeper.sampler=cmaes"],
     "hydra.sweeper.sampler=cmaes: allowed values are tpe, random, grid"),
    (["checkpoint.mode=choice(min,max)"], "checkpoint.mode: the search's objective is the trials' own best mode"),
    (["optimizer.lr=choice(1e-3,1e-2)", "hydra/launcher=slurm"], "hydra/sweeper=search runs trainforge trials on "
     "hydra/launcher=local_gpus"),
])
def test_a_search_that_cannot_run_is_refused_in_one_line(env, tmp_path, args, line):
    r = search(env, tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert line in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list((tmp_path / "sweep").glob("*/status.json"))


# ---- trials --------------------------------------------------------------------------
@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_a_failing_trial_is_failed_and_the_search_goes_on_with_the_objective_of_the_run(env, tmp_path):
    """Two trials at once; the non-finite one fails, the search completes (exit 0) and its
    best trial is the one with the highest val_dice (checkpoint.mode=max: maximize)."""
    r = search(env, tmp_path, "hydra.sweeper.sampler=grid", f"optimizer.lr=choice(3e-3,1e-2,{FAIL_LR})",
               "trainer.epochs=1")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {r_["optimizer.lr"]: r_ for r_ in summary(tmp_path / "sweep")}
    assert rows[FAIL_LR.replace("1e9", "1000000000.0")]["status"] == "FAILED"
    assert "non-finite loss" in rows["1000000000.0"]["error"]
    done = [row for row in rows.values() if row["status"] == "COMPLETED"]
    assert len(done) == 2
    s = study(tmp_path / "sweep")
    assert s.direction.name == "MAXIMIZE"
    assert sorted(t.state.name for t in s.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    best = max(done, key=lambda row: float(row["best_val_dice"]))
    assert s.best_trial.number == int(best["job"]) and s.best_value == pytest.approx(float(best["best_val_dice"]))
    assert f"best: trial #{best['job']} val_dice=" in r.stdout
    assert re.search(rf"as one run: python \S*train.py .*trainer.epochs=1 optimizer.lr={best['optimizer.lr']}$",
                     r.stdout, re.M)
    assert (tmp_path / "sweep/plots/search_history.png").stat().st_size > 1000
    analysed = subprocess.run([sys.executable, "-m", "trainforge", "analyze", str(tmp_path / "sweep")], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
    assert (f"Search 'search' (maximize): 3 trial(s), 2 complete, 0 pruned, 1 failed, 0 stopped; best trial "
            f"#{best['job']}: {{'optimizer.lr': {float(best['optimizer.lr'])}}}") in analysed.stdout, analysed.stdout


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_more_failures_than_max_failure_rate_stop_the_search(env, tmp_path):
    r = search(env, tmp_path, "hydra.sweeper.sampler=grid", f"optimizer.lr=choice({FAIL_LR},2e9,3e9)",
               "trainer.epochs=1", "hydra.launcher.max_parallel=1", "hydra.sweeper.max_failure_rate=0.3")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "search stopped: 1 of 3 trials failed, more than hydra.sweeper.max_failure_rate=0.3" in r.stderr
    assert len(study(tmp_path / "sweep").trials) == 1  # no trial started after it


@pytest.mark.slow  # trials of one epoch until a 2-second timeout
def test_the_timeout_stops_asking_and_the_running_trials_finish(env, tmp_path):
    r = search(env, tmp_path, "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "hydra.sweeper.n_trials=20",
               "hydra.sweeper.timeout=2", "trainer.epochs=1")
    assert r.returncode == 0, r.stderr[-2000:]
    trials = study(tmp_path / "sweep").trials
    assert 1 <= len(trials) <= 4 and all(t.state.name == "COMPLETE" for t in trials)  # asked only in the first 2 s
    assert f"search: {len(trials)} of 20 trial(s): {len(trials)} complete, 0 pruned, 0 failed" in r.stdout


@pytest.mark.slow  # two searches of 3 trials
@pytest.mark.parametrize("devices", [1, 2])
def test_pruning_stops_a_bad_trial_at_an_epoch_boundary(env, tmp_path, devices):
    """checkpoint.mode=min: the study minimizes val_loss. One trial at a time: the good
    rates end first (the grid's seeded order), then the hopeless one is pruned after
    epoch 2 (COMPLETED, stop_reason pruned, its checkpoint kept). On 2 ranks rank 0
    decides and both ranks stop at the same epoch."""
    r = search(env, tmp_path, "hydra.sweeper.sampler=grid", "hydra.sweeper.seed=5", "hydra.launcher.max_parallel=1",
               "optimizer.lr=choice(3e-3,1e-2,1e-7)", "trainer.epochs=5", "checkpoint.monitor=val_loss",
               "checkpoint.mode=min", "hydra.sweeper.startup_trials=1", "hydra.sweeper.warmup_epochs=1",
               f"trainer.devices={devices}")
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = tmp_path / "sweep"
    rows = {row["optimizer.lr"]: row for row in summary(sweep)}
    bad = rows["1e-07"]
    assert int(bad["job"]) == 2, "the grid's order changed: the hopeless rate must come last"
    assert bad["status"] == "COMPLETED" and bad["stop_reason"] == "pruned"
    assert epochs_of(sweep / "2") == [1, 2]
    assert json.loads((sweep / "2/status.json").read_text())["stop_reason"] == "pruned"
    assert (sweep / "2/latest_checkpoint.pth").exists()
    assert all(epochs_of(sweep / str(n)) == [1, 2, 3, 4, 5] for n in (0, 1))
    s = study(sweep)
    assert s.direction.name == "MINIMIZE" and [t.state.name for t in s.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert s.best_value == min(float(rows[k]["best_val_loss"]) for k in ("0.003", "0.01"))
    assert re.search(r"^ +2 +optimizer.lr=1e-07 +COMPLETED .* pruned ", r.stdout, re.M)
    assert "search: 3 of 3 trial(s): 2 complete, 1 pruned, 0 failed" in r.stdout


@pytest.mark.slow  # a search stopped and run again: 4 trials of 3 epochs
def test_sigterm_mid_search_and_the_same_command_completes_every_trial_once(env, tmp_path):
    args = ["hydra.sweeper.n_trials=4", "hydra.sweeper.seed=0", "optimizer.lr=tag(log, interval(1e-3, 3e-2))",
            "trainer.epochs=3", "data.num_samples=320", "checkpoint.every_n_steps=5", "hydra.sweeper.pruner=none"]
    parent, sweep, deadline = search(env, tmp_path, *args, wait=False), tmp_path / "sweep", time.time() + 300
    while not any((sweep / str(n) / "latest_checkpoint.pth").exists() for n in (0, 1)):
        assert time.time() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=180)
    assert parent.returncode == 75, err
    assert "search stopped by SIGTERM" in err and "continues it" in err
    before = study(sweep).trials
    stopped = [t.number for t in before if t.state.name == "RUNNING"]
    finished = [t.number for t in before if t.state.name == "COMPLETE"]
    assert stopped, out

    again = search(env, tmp_path, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"({len(finished)} done before, {len(stopped)} to resume)" in again.stdout
    trials = study(sweep).trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        run_dir = sweep / str(t.number)
        log = (run_dir / "training.log").read_text()
        assert log.count("Run directory:") == 1 + log.count("Resumed from"), t.number  # never from scratch again
        assert epochs_of(run_dir) == [1, 2, 3], t.number
    assert all("Resumed from" in (sweep / str(n) / "training.log").read_text() for n in stopped)
    started = {int(n) for n in re.findall(r"start +#(\d+)", again.stdout)}
    assert started.isdisjoint(finished) and set(stopped) <= started
    assert sorted(int(r["job"]) for r in summary(sweep)) == [0, 1, 2, 3]


# the search docs/search.md walks through
DIGITS_SPACE = ["experiment=digits", "optimizer.lr=tag(log, interval(3e-4, 3e-2))",
                "optimizer.weight_decay=tag(log, interval(1e-6, 1e-2))", "model.channels=choice(16,32,48)",
                "hydra.sweeper.n_trials=16", "hydra.sweeper.seed=0", "log.progress=false"]


@pytest.mark.slow  # the digits preset once, then 16 trials of up to 15 epochs (about 2 minutes)
def test_the_worked_search_matches_the_digits_preset_and_pruning_saves_epochs(env, tmp_path):
    """docs/search.md's search (default TPE and median pruner) on one slot, so the pruner sees
    the same finished trials on every machine: its best trial is at least as good as the
    digits preset trained straight, and pruning saves >= 30% of the 16 x 15 epochs."""
    preset = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=digits", "trainer.threads=1",
                             "log.progress=false", f"hydra.run.dir={tmp_path / 'preset'}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert preset.returncode == 0, preset.stderr[-2000:]
    preset_best = json.loads((tmp_path / "preset/status.json").read_text())["best"]["value"]
    r = search(env, tmp_path, *DIGITS_SPACE, "hydra.launcher.max_parallel=1", small=[])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = summary(tmp_path / "sweep")
    s = study(tmp_path / "sweep")
    assert len(rows) == 16 and s.direction.name == "MAXIMIZE"
    assert s.best_value >= preset_best, (s.best_value, preset_best)
    pruned = [row for row in rows if row["stop_reason"] == "pruned"]
    assert pruned and all(int(row["epochs"]) < 15 for row in pruned)
    run = sum(epochs_of(tmp_path / "sweep" / row["job"])[-1] for row in rows)
    assert run <= 0.7 * 16 * 15, run


@pytest.mark.slow  # 8 small trials, then the same 8 two at a time
def test_bench_search_prints_its_figures(env, tmp_path):
    """benchmarks/bench_search.py on small data: it prints each case's figures; the busy
    fraction is a share and both wall times are positive."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_search.py"), "--small", "--long", "2",
                           "--json", str(tmp_path / "search.json")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads((tmp_path / "search.json").read_text())["figures"]
    assert figures["search"]["trials"] == 8 and 0 < figures["search"]["busy_fraction"] <= 1
    assert figures["batch_synchronous"]["wall_s"] > 0 and figures["ratio"]["search_wall_over_batch_wall"] > 0
    order = re.search(r"^trial order \(epochs\): ([12 ]+)$", proc.stdout, re.M).group(1).split()
    assert sorted(order) == ["1"] * 4 + ["2"] * 4
    assert re.search(r"^search trials=8 slots=2 busy_fraction=", proc.stdout, re.M)

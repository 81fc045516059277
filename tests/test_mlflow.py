"""log.mlflow=true against a real MLflow sqlite store in the test's folder (the default
``sqlite:///<cwd>/mlflow.db``), read back with MlflowClient: the run's params, every epoch
of epoch_metrics.csv once (also across a SIGTERM or SIGKILL and a resume), the status on
every path, one run under DDP, a sweep's nested runs; a tracking server that never answers
costs the run nothing but one warning; no credential reaches a file."""
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SMALL
from omegaconf import OmegaConf

pytest.importorskip("mlflow")  # the dev extra installs it
from mlflow.tracking import MlflowClient  # noqa: E402

from trainforge.engine.checkpoint import load_checkpoint  # noqa: E402
from trainforge.engine.tracking import flat_params  # noqa: E402

TOKEN = "tok-3f9a1c-SECRET"


def start(env, cwd, *args, base=True):
    given = [*SMALL, "log.mlflow=true"] if base else []  # (a resume takes its run's config)
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *given, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train(env, cwd, *args, rc=0, base=True):
    proc = start(env, cwd, *args, base=base)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == rc, err[-3000:]
    return out, err


def store(cwd) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def runs_of(client, experiment="trainforge") -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def history(client, run_id, key) -> list:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def rows(path) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_epochs_once(client, run_id, run_dir) -> None:
    """Every column of epoch_metrics.csv is a metric whose history is that column, each epoch once."""
    table = rows(run_dir / "epoch_metrics.csv")
    for column in table[0]:
        assert history(client, run_id, column) == [(int(r["epoch"]), float(r[column])) for r in table], column


def test_credentials_in_the_tracking_uri_are_refused_without_being_shown(env, tmp_path):
    """Refused before Hydra records the overrides in .hydra/: the value is shown without them."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *SMALL, "log.mlflow=true",
                           "log.mlflow_uri=https://bob:s3cr3t-pw@mlflow.example.org", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "log.mlflow_uri=https://***@mlflow.example.org: no credentials on the command line" in proc.stderr
    assert "s3cr3t" not in proc.stderr + proc.stdout and not (tmp_path / "r").exists()


@pytest.mark.slow  # a 3-epoch run and a failing one
def test_a_run_is_one_mlflow_run_with_its_config_epochs_batches_and_status(env, tmp_path):
    env = dict(env, MLFLOW_TRACKING_TOKEN=TOKEN)  # (the sqlite store ignores it: it must land nowhere)
    run = tmp_path / "run"
    train(env, tmp_path, "trainer.epochs=3", "log.batch_metrics=true", "log.interval=2", f"hydra.run.dir={run}")
    client = store(tmp_path)
    batch_table = rows(run / "batch_metrics.csv")
    (found,) = runs_of(client)
    run_id = found.info.run_id
    assert found.info.status == "FINISHED" and found.data.tags["trainforge.status"] == "COMPLETED"
    assert found.data.tags["trainforge.run_dir"] == str(run)
    commit = json.loads((run / "provenance.json").read_text())["code"]["trainforge"]["commit"]
    assert found.data.tags.get("mlflow.source.git.commit") == commit
    assert found.data.params == flat_params(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
    assert_epochs_once(client, run_id, run)
    batches = [r for r in batch_table if int(r["batch"]) % 2 == 0]
    per_epoch = max(int(r["batch"]) for r in batch_table)
    assert history(client, run_id, "batch_loss") == [
        ((int(r["epoch"]) - 1) * per_epoch + int(r["batch"]), float(r["loss"])) for r in batches]
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == run_id
    assert load_checkpoint(run / "latest_checkpoint.pth")["mlflow"]["run_id"] == run_id
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "provenance.json"}
    train(env, tmp_path, f"resume={run}", "trainer.epochs=4", base=False)  # one more epoch, in the same MLflow run
    (again,) = runs_of(client)
    assert again.info.run_id == run_id and again.data.tags["changed_on_resume.trainer.epochs"] == "3 -> 4"
    assert_epochs_once(client, run_id, run)
    analysed = subprocess.run([sys.executable, "-m", "trainforge", "analyze", str(run)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert f"MLflow: run {run_id} in experiment trainforge at sqlite:///{tmp_path}/mlflow.db" in analysed.stdout

    failed = tmp_path / "failed"
    train(env, tmp_path, "optimizer.lr=1e9", f"hydra.run.dir={failed}", rc=2)  # a non-finite loss: FAILED
    (bad,) = [r for r in runs_of(client) if r.info.run_id != run_id]
    assert bad.info.status == "FAILED" and bad.data.tags["trainforge.status"] == "FAILED"
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow  # two runs stopped mid-epoch and resumed
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_run_stopped_and_resumed_is_one_mlflow_run_with_each_epoch_once(env, tmp_path, sig):
    run, args = tmp_path / "run", ["data.num_samples=480", "trainer.epochs=3", "checkpoint.every_n_steps=4"]
    proc = start(env, tmp_path, *args, f"hydra.run.dir={run}")
    deadline = time.time() + 300
    while not (run / "epoch_metrics.csv").exists():  # epoch 1 is in MLflow's queue: stop in epoch 2
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(random.uniform(0.2, 1.5))
    proc.send_signal(sig)
    proc.communicate(timeout=300)
    client = store(tmp_path)
    (stopped,) = runs_of(client)
    assert stopped.info.status == ("KILLED" if sig == signal.SIGTERM else "RUNNING")  # SIGKILL: no one to end it
    train(env, tmp_path, "resume=auto", f"hydra.run.dir={run}", base=False)
    (found,) = runs_of(client)
    assert found.info.run_id == stopped.info.run_id and found.info.status == "FINISHED"
    assert "Resumed from" in (run / "training.log").read_text()
    assert_epochs_once(client, found.info.run_id, run)


@pytest.mark.slow  # two gloo ranks
def test_two_ranks_make_one_mlflow_run(env, tmp_path):
    run, client = tmp_path / "run", store(tmp_path)
    client.create_experiment("trainforge", (tmp_path / "mlartifacts").as_uri())  # (no rank races to make the db)
    train(env, tmp_path, "trainer.devices=2", "data.batch_size=8", f"hydra.run.dir={run}")
    (found,) = runs_of(client)
    assert found.info.status == "FINISHED"
    assert_epochs_once(client, found.info.run_id, run)


@pytest.mark.slow  # a sweep of 4 jobs, 2 at a time, on one new database
def test_a_sweep_is_a_parent_run_with_one_nested_run_per_job(env, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *SMALL, "trainer.epochs=1", "log.mlflow=true",
                           "loss=dice,focal,hybrid,bce", "hydra.launcher.max_parallel=2",
                           "hydra.launcher.threads_per_job=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = store(tmp_path)
    found = runs_of(client)
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 5 and len(jobs) == 4 and all(r.info.status == "FINISHED" for r in found)
    assert sorted(r.info.run_name for r in jobs) == [f"sweep/{n}" for n in range(4)]
    table = rows(tmp_path / "sweep" / "summary.csv")
    assert sorted(r["mlflow_run_id"] for r in table) == sorted(r.info.run_id for r in jobs)
    assert all(r.info.run_id in proc.stdout for r in jobs)  # the sweep table's mlflow_run_id column
    assert json.loads((tmp_path / "sweep" / "mlflow.json").read_text())["run_id"] == parent.info.run_id
    shutil.rmtree(tmp_path / "sweep" / "3")  # as if the sweep had stopped before job 3: the same command finishes it
    again = subprocess.run(proc.args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("COMPLETED before") == 3, again.stderr[-3000:]
    assert f"MLflow: sweep run {parent.info.run_id} (continued)" in again.stdout  # the same sweep: the same run
    (new,) = [r for r in runs_of(client) if r.info.run_id not in {f.info.run_id for f in found}]
    assert new.data.tags["mlflow.parentRunId"] == parent.info.run_id and new.info.run_name == "sweep/3"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow  # two gloo ranks, rank 0 killed
def test_a_rank_0_killed_under_trainer_devices_ends_its_mlflow_run_failed(env, tmp_path):
    """Rank 0 cannot end its MLflow run when it is SIGKILLed: the parent that recorded the
    run FAILED ends it FAILED too (it stays RUNNING only when the whole run is killed)."""
    run, client = tmp_path / "run", store(tmp_path)
    client.create_experiment("trainforge", (tmp_path / "mlartifacts").as_uri())
    proc = start(env, tmp_path, "trainer.devices=2", "data.batch_size=8", "data.num_samples=800", "trainer.epochs=3",
                 "trainer.ddp_timeout=30", f"hydra.run.dir={run}")
    deadline = time.time() + 300
    while not ((run / "mlflow.json").exists() and "Launched 2 ranks" in _text(run / "training.log")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    line = next(ln for ln in _text(run / "training.log").splitlines() if "Launched 2 ranks" in ln)
    rank0 = int(line.split("pids ")[1].split(",")[0])
    os.kill(rank0, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "rank 0: killed by SIGKILL" in err, err[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "FAILED"
    (found,) = runs_of(client)
    assert found.info.status == "FAILED" and found.data.tags["trainforge.status"] == "FAILED"


def _text(path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow  # a run plus the wait for a server that never answers
def test_a_tracking_server_that_never_answers_costs_one_warning(env, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections are made, nothing is ever read or answered
    run = tmp_path / "run"
    try:
        out, err = train(env, tmp_path, "trainer.epochs=2",
                         f"log.mlflow_uri=http://127.0.0.1:{silent.getsockname()[1]}", "log.mlflow_wait_s=3",
                         f"hydra.run.dir={run}")
    finally:
        silent.close()
    said = [ln for ln in (out + err).splitlines() if "MLflow" in ln]
    assert len(said) == 1 and "log.mlflow_wait_s=3" in said[0], out[-3000:] + err[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "COMPLETED"
    assert len(rows(run / "epoch_metrics.csv")) == 2
    assert sum("MLflow" in ln for ln in (run / "training.log").read_text().splitlines()) == 1


@pytest.mark.slow  # an MLflow server, a proxy, two small runs
def test_bench_mlflow_prints_its_figures(env, tmp_path):
    """benchmarks/bench_mlflow.py on small data: both speeds and their ratio are positive and
    every batch of the MLflow run reached the (slowed) server."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_mlflow.py"), "--small", "--rounds", "1",
                           "--epochs", "1", "--json", str(tmp_path / "mlflow.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads((tmp_path / "mlflow.json").read_text())["figures"]
    assert figures["mlflow_on"]["steps_per_s_median"] > 0 and figures["ratio"]["on_over_off_median"] > 0
    assert figures["ratio"]["batch_metrics_sent_per_run"] == [8]  # 128 of the 160 samples train, batch 16

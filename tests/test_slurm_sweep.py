"""A whole SLURM sweep on one machine, through stand-ins for sbatch, srun, sacct and scancel
(tests/fixtures/slurm: each array task runs the real submitit job script at once, with a
one-task job's SLURM variables). What it shows: the sweep root's provenance, the warning of
a job that starts on code changed since the sweep was submitted, and MLflow without sqlite
on a shared filesystem: each job keeps its MLflow run in its own directory
(log.mlflow_spool=auto under SLURM) and the parent forwards it into the project's store,
nested under the sweep's run, each epoch once; ``trainforge analyze --sync`` forwards a run
again without sending anything twice, also after the run was resumed."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SMALL

pytest.importorskip("mlflow")  # the dev extra installs it
from mlflow.tracking import MlflowClient  # noqa: E402

STAND_INS = ROOT / "tests" / "fixtures" / "slurm"


def git(project, *args):
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args], cwd=project, check=True,
                   capture_output=True)


def slurm_env(env, log: Path, **extra) -> dict:
    log.mkdir(exist_ok=True)
    return dict(env, PATH=f"{STAND_INS}{os.pathsep}{env['PATH']}", STAND_IN_LOG=str(log), OMP_NUM_THREADS="1",
                **extra)


def rows(path) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


def runs_of(client) -> list:
    exp = client.get_experiment_by_name("trainforge")
    return client.search_runs([exp.experiment_id]) if exp else []


def assert_epochs_once(client, run_id, run_dir) -> None:
    """Every column of epoch_metrics.csv is a metric whose history is that column, each epoch once."""
    table = rows(run_dir / "epoch_metrics.csv")
    for column in table[0]:
        found = sorted((m.step, m.value) for m in client.get_metric_history(run_id, column))
        assert found == [(int(r["epoch"]), float(r[column])) for r in table], column


def trainforge(env, cwd, *args, rc=0):
    proc = subprocess.run([sys.executable, "-m", "trainforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == rc, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # a SLURM sweep of two jobs through the stand-ins
def test_a_slurm_sweep_records_its_code_and_forwards_each_jobs_mlflow_run(env, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "model_code.py").write_text("WIDTH = 8\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first")
    e = slurm_env(env, tmp_path / "slurm", STAND_IN_BEFORE="echo 'WIDTH = 16' >> model_code.py")  # after submission
    sweep = project / "sweep"
    proc = trainforge(e, project, "-m", "hydra/launcher=slurm", "hydra.launcher.poll_s=0.3", *SMALL, "log.mlflow=true",
                      "loss=dice,focal", f"hydra.sweep.dir={sweep}")

    submitted = json.loads((sweep / "provenance.json").read_text())  # the sweep root's record, before sbatch
    assert submitted["code"]["project"]["dirty"] is False and submitted["code"]["project"]["root"] == str(project)
    for job in (sweep / "0", sweep / "1"):
        log = (job / "training.log").read_text()
        said = [ln for ln in log.splitlines() if "Changed since the sweep started its jobs" in ln]
        assert len(said) == 2 and "project uncommitted diff" in said[0], said  # the warning, the first epoch block
        block = log[log.index("Epoch [1/2] done"):log.index("Epoch [2/2] done")]
        assert said[1].strip() in block
        assert json.loads((job / "provenance.json").read_text())["environment"]["TRAINFORGE_SWEEP_DIR"] == str(sweep)

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = runs_of(client)
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    jobs = {r.info.run_name: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(found) == 3 and sorted(jobs) == ["sweep/0", "sweep/1"]
    assert all(r.info.status == "FINISHED" for r in found)
    table = {r["job"]: r for r in rows(sweep / "summary.csv")}
    for n in ("0", "1"):
        job, run = sweep / n, jobs[f"sweep/{n}"]
        kept = json.loads((job / "mlflow.json").read_text())
        assert kept["uri"] == f"sqlite:///{job / 'mlflow' / 'mlflow.db'}" and (job / "mlflow" / "mlflow.db").is_file()
        assert kept["forwarded"]["run_id"] == run.info.run_id == table[n]["mlflow_run_id"]
        assert_epochs_once(client, run.info.run_id, job)
        assert run.data.params["trainer.epochs"] == "2" and {a.path for a in client.list_artifacts(run.info.run_id)} >= \
            {"config.yaml", "provenance.json"}
        assert f"MLflow: {job}: MLflow run {run.info.run_id}" in proc.stdout

    again = trainforge(e, project, "analyze", "--sync", str(sweep))  # forwarding twice sends nothing twice
    assert again.stdout.count("(FINISHED, 0 new metric value(s))") == 2, again.stdout
    assert len(runs_of(client)) == 3
    for n in ("0", "1"):
        assert_epochs_once(client, jobs[f"sweep/{n}"].info.run_id, sweep / n)


@pytest.mark.slow  # two runs and three forwards
def test_a_kept_run_is_forwarded_to_one_mlflow_run_also_after_a_resume(env, tmp_path):
    e = slurm_env(env, tmp_path / "slurm", SLURM_JOB_ID="991")  # a SLURM job: the sqlite store is not written
    run = tmp_path / "run"
    trainforge(e, tmp_path, *SMALL, "trainer.epochs=1", "log.mlflow=true", f"hydra.run.dir={run}")
    assert not (tmp_path / "mlflow.db").exists()
    shown = trainforge(e, tmp_path, "analyze", str(run)).stdout
    assert f"not yet forwarded to sqlite:///{tmp_path / 'mlflow.db'}: trainforge analyze --sync {run}" in shown

    first = trainforge(e, tmp_path, "analyze", "--sync", str(run)).stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (forwarded,) = runs_of(client)
    assert f"MLflow run {forwarded.info.run_id}" in first and forwarded.info.status == "FINISHED"
    assert_epochs_once(client, forwarded.info.run_id, run)

    trainforge(e, tmp_path, f"resume={run}", "trainer.epochs=2")  # the same local MLflow run goes on
    shown = trainforge(e, tmp_path, "analyze", str(run)).stdout  # (the last forward is older than the resume)
    assert f"MLflow: run {forwarded.info.run_id}" in shown
    later = trainforge(e, tmp_path, "analyze", "--sync", str(run)).stdout
    columns = len(rows(run / "epoch_metrics.csv")[0])
    assert f"(FINISHED, {columns} new metric value(s))" in later, later  # epoch 2's values alone
    (again,) = runs_of(client)
    assert again.info.run_id == forwarded.info.run_id and again.info.status == "FINISHED"
    assert_epochs_once(client, again.info.run_id, run)
    assert again.data.tags["changed_on_resume.trainer.epochs"] == "1 -> 2"

    nothing = trainforge(e, tmp_path, "analyze", "--sync", str(tmp_path / "slurm"), rc=0).stdout
    assert "nothing to forward" in nothing

"""provenance.json: where a run came from (command, code, versions, host, environment,
data files), the uncommitted diff of a scratch git project, the resume's warning when a
tracked file changed, and no credential in any file of the run directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from trainforge.run.provenance import changes, file_print, strip_credentials

PROJECT = ROOT / "tests" / "fixtures" / "own_project"
SECRET, URI_SECRET = "tok-8c1f5e2a", "pw-77d0b3c9"


def git(project, *args):
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args], cwd=project, check=True,
                   capture_output=True)


def trainforge(project, *args):
    env = dict(os.environ, API_TOKEN=SECRET, TRAINFORGE_STORE=f"https://alice:{URI_SECRET}@store.example.org/db",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "trainforge", "experiment=inline", "trainer.epochs=1", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # two trainforge runs: the fast suite stays under 5 minutes
def test_a_run_records_its_code_versions_host_and_a_resume_says_what_changed(tmp_path):
    project = Path(shutil.copytree(PROJECT, tmp_path / "proj"))
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first")
    parts = project / "sigpkg" / "parts.py"
    parts.write_text(parts.read_text() + "\n# an uncommitted change\n")
    run = project / "run"
    trainforge(project, f"hydra.run.dir={run}")
    record = json.loads((run / "provenance.json").read_text())
    assert record["cwd"] == str(project) and "experiment=inline" in record["argv"]
    mine = record["code"]["project"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert mine["commit"] == head and mine["dirty"] is True and mine["branch"]
    assert "+# an uncommitted change" in (run / mine["diff_file"]).read_text()
    assert record["versions"]["torch"] and record["versions"]["hydra"] and record["versions"]["python"]
    assert any(p.startswith("torch==") for p in record["packages"])
    assert record["host"]["cpus"] == os.cpu_count()
    assert record["environment"]["OMP_NUM_THREADS"] == "1" and "API_TOKEN" not in record["environment"]
    assert record["environment"]["TRAINFORGE_STORE"] == "https://store.example.org/db"

    parts.write_text(parts.read_text() + "# another change\n")  # the code changes before the resume
    trainforge(project, f"resume={run}", "trainer.epochs=2")
    log = (run / "training.log").read_text()
    assert "Changed since this run's last start: project uncommitted diff" in log
    block = log[log.index("Epoch [2/2] done"):].split("=" * 80)[0]  # the resume's first epoch block says it too
    assert "\n  Changed since this run's last start: project uncommitted diff" in block
    resumed = [json.loads(line) for line in (run / "provenance_resumes.jsonl").read_text().splitlines()]
    assert len(resumed) == 1 and resumed[0]["code"]["project"]["diff_file"] == "provenance_project_resume1.diff"
    assert "+# another change" in (run / "provenance_project_resume1.diff").read_text()
    for path in run.rglob("*"):  # no secret in any file the run wrote
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and URI_SECRET.encode() not in data, path


def test_credentials_are_stripped_and_changes_are_named(tmp_path):
    assert strip_credentials("mlflow_uri=https://u:p@host:5000/x and s3://key@bucket/y") == \
        "mlflow_uri=https://host:5000/x and s3://bucket/y"
    data = tmp_path / "d.h5"
    data.write_bytes(b"x" * 3_000_000)
    before = {"code": {"project": {"commit": "a" * 40}}, "packages": ["torch==2.4.0", "numpy==2.0.0"],
              "data_files": {"data.path": file_print(data)}}
    with open(data, "r+b") as f:  # the last MiB changes, size kept
        f.seek(2_999_000)
        f.write(b"y")
    os.utime(data, (1, 1))
    now = {"code": {"project": {"commit": "b" * 40}}, "packages": ["torch==2.5.0", "numpy==2.0.0"],
           "data_files": {"data.path": file_print(data)}}
    assert changes(before, now) == ["project commit aaaaaaaaaaaa -> bbbbbbbbbbbb", "torch 2.4.0 -> 2.5.0",
                                    f"data.path ({data})"]
    assert changes(now, now) == []


@pytest.mark.slow  # two runs on two gloo ranks
def test_the_embedded_data_file_a_run_opens_is_hashed_and_a_change_is_said_on_resume(env, tmp_path):
    """No data.* key names the embedded set (made in data.cache_dir): the file the data option
    opened is hashed into the start's record by rank 0 (here behind a launching parent that
    wrote the record), and a resume on changed data says so, also in its first epoch block."""
    import h5py

    from conftest import SMALL

    cache, run = tmp_path / "cache", tmp_path / "run"
    e = dict(env, TRAINFORGE_DATA_DIR=str(cache), OMP_NUM_THREADS="1")

    def train(*args):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=e,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    train(*SMALL, "trainer.epochs=1", "trainer.devices=2", "data.batch_size=8", f"hydra.run.dir={run}")
    (data,) = cache.glob("glint_*.h5")
    first = json.loads((run / "provenance.json").read_text())["data_files"][f"opened:{data}"]
    assert first["size"] == data.stat().st_size and first["partial_sha256"] == file_print(data)["partial_sha256"]
    with h5py.File(data, "r+") as f:  # the cached set changes between the runs
        f["images"][0] = f["images"][0] * 0 + 0.5
    train(f"resume={run}", "trainer.epochs=2")
    log = (run / "training.log").read_text()
    said = f"Changed since this run's last start: data file {data}"
    assert said in log and said in log[log.index("Epoch [2/2] done"):].split("=" * 80)[0]
    (resumed,) = [json.loads(line) for line in (run / "provenance_resumes.jsonl").read_text().splitlines()]
    assert resumed["data_files"][f"opened:{data}"]["partial_sha256"] != first["partial_sha256"]

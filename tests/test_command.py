"""The ``trainforge`` command: ``python -m trainforge`` here, and a wheel installed into a
fresh venv (not editable) used from a folder outside the repository with no PYTHONPATH."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
import venv

import pytest

from conftest import ROOT, SMALL, build_wheel
from test_old_names import FIXTURE

TINY_NET = ("from torch import nn\n\n\nclass TinyNet(nn.Module):\n"
            "    def __init__(self, width=4):\n        super().__init__()\n"
            "        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))\n\n"
            "    def forward(self, x):\n        return self.net(x)\n")


def test_python_m_trainforge_trains_prints_help_and_analyses(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    proc = subprocess.run([sys.executable, "-m", "trainforge", "analyze", str(run)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Status: COMPLETED - epochs done: 1/1" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "trainforge", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "== Everyday commands ==" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "trainforge", "optimizer.lr=-5"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "trainforge: error: optimizer.lr=-5.0: must be a number > 0"


def user_project(root):
    """A project of the user's own, outside the repository: a model module and its conf/."""
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "experiment").mkdir()
    (root / "my_nets.py").write_text(TINY_NET)
    (root / "conf" / "model" / "my_net.yaml").write_text("_target_: my_nets.TinyNet\nwidth: 4\n")
    (root / "conf" / "experiment" / "myexp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: my_net\n\ntrainer:\n  epochs: 1\n")
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of this checkout installed into a fresh venv (not editable): its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)
    venv.create(root / "venv", system_site_packages=True, with_pip=True)  # torch, hydra... from the machine
    bin_dir = root / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    where = subprocess.run([str(bin_dir / "python"), "-c", "import trainforge; print(trainforge.__file__)"],
                           cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(root / "venv")), where  # the installed files, not the checkout
    return bin_dir


def command(bin_dir, project, env):
    """``trainforge ARGS`` of the venv, run in ``project`` without PYTHONPATH; must succeed."""
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}

    def trainforge(*args, cwd=None):
        proc = subprocess.run([str(bin_dir / "trainforge"), *args], cwd=cwd or project, env=clean,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"trainforge {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    return trainforge, clean


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_trains_sweeps_and_analyses_a_user_project(installed, env, tmp_path):
    project = user_project(tmp_path / "my_project")
    trainforge, _ = command(installed, project, env)
    small = [s for s in SMALL if not s.startswith("trainer.epochs")]
    trainforge("--config-dir", "conf", "experiment=myexp", *small, "hydra.run.dir=runs/one")
    assert (project / "runs/one/status.json").read_text().count('"COMPLETED"') == 1
    assert "my_nets.TinyNet" in (project / "runs/one/config.yaml").read_text()
    trainforge("-m", "--config-dir", "conf", "experiment=myexp", *small, "loss=focal,dice", "hydra.sweep.dir=sweep")
    assert sorted(p.name for p in (project / "sweep").iterdir() if p.name.isdigit()) == ["0", "1"]
    report = trainforge("analyze", "sweep")
    assert "2 job(s)" in report.stdout and (project / "sweep/comparison.csv").exists()


@pytest.mark.slow
def test_the_example_project_and_a_new_one_work_from_an_installed_wheel(installed, env, tmp_path):
    """examples/ecg_rhythm outside the repository: one epoch, a 2-job sweep, SIGTERM and
    ``resume=RUN`` from another directory; then ``trainforge new demo`` and its own test."""
    project = shutil.copytree(ROOT / "examples" / "ecg_rhythm", tmp_path / "ecg_rhythm")
    trainforge, clean = command(installed, project, env)
    small = ["experiment=ecg", "data.train.size=300", "data.val.size=300", "log.progress=false"]
    trainforge(*small, "trainer.epochs=1", "hydra.run.dir=runs/one")
    assert json.loads((project / "runs/one/status.json").read_text())["status"] == "COMPLETED"
    trainforge("-m", *small, "trainer.epochs=1", "loss.label_smoothing=0.0,0.1", "hydra.sweep.dir=sweep")
    assert sorted(p.name for p in (project / "sweep").iterdir() if p.name.isdigit()) == ["0", "1"]

    run = project / "runs" / "long"
    proc = subprocess.Popen([str(installed / "trainforge"), *small[:1], "trainer.epochs=200", "log.progress=false",
                             f"hydra.run.dir={run}"], cwd=project, env=clean, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "epoch_metrics.csv").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 75, proc.stderr.read()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "PREEMPTED"
    until = status["epoch"] + 2
    trainforge(f"resume={run}", f"trainer.epochs={until}", cwd=tmp_path)  # from another directory
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(run / "epoch_metrics.csv"))]
    assert epochs == list(range(1, until + 1))  # the history goes on, no epoch twice

    trainforge("new", "demo", cwd=tmp_path)
    test = subprocess.run([str(installed / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=tmp_path / "demo", env=clean, capture_output=True, text=True, timeout=600)
    assert test.returncode == 0 and "1 passed" in test.stdout, test.stdout[-2000:] + test.stderr[-2000:]

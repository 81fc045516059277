"""The ``trainforge`` command: ``python -m trainforge`` here, and a wheel installed into a
fresh venv (not editable) used from a folder outside the repository with no PYTHONPATH."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv

import pytest

from conftest import SMALL, build_wheel
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


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_trains_sweeps_and_analyses_a_user_project(env, tmp_path):
    wheel = build_wheel(tmp_path)
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=True)  # torch, hydra... from the machine
    bin_dir = tmp_path / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    project = user_project(tmp_path / "my_project")
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}

    def trainforge(*args):
        proc = subprocess.run([str(bin_dir / "trainforge"), *args], cwd=project, env=clean, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"trainforge {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    where = subprocess.run([str(bin_dir / "python"), "-c", "import trainforge; print(trainforge.__file__)"],
                           cwd=project, env=clean, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")), where  # the installed files, not the checkout
    small = [s for s in SMALL if not s.startswith("trainer.epochs")]
    trainforge("--config-dir", "conf", "experiment=myexp", *small, "hydra.run.dir=runs/one")
    assert (project / "runs/one/status.json").read_text().count('"COMPLETED"') == 1
    assert "my_nets.TinyNet" in (project / "runs/one/config.yaml").read_text()
    trainforge("-m", "--config-dir", "conf", "experiment=myexp", *small, "loss=focal,dice", "hydra.sweep.dir=sweep")
    assert sorted(p.name for p in (project / "sweep").iterdir() if p.name.isdigit()) == ["0", "1"]
    report = trainforge("analyze", "sweep")
    assert "2 job(s)" in report.stdout and (project / "sweep/comparison.csv").exists()

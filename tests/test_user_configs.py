"""A project's own configs: runs composed with ``hydra.searchpath``, ``--config-dir`` and
``--config-name`` resume from another working directory exactly (the run recorded how it
was composed), and a config folder that is gone is one line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMALL
from test_command import user_project

SHORT = [s for s in SMALL if not s.startswith("trainer.epochs")] + ["trainer.deterministic=true"]
MODES = {
    "searchpath": lambda p: [f"hydra.searchpath=[file://{p / 'conf'}]", "experiment=myexp"],
    "config_dir": lambda p: ["--config-dir", str(p / "conf"), "experiment=myexp"],
    "config_name": lambda p: ["--config-dir", str(p / "conf"), "--config-name", "myproj"],
}
MYPROJ = "defaults:\n  - train\n  - override /model: my_net\n  - _self_\n\nseed: 3\n"


def train(env, cwd, *args, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"train.py {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def weights(run) -> list:
    return list(torch.load(run / "latest_checkpoint.pth", weights_only=True)["model"].values())


@pytest.mark.slow  # CI time: three modes, three runs each
@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_user_config_run_resumes_from_another_directory_exactly(env, tmp_path, mode):
    project = user_project(tmp_path / "my_project")
    (project / "conf" / "myproj.yaml").write_text(MYPROJ)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = [*MODES[mode](project), *SHORT]
    train(env, project, *args, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'straight'}")
    train(env, project, *args, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'split'}")
    sources = json.loads((tmp_path / "split" / "status.json").read_text())["config_sources"]
    assert {p for _, p in sources["search_path"] if p.startswith("file://")} == {f"file://{project / 'conf'}"}
    assert sources["config_name"] == ("myproj" if mode == "config_name" else "train")
    train(env, elsewhere, f"resume={tmp_path / 'split'}", "trainer.epochs=2")
    assert "my_nets.TinyNet" in (tmp_path / "split" / "config.yaml").read_text()
    split, straight = weights(tmp_path / "split"), weights(tmp_path / "straight")
    assert len(split) == len(straight) and all(torch.equal(a, b) for a, b in zip(split, straight))


def test_resume_says_in_one_line_which_config_folder_is_gone(env, tmp_path):
    project = user_project(tmp_path / "my_project")
    train(env, project, "--config-dir", str(project / "conf"), "experiment=myexp", *SHORT, "trainer.epochs=1",
          f"hydra.run.dir={tmp_path / 'run'}")
    shutil.move(project / "conf", tmp_path / "moved")
    proc = train(env, tmp_path, f"resume={tmp_path / 'run'}", "trainer.epochs=2", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"trainforge: error: resume: the config folder {project / 'conf'} is gone (the run "
                                   "was composed with it); put it back, or resume from a copy that has it")


def test_an_option_of_the_users_with_a_built_in_name_is_said_not_to_be_used(env, tmp_path):
    project = user_project(tmp_path / "my_project")
    (project / "conf" / "model" / "unet.yaml").write_text("defaults:\n  - /model_unet_schema\n  - _self_\n"
                                                          "base_channels: 5\n")
    train(env, project, "--config-dir", str(project / "conf"), *SHORT, "trainer.epochs=1",
          f"hydra.run.dir={tmp_path / 'run'}")
    log = (tmp_path / "run" / "training.log").read_text()
    assert (f"model=unet: {project / 'conf' / 'model' / 'unet.yaml'} is not used: the built-in option of that name "
            "comes first in the config search path; give yours another name") in log
    assert "base_channels: 8" in (tmp_path / "run" / "config.yaml").read_text()


def test_conf_of_the_working_directory_is_found_and_resumes_from_elsewhere(env, tmp_path):
    """``cd my_project && trainforge model=my_net``: ./conf joins the search path, the project
    folder is importable, and the run records the folder for its resume from elsewhere."""
    project = user_project(tmp_path / "my_project")
    train(env, project, "model=my_net", *SHORT, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    record = json.loads((tmp_path / "run" / "status.json").read_text())["config_sources"]
    assert ["trainforge (./conf)", f"file://{project / 'conf'}"] in record["search_path"]
    assert "_target_: my_nets.TinyNet" in (tmp_path / "run" / "config.yaml").read_text()
    train(env, tmp_path, f"resume={tmp_path / 'run'}", "trainer.epochs=2")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["epoch"] == 2

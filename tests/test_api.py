"""The Python API as a notebook user calls it: a fresh interpreter that imports trainforge,
composes a config, fits it, loads the model back, and meets an error that raises."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import SMALL

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import trainforge
    from trainforge.errors import ConfigError

    run_dir, project = sys.argv[1], sys.argv[2]
    cfg = trainforge.compose(%(small)r + ["trainer.epochs=2", "model.base_channels=4"])
    result = trainforge.fit(cfg, run_dir=run_dir)
    model, saved = trainforge.load(run_dir)                      # ckpt="best"
    best = torch.load(run_dir + "/best_model_weights.pt", weights_only=True)
    same = all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    images = torch.zeros(2, 1, 32, 32)
    with torch.no_grad():
        out = model(images)
    latest, _ = trainforge.load(run_dir, ckpt="latest")
    try:
        trainforge.fit(trainforge.compose(["optimizer.lr=-1"]), run_dir=run_dir + "_bad")
        refused = None
    except ConfigError as e:
        refused = str(e)
    sys.path.insert(0, project)
    mine = trainforge.compose(%(small)r + ["model=my_net"], config_dir=project + "/conf")
    print(json.dumps({"status": result.status, "best": result.best, "epochs": len(result.metrics),
                      "run_dir": str(result.run_dir), "same": same, "out": list(out.shape),
                      "training": model.training, "base": saved.model.base_channels, "refused": refused,
                      "mine": mine.model._target_, "width": mine.model.width,
                      "latest_differs": any(not torch.equal(latest.state_dict()[k], v) for k, v in best.items())}))
""") % {"small": SMALL}


def test_compose_fit_load_and_an_error_that_raises(env, tmp_path):
    project = tmp_path / "my_project"
    (project / "conf" / "model").mkdir(parents=True)
    (project / "conf" / "model" / "my_net.yaml").write_text("_target_: my_nets.TinyNet\nwidth: 3\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"), str(project)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["status"] == "COMPLETED" and facts["epochs"] == 2 and facts["run_dir"] == str(tmp_path / "run")
    assert facts["best"]["monitor"] == "val_dice" and facts["best"]["value"] > 0
    assert facts["same"] and facts["out"] == [2, 1, 32, 32] and facts["training"] is False and facts["base"] == 4
    assert facts["refused"] == "optimizer.lr=-1.0: must be a number > 0"
    assert not (tmp_path / "run_bad").exists()
    assert facts["mine"] == "my_nets.TinyNet" and facts["width"] == 3
    assert facts["latest_differs"] == (facts["best"]["epoch"] != 2)

"""Names from before the layout move keep working: old import paths give the new modules,
and a run directory made by the code before the move (tests/fixtures/run_before_layout:
one epoch of glint, model.base_channels=4) resumes bitwise and analyses."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest
import torch

import trainforge
from conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "run_before_layout"
# what made the fixture (with trainer.epochs=1); the resume adds trainer.epochs=2
MADE_WITH = ["data.num_samples=160", "data.image_size=32", "data.batch_size=16", "model.base_channels=4",
             "log.progress=false"]


@pytest.mark.parametrize("old", sorted(trainforge.OLD_NAMES))
def test_an_old_module_name_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(trainforge.OLD_NAMES[old])


def test_old_names_of_moved_functions_and_classes_still_import():
    from trainforge.data.seqset import FIELDS, SeqDataset, make_seqset  # noqa: F401  (now in data/events.py)
    from trainforge.engine.checkpoint import LATEST, atomic_json, atomic_write  # noqa: F401  (now files.py)
    from trainforge.engine.trainer import EpochStats, StepMeter  # noqa: F401  (now engine/meters.py)
    from trainforge.rundir import RunLock, holds_run  # noqa: F401
    from trainforge.sweep import SweepSummary
    from trainforge.train import STATUS, run, write_failed_over  # noqa: F401

    assert SweepSummary.__module__ == "trainforge.analysis.summary"


def _weights(path) -> list:
    return list(torch.load(path, weights_only=True)["model"].values())


@pytest.mark.slow  # CI time: .ci/run runs it (the fast suite keeps under 5 minutes on 2 cores)
def test_a_run_made_before_the_move_resumes_bitwise_and_analyses(train, tmp_path):
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURE, run)
    train(f"resume={run}", "trainer.epochs=2")
    train(*MADE_WITH, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'straight'}")
    resumed, straight = _weights(run / "latest_checkpoint.pth"), _weights(tmp_path / "straight" / "latest_checkpoint.pth")
    assert len(resumed) == len(straight)
    # The fixture's first epoch was computed on one CPU; another CPU's kernels (AVX-512, AMX) round
    # differently. Where this machine reproduces that epoch bitwise, the resume must be bitwise too;
    # elsewhere it must agree to float rounding (a state the old checkpoint failed to restore, such
    # as the optimizer's moments or the sampler's position, moves weights by 1e-3 or more).
    train(*MADE_WITH, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'first'}")
    same_cpu = all(torch.equal(a, b) for a, b in zip(_weights(FIXTURE / "latest_checkpoint.pth"),
                                                      _weights(tmp_path / "first" / "latest_checkpoint.pth")))
    worst = max((a - b).abs().max().item() for a, b in zip(resumed, straight))
    assert worst == 0 if same_cpu else worst < 1e-5, (same_cpu, worst)
    rows = (run / "epoch_metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    # keys added since the run was made, at their defaults, are no change of it (trainer.ema, ...)
    resumed_line = next(ln for ln in (run / "training.log").read_text().splitlines() if "Resumed from" in ln)
    changed = [c.split()[0] for c in resumed_line.split("; changed: ")[1].split(", ")]
    assert changed == ["data.cache_dir", "trainer.epochs"], resumed_line  # the test's data folder, and the resume's

    proc = subprocess.run([sys.executable, "-m", "trainforge.analyze", str(run)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Status: COMPLETED - epochs done: 2/2 - resumed 1x" in proc.stdout
    assert (run / "plots" / "loss.png").is_file()

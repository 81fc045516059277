"""Loose ends (issue 31): a start race on one directory, YAML syntax errors, ``--cfg job``
through the door, the checkpoint monitor that follows the data option."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

# Two trainforge commands forked from one parent that imported everything, released at the
# same instant on one new directory, 20 times; the parent prints each pair's exit codes.
RACE = r"""
import json, multiprocessing as mp, sys
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: once here, not per child)
import trainforge.run.build, trainforge.run.resume, trainforge.run.train  # noqa: F401
from trainforge.cli import train_command

def child(argv, start):
    start.wait()
    sys.argv = ["trainforge", *argv]
    train_command()

base, pairs, small = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ctx = mp.get_context("fork")
for i in range(pairs):
    start = ctx.Event()
    procs = [ctx.Process(target=child, args=([f"hydra.run.dir={base}/p{i}", f"optimizer.lr={lr}", *small], start))
             for lr in (0.001, 0.002)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join()
    print(json.dumps([p.exitcode for p in procs]), flush=True)
"""


@pytest.mark.slow
def test_of_two_runs_started_at_once_on_one_directory_only_the_winner_writes_a_record(env, tmp_path):
    small = ["data.num_samples=40", "data.image_size=16", "data.batch_size=8", "trainer.epochs=1",
             "log.progress=false", "trainer.dry_batch=false"]
    proc = subprocess.run([sys.executable, "-c", RACE, str(tmp_path), "20", *small], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(codes) == 20 and all(sorted(c) == [0, 2] for c in codes), codes
    for i in range(20):
        run = tmp_path / f"p{i}"
        lr = yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr"]
        record = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert f"optimizer.lr={lr}" in record, (i, lr, record)  # the record is the winner's
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == lr


def test_a_yaml_syntax_error_names_file_line_and_column(env, tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "bad.yaml").write_text("_target_: x.Net\nwidth: [1, 2\n")
    proc = subprocess.run([sys.executable, "-m", "trainforge", "model=bad"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    path = tmp_path / "conf" / "model" / "bad.yaml"
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"trainforge: error: {path}:3:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']', "
        "but got '<stream end>' (opened at 2:8)"), proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_an_exception_chain_that_loops_is_read_to_its_end():
    """An error whose cause chain loops back on itself (as a refused data file's did) is no
    YAML error, and reading the chain ends."""
    from trainforge.cli import yaml_syntax_error

    first, second = OSError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert yaml_syntax_error(first) is None
    inner = yaml.YAMLError("bad")
    second.__context__ = inner
    assert yaml_syntax_error(first).endswith("YAML syntax error: bad")


def test_cfg_job_prints_the_config_then_says_it_would_be_refused(env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainforge", "--cfg", "job", "optimizer.lr=-5"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "lr: -5" in proc.stdout and "trainer:" in proc.stdout
    assert proc.stderr.strip() == "trainforge: error: optimizer.lr=-5.0: must be a number > 0"
    proc = subprocess.run([sys.executable, "-m", "trainforge", "--cfg", "job"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert not (tmp_path / "outputs").exists()

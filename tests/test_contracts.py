"""docs/run-directory.md and the code hold each other: the run directory's files, the
status record, summary.csv's columns, the checkpoint's keys, a component's own state in
the checkpoint and the format_version policy."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SMALL
from trainforge import files

DOC = (ROOT / "docs" / "run-directory.md").read_text()


def section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_names(text: str) -> list:
    """The first cell of each table row, when it is one backticked name."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


def test_every_run_directory_file_is_documented_and_named_in_one_place():
    documented = [n.rstrip("/") for n in table_names(section("Files"))]
    assert documented == list(files.RUN_DIR_FILES)


def test_status_values_and_stop_reasons_are_the_documented_ones():
    status = section("status.json")
    listed = re.search(r"`status` \| always \| one of (.*) \|", status).group(1)
    assert re.findall(r"`(\w+)`", listed) == list(files.STATUSES)
    reasons = re.search(r"`stop_reason` \|[^|]*\|[^|]*: one of (.*) \|", status).group(1)
    assert re.findall(r"`(\w+)`", reasons) == list(files.STOP_REASONS)


def test_summary_csv_starts_with_the_documented_columns(tmp_path):
    from trainforge.analysis.summary import job_row

    files.write_status(tmp_path, "COMPLETED", epoch=2, best={"monitor": "val_dice", "mode": "max", "value": 0.5,
                                                             "epoch": 2},
                       final={"train": {"loss": 0.1}, "val": {"loss": 0.2, "dice": 0.5}})
    row = job_row(0, "loss=dice", tmp_path)
    text = section("summary.csv (a sweep's root)")
    fixed = re.search(r"Fixed columns, in this order: `([^`]+)`", text.replace("\n", " ")).group(1)
    expected = [c.strip().replace("<monitor>", "val_dice") for c in fixed.split(",")]
    assert list(row)[:len(expected)] == expected
    assert list(row)[len(expected):] == ["train_loss", "val_loss", "val_dice"]


def documented_checkpoint_keys() -> list:
    text = section("Checkpoint format").split("Keys:", 1)[1].split("and one key per component", 1)[0]
    return re.findall(r"`(\w+)`", text)


def test_a_checkpoint_holds_the_documented_keys(train_here, tmp_path):
    from trainforge.engine.hooks import RESERVED_KEYS

    train_here(tmp_path / "run", *SMALL, "trainer.epochs=1", "model.base_channels=4")
    ckpt = torch.load(tmp_path / "run" / files.LATEST, weights_only=True)
    assert sorted(ckpt) == sorted(documented_checkpoint_keys()) == sorted(RESERVED_KEYS)


def counter():
    """A component with its own state: a hook that counts the optimizer steps it saw."""
    from trainforge.engine.trainer import HookBase

    class Counter(HookBase):
        state_key = "step_counter"

        def __init__(self):
            self.seen = 0

        def after_step(self):
            self.seen += 1

        def state_dict(self):
            return {"seen": self.seen}

        def load_state_dict(self, state):
            self.seen = state["seen"]

    return Counter()


def _trainer(compose_cfg, run_dir, *overrides):
    from trainforge.run.build import build

    cfg = compose_cfg(*SMALL, "model.base_channels=4", *overrides)
    trainer = build(cfg, run_dir)
    hook = counter()
    hook.trainer = trainer
    trainer.hooks.insert(0, hook)
    return trainer, hook


def test_a_component_state_is_saved_under_its_key_and_restored(compose_cfg, tmp_path):
    from trainforge.engine.checkpoint import load_checkpoint
    from trainforge.engine.hooks import CheckpointHook

    trainer, counter = _trainer(compose_cfg, tmp_path, "trainer.epochs=1")
    trainer.fit()
    saved = load_checkpoint(tmp_path / files.LATEST)
    assert saved["step_counter"] == {"seen": trainer.step} and trainer.step == 8

    again, fresh = _trainer(compose_cfg, tmp_path / "again", "trainer.epochs=2")
    missing = next(h for h in again.hooks if isinstance(h, CheckpointHook)).restore(saved)
    assert missing == [] and fresh.seen == 8

    older = {k: v for k, v in saved.items() if k != "step_counter"}  # made before the component existed
    third, new = _trainer(compose_cfg, tmp_path / "third", "trainer.epochs=2")
    assert next(h for h in third.hooks if isinstance(h, CheckpointHook)).restore(older) == ["step_counter"]
    assert new.seen == 0


def test_an_older_format_version_is_migrated_and_a_newer_one_refused(tmp_path, monkeypatch):
    from trainforge.engine import checkpoint
    from trainforge.errors import CheckpointError

    path = tmp_path / "old.pth"
    checkpoint.atomic_save({"format_version": 1, "model": {"w": torch.ones(2)}, "epoch_state": 3}, path)
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 2)  # a later trainforge that renamed a key
    monkeypatch.setitem(checkpoint.MIGRATIONS, 1, lambda c: {**{k: v for k, v in c.items() if k != "epoch_state"},
                                                             "epoch_count": c["epoch_state"]})
    loaded = checkpoint.load_checkpoint(path)
    assert loaded["format_version"] == 2 and loaded["epoch_count"] == 3 and "epoch_state" not in loaded
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    checkpoint.atomic_save({"format_version": 2, "model": {"w": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match="format_version 2 is newer than this trainforge understands"):
        checkpoint.load_checkpoint(path)


def test_a_run_record_off_rank_0_writes_nothing(tmp_path):
    quiet, writer = files.RunRecord(tmp_path / "a", writes=False), files.RunRecord(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for record in (quiet, writer):
        record.status("RUNNING", started=1.0)
        record.text(files.CONFIG, "seed: 0\n")
        record.final_status("FAILED", error="x")
    assert list((tmp_path / "a").iterdir()) == []
    assert files.read_status(tmp_path / "b")["status"] == "FAILED"
    assert (tmp_path / "b" / files.CONFIG).read_text() == "seed: 0\n"


def test_docs_name_no_file_the_code_does_not(tmp_path):
    """Every backticked run-directory file name on the page is one files.py names."""
    names = set(re.findall(r"`([\w.]+\.(?:json|csv|log|yaml|pth|pt))`", DOC))
    known = {n for n in files.RUN_DIR_FILES} | {"index.json", "checkpoint_epoch_NNN.pth", "hydra.yaml",
                                               "overrides.yaml", "summary.csv", "multirun.yaml",  # (a sweep's root)
                                               files.EVALUATIONS}
    assert names <= known, names - known
    assert Path(files.INDEX).name == "index.json"

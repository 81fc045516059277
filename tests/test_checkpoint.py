"""Checkpoint files: atomic writes survive a writer killed mid-save; retention; safe load."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from trainforge.engine.checkpoint import CheckpointManager, atomic_save, load_checkpoint
from trainforge.errors import CheckpointError, WriteError


def good_ckpt(value: float) -> dict:
    return {"format_version": 1, "epoch": 1, "step": 1, "model": {"w": torch.full((4,), value)}, "config": ""}


def test_writer_killed_before_rename_leaves_old_checkpoint_intact(tmp_path):
    path = tmp_path / "latest_checkpoint.pth"
    atomic_save(good_ckpt(1.0), path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from trainforge.engine import checkpoint
        def die(*a, **k):  # the new file is fully written; the process dies before the rename
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = die
        checkpoint.atomic_save({{"format_version": 1, "model": {{"w": torch.full((4,), 2.0)}}}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 1.0))


def test_writer_killed_mid_write_leaves_old_checkpoint_intact(tmp_path):
    path = tmp_path / "latest_checkpoint.pth"
    atomic_save(good_ckpt(1.0), path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from trainforge.engine import checkpoint
        real_fsync = os.fsync
        def die(fd):  # half of the bytes may be on disk; die before anything is committed
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        checkpoint.atomic_save({{"format_version": 1, "model": {{"w": torch.zeros(1_000_000)}}}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 1.0))


def test_retention_keeps_last_n_and_top_k_and_indexes_why(tmp_path):
    mgr = CheckpointManager(tmp_path, save_freq=1, keep_last_n=2, top_k=1, monitor="val_loss", mode="min")
    metrics = [0.5, 0.2, 0.4, 0.6, 0.7]
    for epoch, m in enumerate(metrics, start=1):
        mgr.save_epoch(epoch, m, {}, {"model": {}, "epoch": epoch}, {"w": torch.zeros(1)})
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pth"))
    assert files == ["checkpoint_epoch_002.pth", "checkpoint_epoch_004.pth", "checkpoint_epoch_005.pth"]
    index = json.loads((tmp_path / "checkpoints/index.json").read_text())
    rules = {e["file"]: e["rule"] for e in index["checkpoints"]}
    assert rules["checkpoints/checkpoint_epoch_002.pth"] == ["top_k"]
    assert rules["checkpoints/checkpoint_epoch_005.pth"] == ["last_n"]
    assert rules["best_model.pth"] == ["best"] and rules["latest_checkpoint.pth"] == ["latest"]
    assert load_checkpoint(tmp_path / "best_model.pth")["epoch"] == 2
    assert load_checkpoint(tmp_path / "latest_checkpoint.pth")["epoch"] == 5


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_follows_the_mode_and_epoch_files_follow_save_freq_and_keep_all(tmp_path, mode):
    """best_model.pth and best_model_weights.pt hold the best epoch by ``mode``, also when a
    later epoch is worse; ``save_freq=2`` writes every second epoch; ``keep_last_n=0`` keeps
    every epoch file; ``top_k`` ranks by ``mode``."""
    mgr = CheckpointManager(tmp_path, save_freq=2, keep_last_n=0, top_k=1, monitor="val_x", mode=mode)
    metrics = [0.5, 0.2, 0.9, 0.4, 0.6, 0.3]
    for epoch, m in enumerate(metrics, start=1):
        mgr.save_epoch(epoch, m, {}, {"model": {}, "epoch": epoch}, {"w": torch.full((1,), float(epoch))})
    best = 2 if mode == "min" else 3  # 0.2 / 0.9
    assert load_checkpoint(tmp_path / "best_model.pth")["epoch"] == best
    assert torch.load(tmp_path / "best_model_weights.pt", weights_only=True)["w"].item() == best
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pth"))
    assert files == ["checkpoint_epoch_002.pth", "checkpoint_epoch_004.pth", "checkpoint_epoch_006.pth"]
    rules = {e["file"]: e["rule"] for e in json.loads((tmp_path / "checkpoints/index.json").read_text())["checkpoints"]}
    top = "checkpoints/checkpoint_epoch_002.pth" if mode == "min" else "checkpoints/checkpoint_epoch_004.pth"
    assert rules[top] == ["last_n", "top_k"]  # of the saved epochs 2, 4, 6: 0.2 is the lowest, 0.4 the highest
    assert [r for f, r in rules.items() if f.startswith("checkpoints/") and f != top] == [["last_n"]] * 2

    none = CheckpointManager(tmp_path / "none", save_freq=0)
    none.save_epoch(1, 0.1, {}, {"model": {}, "epoch": 1}, {"w": torch.zeros(1)})
    assert not list((tmp_path / "none").glob("checkpoints/*.pth")) and (tmp_path / "none" / "best_model.pth").is_file()


def test_truncated_empty_and_foreign_checkpoints_give_one_line(tmp_path):
    good = tmp_path / "good.pth"
    atomic_save(good_ckpt(1.0), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, words in [(truncated, "truncated or corrupt"), (empty, "empty file"),
                        (foreign, "not a trainforge checkpoint"), (tmp_path / "nope.pth", "no such")]:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        msg = str(err.value)
        assert str(path) in msg and words in msg and "\n" not in msg


class _Exploit:
    """Unpickling this would create a file: the classic pickle payload."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_object_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format_version": 1, "model": {}, "payload": _Exploit(str(target))}, path)
    assert not target.exists()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "refused" in str(err.value) and str(path) in str(err.value)
    assert not target.exists()
    torch.load(path, weights_only=False)  # sanity: unsafe loading does run the payload
    assert target.exists()


def test_sweep_removes_temp_files_of_ended_writers_and_keeps_a_live_writers(tmp_path):
    """A rank building its CheckpointManager while rank 0 writes into the same run directory
    must not delete rank 0's temp file (it did, and rank 0's rename failed with ENOENT)."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    try:
        (tmp_path / "checkpoints").mkdir()
        kept = tmp_path / f".batch_metrics.csv.{live.pid}.tmp"
        swept = [tmp_path / f".metrics.json.{ended.pid}.tmp", tmp_path / "checkpoints" / f".x.pth.{ended.pid}.tmp"]
        for path in [kept, *swept]:
            path.write_bytes(b"half")
        CheckpointManager(tmp_path)
        assert kept.exists() and not any(path.exists() for path in swept)
    finally:
        live.kill()
        live.wait()


# ---- retention deletes old epoch files only after the new checkpoint is committed ----
def test_a_save_that_fails_deletes_no_older_checkpoint(tmp_path, monkeypatch):
    import os

    mgr = CheckpointManager(tmp_path, save_freq=1, keep_last_n=1, monitor="val_loss", mode="min")
    mgr.save_epoch(1, 0.5, {}, {"model": {}, "epoch": 1}, {"w": torch.zeros(1)})

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # nothing new can be committed
    with pytest.raises(WriteError, match="No space left"):
        mgr.save_epoch(2, 0.4, {}, {"model": {}, "epoch": 2}, {"w": torch.ones(1)})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints/checkpoint_epoch_001.pth")["epoch"] == 1
    index = json.loads((tmp_path / "checkpoints/index.json").read_text())
    assert "checkpoints/checkpoint_epoch_001.pth" in [e["file"] for e in index["checkpoints"]]

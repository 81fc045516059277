"""The example's own tests: the splits, the metrics, one epoch (python -m pytest tests)."""
from pathlib import Path

import torch

import trainforge
from ecg_rhythm.data import ECGStrips
from ecg_rhythm.metrics import MacroAUROC, MacroF1

HERE = Path(__file__).resolve().parents[1]


def test_the_splits_are_disjoint_and_cover_the_set():
    parts = {s: ECGStrips(s, size=120) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [84, 18, 18]
    signals = torch.cat([p.signals for p in parts.values()])
    assert len(torch.unique(signals[:, 0, :8], dim=0)) == 120  # no strip in two splits


def test_the_metrics_on_known_outputs():
    f1, auc = MacroF1(3), MacroAUROC(3)
    target = torch.tensor([0, 1, 2, 2])
    perfect = torch.nn.functional.one_hot(target, 3).float() * 5
    for m in (f1, auc):
        m.update(perfect, target)
    assert f1.compute() == 1.0 and auc.compute() == 1.0
    f1.reset()
    f1.update(torch.tensor([[5.0, 0, 0]] * 4), target)  # everything called normal
    assert abs(f1.compute() - (2 / 5) / 3) < 1e-9


def test_one_epoch_trains(tmp_path):
    cfg = trainforge.compose(["experiment=ecg", "trainer.epochs=1", "log.progress=false", "data.train.size=300",
                              "data.val.size=300"], config_dir=HERE / "conf")
    result = trainforge.fit(cfg, run_dir=tmp_path / "run")
    assert result.status == "COMPLETED" and 0.0 <= result.metrics[-1]["val"]["f1"] <= 1.0

"""``summary.csv`` at a sweep's root: one row per job, from each job's status.json."""
from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from trainforge.engine.logging import table_csv


def summarize(sweep_dir) -> Path:
    """Write ``<sweep_dir>/summary.csv`` (job, overrides, status, epoch, best, final metrics)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for status_file in sorted(sweep_dir.glob("*/status.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = status_file.parent
        status = json.loads(status_file.read_text())
        overrides = job / ".hydra" / "overrides.yaml"
        row = {"job": job.name,
               "overrides": " ".join(OmegaConf.load(overrides)) if overrides.exists() else "",
               "status": status.get("status"), "epoch": status.get("epoch"), "error": status.get("error", "")}
        best = status.get("best") or {}
        if best.get("monitor"):
            row[f"best_{best['monitor']}"] = best.get("value")
            row["best_epoch"] = best.get("epoch")
        final = status.get("final") or {}
        row.update({f"train_{k}": v for k, v in final.get("train", {}).items()})
        row.update({f"val_{k}": v for k, v in final.get("val", {}).items()})
        rows.append(row)
    path = sweep_dir / "summary.csv"
    path.write_text(table_csv(rows))
    return path


class SweepSummary(Callback):
    """Hydra callback: writes summary.csv when a multirun ends (also after failures)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        summarize(config.hydra.sweep.dir)

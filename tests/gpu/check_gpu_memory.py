#!/usr/bin/env python3
"""GPU check: peak GPU memory in the epoch block, epoch_metrics.csv, status.json (and
TensorBoard, if installed), and the analysis script's gpu_memory plot.

Usage: python tests/gpu/check_gpu_memory.py   (about 30 s on one GPU; prints SKIP without CUDA)
Prints one line per check and exits 1 if any fails.
"""
import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device visible; peak GPU memory is only reported on a GPU")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="tf_gpumem_"))
    run = tmp / "run"
    tb = importlib.util.find_spec("tensorboard") is not None
    env = dict(os.environ, TRAINFORGE_DATA_DIR=str(tmp / "data"), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    args = ["data.num_samples=320", "data.image_size=64", "trainer.epochs=2", "trainer.device=cuda",
            "log.progress=lines", f"log.tensorboard={str(tb).lower()}", f"hydra.run.dir={run}"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        print(f"FAIL: train.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return 1
    checks = []
    rows = list(csv.DictReader(open(run / "epoch_metrics.csv")))
    peaks = [float(r.get("gpu_mem_peak_gib") or "nan") for r in rows]
    reserved = [float(r.get("gpu_mem_reserved_gib") or "nan") for r in rows]
    checks.append(("epoch_metrics.csv gpu_mem_peak_gib > 0 each epoch", all(p > 0 for p in peaks), peaks))
    checks.append(("reserved >= allocated peak", all(r >= p for r, p in zip(reserved, peaks)), reserved))
    status = json.loads((run / "status.json").read_text())
    checks.append(("status.json gpu_mem_peak_gib = max over epochs",
                   status.get("gpu_mem_peak_gib") == max(peaks), status.get("gpu_mem_peak_gib")))
    checks.append(("status.json final record has gpu_mem_peak_gib",
                   (status.get("final") or {}).get("gpu_mem_peak_gib") == peaks[-1], None))
    blocks = proc.stdout.count("GPU memory peak:")
    checks.append(("epoch block line 'GPU memory peak:' on stdout, once per epoch", blocks == 2, blocks))
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        values = [e.value for e in events.Scalars("epoch/gpu_mem_peak_gib")]
        checks.append(("TensorBoard epoch/gpu_mem_peak_gib", len(values) == 2, values))
    ana = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze_training.py"), str(run)], env=env,
                         capture_output=True, text=True, timeout=300)
    checks.append(("analyze: gpu_memory.png and 'Peak GPU memory' in the summary",
                   (run / "plots" / "gpu_memory.png").exists() and "Peak GPU memory" in ana.stdout, None))
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(next((ln for ln in proc.stdout.splitlines() if "GPU memory peak" in ln), "(no block line)"))
    failed = 0
    for name, ok, value in checks:
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" ({value})" if value is not None else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

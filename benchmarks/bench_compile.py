"""GPU benchmark of ``trainer.compile=true``: the wide UNet at 256x256, batch 32, trained by
trainforge's own step in fp32 eager, bf16 eager and bf16 + torch.compile.

    python benchmarks/bench_compile.py [--steps 30] [--warmup 10] [--out results.json]

Each configuration is built by ``build(cfg)`` (data on the device, so the loader is not
what is measured) and times ``steps`` calls of ``run_step`` + the per-step hooks after
``warmup`` ones (for compile the warm-up includes compilation, reported separately).
Prints one JSON line per configuration with ``ms_per_step``, ``speedup_vs_fp32`` and, for
compile, ``warmup_s``. Target (issue 10): bf16 + compile >= 1.8x fp32 eager.
``--device cpu --image-size 32 --batch-size 4 --steps 2 --warmup 1 --backend aot_eager``
is a smoke test of the script only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WIDE = ["model.base_channels=32", "model.depth=3", "model.groups=8"]
CONFIGS = {"fp32": ["trainer.precision=fp32"], "bf16": ["trainer.precision=bf16"],
           "bf16+compile": ["trainer.precision=bf16", "trainer.compile=true"]}


def make_trainer(overrides, run_dir):
    from hydra import compose, initialize_config_dir

    import trainforge  # noqa: F401
    from trainforge.run.build import build

    with initialize_config_dir(config_dir=str(Path(trainforge.__file__).parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return build(cfg, run_dir)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def steps(trainer, n):
    it = iter(trainer.train_loader)
    for _ in range(n):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(trainer.train_loader)
            batch = next(it)
        trainer.run_step(batch)
        trainer._call("after_step")
        if trainer.epoch_done():
            trainer.batch_in_epoch = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script only")
    ap.add_argument("--backend", default="inductor", help="trainer.compile_backend of the compiled row")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        sys.exit("bench_compile.py: needs a CUDA GPU (or --device cpu for a smoke test)")
    os.environ.setdefault("TRAINFORGE_DATA_DIR", tempfile.mkdtemp())
    torch.backends.cudnn.benchmark = True
    common = [*WIDE, f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
              f"data.num_samples={10 * args.batch_size}", "data.on_device=true", f"trainer.device={args.device}",
              "log.progress=false"]
    name = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    rows, fp32 = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in CONFIGS.items():
            backend = [f"trainer.compile_backend={args.backend}"] if "compile" in label else []
            trainer = make_trainer([*common, *extra, *backend], Path(tmp) / label.replace("+", "_"))
            trainer._call("before_train")
            trainer._call("before_epoch")
            start = time.perf_counter()
            steps(trainer, args.warmup)
            sync()
            warm = time.perf_counter() - start
            start = time.perf_counter()
            steps(trainer, args.steps)
            sync()
            ms = (time.perf_counter() - start) / args.steps * 1000
            fp32 = fp32 or ms
            row = {"config": label, "device": name, "torch": torch.__version__, "image_size": args.image_size,
                   "batch_size": args.batch_size, "precision": trainer.precision.mode, "ms_per_step": round(ms, 3),
                   "speedup_vs_fp32": round(fp32 / ms, 3), "warmup_s": round(warm, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del trainer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

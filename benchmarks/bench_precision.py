"""GPU benchmark of the training step: fp32 vs bf16 vs fp16, trainer vs a hand-written loop,
and an audit of host syncs in the step.

    python benchmarks/bench_precision.py [--image-size 256] [--steps 50] [--json docs/benchmarks/precision_h200.json]

For each model size and precision it times ``steps`` optimizer steps (after a warm-up) of
(a) ``BaseTrainer.run_step`` + its per-step hooks and (b) a plain PyTorch loop doing the
same work on the same pinned batches, and prints ms/step, the speed-up over fp32 and the
trainer/raw ratio, all measured in one run. The sync audit runs the trainer's step with
``torch.cuda.set_sync_debug_mode("warn")`` and counts the synchronizing calls it reports.
Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_trainer(overrides, run_dir):
    from hydra import compose, initialize_config_dir

    import trainforge  # noqa: F401
    from trainforge.run.build import build

    with initialize_config_dir(config_dir=str(Path(trainforge.__file__).parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return build(cfg, run_dir)


def batches(trainer, n):
    out, it = [], iter(trainer.train_loader)
    while len(out) < n:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(trainer.train_loader)
            continue
        pin = torch.cuda.is_available()
        out.append((x.pin_memory(), y.pin_memory()) if pin else (x, y))
    return out


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_trainer(trainer, data, warmup):
    for i, batch in enumerate(data):
        if i == warmup:
            sync()
            start = time.perf_counter()
        trainer.run_step(batch)
        trainer._call("after_step")
    sync()
    return (time.perf_counter() - start) / (len(data) - warmup) * 1000


def time_raw(trainer, data, warmup):
    """The same step written by hand: the baseline the trainer must match."""
    model, opt, loss_fn, prec, dev = trainer.model, trainer.optimizer, trainer.loss_fn, trainer.precision, trainer.device
    for i, (x, y) in enumerate(data):
        if i == warmup:
            sync()
            start = time.perf_counter()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with prec.autocast():
            out = model(x)
        loss, _ = loss_fn(out, y)
        prec.scaler.scale(loss).backward()
        prec.scaler.step(opt)
        prec.scaler.update()
        opt.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - start) / (len(data) - warmup) * 1000


def sync_audit(trainer, data):
    if not torch.cuda.is_available():
        return -1, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in data:
                trainer.run_step(batch)
                trainer._call("after_step")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "called a synchronizing" in str(w.message)]
    return len(syncs), sorted(set(syncs))[:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", "--out", dest="json", default=None, metavar="PATH",
                    help="also write the figures with the machine, command and date as JSON here")
    ap.add_argument("--num-samples", type=int, default=1280)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script only")
    args = ap.parse_args()
    assert args.device == "cpu" or torch.cuda.is_available(), "needs a CUDA GPU"
    os.environ.setdefault("TRAINFORGE_DATA_DIR", tempfile.mkdtemp())
    torch.backends.cudnn.benchmark = True
    models = {"default unet (base 8, depth 2)": [],
              "wide unet (base 32, depth 3)": ["model.base_channels=32", "model.depth=3", "model.groups=8"]}
    common = [f"data.image_size={args.image_size}", f"data.num_samples={args.num_samples}", "data.batch_size=16",
              f"trainer.device={args.device}", "log.progress=false"]
    name = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    results = {"device": name, "torch": torch.__version__, "image_size": args.image_size,
               "batch_size": 16, "steps": args.steps, "rows": []}
    n = args.steps + args.warmup
    assert n <= int(args.num_samples * 0.8) // 16, "steps + warmup must fit in one epoch"
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, model_args in models.items():
            fp32 = None
            for prec in ("fp32", "bf16", "fp16"):
                ov = [*common, *model_args, f"trainer.precision={prec}"]
                trainer = make_trainer(ov, Path(tmp) / f"{prec}_t")
                data = batches(trainer, n)
                t_ms = time_trainer(trainer, data, args.warmup)
                raw = make_trainer(ov, Path(tmp) / f"{prec}_r")
                r_ms = time_raw(raw, data, args.warmup)
                audit = make_trainer(ov, Path(tmp) / f"{prec}_a")
                syncs, examples = sync_audit(audit, data[:20])
                fp32 = fp32 or t_ms
                row = {"model": model_name, "precision": prec, "trainer_ms": round(t_ms, 3), "raw_ms": round(r_ms, 3),
                       "trainer_over_raw": round(t_ms / r_ms, 3), "speedup_vs_fp32": round(fp32 / t_ms, 3),
                       "syncs_in_20_steps": syncs, "sync_examples": examples,
                       "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if syncs >= 0 else None}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
    print(f"\n{results['device']} torch {results['torch']} image {args.image_size} batch 16")
    print(f"{'model':32} {'prec':5} {'trainer ms':>10} {'raw ms':>8} {'ratio':>6} {'vs fp32':>7} {'syncs/20':>8}")
    for r in results["rows"]:
        print(f"{r['model']:32} {r['precision']:5} {r['trainer_ms']:10.2f} {r['raw_ms']:8.2f} "
              f"{r['trainer_over_raw']:6.3f} {r['speedup_vs_fp32']:7.2f} {r['syncs_in_20_steps']:8d}")
    if args.json:
        import benchjson

        benchjson.write(args.json, results)


if __name__ == "__main__":
    main()

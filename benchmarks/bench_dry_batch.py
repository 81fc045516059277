"""What the dry batch costs at start-up, against building the run and one training step.

    python benchmarks/bench_dry_batch.py [--rounds 7] [--json PATH]

For each case (the default experiment, digits, the ecg_rhythm example) in this one
process: builds the run's objects once (``trainer.dry_batch=false``), then times, in
interleaved rounds, the dry batch itself (``run/dry.py``), the build, and one training
step (``run_step`` on a batch of the loader). Prints the medians and the ratios
dry / build and dry / step; all figures come from this one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    "default": ([], None),
    "digits": (["experiment=digits"], None),
    "ecg_rhythm": (["experiment=ecg"], ROOT / "examples" / "ecg_rhythm" / "conf"),
}


def measure(overrides, config_dir, rounds: int) -> dict:
    import torch

    import trainforge
    from trainforge.distributed import group as dist
    from trainforge.run.build import _names, build
    from trainforge.run.dry import dry_batch

    cfg = trainforge.compose([*overrides, "trainer.dry_batch=false", "log.progress=false", "trainer.threads=1"],
                             config_dir=config_dir)
    times = {"dry": [], "build": [], "step": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            start = time.perf_counter()
            trainer = build(cfg, Path(tmp) / f"r{i}")
            times["build"].append(time.perf_counter() - start)
            eval_hook = next(h for h in trainer.hooks if hasattr(h, "metrics"))
            start = time.perf_counter()
            dry_batch(dist.unwrap(trainer.model), trainer.loss_fn, eval_hook.metrics, trainer.train_loader,
                      trainer.train_loader.collate_fn, trainer.device, trainer.precision, _names(cfg))
            times["dry"].append(time.perf_counter() - start)
            batch = next(iter(trainer.train_loader))
            trainer.model.train()
            start = time.perf_counter()
            trainer.run_step(batch)
            trainer.meter.ready(block=True)
            times["step"].append(time.perf_counter() - start)
            torch.set_num_threads(1)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"dry_ms": round(med["dry"], 2), "build_ms": round(med["build"], 2), "step_ms": round(med["step"], 2),
            "dry_over_build": round(med["dry"] / med["build"], 3), "dry_over_step": round(med["dry"] / med["step"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the figures (with machine, command, date) here")
    args = parser.parse_args()
    figures = {}
    for name, (overrides, config_dir) in CASES.items():
        figures[name] = measure(overrides, config_dir, args.rounds)
        print(name, " ".join(f"{k}={v}" for k, v in figures[name].items()), flush=True)
    if args.json:
        import benchjson

        benchjson.write(args.json, figures)


if __name__ == "__main__":
    main()

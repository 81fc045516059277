"""What the EMA of the weights costs per training step (``trainer.ema.decay`` set vs unset).

    python benchmarks/bench_ema.py [--rounds 9] [--steps 20] [--json PATH]

Builds two trainers of the default experiment in this one process (EMA off, EMA on with
``decay=0.999``), then times ``--steps`` training steps of each (``run_step`` and every
hook's ``after_step``: the EMA's update is one fused foreach lerp) in interleaved rounds.
Prints the medians and ``ema_over_plain_ratio`` (target <= 1.05). All figures come from
this one run, one torch thread.
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


def steps(trainer, batches, n: int) -> float:
    """Seconds for ``n`` steps (forward, backward, update, the hooks' after_step)."""
    trainer.model.train()
    start = time.perf_counter()
    for i in range(n):
        trainer.run_step(batches[i % len(batches)])
        trainer._call("after_step")
    trainer.meter.ready(block=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="also write the figures (with machine, command, date) here")
    args = parser.parse_args()

    import torch

    import trainforge
    from trainforge.run.build import build

    base = ["log.progress=false", "trainer.threads=1", "trainer.dry_batch=false", "trainer.epochs=100"]
    cases = {"plain": [], "ema": ["trainer.ema.decay=0.999"]}
    times = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: build(trainforge.compose([*base, *extra]), Path(tmp) / name) for name, extra in cases.items()}
        torch.set_num_threads(1)
        batches = [b for b, _ in zip(trainers["plain"].train_loader, range(args.steps))]
        for trainer in trainers.values():
            for hook in trainer.hooks:
                if type(hook).__name__ == "EMAHook":
                    hook.before_train()
            steps(trainer, batches, 3)  # warm-up
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                trainer.batch_in_epoch = 0  # every step its own window, as in the epoch's first ones
                times[name].append(steps(trainer, batches, args.steps) / args.steps)
    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    figures = {"default": {"plain_step_ms": round(med["plain"], 2), "ema_step_ms": round(med["ema"], 2),
                           "ema_over_plain_ratio": round(med["ema"] / med["plain"], 3)}}
    import benchjson

    benchjson.report(figures, args.json)


if __name__ == "__main__":
    main()

"""trainforge's host cost per step as a count of CPU instructions, which noise cannot move.

    python scripts/count_host_instructions.py [--steps 40,160] [--json PATH]

Timings on a shared or virtual CPU wander by 10% and more between epochs of the same loop
(see ``bench_overhead.py``'s ``rounds_ms``), which hides a framework's few-percent costs.
This script runs each variant under valgrind's callgrind with instrumentation switched on
for one epoch only (after a warm-up epoch), so the count covers the steps and nothing of
the start-up, and is the same from run to run to a few hundredths of a percent:

  hand        the hand loop of bench_overhead's (a): forward, loss, backward, AdamW step,
              zero_grad, ``loss.item()``
  trainforge  ``BaseTrainer`` + ``LoggingHook`` (every batch line into training.log),
              constant LR, no validation

Both on one Linear(256, 10), batch 64, fp32, one thread, data already in tensors on the
device (``DeviceLoader``), so the model and data cost little and the difference is the
framework's own work. Each variant is counted at two epoch lengths, which splits its count
into a cost per step and a cost per epoch (trainforge's epoch end: the epoch block, the CSV
and JSON files). Prints one JSON line: ``<variant>_per_step`` and ``<variant>_per_epoch``
(instructions), ``extra_per_step`` (trainforge minus hand) and
``trainforge_over_hand_per_step_ratio``. Needs valgrind (``apt install valgrind``); about
three minutes (the four counts run two at a time).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("hand", "trainforge")


def child(variant: str, steps: int) -> None:
    """Runs inside valgrind: build, warm up one epoch, count one epoch."""
    import logging

    import torch

    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]
    from bench_overhead import hand_epoch
    from trainforge.data.device import DeviceLoader
    from trainforge.data.sampler import EpochSampler
    from trainforge.engine.amp import Precision
    from trainforge.engine.hooks import LoggingHook
    from trainforge.engine.logging import setup_logging
    from trainforge.engine.schedules import constant
    from trainforge.engine.trainer import BaseTrainer
    from trainforge.losses import CELoss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device, n, bs = torch.device("cpu"), steps * 64, 64
    x, y = torch.randn(n, 256), torch.randint(0, 10, (n,))
    model = torch.nn.Linear(256, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = EpochSampler(n, seed=0)
    loader = DeviceLoader((x, y), sampler, bs, device)
    run_dir = Path(tempfile.mkdtemp())
    log = setup_logging(run_dir)
    log.handlers = [h for h in log.handlers if isinstance(h, logging.FileHandler)]  # training.log only
    if variant == "hand":
        loss_fn, autocast = CELoss(), Precision("fp32", device).autocast

        def epoch():
            hand_epoch(model, opt, loader, loss_fn, autocast, device, item=True)
    else:
        trainer = BaseTrainer(model, opt, constant(opt, 1, 1), CELoss(), loader, sampler, Precision("fp32", device),
                              device, epochs=0, hooks=[LoggingHook(run_dir, interval=1, progress=False)])

        def epoch():
            trainer.epochs += 1
            trainer.fit()

    def instrument(on: bool) -> None:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                       capture_output=True)

    epoch()  # warm-up: first-call costs (allocations, lazy imports) stay out of the count
    instrument(True)
    epoch()
    instrument(False)


def counts(jobs: list) -> dict:
    """{(variant, steps): instructions of its counted epoch}, two valgrind runs at a time."""
    out, running = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (variant, steps) in enumerate(jobs):
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/{n}.out",
                   sys.executable, __file__, "--child", variant, "--steps", str(steps)]
            running.append(((variant, steps), subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                                stderr=subprocess.PIPE, text=True)))
            if len(running) == 2 or n == len(jobs) - 1:
                for key, proc in running:
                    err = proc.communicate()[1]
                    found = re.search(r"Collected : (\d+)", err)
                    if proc.returncode or not found:
                        sys.exit(f"count_host_instructions.py: {key} failed under valgrind:\n{err[-2000:]}")
                    out[key] = int(found.group(1))
                running = []
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="40,160", help="the two epoch lengths counted (in the child: one)")
    ap.add_argument("--json", default=None, help="also append the line to this file")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, int(args.steps))
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        sys.exit("count_host_instructions.py: needs valgrind (callgrind); install it, e.g. apt install valgrind")
    short, long = sorted(int(s) for s in args.steps.split(","))
    found = counts([(v, s) for v in VARIANTS for s in (short, long)])
    per_step = {v: (found[v, long] - found[v, short]) / (long - short) for v in VARIANTS}
    per_epoch = {v: found[v, short] - short * per_step[v] for v in VARIANTS}
    import torch

    row = {"case": "tiny_fp32_device_data", "steps": [short, long], "torch": torch.__version__,
           **{f"{v}_per_step": round(per_step[v]) for v in VARIANTS},
           **{f"{v}_per_epoch": round(per_epoch[v]) for v in VARIANTS},
           "extra_per_step": round(per_step["trainforge"] - per_step["hand"]),
           "trainforge_over_hand_per_step_ratio": round(per_step["trainforge"] / per_step["hand"], 4)}
    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

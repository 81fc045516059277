"""trainforge's host cost per step as a count of CPU instructions, which noise cannot move.

    python benchmarks/count_host_instructions.py [--steps 40,160] [--json PATH]
    python benchmarks/count_host_instructions.py --case mlp_fp32 [--steps 40] [--json PATH]

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

``--case NAME`` counts one of ``bench_overhead.py``'s cases instead (mlp_fp32, mlp_bf16,
conv_bf16, conv_fp32, tiny_fp32): its model, precision and batch, its data path (a
``TensorDataset`` through a default ``DataLoader``: shuffled for the hand loop, the
trainer's ``EpochSampler`` for trainforge) and its CPU epoch length (``--steps``: one
number), counting one whole epoch of each, the epoch end included, as the bench times it.
Prints ``hand_per_epoch``, ``trainforge_per_epoch`` and ``trainforge_over_hand_ratio``: the
bench's ``c_over_a_ratio`` in instructions, with the noise gone. Counted instructions are
not time (a cache miss costs more than an add), but the two variants run the same kernels
on the same data; what differs is the host work, which this counts exactly. A conv case
takes a few minutes under valgrind.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]
VARIANTS = ("hand", "trainforge")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import bench_overhead  # noqa: E402  (its cases, models and hand loop)
from bench_overhead import hand_epoch  # noqa: E402
from trainforge.data.device import DeviceLoader  # noqa: E402
from trainforge.data.sampler import EpochSampler  # noqa: E402
from trainforge.engine.amp import Precision  # noqa: E402
from trainforge.engine.hooks import LoggingHook  # noqa: E402
from trainforge.engine.logging import setup_logging  # noqa: E402
from trainforge.engine.schedules import constant  # noqa: E402
from trainforge.engine.trainer import BaseTrainer  # noqa: E402
from trainforge.losses import CELoss  # noqa: E402


def child(variant: str, steps: int, case: str | None) -> None:
    """Runs inside valgrind: build, warm up one epoch, count one epoch."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    kind, mode, bs = bench_overhead.CASES[case] if case else ("tiny", "fp32", 64)
    device, n = torch.device("cpu"), steps * bs
    x = torch.randn(n, 3, 64, 64) if kind == "conv" else torch.randn(n, 256)
    y = torch.randint(0, 10, (n,))
    model = getattr(bench_overhead, kind)()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = EpochSampler(n, seed=0)
    if case is None:  # data already in tensors on the device: the framework's own work alone
        loader = DeviceLoader((x, y), sampler, bs, device)
    else:  # the bench's data path: (a) shuffles, (c) draws from the trainer's sampler
        data = TensorDataset(x, y)
        loader = (DataLoader(data, batch_size=bs, shuffle=True) if variant == "hand" else
                  DataLoader(data, batch_size=bs, sampler=sampler))
    run_dir = Path(tempfile.mkdtemp())
    log = setup_logging(run_dir)
    log.handlers = [h for h in log.handlers if isinstance(h, logging.FileHandler)]  # training.log only
    if variant == "hand":
        loss_fn, autocast = CELoss(), Precision(mode, device).autocast

        def epoch():
            hand_epoch(model, opt, loader, loss_fn, autocast, device, item=True)
    else:
        trainer = BaseTrainer(model, opt, constant(opt, 1, 1), CELoss(), loader, sampler, Precision(mode, device),
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


def counts(jobs: list, case: str | None) -> dict:
    """{(variant, steps): instructions of its counted epoch}, two valgrind runs at a time."""
    out, running = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (variant, steps) in enumerate(jobs):
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/{n}.out",
                   sys.executable, __file__, "--child", variant, "--steps", str(steps),
                   *(["--case", case] if case else [])]
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
    ap.add_argument("--steps", default=None,
                    help="the two epoch lengths counted (default 40,160); with --case one (default: the bench's)")
    ap.add_argument("--case", default=None, help="count this case of bench_overhead.py (not default)")
    ap.add_argument("--json", default=None, help="also append the line to this file")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, int(args.steps), args.case)
    cases = [c for c, (kind, _, _) in bench_overhead.CASES.items() if kind != "default"]
    if args.case is not None and args.case not in cases:
        sys.exit(f"count_host_instructions.py: --case {args.case!r}: choose one of {', '.join(cases)}")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        sys.exit("count_host_instructions.py: needs valgrind (callgrind); install it, e.g. apt install valgrind")
    if args.case:
        kind = bench_overhead.CASES[args.case][0]
        return count_case(args.case, int(args.steps or bench_overhead.CPU_STEPS[kind]), args.json)
    short, long = sorted(int(s) for s in (args.steps or "40,160").split(","))
    found = counts([(v, s) for v in VARIANTS for s in (short, long)], None)
    per_step = {v: (found[v, long] - found[v, short]) / (long - short) for v in VARIANTS}
    per_epoch = {v: found[v, short] - short * per_step[v] for v in VARIANTS}

    row = {"case": "tiny_fp32_device_data", "steps": [short, long], "torch": torch.__version__,
           **{f"{v}_per_step": round(per_step[v]) for v in VARIANTS},
           **{f"{v}_per_epoch": round(per_epoch[v]) for v in VARIANTS},
           "extra_per_step": round(per_step["trainforge"] - per_step["hand"]),
           "trainforge_over_hand_per_step_ratio": round(per_step["trainforge"] / per_step["hand"], 4)}
    report(row, args.json)


def count_case(case: str, steps: int, json_path) -> None:
    found = counts([(v, steps) for v in VARIANTS], case)

    row = {"case": case, "steps": steps, "torch": torch.__version__,
           **{f"{v}_per_epoch": found[v, steps] for v in VARIANTS},
           "trainforge_over_hand_ratio": round(found["trainforge", steps] / found["hand", steps], 4)}
    report(row, json_path)


def report(row: dict, json_path) -> None:
    """Prints the line; with ``--json`` also appends it, with machine, command and date."""
    print(json.dumps(row), flush=True)
    if json_path:
        stamp = bench_overhead.record_stamp(f"{platform.node()} cpu ({os.cpu_count()} cores)")
        with open(json_path, "a") as f:
            f.write(json.dumps({**row, **stamp}) + "\n")


if __name__ == "__main__":
    main()

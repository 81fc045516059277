"""What trainforge costs per step, against hand-written loops, interleaved in one process.

    python benchmarks/bench_overhead.py [--device auto|cpu|cuda] [--rounds 7] [--cases mlp_fp32,...] [--clock cpu --threads 1]
                                     [--control] [--json docs/benchmarks/overhead_<machine>.jsonl]

Variants, each run for one epoch per round, round-robin, so machine noise hits all alike:

  a   hand loop, ``loss.item()`` every step (what most hand loops do)
  b   the same hand loop without it (no host sync)
  c   trainforge through its Python API: ``BaseTrainer`` + ``LoggingHook`` (log.interval=1,
      every batch line into training.log, no stdout), constant LR, no validation
  c_dev  the same with the data set kept on the device (``DeviceLoader``, as data.on_device=true)
  d   Lightning, when it is installed (a LightningModule logging its loss every step)
  a2  with ``--control``: a second hand loop identical to (a), run last in each round; its
      ratio to (a) is what two equal loops differ by on this machine in this run (noise,
      memory placement), the yardstick for reading ``c_over_a_ratio``

Cases: an MLP 256-512-512-10 (batch 64, fp32 and bf16), a 3-layer conv net on 3x64x64
(batch 16 bf16, batch 64 fp32), both on a ``TensorDataset`` through a default ``DataLoader``;
``default``: the default experiment's own data path (glint HDF5 preloaded, UNet, focal loss), and
``tiny_fp32``: one Linear(256, 10), batch 64, whose step is almost all host work (what a small
model on a fast GPU is), so ``c_ms - a_ms`` there is the framework's own host cost per step.

Output (stable): one JSON line per case with ``case``, ``device``, ``steps`` (per epoch),
``rounds``, ``<variant>_ms`` (median ms/step over the rounds) and ratios of those medians
``c_over_a_ratio``, ``c_over_b_ratio``, ``c_dev_over_a_ratio``, ``d_over_a_ratio`` (when d ran),
``a2_over_a_ratio`` (with ``--control``);
``c_over_a_paired_ratio`` and ``c_dev_over_a_paired_ratio``: the median over rounds of the
round's own ratio (the variants of a round run back to back, so a machine that slows down for a
few seconds slows both; on a shared or virtual machine this is the steadier figure); and
``rounds_ms``: every measured epoch's ms/step per variant. A ratio of 1.05 means trainforge's
step costs 5% more than the hand loop's. ``--json PATH`` also appends the lines, each with
``machine``, ``command`` and ``date``, to PATH.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trainforge.data.device import DeviceLoader  # noqa: E402
from trainforge.data.sampler import EpochSampler  # noqa: E402
from trainforge.engine.amp import Precision  # noqa: E402
from trainforge.engine.hooks import LoggingHook  # noqa: E402
from trainforge.engine.logging import setup_logging  # noqa: E402
from trainforge.engine.schedules import constant  # noqa: E402
from trainforge.engine.trainer import BaseTrainer, HookBase  # noqa: E402
from trainforge.losses import CELoss  # noqa: E402

CASES = {  # name: (model, precision, batch size)
    "mlp_fp32": ("mlp", "fp32", 64),
    "mlp_bf16": ("mlp", "bf16", 64),
    "conv_bf16": ("conv", "bf16", 16),
    "conv_fp32": ("conv", "fp32", 64),
    "default": ("default", None, None),
    "tiny_fp32": ("tiny", "fp32", 64),  # one Linear: the step is almost all host work (a GPU's launch-bound regime)
}
CPU_STEPS = {"mlp": 40, "conv": 12, "tiny": 200}  # steps per epoch on a CPU (100 on a GPU)


def mlp():
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def tiny():
    return nn.Sequential(nn.Linear(256, 10))


def conv():
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# wall time, or with --clock cpu the CPU time of this process (every thread): on a CPU
# shared with other jobs the wall clock mostly measures them, CPU time the work done here
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
now = time.perf_counter


def hand_epoch(model, opt, loader, loss_fn, autocast, device, item: bool) -> None:
    """One epoch of the loop a user writes (also what count_host_instructions.py counts)."""
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        loss = loss_fn(out, y)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if item:
            loss.item()


class Hand:
    """(a)/(b): the loop a user writes, one epoch per ``block``, run in a thread of its own
    like the framework variants (measured here: the same bf16 hand loop ran 2.7% slower in a
    worker thread than in the main one, so every variant gets a worker thread)."""

    def __init__(self, model, loader, loss_fn, precision, device, item):
        self.model, self.loader, self.loss_fn, self.device, self.item = model, loader, loss_fn, device, item
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.autocast = precision.autocast
        self.gate = Gate(device)
        self.gate.start_thread(self._serve)

    def _serve(self):
        while True:
            self.gate.before_epoch()
            self.epoch()
            self.gate.end()

    def block(self) -> float:
        return self.gate.block()

    def epoch(self) -> None:
        hand_epoch(self.model, self.opt, self.loader, self.loss_fn, self.autocast, self.device, self.item)


class Gate(HookBase):
    """Runs a variant's loop (a framework's ``fit``, a hand loop) in a thread of its own, one
    epoch per ``block()``: ``before_epoch`` (the first hook) waits for its turn and starts the
    clock; ``end`` (from the last hook) stops it."""

    def __init__(self, device):
        self.device, self.go, self.done, self.elapsed = device, threading.Event(), threading.Event(), 0.0
        self.error = None

    def start_thread(self, fit, *args) -> "Gate":
        threads = torch.get_num_threads()  # a new thread starts with torch's default thread count

        def target():
            torch.set_num_threads(threads)
            try:
                fit(*args)
            except BaseException as e:  # reported by block(), not lost in the thread
                self.error = e
                self.done.set()

        threading.Thread(target=target, daemon=True).start()
        return self

    def before_epoch(self):
        self.go.wait()
        self.go.clear()
        sync(self.device)
        self.start = now()

    def end(self):
        sync(self.device)
        self.elapsed = now() - self.start
        self.done.set()

    def block(self) -> float:
        self.done.clear()
        self.go.set()
        if not self.done.wait(timeout=600):
            raise RuntimeError("the framework's epoch did not finish")
        if self.error is not None:
            raise RuntimeError(f"{type(self.error).__name__}: {self.error}")
        return self.elapsed


class GateEnd(HookBase):
    def __init__(self, gate):
        self.gate = gate

    def after_epoch(self):
        self.gate.end()


def trainforge_variant(model, loader, sampler, loss_fn, mode, device, run_dir, epochs):
    gate = Gate(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hooks = [gate, LoggingHook(run_dir, interval=1, progress=False), GateEnd(gate)]
    trainer = BaseTrainer(model, opt, constant(opt, 1, 1), loss_fn, loader, sampler, Precision(mode, device),
                          device, epochs=epochs, hooks=hooks)
    return gate.start_thread(trainer.fit)


def lightning_variant(model, loader, loss_fn, mode, device, epochs):
    """(d), or None when Lightning is not installed."""
    try:
        import lightning as L
    except ImportError:
        try:
            import pytorch_lightning as L
        except ImportError:
            return None
    gate = Gate(device)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, i):
            loss = loss_fn(self.net(batch[0]), batch[1])[0]
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    class Bell(L.Callback):
        def on_train_epoch_start(self, *a):
            gate.before_epoch()

        def on_train_epoch_end(self, *a):
            gate.end()

    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if mode == "bf16" else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, num_sanity_val_steps=0, callbacks=[Bell()])
    return gate.start_thread(trainer.fit, Module(), loader)


def synthetic(kind, mode, bs, steps, device, run_dir, epochs, control):
    """Variants for the MLP and conv cases: same init, data, optimizer for each."""
    torch.manual_seed(0)
    n = steps * bs
    x = torch.randn(n, 3, 64, 64) if kind == "conv" else torch.randn(n, 256)
    y = torch.randint(0, 10, (n,))
    data = TensorDataset(x, y)
    net = {"mlp": mlp, "conv": conv, "tiny": tiny}[kind]().to(device)
    loss_fn = CELoss()
    prec = Precision(mode, device)

    def hand(item):
        return Hand(copy.deepcopy(net), DataLoader(data, batch_size=bs, shuffle=True), loss_fn, prec, device, item)

    variants = {"a": hand(True), "b": hand(False)}
    sampler = EpochSampler(n, seed=0)
    variants["c"] = trainforge_variant(copy.deepcopy(net), DataLoader(data, batch_size=bs, sampler=sampler),
                                       sampler, loss_fn, mode, device, run_dir / "c", epochs)
    dev_sampler = EpochSampler(n, seed=0)
    dev_loader = DeviceLoader((x, y), dev_sampler, bs, device)
    variants["c_dev"] = trainforge_variant(copy.deepcopy(net), dev_loader, dev_sampler, loss_fn, mode, device,
                                           run_dir / "c_dev", epochs)
    d = lightning_variant(copy.deepcopy(net), DataLoader(data, batch_size=bs, shuffle=True), loss_fn, mode, device,
                          epochs)
    if d is not None:
        variants["d"] = d
    if control:
        variants["a2"] = hand(True)
    return variants, steps


def default_experiment(device, run_dir, epochs, steps, control):
    """The default experiment (glint, UNet, focal loss, its preloaded HDF5 loader), built by
    ``build``; the hand loops iterate the same loader. No validation or checkpoints."""
    from hydra import compose, initialize_config_dir

    import trainforge  # noqa: F401  (schemas)
    from trainforge.run.build import build

    size = [f"data.num_samples={steps * 20}"] if steps else []  # 80% train, batch 16: `steps` batches

    def make(name, *extra):
        with initialize_config_dir(config_dir=str(Path(trainforge.__file__).parent / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["log.progress=false", f"trainer.device={device.type}",
                                                          f"trainer.epochs={epochs}", "seed=0", *size, *extra])
        return build(cfg, run_dir / name)

    tf, tf_dev = make("c"), make("c_dev", "data.on_device=true")

    def hand(item):
        return Hand(copy.deepcopy(tf.model), tf.train_loader, tf.loss_fn, tf.precision, device, item)

    variants = {"a": hand(True), "b": hand(False)}
    for name, trainer in (("c", tf), ("c_dev", tf_dev)):
        gate = Gate(device)
        logger = next(h for h in trainer.hooks if isinstance(h, LoggingHook))
        trainer.hooks = [gate, logger, GateEnd(gate)]
        for hook in trainer.hooks:
            hook.trainer = trainer
        variants[name] = gate.start_thread(trainer.fit)
    if control:
        variants["a2"] = hand(True)
    return variants, tf.batches_per_epoch


def run_case(name, device, args, tmp: Path) -> dict:
    kind, mode, bs = CASES[name]
    epochs = args.warmup + args.rounds
    run_dir = tmp / name
    for sub in ("c", "c_dev"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    log = setup_logging(run_dir)  # training.log gets every batch line
    log.handlers = [h for h in log.handlers if isinstance(h, logging.FileHandler)]  # stdout: the JSON lines only
    if kind == "default":
        steps = args.steps or (0 if device.type == "cuda" else 16)  # 0: the default 1280 samples, 64 steps
        variants, steps = default_experiment(device, run_dir, epochs, steps, args.control)
    else:
        steps = args.steps or (100 if device.type == "cuda" else CPU_STEPS[kind])
        variants, steps = synthetic(kind, mode, bs, steps, device, run_dir, epochs, args.control)
    times, errors = {k: [] for k in variants}, {}
    for r in range(epochs):
        for key, variant in list(variants.items()):
            try:
                elapsed = variant.block()
            except RuntimeError as e:
                if key != "d":
                    raise
                errors["d_error"] = str(e)[:200]  # Lightning is optional: report and go on without it
                del variants[key], times[key]
                continue
            if r >= args.warmup:
                times[key].append(elapsed / steps * 1000)
    row = {"case": name, "device": device_name(device), "precision": mode or "auto", "steps": steps,
           "rounds": args.rounds, "clock": args.clock}
    med = {k: statistics.median(v) for k, v in times.items()}
    row.update({f"{k}_ms": round(v, 4) for k, v in med.items()})
    row["c_over_a_ratio"] = round(med["c"] / med["a"], 4)
    row["c_over_b_ratio"] = round(med["c"] / med["b"], 4)
    row["c_dev_over_a_ratio"] = round(med["c_dev"] / med["a"], 4)
    for k in ("d", "a2"):
        if k in med:
            row[f"{k}_over_a_ratio"] = round(med[k] / med["a"], 4)
    for k in ("c", "c_dev"):  # the same round's epochs ran back to back: slow drift cancels in their ratio
        row[f"{k}_over_a_paired_ratio"] = round(statistics.median(x / y for x, y in zip(times[k], times["a"])), 4)
    row["rounds_ms"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
    row.update(errors)
    logging.getLogger("trainforge").handlers.clear()
    return row


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def record_stamp(machine: str) -> dict:
    """What a ``--json`` line carries besides the figures (also count_host_instructions.py's)."""
    return {"machine": machine, "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=7, help="measured epochs per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="epochs per variant before measuring")
    ap.add_argument("--steps", type=int, default=0, help="steps per epoch (0: per-device default)")
    ap.add_argument("--clock", choices=list(CLOCK), default="wall",
                    help="wall (default) or cpu: this process's CPU time, for CPUs shared with other jobs")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--control", action="store_true",
                    help="add a2, a copy of the hand loop (a): a2_over_a_ratio shows this run's noise")
    ap.add_argument("--json", default=None, help="also append the lines, with machine/command/date, to this file")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    global now
    now = CLOCK[args.clock]
    os.environ.setdefault("TRAINFORGE_DATA_DIR", str(Path(tempfile.gettempdir()) / "trainforge-bench-data"))
    stamp = record_stamp(f"{platform.node()} {device_name(device)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            if name not in CASES:
                sys.exit(f"--cases: unknown case {name!r}; known: {', '.join(CASES)}")
            row = run_case(name, device, args, Path(tmp))
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                with open(args.json, "a") as f:
                    f.write(json.dumps({**row, **stamp}) + "\n")


if __name__ == "__main__":
    main()

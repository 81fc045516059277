"""GPU check for experiment=seqsetvae: the training step and the validation accumulation
make no device-to-host sync, and the collapse statistics and AUROC are read once per
validation. Skips (exit 0) without a CUDA GPU. About 30 s on one GPU.

    python tests/gpu/check_seqsetvae_gpu.py

Prints one line per check and ``ALL OK``; exits 1 at the first op that synchronises
(``torch.cuda.set_sync_debug_mode("error")`` names it).
"""
from __future__ import annotations

import contextlib
import sys
import traceback
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def compose(data_dir: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    import trainforge  # noqa: F401  (registers the schemas)

    overrides = ["experiment=seqsetvae", "trainer.device=cuda", "data.num_patients=400",
                 f"data.cache_dir={data_dir}", "log.progress=false", "trainer.threads=null"]
    with initialize_config_dir(config_dir=str(Path(trainforge.__file__).parent / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def on_device(loader, device, limit):
    from trainforge.engine.trainer import to_device

    batches = []
    for batch in loader:
        batches.append(to_device(batch, device))
        if len(batches) == limit:
            break
    torch.cuda.synchronize()
    return batches


@contextlib.contextmanager
def syncs_are_errors():
    """Inside: any op that synchronises the host with the GPU raises RuntimeError."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def fail(what: str, error: RuntimeError) -> int:
    print(f"FAIL {what} synchronises: {str(error).splitlines()[0]}")
    traceback.print_exc()
    return 1


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: skipped")
        return 0
    from trainforge.run.build import build
    from trainforge.engine.hooks import EvalHook

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(tmp)
        (Path(tmp) / "run").mkdir()
        trainer = build(cfg, Path(tmp) / "run")
        device = trainer.device
        print(f"device {torch.cuda.get_device_name(device)}, precision {trainer.precision.mode}, torch {torch.__version__}")
        train = on_device(trainer.train_loader, device, 12)
        for batch in train[:2]:  # warm up (allocator, kernels)
            trainer.run_step(batch)
        torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            with syncs_are_errors():
                for batch in train[2:]:
                    trainer.run_step(batch)
                    trainer.loss_fn.set_step(trainer.step)  # what LossStepHook does after each step
        except RuntimeError as e:
            return fail("train step", e)
        torch.cuda.synchronize()
        step_ms = 1000 * (time.perf_counter() - start) / (len(train) - 2)
        print(f"OK   {len(train) - 2} training steps with no host sync ({step_ms:.1f} ms/step)")

        evaluator = next(h for h in trainer.hooks if isinstance(h, EvalHook))
        val = on_device(evaluator.loader, device, 1000)
        metrics = evaluator.metrics
        metrics.reset()
        trainer.model.eval()
        try:
            with syncs_are_errors(), torch.no_grad(), trainer.precision.autocast():
                for inputs, target in val:
                    output = trainer.model(inputs)
                    trainer.loss_fn(output, target)
                    metrics.update(output, target)
        except RuntimeError as e:
            return fail("validation accumulation", e)
        print(f"OK   {len(val)} validation batches accumulated with no host sync")
        reads = {"n": 0}
        original = torch.Tensor.tolist

        def counting(self):
            reads["n"] += 1
            return original(self)

        torch.Tensor.tolist = counting
        try:
            values = metrics.compute()
        finally:
            torch.Tensor.tolist = original
        print(f"OK   compute(): {reads['n']} .tolist() reads (one for AUROC/AUPRC/accuracy, one for the collapse "
              f"statistics): " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if reads["n"] != 2:
            print("FAIL expected exactly 2 host reads")
            return 1
    print("ALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

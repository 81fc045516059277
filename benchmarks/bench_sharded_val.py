"""One epoch's validation on 2 ranks: each rank its own part (sharded, what trainforge does)
vs every rank validating the whole set (the cost of exactness without sharding).

    python benchmarks/bench_sharded_val.py [--rounds 5] [--json PATH]

Starts 2 gloo processes (one torch thread each) that build the default experiment's
trainer (``trainforge.run.build``) and time, in interleaved rounds, ``EvalHook.evaluate``
over this rank's part (loss sums and metric states reduced over the ranks) and over the
whole set (nothing reduced). Checks that both give the same values, then prints the
medians of rank 0 and ``sharded_over_whole_ratio`` (target < 0.7). All figures come from
this one run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rank_main(rank: int, port: int, rounds: int, out: str, overrides: list) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    from torch.utils.data import DataLoader

    import trainforge
    from trainforge.distributed import group as dist
    from trainforge.engine.hooks import EvalHook
    from trainforge.run.build import build

    torch.set_num_threads(1)
    dist.init("gloo", 300)
    cfg = trainforge.compose(["log.progress=false", "trainer.threads=1", "trainer.dry_batch=false", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(cfg, Path(tmp) / "run")
        sharded = next(h for h in trainer.hooks if isinstance(h, EvalHook))
        loader = sharded.loader
        whole = EvalHook(DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn),
                         sharded.metrics, sharded=False)
        for hook in (sharded, whole):
            hook.trainer = trainer
        model = dist.unwrap(trainer.model)
        assert sharded.sharded and len(loader.sampler) < len(loader.dataset)
        times, values = {"sharded": [], "whole": []}, {}
        for _ in range(rounds):
            for name, hook in (("sharded", sharded), ("whole", whole)):
                hook.metrics.sharded = hook.sharded  # one MetricSet: reduced over the ranks only when sharded
                dist.barrier()
                start = time.perf_counter()
                values[name] = hook.evaluate(model)
                times[name].append(time.perf_counter() - start)
        same = all(abs(values["sharded"][k] - values["whole"][k]) <= 1e-6 * max(1.0, abs(values["whole"][k]))
                   for k in values["whole"])
        if rank == 0:
            Path(out).write_text(json.dumps({"times": times, "same": same, "samples": len(loader.dataset),
                                             "values": values["whole"]}))
    dist.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the figures (with machine, command, date) here")
    parser.add_argument("overrides", nargs="*", help="config overrides (default: the default experiment)")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.start_processes(rank_main, args=(port, args.rounds, out, args.overrides), nprocs=2, start_method="spawn")
        result = json.loads(Path(out).read_text())
    med = {k: statistics.median(v) * 1000 for k, v in result["times"].items()}
    figures = {"default": {"val_samples": result["samples"], "sharded_ms": round(med["sharded"], 1),
                           "whole_ms": round(med["whole"], 1), "same_values": result["same"],
                           "sharded_over_whole_ratio": round(med["sharded"] / med["whole"], 3)}}
    import benchjson

    benchjson.report(figures, args.json)


if __name__ == "__main__":
    main()

"""Wall time of a 4-job sweep through the local_gpus launcher, two ways, in one process run.

    python benchmarks/bench_sweep.py              # CPU: default max_parallel vs one job at a time
    python benchmarks/bench_sweep.py --gpu        # GPU: 4 short jobs on one GPU, jobs_per_gpu=1 vs 4

CPU: 4 jobs of the default experiment (``--epochs`` shortens them); "one at a time" is
``hydra.launcher.max_parallel=1`` (that job then gets every core's thread).
GPU: the first visible GPU only (``CUDA_VISIBLE_DEVICES`` narrowed to it), 4 jobs of
``--epochs`` (default 3) epochs each; without a GPU it says so and exits 0.
Data is made once before timing. Prints each wall time and the ratio.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def run(args, cwd, env) -> float:
    """Seconds ``python train.py ARGS`` took; exits with its output if it failed."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: train.py {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="4 short jobs on one GPU, jobs_per_gpu=1 vs 4")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per job (CPU: the experiment's own)")
    parser.add_argument("--oversubscribe", action="store_true", help="CPU: also all 4 jobs at once")
    a = parser.parse_args()
    from hydra_plugins.trainforge_launcher._pool import Pool, cores, threads_per_job, visible_gpus

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    epochs = a.epochs or (3 if a.gpu else None)
    common = ["seed=0,1,2,3", "log.progress=false"] + ([f"trainer.epochs={epochs}"] if epochs else [])
    if a.gpu:
        gpus = visible_gpus()
        if not gpus:
            print("no GPU visible (nvidia-smi / CUDA_VISIBLE_DEVICES): nothing to measure")
            return
        env["CUDA_VISIBLE_DEVICES"] = gpus[0]
        variants = [("jobs_per_gpu=1 (one job at a time on the GPU)", ["hydra.launcher.jobs_per_gpu=1"]),
                    ("jobs_per_gpu=4 (all 4 share the GPU)", ["hydra.launcher.jobs_per_gpu=4"])]
        print(f"GPU {gpus[0]}: 4 jobs of the default experiment, {epochs} epochs each, {cores()} cores")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        n = cores()
        default = Pool([], 1, 1, None, n).max_parallel
        variants = [(f"default max_parallel ({default} at a time, {threads_per_job(n, default, 1)} thread(s) each)",
                     []),
                    (f"one at a time (max_parallel=1, {threads_per_job(n, 1, 1)} thread(s))",
                     ["hydra.launcher.max_parallel=1"])]
        if a.oversubscribe:
            variants.append(("all 4 at once (max_parallel=4, 1 thread each)", ["hydra.launcher.max_parallel=4"]))
        print(f"CPU, {n} cores: 4 jobs of the default experiment"
              f" ({epochs or 'its default'} epochs each)")
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("TRAINFORGE_DATA_DIR", str(Path(tmp) / "data"))
        run(["trainer.epochs=1", "log.progress=false", f"hydra.run.dir={tmp}/warmup"], tmp, env)  # data made here
        times = []
        for i, (label, extra) in enumerate(variants):
            took = run(["-m", *common, *extra, f"hydra.sweep.dir={tmp}/sweep{i}"], tmp, env)
            times.append(took)
            print(f"  {label}: {took:.1f} s", flush=True)
    print(f"  ratio (second / first): {times[1] / times[0]:.2f}")


if __name__ == "__main__":
    main()

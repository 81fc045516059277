"""hydra/sweeper=search on CPU slots: how busy the slots stay, and the wall time against a
batch-synchronous schedule of the same trials, in one process run.

    python benchmarks/bench_search.py [--long 4] [--grid-seed 0] [--small] [--json PATH]

8 trials of the default experiment (grid sampler: ``seed`` 0-3 x ``trainer.epochs`` 1 or
``--long``, so half the trials run about 3x longer), no pruning, 2 slots of 1 thread each.

- busy fraction: while trials remain to start (first start to last start), the share of
  the 2 slots' time a trial occupies, from its start (the study's ``datetime_start``: the
  parent asks, then spawns it) to the end of its run (``status.json``'s ``finished``); the
  job's exit, the parent noticing it and the next ask count as idle.
- batch-synchronous: the same 8 trials in the search's order, two at a time, the next two
  starting when both have ended (what Hydra's Optuna sweeper does with ``n_jobs=2``; it
  cannot install beside Optuna 5, so each batch here is two ``train.py`` runs started
  together). Its wall time has no sweep parent at all; the search's includes its own
  (start-up, report, plots), so the ratio leans against the search.
Data is made once before timing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SLOTS = 2


def train(args, cwd, env, wait=True):
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"failed: train.py {' '.join(args)}\n{out[-3000:]}\n{err[-3000:]}")
    return out


def trials_of(sweep: Path) -> list:
    """(number, params, start, end of run) of each trial, from the journal and status.json."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from trainforge.run.trial import JOURNAL

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(str(sweep / JOURNAL))))
    rows = []
    for t in study.trials:
        finished = json.loads((sweep / str(t.number) / "status.json").read_text())["finished"]
        rows.append((t.number, t.params, t.datetime_start.timestamp(), finished))
    return sorted(rows)


def busy_fraction(rows: list) -> float:
    """Slot time used by trials between the first and the last start, over SLOTS x that span."""
    lo, hi = min(r[2] for r in rows), max(r[2] for r in rows)
    used = sum(max(0.0, min(end, hi) - max(start, lo)) for _, _, start, end in rows)
    return used / (SLOTS * (hi - lo))


def batches(rows: list, cwd, env, common) -> float:
    """Seconds the trials take run two at a time, each pair waiting for its slower trial."""
    total = 0.0
    for i in range(0, len(rows), SLOTS):
        start = time.perf_counter()
        procs = [train([*common, *(f"{k}={v}" for k, v in params.items()), f"hydra.run.dir={cwd}/batch/{n}"],
                       cwd, env, wait=False) for n, params, _, _ in rows[i:i + SLOTS]]
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                sys.exit(f"a batch run failed\n{err[-3000:]}")
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=int, default=4, help="epochs of the long trials (the short ones run 1)")
    parser.add_argument("--grid-seed", type=int, default=0, help="hydra.sweeper.seed: the grid's order")
    parser.add_argument("--small", action="store_true", help="small glint data (a quick check, no figure to quote)")
    parser.add_argument("--json", help="also write the figures (with machine, command, date) here")
    a = parser.parse_args()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    small = ["data.num_samples=160", "data.image_size=32", "data.batch_size=16"] if a.small else []
    common = ["log.progress=false", "trainer.threads=1", *small]
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("TRAINFORGE_DATA_DIR", str(Path(tmp) / "data"))
        train([*common, "trainer.epochs=1", f"hydra.run.dir={tmp}/warmup"], tmp, env)  # data made here
        start = time.perf_counter()
        train(["-m", "hydra/sweeper=search", "hydra.sweeper.sampler=grid", f"hydra.sweeper.seed={a.grid_seed}",
               "hydra.sweeper.pruner=none", "seed=choice(0,1,2,3)", f"trainer.epochs=choice(1,{a.long})",
               f"hydra.launcher.max_parallel={SLOTS}", "hydra.launcher.threads_per_job=1", "log.progress=false", *small,
               f"hydra.sweep.dir={tmp}/search"], tmp, env)
        search_wall = time.perf_counter() - start
        rows = trials_of(Path(tmp) / "search")
        span = max(r[3] for r in rows) - min(r[2] for r in rows)
        print("trial order (epochs):", " ".join(str(p["trainer.epochs"]) for _, p, _, _ in rows), flush=True)
        batch_wall = batches(rows, tmp, env, common)
    figures = {"search": {"trials": len(rows), "slots": SLOTS, "busy_fraction": round(busy_fraction(rows), 3),
                          "wall_s": round(search_wall, 1), "first_start_to_last_end_s": round(span, 1)},
               "batch_synchronous": {"wall_s": round(batch_wall, 1)},
               "ratio": {"search_wall_over_batch_wall": round(search_wall / batch_wall, 3),
                         "trial_span_over_batch_wall": round(span / batch_wall, 3)}}
    import benchjson

    benchjson.report(figures, a.json)


if __name__ == "__main__":
    main()

"""Memory of N concurrent processes reading one data set, with and without
``data.shared_memory=true``.

    python benchmarks/bench_shared_memory.py [--procs 4] [--samples 12000] [--size 64] [--json PATH]

Writes a glint HDF5 file, then for each mode starts ``--procs`` processes that each build
the train and val datasets as training would (``preload=true``, or ``shared_memory=true``)
and read every sample. While all of them hold the data, it sums their resident (RSS) and
proportional (PSS, shared pages split between the processes that map them) memory from
``/proc/<pid>/smaps_rollup``, minus each process's baseline before it loaded the data.
Prints both totals as multiples of one in-memory copy of the arrays; all ratios come
from this one run. Linux only. ``--json PATH`` also writes the figures with the machine,
the command and the date (``docs/benchmarks/shared_memory_cpu.json`` is such a file).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def memory(pid: int) -> dict:
    """RSS and PSS of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Rss:", "Pss:"):
            out[parts[0][:-1].lower()] = int(parts[1]) * 1024
    return out


def child(path: str, shared: bool, ready: str, go: str, size: int = 64) -> None:
    """One user: note the baseline, load the data, touch every sample, wait to be measured."""
    from trainforge.data import GlintData

    import numpy as np  # noqa: F401  (imported before the baseline)
    import torch

    base = memory(os.getpid())
    data = GlintData(path=path, cache_dir="", batch_size=64, preload=True, shared_memory=shared,
                     image_size=size, num_samples=0)
    total, held = 0.0, (data.train_set(), data.val_set())  # held until measured
    for ds in held:
        for start in range(0, len(ds), 64):
            images, masks = ds.__getitems__(list(range(start, min(start + 64, len(ds)))))
            total += float(images.sum()) + float(masks.sum())
    Path(ready).write_text(f"{base['rss']} {base['pss']} {total}")
    while not Path(go).exists():
        time.sleep(0.05)
    torch.zeros(1)


def run_mode(path: Path, shared: bool, procs: int, tmp: Path, size: int = 64) -> dict:
    kids, readies = [], []
    go = tmp / f"go_{shared}"
    for i in range(procs):
        ready = tmp / f"ready_{shared}_{i}"
        readies.append(ready)
        kids.append(subprocess.Popen([sys.executable, __file__, "--child", str(path), str(int(shared)), str(ready),
                                      str(go), str(size)]))
    while not all(r.exists() for r in readies):
        if any(k.poll() not in (None, 0) for k in kids):
            raise SystemExit("a child failed")
        time.sleep(0.05)
    time.sleep(0.2)
    rss = pss = 0
    per = []
    for kid, ready in zip(kids, readies):
        base_rss, base_pss, _ = ready.read_text().split()
        now = memory(kid.pid)
        rss += now["rss"] - int(base_rss)
        pss += now["pss"] - int(base_pss)
        per.append(f"{(now['pss'] - int(base_pss)) / 2**20:.0f}")
    print(f"  per-process PSS increase (MiB): {', '.join(per)}")
    go.touch()
    for kid in kids:
        kid.wait()
    return {"rss": rss, "pss": pss}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5], int(sys.argv[6]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=12000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON here")
    args = ap.parse_args()
    from trainforge.data.glint import make_glint
    from trainforge.data.h5 import atomic_h5

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / f"glint_{args.size}_{args.samples}.h5"
        images, masks = make_glint(args.samples, args.size)
        atomic_h5(path, lambda f: (f.create_dataset("images", data=images), f.create_dataset("masks", data=masks)))
        one_copy = images.size * 4 + masks.size * 4  # both held as float32 in memory
        del images, masks
        print(f"data: {args.samples} images of {args.size}x{args.size}; one in-memory copy = "
              f"{one_copy / 2**20:.1f} MiB; {args.procs} concurrent processes")
        results = {}
        for shared in (False, True):
            results[shared] = run_mode(path, shared, args.procs, tmp, args.size)
            r = results[shared]
            label = "shared_memory=true " if shared else "preload (private)  "
            print(f"{label}: total RSS {r['rss'] / 2**20:8.1f} MiB = {r['rss'] / one_copy:4.2f} copies; "
                  f"total PSS {r['pss'] / 2**20:8.1f} MiB = {r['pss'] / one_copy:4.2f} copies")
        print(f"PSS ratio private/shared: {results[False]['pss'] / results[True]['pss']:.2f}x")
        leftover = sorted(p.name for p in Path(os.environ.get("TRAINFORGE_SHM_DIR", "/dev/shm")).glob("trainforge-*"))
        print(f"shared-memory files left after the last user exited: {leftover or 'none'}")
    if args.json:
        import benchjson

        copies = {("shared" if k else "private"): {"rss_copies": round(v["rss"] / one_copy, 2),
                                                   "pss_copies": round(v["pss"] / one_copy, 2),
                                                   "pss_mib": round(v["pss"] / 2 ** 20, 1)} for k, v in results.items()}
        benchjson.write(args.json, {"procs": args.procs, "samples": args.samples, "image_size": args.size,
                                    "one_copy_mib": round(one_copy / 2 ** 20, 1), **copies,
                                    "pss_private_over_shared": round(results[False]["pss"] / results[True]["pss"], 2),
                                    "leftover_files": leftover})


if __name__ == "__main__":
    main()
